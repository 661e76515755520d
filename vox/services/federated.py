"""The federated features built on ``Federation`` (remote users, DMs, presence, key claims,
vouchers and guests), created together and hooked into the local services by the root nursery.

``Federated.attach(ctx)`` runs once, after ``ctx.federation`` exists: it registers the inbox
kinds and sets the optional hooks of the local services (``DmService.remote``,
``MessageService.relay_dm``, ``PresenceService.relay``, ``KeyService.remote``), which stay
None on a server that does not federate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vox.errors import NotFound
from vox.services.federated_dm_updates import FederatedDmUpdates
from vox.services.federated_dms import FederatedDms
from vox.services.federated_keys import FederatedKeys
from vox.services.federated_typing import FederatedTyping
from vox.services.guests import GuestService
from vox.services.remote_users import RemoteDirectory, remote_user_object
from vox.services.users import public_user
from vox.storage.accounts import Accounts
from vox.storage.federated_updates import FederatedUpdates
from vox.storage.remote_users import RemoteUsers

if TYPE_CHECKING:
    from vox.context import Context

__all__ = ["Federated"]


@dataclass(frozen=True)
class Federated:
    directory: RemoteDirectory
    dms: FederatedDms
    # Edits, deletions, reactions and the attachment rule of federated DMs; typing in them.
    updates: FederatedDmUpdates
    typing: FederatedTyping
    keys: FederatedKeys
    guests: GuestService
    accounts: Accounts

    @classmethod
    def attach(cls, ctx: Context) -> Federated:
        federation = ctx.federation
        assert federation is not None
        users = RemoteUsers(ctx.store.engine)
        directory = RemoteDirectory(users, federation)
        dms = FederatedDms(
            federation,
            directory,
            users,
            ctx.store.messages,
            ctx.dms,
            ctx.ephemeral,
            ctx.broker,
        )
        dms.register()
        ctx.dms.remote = dms
        ctx.messages.relay_dm = dms.relay_message
        ctx.presence.relay = dms.relay_presence
        mapping = FederatedUpdates(ctx.store.engine)
        updates = FederatedDmUpdates(dms, mapping, ctx.store.messages, ctx.broker)
        updates.register()
        ctx.messages.dm_relay = updates
        typing = FederatedTyping(dms, mapping, ctx.broker)
        keys = FederatedKeys(federation, users, ctx.keys)
        ctx.keys.remote = keys
        guests = GuestService(federation, directory, users, ctx.auth)
        federated = cls(
            directory=directory,
            dms=dms,
            updates=updates,
            typing=typing,
            keys=keys,
            guests=guests,
            accounts=ctx.store.accounts,
        )
        ctx.federated = federated
        return federated

    async def profile(self, address: str) -> dict[str, Any]:
        """A user by ``name@domain`` (refreshed from their home server) with their last known
        presence; the id is the local one DMs and key claims use."""
        row = await self.directory.lookup(address)
        if row["home_domain"] is None:
            local = await self.accounts.user_by_id(str(row["id"]))
            if local is None:
                raise NotFound("user not found")
            return {**public_user(local), "home_domain": None}
        user = remote_user_object(row)
        user["presence"] = await self.dms.remote_presence(str(row["id"]))
        return user
