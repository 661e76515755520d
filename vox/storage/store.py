"""The Store: the one object services use for persistent state.

It holds an Engine and, as features land, the named queries over it (each one a transaction
function run through ``engine.read`` or ``engine.write``), so SQL stays out of the services.
"""

from __future__ import annotations

from vox.storage.accounts import Accounts
from vox.storage.admin import AdminStore
from vox.storage.base import Engine
from vox.storage.dms import Dms
from vox.storage.emoji import Emoji
from vox.storage.federation import FederationStore
from vox.storage.friends import Friends
from vox.storage.guilds import Guilds
from vox.storage.keys import DeviceKeys
from vox.storage.messages import Messages
from vox.storage.oidc import OidcStore

__all__ = ["Store"]


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.accounts = Accounts(engine)
        self.guilds = Guilds(engine)
        self.messages = Messages(engine)
        self.dms = Dms(engine)
        self.friends = Friends(engine)
        self.emoji = Emoji(engine)
        self.keys = DeviceKeys(engine)
        self.admin = AdminStore(engine)
        self.oidc = OidcStore(engine)
        self.federation = FederationStore(engine)

    async def ping(self) -> None:
        """Raise StorageError unless the database answers."""
        await self.engine.ping()

    def describe(self) -> str:
        """The engine's name for logs and /healthz, without credentials."""
        return self.engine.describe()
