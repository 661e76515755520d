"""Permission bits and their resolution (protocol.md section 3), sans-IO.

Bits are fixed by the wire contract (their numbers are what clients store and send). ``resolve``
is the one place that turns roles and channel overrides into a member's permissions:

1. the guild owner has every bit;
2. otherwise ``@everyone``'s permissions OR those of every role the member holds;
3. in a channel, for the overrides of roles the member holds (``@everyone`` included), OR all
   their ``allow`` bits in, then clear the union of their ``deny`` bits (deny wins);
4. a timed-out member keeps only VIEW_CHANNEL.

Without VIEW_CHANNEL in a channel, the channel does not exist for the member; callers enforce
that (404, no events).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "ALL_PERMISSIONS",
    "DEFAULT_EVERYONE",
    "DM_PERMISSIONS",
    "Override",
    "Permission",
    "first_missing",
    "permission_names",
    "resolve",
]


class Permission(enum.IntFlag):
    SEND_MESSAGES = 1 << 0
    EMBED_LINKS = 1 << 1
    ATTACH_FILES = 1 << 2
    USE_EMOJI = 1 << 3
    ADD_REACTIONS = 1 << 4
    VOICE_CONNECT = 1 << 5
    VOICE_SPEAK = 1 << 6
    VOICE_MUTE_OTHERS = 1 << 7
    VOICE_DEAFEN_OTHERS = 1 << 8
    VOICE_MOVE_MEMBERS = 1 << 9
    MANAGE_MESSAGES = 1 << 10
    TIMEOUT_MEMBERS = 1 << 11
    KICK_MEMBERS = 1 << 12
    BAN_MEMBERS = 1 << 13
    MANAGE_CHANNELS = 1 << 14
    MANAGE_ROLES = 1 << 15
    CREATE_INVITE = 1 << 16
    MANAGE_GUILD = 1 << 17
    MANAGE_EMOJI = 1 << 18
    VIEW_AUDIT_LOG = 1 << 19
    MANAGE_WEBHOOKS = 1 << 20  # reserved by the contract; grantable, checked by nothing yet
    VIDEO = 1 << 21
    SCREEN_SHARE = 1 << 22
    MENTION_EVERYONE = 1 << 23
    VIEW_CHANNEL = 1 << 24


# Every defined bit: what the owner holds, and the only bits a role or override may carry.
ALL_PERMISSIONS: int = sum(int(p) for p in Permission)

DEFAULT_EVERYONE: int = int(
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.USE_EMOJI
    | Permission.ADD_REACTIONS
    | Permission.VOICE_CONNECT
    | Permission.VOICE_SPEAK
    | Permission.CREATE_INVITE
    | Permission.VIDEO
    | Permission.SCREEN_SHARE
)

# A DM has no roles: its recipients may talk, share and call there, and manage nothing.
DM_PERMISSIONS: int = int(
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.USE_EMOJI
    | Permission.ADD_REACTIONS
    | Permission.VOICE_CONNECT
    | Permission.VOICE_SPEAK
    | Permission.VIDEO
    | Permission.SCREEN_SHARE
)


@dataclass(frozen=True, slots=True)
class Override:
    """A channel's permission override for one role."""

    role_id: str
    allow: int
    deny: int


def resolve(
    *,
    is_owner: bool,
    everyone_role_id: str,
    role_permissions: Mapping[str, int],
    member_role_ids: Iterable[str],
    overrides: Iterable[Override] | None = None,
    timed_out: bool = False,
) -> int:
    """A member's permissions in a guild (``overrides`` None) or in one channel.

    ``role_permissions`` maps every role of the guild, ``@everyone`` included, to its bits;
    ``member_role_ids`` are the roles assigned to the member (ids unknown to the guild are
    ignored); ``overrides`` are all of the channel's overrides, matching or not.
    """
    if is_owner:
        return ALL_PERMISSIONS
    held = {everyone_role_id}
    held.update(r for r in member_role_ids if r in role_permissions)
    perms = 0
    for role_id in held:
        perms |= role_permissions.get(role_id, 0)
    if overrides is not None:
        allow = deny = 0
        for override in overrides:
            if override.role_id in held:
                allow |= override.allow
                deny |= override.deny
        perms = (perms | allow) & ~deny
    perms &= ALL_PERMISSIONS
    if timed_out:
        perms &= Permission.VIEW_CHANNEL
    return int(perms)


def permission_names(bits: int) -> list[str]:
    """The names of the defined bits set in ``bits``, lowest bit first."""
    return [p.name for p in Permission if bits & p and p.name is not None]


def first_missing(held: int, needed: int) -> str | None:
    """The name of the lowest bit of ``needed`` that ``held`` lacks, or None when none is."""
    for p in Permission:
        if needed & p and not held & p:
            return p.name
    return None
