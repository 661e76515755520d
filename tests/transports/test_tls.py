"""The TLS building blocks: which certificate is served, its validation, the server context, the
self-signed certificate, and the security header policy (vox.transports.tls, http_headers)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
import trio
from cryptography import x509

from vox import config as config_mod
from vox.config import Config
from vox.errors import ConfigError
from vox.transports import tls
from vox.transports.http_headers import API_CSP, HeaderPolicy, with_security_headers
from vox.transports.quic import ensure_certificate


def _pair(tmp_path: Path, name: str, names: tuple[str, ...] = ("localhost",)) -> tls.CertFiles:
    cert_pem, key_pem = tls.generate_self_signed(names, name)
    files = tls.CertFiles(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
    files.cert.write_bytes(cert_pem)
    files.key.write_bytes(key_pem)
    return files


def _config(tmp_path: Path, **changes: object) -> Config:
    (tmp_path / "keys").mkdir(mode=0o700, exist_ok=True)
    return Config(data_dir=tmp_path).replace(**changes)


def test_plaintext_unless_configured(tmp_path: Path) -> None:
    assert tls.resolve(_config(tmp_path)) is None
    assert not (tmp_path / "keys" / "tls_cert.pem").exists()


def test_configured_pair_is_validated(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, "a"), _pair(tmp_path, "b")
    ok = tls.resolve(_config(tmp_path, tls_cert=str(a.cert), tls_key=str(a.key)))
    assert ok == a
    cases: list[tuple[dict[str, object], str, str]] = [
        ({"tls_cert": str(a.cert)}, "tls_key", "go together"),
        ({"tls_key": str(a.key)}, "tls_cert", "go together"),
        ({"tls_cert": str(a.cert), "tls_key": str(b.key)}, "tls_key", "is not the key of"),
        ({"tls_cert": str(tmp_path / "missing.crt"), "tls_key": str(a.key)}, "tls_cert", "not found"),
        ({"tls_cert": str(a.key), "tls_key": str(a.key)}, "tls_cert", "not a PEM certificate"),
        ({"tls_cert": str(a.cert), "tls_key": str(a.cert)}, "tls_key", "not a PEM private key"),
        (
            {"tls_cert": str(a.cert), "tls_key": str(a.key), "tls_self_signed": True},
            "tls_self_signed",
            "either",
        ),
    ]
    for changes, key, words in cases:
        with pytest.raises(ConfigError) as err:
            tls.resolve(_config(tmp_path, **changes))
        assert err.value.key == key and words in err.value.problem, (changes, err.value)


def test_self_signed_covers_loopback_and_host_and_is_reused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, tls_self_signed=True, host="0.0.0.0", media_host="10.1.2.3")
    files = tls.resolve(cfg)
    assert files is not None
    assert stat.S_IMODE(files.cert.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    ips = set(san.get_values_for_type(x509.IPAddress))
    # 0.0.0.0 is a bind address, never a name a client connects to.
    assert ips == {ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3")}
    first = files.cert.read_bytes()
    assert tls.resolve(cfg) == files and files.cert.read_bytes() == first
    # A host the certificate does not name yet: a new one is made.
    renamed = tls.resolve(cfg.replace(host="192.0.2.7"))
    assert renamed == files and files.cert.read_bytes() != first
    assert tls.fingerprint(files.cert.read_bytes()).count(":") == 31


def test_expiring_self_signed_is_renewed(tmp_path: Path) -> None:
    keys = _config(tmp_path).data_dir / "keys"
    files = tls.ensure_self_signed(keys / "c.pem", keys / "k.pem", ("localhost",), label="test")
    first = files.cert.read_bytes()
    cert = x509.load_pem_x509_certificate(first)
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert left > datetime.timedelta(days=300)
    assert not tls._still_good(cert, ("localhost", "example.org"))
    assert tls._still_good(cert, ("localhost",))


def test_server_context_settings(tmp_path: Path) -> None:
    files = _pair(tmp_path, "srv", ("localhost", "127.0.0.1"))
    context = tls.server_context(files, alpn=tls.REST_ALPN)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.maximum_version == ssl.TLSVersion.MAXIMUM_SUPPORTED
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12), tls12
    assert issubclass(context.sslobject_class, ssl.SSLObject)


def test_server_context_refuses_a_bad_pair(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, "a"), _pair(tmp_path, "b")
    with pytest.raises(ConfigError) as err:
        tls.server_context(tls.CertFiles(a.cert, b.key), alpn=tls.GATEWAY_ALPN)
    assert err.value.key == "tls_cert"


async def test_handshake_negotiates_alpn_and_tls13(tmp_path: Path) -> None:
    files = _pair(tmp_path, "srv", ("localhost", "127.0.0.1"))
    server_ctx = tls.server_context(files, alpn=tls.REST_ALPN)
    client_ctx = ssl.create_default_context(cafile=str(files.cert))
    client_ctx.set_alpn_protocols(["h2", "http/1.1"])
    listeners = await trio.open_ssl_over_tcp_listeners(0, server_ctx, host="127.0.0.1")
    port = listeners[0].transport_listener.socket.getsockname()[1]
    seen: list[tuple[str | None, str | None] | None] = []
    both_served = trio.Event()

    async def serve_one(stream: trio.SSLStream[trio.SocketStream]) -> None:
        if await tls.finish_handshake(stream, 5):
            seen.append((stream.version(), stream.selected_alpn_protocol()))
            await stream.aclose()
        else:
            seen.append(None)
        if len(seen) == 2:
            both_served.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve_one, listeners)
        client = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=client_ctx)
        await client.do_handshake()
        assert (client.version(), client.selected_alpn_protocol()) == ("TLSv1.3", "h2")
        await trio.aclose_forcefully(client)
        # Plaintext: the handshake fails, the stream is closed, the client reads the end.
        plain = await trio.open_tcp_stream("127.0.0.1", port)
        await plain.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
            assert await plain.receive_some() == b""
        await plain.aclose()
        with trio.fail_after(5):
            await both_served.wait()
        nursery.cancel_scope.cancel()
    assert seen == [("TLSv1.3", "h2"), None]


def test_quic_certificate_precedence(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    shared = _pair(tmp_path, "shared")
    media = _pair(tmp_path, "media")
    own = ensure_certificate(cfg)
    assert own == (tmp_path / "keys" / "media_cert.pem", tmp_path / "keys" / "media_key.pem")
    assert ensure_certificate(cfg, shared) == (shared.cert, shared.key)
    overridden = cfg.replace(media_cert_file=str(media.cert), media_key_file=str(media.key))
    assert ensure_certificate(overridden, shared) == (media.cert, media.key)


def test_config_keys() -> None:
    cfg = config_mod.load(env={"VOX_TLS_SELF_SIGNED": "yes", "VOX_CORS_ORIGINS": "https://a.example"})
    assert cfg.tls_self_signed and cfg.cors_origins == "https://a.example"
    assert cfg.hsts_max_age_s == 31_536_000
    for value in ("https://a.example/path", "*, https://a.example", "a.example"):
        with pytest.raises(ConfigError) as err:
            config_mod.load(env={"VOX_CORS_ORIGINS": value})
        assert err.value.key == "cors_origins"
    with pytest.raises(ConfigError):
        config_mod.load(env={"VOX_HSTS_MAX_AGE_S": "-1"})


def test_header_policy() -> None:
    plain = HeaderPolicy.from_config(Config(), tls=False)
    secure = HeaderPolicy.from_config(Config(hsts_max_age_s=60), tls=True)
    assert dict(with_security_headers([], plain))[b"content-security-policy"] == API_CSP
    assert b"strict-transport-security" not in dict(with_security_headers([], plain))
    assert dict(with_security_headers([], secure))[b"strict-transport-security"] == b"max-age=60"
    own = with_security_headers([(b"Content-Security-Policy", b"default-src 'none'; sandbox")], plain)
    assert [v for k, v in own if k.lower() == b"content-security-policy"] == [
        b"default-src 'none'; sandbox; frame-ancestors 'none'"
    ]
    kept = with_security_headers([(b"X-Frame-Options", b"SAMEORIGIN")], plain)
    assert [v for k, v in kept if k.lower() == b"x-frame-options"] == [b"SAMEORIGIN"]
    listed = HeaderPolicy.from_config(Config(cors_origins="https://a.example"), tls=False)
    assert listed.allowed_origin(b"https://a.example") == b"https://a.example"
    assert listed.allowed_origin(b"https://b.example") is None
    assert listed.allowed_origin(None) is None
    assert plain.allowed_origin(b"https://a.example") is None
    anyone = HeaderPolicy.from_config(Config(cors_origins="*"), tls=False)
    assert anyone.allowed_origin(b"https://b.example") == b"*"


def test_cli_flag() -> None:
    from vox.cli import _parser

    args = _parser().parse_args(["serve", "--tls-self-signed"])
    assert args.tls_self_signed is True
    assert _parser().parse_args(["serve"]).tls_self_signed is None
