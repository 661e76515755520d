"""The permission resolver (protocol.md section 3) against a bit-by-bit reference, with hypothesis."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from vox.protocol.permissions import (
    ALL_PERMISSIONS,
    DEFAULT_EVERYONE,
    DM_PERMISSIONS,
    Override,
    Permission,
    first_missing,
    permission_names,
    resolve,
)

CONTRACT_BITS = [
    "SEND_MESSAGES",
    "EMBED_LINKS",
    "ATTACH_FILES",
    "USE_EMOJI",
    "ADD_REACTIONS",
    "VOICE_CONNECT",
    "VOICE_SPEAK",
    "VOICE_MUTE_OTHERS",
    "VOICE_DEAFEN_OTHERS",
    "VOICE_MOVE_MEMBERS",
    "MANAGE_MESSAGES",
    "TIMEOUT_MEMBERS",
    "KICK_MEMBERS",
    "BAN_MEMBERS",
    "MANAGE_CHANNELS",
    "MANAGE_ROLES",
    "CREATE_INVITE",
    "MANAGE_GUILD",
    "MANAGE_EMOJI",
    "VIEW_AUDIT_LOG",
    "MANAGE_WEBHOOKS",
    "VIDEO",
    "SCREEN_SHARE",
    "MENTION_EVERYONE",
    "VIEW_CHANNEL",
]


def test_bits_match_the_contract() -> None:
    assert [(p.name, p.value) for p in Permission] == [(name, 1 << i) for i, name in enumerate(CONTRACT_BITS)]
    assert ALL_PERMISSIONS == (1 << 25) - 1


def test_default_everyone_is_exactly_the_contract_list() -> None:
    assert sorted(permission_names(DEFAULT_EVERYONE)) == sorted(
        [
            "VIEW_CHANNEL",
            "SEND_MESSAGES",
            "EMBED_LINKS",
            "ATTACH_FILES",
            "USE_EMOJI",
            "ADD_REACTIONS",
            "VOICE_CONNECT",
            "VOICE_SPEAK",
            "CREATE_INVITE",
            "VIDEO",
            "SCREEN_SHARE",
        ]
    )
    assert DM_PERMISSIONS & Permission.VIEW_CHANNEL
    assert not DM_PERMISSIONS & (Permission.MANAGE_CHANNELS | Permission.MANAGE_ROLES)


def test_first_missing_names_the_lowest_missing_bit() -> None:
    held = int(Permission.SEND_MESSAGES | Permission.BAN_MEMBERS)
    assert first_missing(held, Permission.SEND_MESSAGES) is None
    assert first_missing(held, Permission.KICK_MEMBERS) == "KICK_MEMBERS"
    assert first_missing(held, Permission.VIEW_CHANNEL | Permission.KICK_MEMBERS) == "KICK_MEMBERS"
    assert first_missing(ALL_PERMISSIONS, ALL_PERMISSIONS) is None


# -- the reference ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    is_owner: bool
    everyone: str
    roles: dict[str, int]
    member_roles: list[str]
    overrides: list[Override] | None
    timed_out: bool


def reference(case: Case) -> int:
    """Straight from the contract's words, one bit at a time, with no bitwise shortcuts."""
    result = 0
    held = {case.everyone} | {r for r in case.member_roles if r in case.roles}
    for bit in range(64):
        mask = 1 << bit
        if bit >= len(CONTRACT_BITS):
            continue  # undefined bits are never held
        if case.is_owner:
            result += mask
            continue
        has = any(case.roles.get(r, 0) & mask for r in held)
        if case.overrides is not None:
            matching = [o for o in case.overrides if o.role_id in held]
            if any(o.deny & mask for o in matching):
                has = False
            elif any(o.allow & mask for o in matching):
                has = True
        if case.timed_out and CONTRACT_BITS[bit] != "VIEW_CHANNEL":
            has = False
        if has:
            result += mask
    return result


# No example database: the suite leaves nothing behind in the checkout.
fuzz = settings(database=None)

ROLE_IDS = ["everyone", "r1", "r2", "r3", "r4", "r5"]
# Random bit sets, biased towards the interesting ones, sometimes with undefined bits set too
# (which the resolver must never hand out).
bits = st.one_of(
    st.integers(min_value=0, max_value=ALL_PERMISSIONS),
    st.sampled_from([0, ALL_PERMISSIONS, DEFAULT_EVERYONE, int(Permission.VIEW_CHANNEL)]),
    st.integers(min_value=0, max_value=(1 << 63) - 1),
)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    roles = {rid: draw(bits) for rid in draw(st.lists(st.sampled_from(ROLE_IDS[1:]), unique=True))}
    # @everyone always exists in a real guild; its absence must still resolve sanely.
    if draw(st.booleans()) or draw(st.booleans()):
        roles["everyone"] = draw(bits)
    # Members may "hold" ids the guild does not know (they must be ignored).
    member_roles = draw(st.lists(st.sampled_from([*ROLE_IDS[1:], "stranger"]), unique=True))
    overrides = draw(
        st.one_of(
            st.none(),
            st.lists(
                st.builds(Override, st.sampled_from([*ROLE_IDS, "stranger"]), bits, bits),
                max_size=6,
            ),
        )
    )
    return Case(draw(st.booleans()), "everyone", roles, member_roles, overrides, draw(st.booleans()))


def run(case: Case) -> int:
    return resolve(
        is_owner=case.is_owner,
        everyone_role_id=case.everyone,
        role_permissions=case.roles,
        member_role_ids=case.member_roles,
        overrides=case.overrides,
        timed_out=case.timed_out,
    )


@settings(fuzz, max_examples=2000)
@given(cases())
def test_resolve_matches_reference(case: Case) -> None:
    assert run(case) == reference(case)


@fuzz
@given(cases())
def test_result_only_has_defined_bits(case: Case) -> None:
    assert run(case) & ~ALL_PERMISSIONS == 0


@fuzz
@given(cases())
def test_owner_has_everything(case: Case) -> None:
    owner = Case(True, case.everyone, case.roles, case.member_roles, case.overrides, case.timed_out)
    assert run(owner) == ALL_PERMISSIONS


@fuzz
@given(cases())
def test_timed_out_members_keep_at_most_view_channel(case: Case) -> None:
    if case.is_owner:
        return
    timed_out = Case(False, case.everyone, case.roles, case.member_roles, case.overrides, True)
    free = Case(False, case.everyone, case.roles, case.member_roles, case.overrides, False)
    assert run(timed_out) == run(free) & Permission.VIEW_CHANNEL


@fuzz
@given(cases(), st.sampled_from(list(Permission)))
def test_a_matching_deny_always_wins(case: Case, bit: Permission) -> None:
    if case.is_owner:
        return
    # Deny the bit on @everyone (always held) and allow it on every role: the deny still wins.
    overrides = [*(case.overrides or []), Override("everyone", 0, int(bit))]
    overrides += [Override(r, int(bit), 0) for r in case.roles]
    denied = Case(False, case.everyone, case.roles, case.member_roles, overrides, case.timed_out)
    assert not run(denied) & bit


@fuzz
@given(cases())
def test_overrides_of_roles_not_held_change_nothing(case: Case) -> None:
    if case.overrides is None:
        return
    held = {case.everyone, *case.member_roles}
    only_matching = [o for o in case.overrides if o.role_id in held]
    trimmed = Case(case.is_owner, case.everyone, case.roles, case.member_roles, only_matching, case.timed_out)
    foreign = [Override("stranger", ALL_PERMISSIONS, ALL_PERMISSIONS), *case.overrides]
    with_foreign = Case(case.is_owner, case.everyone, case.roles, case.member_roles, foreign, case.timed_out)
    # "stranger" is never a role of the guild, so overrides for it never match
    assert run(case) == run(trimmed) == run(with_foreign)


@fuzz
@given(cases(), st.sampled_from(ROLE_IDS[1:]))
def test_guild_level_permissions_only_grow_with_roles(case: Case, extra: str) -> None:
    if case.overrides is not None:
        return
    more = Case(case.is_owner, case.everyone, case.roles, [*case.member_roles, extra], None, case.timed_out)
    assert run(case) & ~run(more) == 0


def test_worked_example() -> None:
    everyone, mod = "e", "m"
    roles = {
        everyone: int(Permission.VIEW_CHANNEL | Permission.SEND_MESSAGES),
        mod: int(Permission.KICK_MEMBERS),
    }
    # a read-only channel for @everyone where moderators may still talk
    overrides = [
        Override(everyone, 0, int(Permission.SEND_MESSAGES)),
        Override(mod, int(Permission.SEND_MESSAGES | Permission.MANAGE_MESSAGES), 0),
    ]
    plain = resolve(
        is_owner=False,
        everyone_role_id=everyone,
        role_permissions=roles,
        member_role_ids=[],
        overrides=overrides,
    )
    assert plain == Permission.VIEW_CHANNEL
    moderator = resolve(
        is_owner=False,
        everyone_role_id=everyone,
        role_permissions=roles,
        member_role_ids=[mod],
        overrides=overrides,
    )
    # deny wins over allow even across roles: SEND_MESSAGES stays denied by @everyone's override
    assert moderator == Permission.VIEW_CHANNEL | Permission.KICK_MEMBERS | Permission.MANAGE_MESSAGES
