"""Schemathesis against the running daemon's own OpenAPI document, with a real bearer token.

Bounded and reproducible (a fixed number of examples per operation, derandomized generation): no
5xx, every refusal in the error shape of protocol.md section 1, statuses and content types as
documented. Path parameters are drawn half the time from objects that exist (guilds, channels,
messages, roles, categories, invites, another user), so the fuzzer reaches the services behind
the 404s.

Run alone: ``python3 -m pytest -q tests/e2e/test_api_fuzz.py``; on failure the schemathesis
output (with a curl line reproducing each failure) is in the assertion message.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import httpx
import trio

from tests.e2e.conftest import start_daemon
from tests.e2e.helpers import PASSWORD, bearer, register
from vox.api.openapi import OPENAPI_PATH

MAX_EXAMPLES = 10
RUN_TIMEOUT_S = 240

# Limits high enough that the run measures the routes, not the rate limiter (429 would be a
# contract-conforming answer, but one that hides whatever the route would have done).
RATE_LIMITS = ",".join(
    f"{klass}=1000000/60" for klass in ("auth", "login_failures", "mfa", "api", "key_claim", "presence")
)

# Text a storage engine may not hold or index as sent: U+0000 (PostgreSQL refuses it), an overlong
# id, characters outside the BMP.
HOSTILE_TEXT = ("nul\x00inside", "9" * 300, "\U0001f3ae \u540d\u524d")
HOSTILE_FIELDS = (
    "query.before",
    "query.after",
    "query.q",
    "query.author_id",
    "query.channel_id",
    "body.name",
    "body.content",
    "body.username",
)

# Operations that would end the run rather than test a route: logging out revokes the fuzzing
# session (every later request would be a 401), and elevation is done once below with the real
# password (fuzzed, it could only be refused, and a success would not test anything more).
EXCLUDED = ("auth.logout", "admin.elevate")


def _toml_list(values: list[str]) -> str:
    # JSON string syntax is TOML's basic string syntax once characters outside the BMP are written
    # as themselves (TOML has no surrogate-pair escapes); control characters stay escaped.
    return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in values) + "]"


async def _fixtures(client: httpx.AsyncClient) -> tuple[str, dict[str, list[str]]]:
    """A user (the first, so the admin, then elevated) with a guild, channels, a message, a role and
    an invite, and a second user; returns its token and the ids per path parameter name."""
    await register(client, "fuzzer")
    login = await client.post("/api/v1/auth/login", json={"username": "fuzzer", "password": PASSWORD})
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    auth = bearer(token)
    elevate = await client.post("/api/v1/admin/elevate", json={"password": PASSWORD}, headers=auth)
    assert elevate.status_code == 200, elevate.text
    other = await register(client, "bystander")

    ids: dict[str, list[str]] = {
        "user_id": [other],
        "guild_id": [],
        "channel_id": [],
        "role_id": [],
        "message_id": [],
        "code": [],
        "category_id": [],
    }
    for name in ("fuzz one", "fuzz two"):
        guild = await client.post("/api/v1/guilds", json={"name": name}, headers=auth)
        assert guild.status_code == 201, guild.text
        guild_id = guild.json()["id"]
        ids["guild_id"].append(guild_id)
        for channel_type in ("text", "voice"):
            channel = await client.post(
                f"/api/v1/guilds/{guild_id}/channels",
                json={"name": f"{channel_type} room", "channel_type": channel_type},
                headers=auth,
            )
            assert channel.status_code == 201, channel.text
            ids["channel_id"].append(channel.json()["id"])
        role = await client.post(
            f"/api/v1/guilds/{guild_id}/roles", json={"name": "fuzzers", "permissions": 0}, headers=auth
        )
        assert role.status_code == 201, role.text
        ids["role_id"].append(role.json()["id"])
        category = await client.post(
            f"/api/v1/guilds/{guild_id}/categories", json={"name": "c"}, headers=auth
        )
        assert category.status_code == 201, category.text
        ids["category_id"].append(category.json()["id"])
        invite = await client.post(f"/api/v1/guilds/{guild_id}/invites", json={}, headers=auth)
        assert invite.status_code == 201, invite.text
        ids["code"].append(invite.json()["code"])
    for channel_id in ids["channel_id"][::2]:
        message = await client.post(
            f"/api/v1/channels/{channel_id}/messages", json={"content": "hello fuzz"}, headers=auth
        )
        assert message.status_code == 201, message.text
        ids["message_id"].append(message.json()["id"])
    return token, ids


def _config(ids: dict[str, list[str]]) -> str:
    """Path parameters from real objects (and hostile text); hostile text in common query and
    body fields too, where random generation rarely lands on it within a bounded run."""
    lines = []
    for name, values in ids.items():
        lines += [f"[dictionaries.{name}]", f"values = {_toml_list([*values, *HOSTILE_TEXT])}", ""]
    lines += ["[dictionaries.hostile]", f"values = {_toml_list(list(HOSTILE_TEXT))}", "", "[parameters]"]
    for name in ids:
        lines.append(f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}')
    for key in HOSTILE_FIELDS:
        lines.append(f'"{key}" = {{ dictionary = "hostile", probability = 0.2 }}')
    return "\n".join(lines) + "\n"


async def test_schemathesis_finds_no_server_error_or_broken_contract(
    nursery: trio.Nursery, tmp_path: Path, database_url: str
) -> None:
    # Both storage engines: PostgreSQL refuses some text SQLite stores (U+0000 was a 500 there).
    daemon = await start_daemon(
        nursery,
        tmp_path,
        database_url=database_url,
        rate_limits=RATE_LIMITS,
        argon2_time_cost=2,
        argon2_memory_kib=19_456,
    )
    try:
        async with daemon.http() as client:
            token, ids = await _fixtures(client)
        config = tmp_path / "schemathesis.toml"
        config.write_text(_config(ids), encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "run",
            daemon.rest + OPENAPI_PATH,
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--generation-deterministic",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            # A stalled route costs the timeout per request; stop early enough to report it.
            "--max-failures",
            "10",
            "--no-color",
            "--warnings",
            "off",
            *[arg for op in EXCLUDED for arg in ("--exclude-operation-id", op)],
        ]
        started = time.monotonic()
        with trio.fail_after(RUN_TIMEOUT_S):
            result = await trio.run_process(
                command, cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False
            )
        elapsed = time.monotonic() - started
        output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
        print(f"schemathesis: {elapsed:.1f} s\n{output[-4000:]}")
        assert result.returncode == 0, output[-20000:]
        # A run that tested nothing would also exit 0.
        generated = re.search(r"(\d+) generated", output)
        assert generated is not None and int(generated.group(1)) > 1000, output[-4000:]
    finally:
        daemon.stop.set()
        with trio.fail_after(30):
            await daemon.done.wait()
