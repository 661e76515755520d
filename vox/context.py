"""The daemon's state, created by the root nursery and passed down (never a module global)."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from vox.blobs import BlobStore
from vox.config import Config
from vox.datadir import ServerKeys
from vox.ephemeral import Ephemeral
from vox.metrics import Metrics
from vox.pubsub import Broker
from vox.services.admin import AdminService
from vox.services.auth import AuthService
from vox.services.calls import CallService
from vox.services.dms import DmService
from vox.services.emoji import EmojiService
from vox.services.federated import Federated
from vox.services.federation import Federation
from vox.services.friends import FriendService
from vox.services.guilds import GuildService
from vox.services.invites import InviteService
from vox.services.keys import KeyService
from vox.services.media import MediaService
from vox.services.messages import MessageService
from vox.services.mls import MlsRelay
from vox.services.moderation import ModerationService
from vox.services.nodes import NodeRegistry
from vox.services.oidc import OidcService
from vox.services.permissions import PermissionService
from vox.services.presence import PresenceService
from vox.services.ratelimit import RateLimiter
from vox.services.roles import RoleService
from vox.services.voice import VoiceService
from vox.storage import Store
from vox.transports.limits import ConnectionLimits
from vox.transports.tls import CertFiles


@dataclass(frozen=True)
class Addresses:
    """Where the listeners really bound (port 0 resolved) and the URLs clients are told."""

    host: str
    rest_port: int
    gateway_port: int
    media_port: int | None = None
    # REST and the gateway serve TLS (https://, wss://); QUIC media always does.
    tls: bool = False

    @property
    def rest_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{_host(self.host)}:{self.rest_port}"

    @property
    def gateway_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{_host(self.host)}:{self.gateway_port}/gateway"

    @property
    def media_url(self) -> str | None:
        return None if self.media_port is None else f"quic://{_host(self.host)}:{self.media_port}"

    def ready_line(self) -> str:
        line = f"vox: ready rest={self.rest_url} gateway={self.gateway_url}"
        if self.media_url is not None:
            line += f" media={self.media_url}"
        return line


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class Context:
    config: Config
    # The JWT signing key and server secret (datadir); ``keys`` is the E2EE key service.
    server_keys: ServerKeys
    store: Store
    broker: Broker
    blobs: BlobStore
    ephemeral: Ephemeral
    limiter: RateLimiter
    auth: AuthService
    permissions: PermissionService
    guilds: GuildService
    roles: RoleService
    moderation: ModerationService
    invites: InviteService
    messages: MessageService
    dms: DmService
    calls: CallService
    friends: FriendService
    emoji: EmojiService
    presence: PresenceService
    keys: KeyService
    mls: MlsRelay
    oidc: OidcService
    admin: AdminService
    metrics: Metrics = field(default_factory=Metrics)
    # TCP connections each listener holds, in total and per client address (vox.transports.limits).
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    # Set when shutdown starts: listeners stop accepting, connections are told to go away.
    draining: trio.Event = field(default_factory=trio.Event)
    addresses: Addresses | None = None
    # The certificate REST and the gateway serve (vox.transports.tls.resolve); None: plaintext.
    tls: CertFiles | None = None
    # The WebRTC SFU (vox.services.voice), opened by the root nursery after the services.
    voice: VoiceService | None = None
    # Voice rooms over the QUIC media transport (vox.services.media), opened after the SFU.
    media: MediaService | None = None
    # This daemon among the others of a deployment (vox.services.nodes), opened by the root nursery.
    nodes: NodeRegistry | None = None
    # Server-to-server federation (vox.services.federation); None while server_name is empty.
    federation: Federation | None = None
    # Remote users, federated DMs, presence, vouchers and guests (vox.services.federated); set
    # with ``federation``.
    federated: Federated | None = None
