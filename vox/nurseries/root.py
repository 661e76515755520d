"""The supervision tree: one root nursery owns storage, pub/sub, and every listener.

``run_daemon`` is what ``vox serve`` runs and what tests start in-process (port 0) with
``addresses = await nursery.start(run_daemon, config, stop)``: it reports the real bound
addresses once every listener accepts, and returns after a graceful drain once ``stop`` is set.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import trio

from vox import datadir, dirlock
from vox.blobs import open_blob_store
from vox.config import Config, redirect_uri_set
from vox.context import Addresses, Context
from vox.ephemeral import open_ephemeral
from vox.protocol.cluster import new_node_id
from vox.pubsub import open_broker
from vox.services.admin import AdminService
from vox.services.auth import AuthService
from vox.services.calls import CallService
from vox.services.dms import DmService
from vox.services.emoji import EmojiService
from vox.services.federated import Federated
from vox.services.federation import open_federation
from vox.services.friends import FriendService
from vox.services.guild_events import GuildEvents
from vox.services.guilds import GuildService
from vox.services.invites import InviteService
from vox.services.keys import KeyService
from vox.services.media import open_media
from vox.services.messages import MessageService
from vox.services.mls import MlsRelay
from vox.services.moderation import ModerationService
from vox.services.nodes import open_nodes
from vox.services.oidc import OidcService
from vox.services.passwords import HashParams, Passwords
from vox.services.permissions import PermissionService
from vox.services.presence import PresenceService
from vox.services.ratelimit import RateLimiter, parse_limits
from vox.services.roles import RoleService
from vox.services.secretbox import SecretBox
from vox.services.tokens import Tokens
from vox.services.voice import open_voice
from vox.storage import Store, open_engine
from vox.transports import tls
from vox.transports.gateway import serve_gateway
from vox.transports.quic import serve_media
from vox.transports.rest import serve_rest

log = logging.getLogger("vox.root")


async def run_daemon(
    config: Config,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[Addresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    keys = await trio.to_thread.run_sync(datadir.prepare, config.data_dir, config.jwt_algorithm)
    tls_files = await trio.to_thread.run_sync(tls.resolve, config)
    async with (
        dirlock.shared(config.data_dir),
        open_engine(
            config.resolved_database_url,
            pool_size=config.db_pool_size,
            sqlite_synchronous=config.sqlite_synchronous,
        ) as engine,
        open_broker(
            config.redis_url or None, buffer_size=config.broker_buffer, prefix=config.redis_prefix
        ) as broker,
        open_ephemeral(config.redis_url or None, prefix=config.redis_prefix + "eph:") as ephemeral,
        contextlib.AsyncExitStack() as stack,
    ):
        version = await engine.migrate()
        store = Store(engine)
        log.info(
            "storage ready",
            extra={"fields": {"backend": store.describe(), "schema_version": version}},
        )
        limiter = RateLimiter(ephemeral, parse_limits(config.rate_limits))
        passwords = Passwords(
            HashParams(config.argon2_time_cost, config.argon2_memory_kib, config.argon2_parallelism)
        )
        stack.callback(passwords.close)
        auth = AuthService(
            store.accounts,
            Tokens(keys.jwt_private_key, algorithm=config.jwt_algorithm),
            passwords,
            SecretBox(keys.server_secret),
            ephemeral,
            broker,
            limiter,
            default_policy=config.registration_policy,
            refresh_ttl_s=config.refresh_ttl_days * 86_400,
        )
        blobs = await stack.enter_async_context(open_blob_store(config))
        log.info("blobs ready", extra={"fields": {"backend": blobs.describe()}})
        permissions = PermissionService(store.guilds)
        guild_events = GuildEvents(broker)
        guilds = GuildService(store.guilds, permissions, guild_events, max_guilds=config.max_guilds)
        node_id = new_node_id()
        ctx = Context(
            config=config,
            server_keys=keys,
            store=store,
            broker=broker,
            blobs=blobs,
            ephemeral=ephemeral,
            limiter=limiter,
            auth=auth,
            permissions=permissions,
            guilds=guilds,
            roles=RoleService(store.guilds, permissions, guild_events),
            moderation=ModerationService(store.guilds, permissions, guild_events),
            invites=InviteService(store.guilds, permissions, guild_events, guilds),
            messages=MessageService(store.messages, permissions, broker),
            dms=DmService(store.dms, broker),
            calls=CallService(store.dms, ephemeral, broker, ring_timeout_s=config.call_ring_timeout_s),
            friends=FriendService(store.friends, store.accounts, broker),
            emoji=EmojiService(store.emoji, permissions, blobs, broker),
            presence=PresenceService(store.accounts, ephemeral, broker, node_id=node_id),
            keys=KeyService(
                store.keys, store.accounts, broker, limiter, max_one_time_keys=config.max_one_time_keys
            ),
            mls=MlsRelay(permissions, broker),
            oidc=OidcService(
                store.oidc,
                auth,
                SecretBox(keys.server_secret),
                ephemeral,
                broker,
                flow_ttl_s=config.oidc_flow_ttl_s,
                allowed_redirects=redirect_uri_set(config.oidc_redirect_uris),
                http_timeout_s=config.oidc_http_timeout_s,
            ),
            admin=AdminService(store.admin, auth, broker, config, elevation_s=config.admin_elevation_s),
            tls=tls_files,
        )
        # This node among the others sharing Redis (liveness, voice room owners, the sweeper):
        # deregistered after the listeners and the SFU closed, so no session outlives it.
        ctx.nodes = await stack.enter_async_context(open_nodes(config, ephemeral, ctx.presence, node_id))
        # The SFU's trio_asyncio loop and peer nursery: closed after the listeners (so connection
        # teardown can still reach it), before the broker and storage.
        ctx.voice = await stack.enter_async_context(
            open_voice(config, permissions, broker, store.accounts, ctx.metrics, ctx.calls)
        )
        # QUIC media sessions: like the SFU's peers, they outlive the listeners and are torn down
        # (voice_user_left announced) before the broker closes.
        ctx.media = await stack.enter_async_context(
            open_media(
                config,
                keys.server_secret,
                permissions,
                broker,
                store.accounts,
                ctx.metrics,
                ctx.calls,
                ctx.voice,
            )
        )
        if config.server_name:
            # Server-to-server federation: its HTTP client closes after the listeners and the
            # outbox worker; features register their inbox handlers on ctx.federation here.
            ctx.federation = await stack.enter_async_context(
                open_federation(config, keys.federation_key, store.federation, ephemeral, ctx.metrics)
            )
            # Remote users, federated DMs, presence, key claims, vouchers and guests.
            Federated.attach(ctx)
        async with trio.open_nursery() as nursery:
            # Ends unanswered DM calls started here at their ring deadline; returns when draining.
            await nursery.start(ctx.calls.run_timers, ctx.draining)
            if ctx.federation is not None:
                # Delivers the durable outbox to peer servers; returns when draining.
                await nursery.start(ctx.federation.run_delivery, ctx.draining)
            if ctx.federated is not None:
                # Best-effort typing notices to peers, and the expiry of remote typing.
                await nursery.start(ctx.federated.typing.run, ctx.draining)
            rest_port = await nursery.start(serve_rest, ctx)
            gateway_port = await nursery.start(serve_gateway, ctx)
            media_port = await nursery.start(
                functools.partial(serve_media, tls_files=tls_files), config, ctx.media, ctx.draining
            )
            ctx.addresses = Addresses(
                host=config.host,
                rest_port=rest_port,
                gateway_port=gateway_port,
                media_port=media_port,
                tls=tls_files is not None,
            )
            nodes, voice, media = ctx.nodes, ctx.voice, ctx.media
            nodes.gateway_url = config.public_gateway_url or ctx.addresses.gateway_url
            nodes.live_rooms = lambda: set(voice.rooms) | (set(media.rooms) if media is not None else set())
            await nodes.heartbeat()
            log.info(
                "listening",
                extra={
                    "fields": {
                        "rest": ctx.addresses.rest_url,
                        "gateway": ctx.addresses.gateway_url,
                        "node": node_id,
                    }
                },
            )
            task_status.started(ctx.addresses)
            await stop.wait()
            log.info("draining", extra={"fields": {"grace_s": config.shutdown_grace_s}})
            ctx.draining.set()
            # Each listener drains within the grace; this deadline is the hard stop behind them.
            nursery.cancel_scope.deadline = trio.current_time() + config.shutdown_grace_s + 1.0
        if nursery.cancel_scope.cancelled_caught:
            log.warning("grace period over; remaining work was cancelled")
    log.info("stopped")
