"""OIDC rules without a network: redirect URIs, usernames from claims, and the sealed flow state."""

from __future__ import annotations

import os
from typing import Any

import pytest

from vox.ephemeral import MemoryEphemeral
from vox.services.oidc import OidcService, OidcStateInvalid, _state_key, redirect_allowed, username_candidates
from vox.services.secretbox import SecretBox


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("http://127.0.0.1:5555/callback", True),
        ("http://127.0.0.1:5555/", True),
        ("http://[::1]:5555/cb?x=1", True),
        ("http://127.0.0.1/callback", False),  # no port: not a client's ephemeral listener
        ("http://localhost:5555/cb", False),
        ("https://127.0.0.1:5555/cb", False),
        ("http://127.0.0.1:5555@evil.example/cb", False),
        ("http://127.0.0.1:5555\\@evil.example/cb", False),
        ("http://127.0.0.1:99999/cb", False),
        ("http://127.0.0.1:5555/cb#x", False),
        ("http://127.0.0.1:5555/c b", False),
        ("http://127.0.0.1:5555/\u00e9", False),
        ("http://127.0.0.1:5555/" + "a" * 3000, False),
        ("https://app.example.org/done", True),  # configured below
        ("https://app.example.org/done/", False),
    ],
)
def test_redirect_allowed(uri: str, ok: bool) -> None:
    assert redirect_allowed(uri, frozenset({"https://app.example.org/done"})) is ok


@pytest.mark.parametrize(
    ("claims", "first"),
    [
        ({"preferred_username": "alice"}, "alice"),
        ({"preferred_username": "José María"}, "Jose_Maria"),
        ({"preferred_username": "x", "nickname": "nick"}, "nick"),
        ({"name": "   "}, "user"),
        ({"email": "first.last@example.org"}, "first.last"),
        ({"preferred_username": "a" * 80}, "a" * 32),
        ({"preferred_username": "..--__"}, "user"),
        ({"preferred_username": "日本語"}, "user"),
        ({}, "user"),
    ],
)
def test_username_candidates(claims: dict[str, Any], first: str) -> None:
    names = username_candidates(claims)
    assert names[0] == first
    assert len(set(n.lower() for n in names)) == len(names) >= 10
    assert all(2 <= len(n) <= 32 for n in names)


def _service(ephemeral: MemoryEphemeral, box: SecretBox) -> OidcService:
    return OidcService(
        store=None,  # type: ignore[arg-type]  (the state checks happen before any storage)
        auth=None,  # type: ignore[arg-type]
        secretbox=box,
        ephemeral=ephemeral,
        broker=None,  # type: ignore[arg-type]
        flow_ttl_s=600,
        allowed_redirects=frozenset(),
        http_timeout_s=5,
    )


async def test_sealed_flow_is_bound_to_its_state() -> None:
    box = SecretBox(os.urandom(32))
    ephemeral = MemoryEphemeral()
    service = _service(ephemeral, box)
    from vox.services.auth import ClientInfo

    client = ClientInfo(None, None)
    # a flow sealed for state A, copied under state B's key, does not open there
    sealed_for_a = box.seal(b'{"x":1}', "oidc_flow:" + _state_key("state-a"))
    await ephemeral.set(_state_key("state-b"), sealed_for_a.encode(), 60)
    with pytest.raises(OidcStateInvalid):
        await service.callback("state-b", "code", None, client)
    # a modified ciphertext does not open either, and is consumed all the same
    sealed = box.seal(b'{"x":1}', "oidc_flow:" + _state_key("state-c"))
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    await ephemeral.set(_state_key("state-c"), flipped.encode(), 60)
    with pytest.raises(OidcStateInvalid):
        await service.callback("state-c", "code", None, client)
    assert await ephemeral.get(_state_key("state-c")) is None
    # a state sealed under another server key is refused
    other = SecretBox(os.urandom(32)).seal(b"{}", "oidc_flow:" + _state_key("state-d"))
    await ephemeral.set(_state_key("state-d"), other.encode(), 60)
    with pytest.raises(OidcStateInvalid):
        await service.callback("state-d", "code", None, client)
    with pytest.raises(OidcStateInvalid):
        await service.callback("x" * 300, "code", None, client)
