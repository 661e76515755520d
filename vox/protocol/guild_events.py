"""Internal guild events: what services publish for gateway connections to act on, sans-IO.

Public guild-wide events (guild_update, member_*, role_*) go to ``guild:{id}`` as they are and
every subscribed connection forwards them unchanged. What a member may see of channels depends on
their permissions, so channel changes travel as internal events (type starting with "_"): each
connection recomputes what it can see and tells its client only what applies to it. Payloads
carry the public objects already encoded; ``msgspec.Raw`` lets a connection forward those bytes
without re-encoding them.

    _guild_joined   user:{id}   d: member_join payload for the joiner (member, guild_id, guild)
                                -> subscribe to the guild, forward as member_join
    _guild_left     user:{id}   d: member_leave payload (member, guild_id, reason)
                                -> drop the guild at once, forward as member_leave
    _guild_deleted  guild:{id}  d: guild_update payload (guild, deleted: true)
                                -> drop the guild at once, forward as guild_update
    _guild_access   guild:{id} or user:{id}   d: AccessChange
                                -> recompute visible channels, emit channel_create/update/delete
"""

from __future__ import annotations

import msgspec

__all__ = [
    "GUILD_ACCESS",
    "GUILD_DELETED",
    "GUILD_JOINED",
    "GUILD_LEFT",
    "AccessChange",
    "DeletedGuild",
    "GuildRef",
    "Joined",
    "decode_access_change",
    "decode_deleted_guild",
    "decode_guild_ref",
    "decode_joined",
]

GUILD_JOINED = "_guild_joined"
GUILD_LEFT = "_guild_left"
GUILD_DELETED = "_guild_deleted"
GUILD_ACCESS = "_guild_access"


class AccessChange(msgspec.Struct, omit_defaults=True):
    """Channels of one guild changed, or who may see them may have.

    ``channels`` maps channel id to its encoded channel object for every channel a receiver may
    need to announce; ``updated`` lists channels whose object changed; ``deleted`` channels that
    no longer exist (their last object is in ``channels``). ``reload``: permissions or the channel
    set changed, so each receiver must recompute what it can see.
    """

    guild_id: str
    reload: bool = False
    channels: dict[str, msgspec.Raw] = {}
    updated: list[str] = []
    deleted: list[str] = []


class GuildRef(msgspec.Struct):
    guild_id: str


class _Id(msgspec.Struct):
    id: str


class DeletedGuild(msgspec.Struct):
    id: str


class _JoinedGuild(msgspec.Struct):
    channels: list[_Id]


class Joined(msgspec.Struct):
    guild_id: str
    guild: _JoinedGuild


_access_decoder = msgspec.json.Decoder(AccessChange)
_ref_decoder = msgspec.json.Decoder(GuildRef)
_joined_decoder = msgspec.json.Decoder(Joined)
_deleted_decoder = msgspec.json.Decoder(DeletedGuild)


def decode_access_change(d_json: bytes) -> AccessChange:
    return _access_decoder.decode(d_json)


def decode_guild_ref(d_json: bytes) -> GuildRef:
    return _ref_decoder.decode(d_json)


def decode_joined(d_json: bytes) -> Joined:
    return _joined_decoder.decode(d_json)


def decode_deleted_guild(d_json: bytes) -> DeletedGuild:
    return _deleted_decoder.decode(d_json)
