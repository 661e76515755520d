"""Sans-IO federation signing and vouchers: what verifies, and each reason a request or a voucher
is refused."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vox.errors import FederationAuthError
from vox.protocol import federation as fed

NOW = 1_700_000_000_000
SKEW = 300_000
KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()


def signed(**changes: object) -> tuple[dict[str, str], dict[str, object]]:
    request: dict[str, object] = {
        "origin": "a.test",
        "destination": "b.test",
        "method": "POST",
        "path": "/api/v1/federation/inbox",
        "body": b'{"id":1}',
        "now_ms": NOW,
    }
    request.update(changes)
    return fed.sign_request(KEY, **request), request  # type: ignore[arg-type]


def verify(headers: dict[str, str], **changes: object) -> str:
    check: dict[str, object] = {
        "method": "POST",
        "path": "/api/v1/federation/inbox",
        "body": b'{"id":1}',
        "now_ms": NOW + 1000,
        "our_domain": "b.test",
        "max_skew_ms": SKEW,
    }
    check.update(changes)
    return fed.verify_request(PUB, headers, **check)  # type: ignore[arg-type]


def reason(headers: dict[str, str], **changes: object) -> str:
    with pytest.raises(FederationAuthError) as caught:
        verify(headers, **changes)
    return caught.value.reason


def test_a_signed_request_verifies_and_names_its_origin() -> None:
    headers, _ = signed()
    assert set(headers) == {"Vox-Origin", "Vox-Destination", "Vox-Timestamp", "Vox-Signature"}
    assert headers["Vox-Timestamp"] == str(NOW)
    assert verify(headers) == "a.test"
    # Header names are case-insensitive.
    assert verify({k.lower(): v for k, v in headers.items()}) == "a.test"


def test_canonical_bytes_follow_the_documented_layout() -> None:
    body = b"{}"
    text = fed.canonical_bytes(
        method="post", path="/x?y=1", body=body, timestamp_ms=5, origin="a.test", destination="b.test"
    ).decode()
    lines = text.split("\n")
    assert lines[0] == "vox-fed-v1" and lines[1] == "POST" and lines[2] == "/x?y=1"
    assert lines[3] == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert lines[4:] == ["5", "a.test", "b.test"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"method": "PUT"}, "bad_signature"),
        ({"path": "/api/v1/federation/inbox?x=1"}, "bad_signature"),
        ({"body": b'{"id":2}'}, "bad_signature"),
        ({"our_domain": "c.test"}, "wrong_destination"),
        ({"now_ms": NOW + SKEW + 1}, "stale"),
        ({"now_ms": NOW - SKEW - 1}, "stale"),
    ],
)
def test_any_change_is_refused(changes: dict[str, object], expected: str) -> None:
    headers, _ = signed()
    assert reason(headers, **changes) == expected


def test_edges_of_the_skew_window_are_accepted() -> None:
    headers, _ = signed()
    assert verify(headers, now_ms=NOW + SKEW) == "a.test"
    assert verify(headers, now_ms=NOW - SKEW) == "a.test"


def test_forged_and_tampered_headers_are_refused() -> None:
    headers, _ = signed()
    forged = fed.sign_request(
        Ed25519PrivateKey.generate(),
        origin="a.test",
        destination="b.test",
        method="POST",
        path="/api/v1/federation/inbox",
        body=b'{"id":1}',
        now_ms=NOW,
    )
    assert reason(forged) == "bad_signature"
    # A signature moved to another timestamp, or claimed by another origin, no longer verifies.
    assert reason({**headers, "Vox-Timestamp": str(NOW + 1)}) == "bad_signature"
    assert reason({**headers, "Vox-Origin": "c.test"}) == "bad_signature"
    assert reason({**headers, "Vox-Signature": "!!"}) == "bad_signature"
    assert reason({**headers, "Vox-Signature": fed.b64url_encode(b"x" * 10)}) == "bad_signature"
    # The same signature bytes spelled with other spare bits in the last character: refused, so
    # a replay cannot pass as a new request under another spelling.
    signature = headers["Vox-Signature"]
    variants = {
        signature[:-1] + c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    }
    spare = [v for v in variants if v != signature and _same_bytes(v, signature)]
    assert len(spare) == 15  # 86 characters carry 516 bits: 4 spare bits after 64 bytes
    for variant in spare:
        assert reason({**headers, "Vox-Signature": variant}) == "bad_signature"
    assert reason({**headers, "Vox-Timestamp": "soon"}) == "bad_timestamp"
    assert reason({**headers, "Vox-Origin": "https://a.test/"}) == "bad_origin"
    for name in ("Vox-Origin", "Vox-Destination", "Vox-Timestamp", "Vox-Signature"):
        partial = {k: v for k, v in headers.items() if k != name}
        assert reason(partial) == "missing_header"


def _same_bytes(a: str, b: str) -> bool:
    def raw(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    return raw(a) == raw(b)


def test_public_keys_round_trip_as_unpadded_base64url() -> None:
    text = fed.public_key_b64(KEY)
    assert "=" not in text and len(fed.b64url_decode(text)) == 32
    assert fed.public_key_b64(fed.public_key_from_b64(text)) == text
    for bad in ("", "abc", fed.b64url_encode(b"x" * 31), "a+b/"):
        with pytest.raises(ValueError):
            fed.public_key_from_b64(bad)


def test_domains() -> None:
    for good in ("a.test", "chat.example.org", "localhost", "b.test:9001", "x-1.y"):
        assert fed.is_valid_domain(good), good
    for bad in ("", "A.test", "a..test", "-a.test", "a.test/", "user@a.test", "a test", "a.test:"):
        assert not fed.is_valid_domain(bad), bad


def voucher(**changes: object) -> str:
    payload = fed.new_voucher_payload(
        issuer="a.test", audience="b.test", subject="u1", name="alice", now_ms=NOW
    )
    payload.update(changes)
    return fed.issue_voucher(KEY, payload)


def voucher_reason(text: str, **changes: object) -> str:
    check: dict[str, object] = {"audience": "b.test", "now_ms": NOW + 1000}
    check.update(changes)
    with pytest.raises(FederationAuthError) as caught:
        fed.verify_voucher(PUB, text, **check)  # type: ignore[arg-type]
    return caught.value.reason


def test_a_voucher_verifies_with_its_claims() -> None:
    text = voucher()
    claims = fed.verify_voucher(PUB, text, audience="b.test", now_ms=NOW + 1000)
    assert (claims.issuer, claims.audience, claims.subject, claims.name) == (
        "a.test",
        "b.test",
        "u1",
        "alice",
    )
    assert claims.identity == "alice@a.test"
    assert claims.expires_at_ms == NOW + fed.VOUCHER_TTL_MS
    assert fed.voucher_issuer(text) == "a.test"
    body = json.loads(fed.b64url_decode(text.split(".")[0]))
    assert set(body) == {"v", "iss", "aud", "sub", "name", "jti", "iat", "exp"}
    # Each voucher gets its own jti.
    assert fed.verify_voucher(PUB, voucher(), audience="b.test", now_ms=NOW).jti != claims.jti


def test_vouchers_are_refused_for_each_reason() -> None:
    assert voucher_reason(voucher(), audience="c.test") == "wrong_audience"
    assert voucher_reason(voucher(), now_ms=NOW + fed.VOUCHER_TTL_MS) == "expired"
    assert voucher_reason(voucher(iat=NOW + 3_600_000, exp=NOW + 3_660_000)) == "bad_voucher"
    assert voucher_reason(voucher(exp=NOW + 86_400_000)) == "bad_voucher"
    forged = fed.issue_voucher(
        Ed25519PrivateKey.generate(),
        fed.new_voucher_payload(issuer="a.test", audience="b.test", subject="u1", name="alice", now_ms=NOW),
    )
    assert voucher_reason(forged) == "bad_signature"
    # A payload swapped under a valid signature.
    body, sig = voucher().split(".")
    other_body = voucher(name="mallory").split(".")[0]
    assert voucher_reason(f"{other_body}.{sig}") == "bad_signature"
    assert voucher_reason(f"{body}.") == "bad_signature"
    for garbage in ("", "abc", "a.b.c", "!!.!!", "x" * 5000, fed.b64url_encode(b"[]") + ".AA"):
        assert voucher_reason(garbage) == "bad_voucher", garbage
    assert voucher_reason(voucher(v=2)) == "bad_voucher"
    assert voucher_reason(voucher(sub="")) == "bad_voucher"
    assert voucher_reason(voucher(exp="later")) == "bad_voucher"


def test_replies_are_bound_to_their_request() -> None:
    request_sig = signed()[0]["Vox-Signature"]
    reply = {"status": 200, "body": b'{"ok":true}', "request_signature": request_sig}
    headers = fed.sign_response(KEY, origin="b.test", destination="a.test", **reply)  # type: ignore[arg-type]
    assert set(headers) == {"Vox-Origin", "Vox-Signature"}

    def check(headers: dict[str, str], **changes: object) -> None:
        fed.verify_response(
            PUB,
            headers,
            **{**reply, "peer": "b.test", "our_domain": "a.test", **changes},  # type: ignore[arg-type]
        )

    check(headers)
    for changes in (
        {"status": 500},
        {"body": b'{"ok":false}'},
        {"request_signature": signed(now_ms=NOW + 1)[0]["Vox-Signature"]},
        {"our_domain": "c.test"},
    ):
        with pytest.raises(FederationAuthError) as caught:
            check(headers, **changes)
        assert caught.value.reason == "bad_signature", changes
    with pytest.raises(FederationAuthError) as caught:
        check(headers, peer="c.test")
    assert caught.value.reason == "wrong_origin"
    with pytest.raises(FederationAuthError) as caught:
        check({"Vox-Origin": "b.test"})
    assert caught.value.reason == "missing_header"
    # A request signature can never pass for a reply's, nor the other way round.
    with pytest.raises(FederationAuthError):
        check({"Vox-Origin": "b.test", "Vox-Signature": request_sig})
