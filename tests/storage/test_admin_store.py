"""AdminStore and OidcStore on both engines: listings, disabling, settings, the audit log, the
command-line queries, OIDC accounts and providers."""

from __future__ import annotations

import pytest

from vox.errors import Conflict
from vox.storage import Engine
from vox.storage.accounts import Accounts
from vox.storage.admin import AdminStore
from vox.storage.oidc import NewOidcUser, OidcStore


async def test_users_disable_and_audit(engine: Engine) -> None:
    admin = AdminStore(engine)
    accounts = Accounts(engine)
    root, _ = await admin.create_admin("root", "hash")
    bob, created = await admin.create_admin("Bob_1", "hash")
    assert created
    await admin.create_admin("bob_1", "other")  # exists (case-insensitively): promoted, not created
    users = await admin.users(10, None, None)
    # creation order (ties within a millisecond broken by id)
    assert sorted(u["username"] for u in users) == ["Bob_1", "root"]
    assert all(bool(u["is_admin"]) for u in users)
    assert [u["username"] for u in await admin.users(10, None, "B_")] == ["Bob_1"]  # "_" is literal
    assert await admin.users(10, None, "%") == []
    assert [u["id"] for u in await admin.users(10, users[0]["id"], None)] == [users[1]["id"]]
    assert await admin.users(10, users[1]["id"], None) == []
    assert await admin.users(10, "unknown", None) == []

    s1 = await accounts.create_session(bob, "h1", "1.2.3.4", None, 60_000)
    s2 = await accounts.create_session(bob, "h2", None, None, 60_000)
    await accounts.revoke_session(s2, bob)
    result = await admin.set_disabled(root, bob, True, "10.0.0.1")
    assert result is not None
    assert bool(result.user["disabled"]) and result.revoked_sessions == [s1]
    state = await accounts.session_state(s1)
    assert state is not None and state["revoked_at"] is not None
    assert await admin.set_disabled(root, "missing", True, None) is None
    enabled = await admin.set_disabled(root, bob, False, "10.0.0.1")
    assert enabled is not None and not bool(enabled.user["disabled"]) and enabled.revoked_sessions == []

    await admin.elevate(root, s1, 123, "10.0.0.2")
    await admin.elevate(root, s1, 456, "10.0.0.2")  # again: replaced, not duplicated
    assert await admin.elevated_until(s1) == 456
    assert await admin.elevated_until("nope") is None

    log = await admin.audit_log(100, None)
    assert [e["action"] for e in log][:4] == ["admin_elevate", "admin_elevate", "user_enable", "user_disable"]
    disable = log[3]
    assert (disable["actor_id"], disable["target_id"], disable["ip"]) == (root, bob, "10.0.0.1")
    only = await admin.audit_log(100, None, action="user_disable", actor_id=root)
    assert [e["id"] for e in only] == [disable["id"]]
    assert [e["id"] for e in await admin.audit_log(1, log[2]["id"])] == [disable["id"]]
    cli = await admin.audit_log(100, None, action="admin_create")
    assert len(cli) == 3 and all(e["actor_id"] is None for e in cli)


async def test_settings_and_password_reset(engine: Engine) -> None:
    admin = AdminStore(engine)
    accounts = Accounts(engine)
    root, _ = await admin.create_admin("root", "old")
    await admin.update_settings(root, {"registration_policy": "closed"}, None)
    assert await admin.settings() == {"registration_policy": "closed"}
    assert await accounts.registration_policy() == "closed"
    session = await accounts.create_session(root, "h", None, None, 60_000)
    reset = await admin.reset_password("ROOT", "new")
    assert reset == (root, [session])
    user = await accounts.user_by_id(root)
    assert user is not None and user["password_hash"] == "new"
    assert await admin.reset_password("nobody", "x") is None


async def test_oidc_accounts_and_providers(engine: Engine) -> None:
    oidc = OidcStore(engine)
    admin = AdminStore(engine)
    first = await oidc.create_user(NewOidcUser("idp:1", ("alice", "alice2"), "Alice", "alice@example.org"))
    assert first is not None
    row, is_admin = first
    assert is_admin and row["username"] == "alice" and row["email"] == "alice@example.org"
    second = await oidc.create_user(NewOidcUser("idp:2", ("Alice", "alice2"), None, "ALICE@example.org"))
    assert second is not None
    row2, is_admin2 = second
    assert not is_admin2 and row2["username"] == "alice2" and row2["email"] is None
    assert await oidc.create_user(NewOidcUser("idp:3", ("alice", "ALICE2"), None, None)) is None
    found = await oidc.user_by_external_id("idp:2")
    assert found is not None and found["id"] == row2["id"]

    actor = str(row["id"])
    values = {"slug": "kc", "display_name": "KC", "issuer_url": "https://x", "client_id": "c"}
    provider = await oidc.create_provider(actor, {**values, "client_secret_enc": "v1.sealed"}, None)
    assert provider["scopes"] == "openid profile email" and bool(provider["enabled"])
    with pytest.raises(Conflict):
        await oidc.create_provider(actor, values, None)
    assert (await oidc.provider("kc"))["id"] == provider["id"]  # type: ignore[index]
    assert (await oidc.provider(provider["id"]))["slug"] == "kc"  # type: ignore[index]
    updated = await oidc.update_provider(actor, provider["id"], {"enabled": False}, None)
    assert updated is not None and not bool(updated["enabled"])
    assert await oidc.providers(enabled_only=True) == []
    assert len(await oidc.providers(enabled_only=False)) == 1
    assert await oidc.delete_provider(actor, provider["id"], None) is not None
    assert await oidc.delete_provider(actor, provider["id"], None) is None
    log = await admin.audit_log(10, None)
    assert [e["action"] for e in log] == [
        "oidc_provider_delete",
        "oidc_provider_update",
        "oidc_provider_create",
    ]
    assert all("sealed" not in e["details"] for e in log)
