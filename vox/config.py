"""Configuration: defaults < TOML file < ``VOX_*`` environment < command-line flags.

Every key is declared once in ``FIELDS`` with its type, default, check and documentation; the same
table drives parsing, validation, the environment names and ``vox config example``. A bad value
fails start-up with ``ConfigError`` naming the key (the CLI turns it into exit code 2).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vox.errors import ConfigError

ENV_PREFIX = "VOX_"


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("vox-data")
    host: str = "127.0.0.1"
    rest_port: int = 8080
    gateway_port: int = 8081
    media_port: int = 4443
    database_url: str = ""  # empty: sqlite under data_dir
    redis_url: str = ""  # empty: in-process broker
    redis_prefix: str = "vox:"
    # Scale out: a node unseen for node_ttl_s is dead; the others reap it within node_sweep_s more.
    node_ttl_s: float = 15.0
    node_heartbeat_s: float = 5.0
    node_sweep_s: float = 5.0
    handoff_timeout_s: float = 5.0
    db_pool_size: int = 10
    # full: every acknowledged write survives a power loss too, not only a killed process.
    sqlite_synchronous: str = "full"
    broker_buffer: int = 1024
    shutdown_grace_s: float = 10.0
    log_level: str = "info"
    log_format: str = "text"
    public_rest_url: str = ""
    public_gateway_url: str = ""
    public_media_url: str = ""
    tls_cert: str = ""  # empty with tls_key: plaintext unless tls_self_signed
    tls_key: str = ""
    tls_self_signed: bool = False
    hsts_max_age_s: int = 31_536_000
    cors_origins: str = ""  # empty: CORS off
    heartbeat_interval_ms: int = 30_000
    max_gateway_connections: int = 10_000
    max_request_bytes: int = 1_048_576
    max_upload_bytes: int = 26_214_400
    # Abuse limits and slow-client timeouts (docs/operations.md "Limits and timeouts").
    max_connections: int = 10_000
    max_connections_per_ip: int = 256
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    http_keepalive_timeout_s: float = 75.0
    ws_handshake_timeout_s: float = 10.0
    gateway_identify_timeout_s: float = 0.0  # 0: 1.5 x the heartbeat interval
    gateway_queue_frames: int = 512
    gateway_queue_bytes: int = 4_194_304
    registration_policy: str = "open"
    oidc_redirect_uris: str = ""  # empty: only loopback redirect URIs
    oidc_flow_ttl_s: float = 600.0
    oidc_http_timeout_s: float = 10.0
    admin_elevation_s: float = 900.0
    jwt_algorithm: str = "EdDSA"
    refresh_ttl_days: int = 30
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19_456
    argon2_parallelism: int = 1
    rate_limits: str = ""
    max_guilds: int = 0  # 0: unlimited
    max_one_time_keys: int = 100
    call_ring_timeout_s: float = 90.0
    s3_bucket: str = ""  # empty: blobs under data_dir/blobs
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_access_key_id: str = ""
    # repr=False: a logged or printed Config must never show the secret.
    s3_secret_access_key: str = dataclasses.field(default="", repr=False)
    s3_prefix: str = ""
    s3_path_style: bool = False
    s3_create_bucket: bool = False
    voice_room_limit: int = 99
    voice_close_timeout_s: float = 2.0
    ice_servers: str = ""  # empty: host candidates only, no STUN/TURN contacted
    ice_username: str = ""
    ice_credential: str = dataclasses.field(default="", repr=False)
    voice_public_ip: str = ""
    voice_udp_ports: str = ""
    voice_host_addresses: str = ""
    media_host: str = ""  # empty: host
    media_cert_file: str = ""  # empty: a self-signed certificate generated in data_dir
    media_key_file: str = ""
    media_token_ttl_s: float = 60.0
    media_idle_timeout_s: float = 30.0
    media_auth_timeout_s: float = 5.0
    media_max_connections: int = 1000
    media_rate_pps: int = 1500
    media_rate_burst: int = 300
    # Federation (docs/federation.md): empty server_name keeps it off.
    server_name: str = ""
    federation_policy: str = "open"
    federation_allowlist: str = ""
    federation_peers: str = ""
    federation_dns_server: str = ""
    federation_insecure_http: bool = False
    federation_max_skew_s: float = 300.0
    federation_rate: int = 600
    federation_retry_max_s: float = 60.0
    federation_timeout_s: float = 10.0
    federation_batch_max: int = 100
    federation_batch_bytes: int = 262_144

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'vox.db').resolve()}"

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number between 0 and 65535"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or greater"


def _at_least(minimum: int) -> Callable[[int], str | None]:
    def check(value: int) -> str | None:
        return None if value >= minimum else f"must be at least {minimum}"

    return check


def _rate_limits(value: str) -> str | None:
    from vox.services.ratelimit import parse_limits

    try:
        parse_limits(value)
    except ConfigError as exc:
        return exc.problem
    return None


def _nonempty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _db_url(value: str) -> str | None:
    if value == "" or value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        return None
    return "must start with sqlite:///, postgresql:// or postgres://"


def _redis_url(value: str) -> str | None:
    if value == "" or value.startswith(("redis://", "rediss://", "unix://")):
        return None
    return "must start with redis://, rediss:// or unix://"


def _http_url(value: str) -> str | None:
    if value == "" or value.startswith(("http://", "https://", "ws://", "wss://", "quic://")):
        return None
    return "must be an absolute URL"


def _cors_origins(value: str) -> str | None:
    origins = cors_origin_set(value)
    if "*" in origins:
        return None if len(origins) == 1 else '"*" stands alone'
    for origin in origins:
        if not re.fullmatch(r"https?://[^/\s?#]+", origin):
            return f"{origin!r} is not an origin (scheme://host[:port], no path)"
    return None


def cors_origin_set(value: str) -> frozenset[str]:
    return frozenset(value.replace(",", " ").split())


def _s3_bucket(value: str) -> str | None:
    # Loose on purpose: S3-compatible servers accept more than AWS's own naming rules.
    if value == "" or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}", value):
        return None
    return "must be a bucket name (letters, digits, dots, hyphens, underscores)"


def _s3_endpoint(value: str) -> str | None:
    if value == "" or value.startswith(("http://", "https://")):
        return None
    return "must be an http:// or https:// URL"


def _s3_prefix(value: str) -> str | None:
    # Same alphabet as blob keys (vox/blobs/base.py), so prefix + key is always a valid object key.
    if value == "" or re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_./-]*", value):
        return None
    return "must use letters, digits and _ . / - and not start with / or ."


def _ice_servers(value: str) -> str | None:
    for url in value.replace(",", " ").split():
        if not re.match(r"^(stuns?|turns?):[^\s]+$", url):
            return f"{url!r} is not a stun:/stuns:/turn:/turns: URL"
    return None


def _ip_or_empty(value: str) -> str | None:
    if not value:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address"
    return None


def _ip_list(value: str) -> str | None:
    for item in value.replace(",", " ").split():
        if _ip_or_empty(item) is not None:
            return f"{item!r} is not an IP address"
    return None


def _port_range(value: str) -> str | None:
    if not value:
        return None
    found = re.fullmatch(r"(\d+)-(\d+)", value)
    if found is None or not 1 <= int(found[1]) <= int(found[2]) <= 65535:
        return 'must be "min-max" with 1 <= min <= max <= 65535'
    return None


def _redirect_uris(value: str) -> str | None:
    for uri in redirect_uri_set(value):
        if not re.fullmatch(r"[a-z][a-z0-9+.\-]*://?[^\s#]+", uri):
            return f"{uri!r} is not an absolute URI without a fragment"
    return None


def _server_name(value: str) -> str | None:
    from vox.protocol.federation import is_valid_domain

    if value == "" or is_valid_domain(value):
        return None
    return 'must be a lower-case domain name such as "chat.example.org"'


def _domain_list(value: str) -> str | None:
    from vox.protocol.federation import is_valid_domain

    for item in domain_set(value):
        if not is_valid_domain(item):
            return f"{item!r} is not a lower-case domain name"
    return None


def domain_set(value: str) -> frozenset[str]:
    return frozenset(value.replace(",", " ").split())


def _federation_batch_max(value: int) -> str | None:
    # 1000: what a receiver takes in one inbox request (vox.protocol.federation_inbox).
    return None if 1 <= value <= 1000 else "must be between 1 and 1000"


def _federation_peers(value: str) -> str | None:
    from vox.services.federation_peers import parse_static_peers

    try:
        parse_static_peers(value)
    except ConfigError as exc:
        return exc.problem
    return None


def _host_port(value: str) -> str | None:
    if value == "":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        return 'must be "host:port"'
    return _ip_or_empty(host.strip("[]")) and "host must be an IP address"


def redirect_uri_set(value: str) -> frozenset[str]:
    return frozenset(value.replace(",", " ").split())


@dataclass(frozen=True)
class Field:
    name: str
    kind: type
    doc: str
    check: Callable[[Any], str | None] | None = None


FIELDS: tuple[Field, ...] = (
    Field("data_dir", Path, "Directory for the SQLite database, blobs and generated keys (created 0700)."),
    Field("host", str, "Address every listener binds to."),
    Field("rest_port", int, "REST API, /healthz, /metrics and the web client (0 = any free port).", _port),
    Field("gateway_port", int, "WebSocket gateway, path /gateway (0 = any free port).", _port),
    Field("media_port", int, "QUIC media datagrams, UDP (0 = any free port).", _port),
    Field(
        "database_url",
        str,
        'Empty for SQLite under data_dir; "postgresql://user@host/db" to scale out.',
        _db_url,
    ),
    Field(
        "redis_url", str, 'Empty for the in-process broker; "redis://host:6379/0" to scale out.', _redis_url
    ),
    Field(
        "redis_prefix",
        str,
        "Prefix of every Redis key and channel (several deployments, one Redis).",
        _nonempty,
    ),
    Field(
        "node_ttl_s",
        float,
        "Several daemons: one not heard from for this long is dead; the others take its users offline.",
        _positive,
    ),
    Field(
        "node_heartbeat_s",
        float,
        "How often a daemon renews its liveness record (below node_ttl_s).",
        _positive,
    ),
    Field("node_sweep_s", float, "How often a daemon looks for dead ones to clean up after.", _positive),
    Field(
        "handoff_timeout_s",
        float,
        "How long a gateway resume waits for the daemon that holds the session (4009 after).",
        _positive,
    ),
    Field("db_pool_size", int, "PostgreSQL connections (and worker threads) per daemon.", _positive),
    Field(
        "sqlite_synchronous",
        str,
        "SQLite durability: full (fsync the WAL at every commit; an acknowledged write survives a "
        "power loss) or normal (fewer fsyncs; survives a killed daemon, not an OS crash).",
        _one_of("full", "normal"),
    ),
    Field(
        "broker_buffer",
        int,
        "Events buffered per gateway subscription before it is cut as lagged.",
        _positive,
    ),
    Field("shutdown_grace_s", float, "Seconds in-flight work gets to finish on SIGINT/SIGTERM.", _positive),
    Field("log_level", str, "debug, info, warning or error.", _one_of("debug", "info", "warning", "error")),
    Field("log_format", str, "text (key=value lines) or json (one object a line).", _one_of("text", "json")),
    Field(
        "public_rest_url", str, "URL clients use for REST when behind a proxy (empty: derived).", _http_url
    ),
    Field("public_gateway_url", str, "Gateway URL handed to clients (empty: derived).", _http_url),
    Field("public_media_url", str, "QUIC media URL handed to clients (empty: derived).", _http_url),
    Field(
        "tls_cert",
        str,
        "PEM certificate (chain) for REST (https, h2) and the gateway (wss), and for QUIC media unless "
        "media_cert_file is set; empty: plaintext (or tls_self_signed).",
    ),
    Field("tls_key", str, "PEM private key of tls_cert, unencrypted (both or neither)."),
    Field(
        "tls_self_signed",
        bool,
        "Serve TLS with a self-signed certificate generated in data_dir/keys (for testing; clients "
        "must trust or pin it). Not together with tls_cert.",
    ),
    Field(
        "hsts_max_age_s",
        int,
        "Strict-Transport-Security max-age sent with TLS on (never over plaintext); 0 tells browsers "
        "to forget it.",
        _at_least(0),
    ),
    Field(
        "cors_origins",
        str,
        'Origins (exact, comma-separated, e.g. "https://chat.example.org") whose pages may call the '
        'REST API from a browser; "*" for any; empty: CORS off.',
        _cors_origins,
    ),
    Field("heartbeat_interval_ms", int, "Gateway heartbeat interval sent in hello.", _positive),
    Field("max_gateway_connections", int, "Gateway connections accepted at once (4012 beyond).", _positive),
    Field("max_request_bytes", int, "Largest JSON request body accepted.", _positive),
    Field("max_upload_bytes", int, "Largest file accepted per upload.", _positive),
    Field(
        "max_connections",
        int,
        "REST TCP connections open at once (503 server_full beyond; the gateway has its own).",
        _positive,
    ),
    Field(
        "max_connections_per_ip",
        int,
        "TCP connections one client address may hold on each of the REST and gateway listeners.",
        _positive,
    ),
    Field(
        "http_header_timeout_s",
        float,
        "Seconds a REST client gets to send a complete request head, from connecting or from its "
        "first byte after an idle keep-alive period.",
        _positive,
    ),
    Field(
        "http_body_timeout_s",
        float,
        "Seconds a REST request body (or a response the client does not read) may make no progress "
        "before the connection is closed (408 when no response started).",
        _positive,
    ),
    Field(
        "http_keepalive_timeout_s", float, "Seconds an idle REST keep-alive connection stays open.", _positive
    ),
    Field(
        "ws_handshake_timeout_s",
        float,
        "Seconds a gateway TCP connection gets to complete its WebSocket upgrade.",
        _positive,
    ),
    Field(
        "gateway_identify_timeout_s",
        float,
        "Seconds a gateway connection gets to identify or resume (4003 after); 0: 1.5 x the "
        "heartbeat interval.",
        _non_negative,
    ),
    Field(
        "gateway_queue_frames",
        int,
        "Frames queued for one gateway client before it is closed as too slow (4008).",
        _positive,
    ),
    Field(
        "gateway_queue_bytes",
        int,
        "Characters of JSON queued for one gateway client before it is closed as too slow (4008).",
        _positive,
    ),
    Field(
        "registration_policy",
        str,
        "open, invite_only or closed (admins can change it at run time).",
        _one_of("open", "invite_only", "closed"),
    ),
    Field(
        "oidc_redirect_uris",
        str,
        "Redirect URIs (exact, comma- or space-separated) SSO may send tokens to besides loopback "
        "http://127.0.0.1:PORT/... ones; empty: loopback only.",
        _redirect_uris,
    ),
    Field(
        "oidc_flow_ttl_s",
        float,
        "Seconds an SSO sign-in may take (its single-use state lives this long).",
        _positive,
    ),
    Field("oidc_http_timeout_s", float, "Timeout of each request to an identity provider.", _positive),
    Field(
        "admin_elevation_s",
        float,
        "Seconds an admin's session stays elevated after re-authenticating (POST /admin/elevate).",
        _positive,
    ),
    Field(
        "jwt_algorithm", str, "Access token signature: EdDSA (Ed25519) or RS256.", _one_of("EdDSA", "RS256")
    ),
    Field("refresh_ttl_days", int, "Days a session (its refresh token) lives without being used.", _positive),
    Field("argon2_time_cost", int, "Argon2id iterations (at least 2).", _at_least(2)),
    Field("argon2_memory_kib", int, "Argon2id memory in KiB (at least 19456 = 19 MiB).", _at_least(19_456)),
    Field("argon2_parallelism", int, "Argon2id lanes (at least 1).", _at_least(1)),
    Field(
        "rate_limits",
        str,
        'Override rate limits, "CLASS=COUNT/SECONDS,..." (classes: auth, login_failures, mfa, api, '
        "gateway_identify, typing, presence, key_claim, mls_relay).",
        _rate_limits,
    ),
    Field(
        "max_guilds",
        int,
        "Most guilds (communities) this server holds; 0 = unlimited, 1 = a single-community server.",
        _at_least(0),
    ),
    Field(
        "max_one_time_keys",
        int,
        "Most unclaimed E2EE one-time keys one device may hold (an upload beyond it is refused).",
        _at_least(1),
    ),
    Field(
        "call_ring_timeout_s",
        float,
        "Seconds a DM call rings before it ends unanswered (call_ended, reason timeout).",
        _positive,
    ),
    Field(
        "s3_bucket",
        str,
        "S3 bucket for attachments and emoji; empty keeps them under data_dir/blobs. Several daemons "
        "need a shared bucket.",
        _s3_bucket,
    ),
    Field(
        "s3_endpoint_url",
        str,
        'S3-compatible endpoint, e.g. "http://127.0.0.1:9000" for MinIO; empty for AWS.',
        _s3_endpoint,
    ),
    Field("s3_region", str, 'S3 region, e.g. "eu-west-1"; empty: boto3\'s default (AWS_REGION, ~/.aws).'),
    Field(
        "s3_access_key_id",
        str,
        "S3 access key; empty with the secret: boto3's default chain (AWS_* env, profile, IAM role).",
    ),
    Field(
        "s3_secret_access_key",
        str,
        "S3 secret key; never logged. Prefer VOX_S3_SECRET_ACCESS_KEY over writing it in this file.",
    ),
    Field("s3_prefix", str, 'Prefix of every object key, e.g. "vox/" to share a bucket.', _s3_prefix),
    Field(
        "s3_path_style",
        bool,
        "Path-style URLs (endpoint/bucket/key), which MinIO and most self-hosted servers need.",
    ),
    Field(
        "s3_create_bucket",
        bool,
        "Create s3_bucket at start when missing (otherwise a missing bucket fails start-up).",
    ),
    Field("voice_room_limit", int, "Most participants in one voice channel.", _at_least(1)),
    Field(
        "voice_close_timeout_s",
        float,
        "Seconds a WebRTC peer gets to close; one that does not is abandoned and counted.",
        _positive,
    ),
    Field(
        "ice_servers",
        str,
        'STUN/TURN URLs for the SFU, comma-separated, e.g. "stun:stun.example.org:3478"; empty: host '
        "candidates only (no server is contacted).",
        _ice_servers,
    ),
    Field("ice_username", str, "TURN username (for every URL of ice_servers)."),
    Field("ice_credential", str, "TURN credential; never logged. Prefer VOX_ICE_CREDENTIAL."),
    Field(
        "voice_public_ip",
        str,
        "Public IPv4 of a daemon behind a 1:1 NAT: every host candidate is also offered with this "
        "address (same port).",
        _ip_or_empty,
    ),
    Field(
        "voice_udp_ports",
        str,
        'UDP port range "min-max" for WebRTC media: each ICE host candidate binds a free port in '
        "it (a peer uses one port per host address); empty: ephemeral ports.",
        _port_range,
    ),
    Field(
        "voice_host_addresses",
        str,
        "Comma-separated local addresses to gather WebRTC host candidates on; empty: every "
        "non-loopback interface (aioice's default). 127.0.0.1 for loopback-only setups.",
        _ip_list,
    ),
    Field(
        "media_host",
        str,
        "Address the QUIC media listener binds to; empty: the same as host.",
        _ip_or_empty,
    ),
    Field(
        "media_cert_file",
        str,
        "PEM certificate (chain) of the QUIC media listener; empty: a self-signed one generated in "
        "data_dir/keys (clients must then pin or skip verification).",
    ),
    Field("media_key_file", str, "PEM private key of media_cert_file (both or neither)."),
    Field(
        "media_token_ttl_s",
        float,
        "Seconds a media token is valid; a fresh voice_media_session is sent before it expires.",
        _positive,
    ),
    Field(
        "media_idle_timeout_s",
        float,
        "Seconds a QUIC media connection may stay silent before it is closed (and its user leaves).",
        _positive,
    ),
    Field(
        "media_auth_timeout_s",
        float,
        "Seconds a new QUIC media connection gets to present its token before it is closed.",
        _positive,
    ),
    Field("media_max_connections", int, "QUIC media connections accepted at once.", _positive),
    Field(
        "media_rate_pps",
        int,
        "Datagrams per second one media sender may average; the excess is dropped and counted.",
        _positive,
    ),
    Field("media_rate_burst", int, "Datagrams one media sender may send at once above that rate.", _positive),
    Field(
        "server_name",
        str,
        'Domain of this community for federation, e.g. "chat.example.org"; empty: federation off.',
        _server_name,
    ),
    Field(
        "federation_policy",
        str,
        "Which peer servers may talk to this one: open, allowlist (federation_allowlist) or closed.",
        _one_of("open", "allowlist", "closed"),
    ),
    Field(
        "federation_allowlist",
        str,
        'Comma-separated peer domains allowed when federation_policy is allowlist, e.g. "b.example".',
        _domain_list,
    ),
    Field(
        "federation_peers",
        str,
        'Static peers, "domain=base_url=public_key[,...]" (key: base64url Ed25519); they win over DNS.',
        _federation_peers,
    ),
    Field(
        "federation_dns_server",
        str,
        'Nameserver "host:port" for peer discovery instead of the system resolver; empty: system.',
        _host_port,
    ),
    Field(
        "federation_insecure_http",
        bool,
        "Reach peers found by DNS over plain http (loopback tests, private networks only).",
    ),
    Field(
        "federation_max_skew_s",
        float,
        "Seconds a signed federation request stays valid (clock skew and replay window).",
        _positive,
    ),
    Field("federation_rate", int, "Federation requests one peer server may make per minute.", _positive),
    Field(
        "federation_retry_max_s",
        float,
        "Longest wait between delivery attempts to a peer that is down (backoff from 1 s doubles).",
        _positive,
    ),
    Field("federation_timeout_s", float, "Timeout of each request to a peer server.", _positive),
    Field(
        "federation_batch_max",
        int,
        "Most outbox rows sent to one peer in one inbox request (1: one row per request), 1 to 1000.",
        _federation_batch_max,
    ),
    Field(
        "federation_batch_bytes",
        int,
        "Kind and payload characters one inbox request carries at most (a single row may exceed it).",
        _positive,
    ),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}


def _coerce(field: Field, raw: Any, source: str) -> Any:
    """Convert a file value or an environment string to the field's type, or raise ConfigError."""
    kind = field.kind
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
                return raw.lower() in {"1", "true", "yes", "on"}
            raise TypeError
        if kind is int:
            if isinstance(raw, bool):
                raise TypeError
            if isinstance(raw, int):
                return raw
            if isinstance(raw, str):
                return int(raw.strip())
            raise TypeError
        if kind is float:
            if isinstance(raw, bool):
                raise TypeError
            if isinstance(raw, int | float):
                return float(raw)
            if isinstance(raw, str):
                return float(raw.strip())
            raise TypeError
        if kind is Path:
            if isinstance(raw, str | Path) and str(raw):
                return Path(raw)
            raise TypeError
        if kind is str:
            if isinstance(raw, str):
                return raw
            raise TypeError
    except (TypeError, ValueError):
        pass
    else:
        raise AssertionError(f"unsupported config type {kind}")
    raise ConfigError(field.name, f"expected {kind.__name__}, got {raw!r} (from {source})")


def load(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective configuration; raise ConfigError naming the first bad key."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"file {str(path)!r} not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
        for key, raw in data.items():
            field = FIELD_BY_NAME.get(key)
            if field is None:
                raise ConfigError(key, f"unknown key in {path}")
            values[key] = _coerce(field, raw, str(path))
    environ = os.environ if env is None else env
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        field = FIELD_BY_NAME.get(name)
        if field is None:
            continue  # VOX_* variables of other tools (and of tests) are not ours to reject
        values[name] = _coerce(field, raw, f"environment {key}")
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        field = FIELD_BY_NAME.get(key)
        if field is None:
            raise ConfigError(key, "unknown setting")
        values[key] = _coerce(field, raw, "command line")
    for key, value in values.items():
        check = FIELD_BY_NAME[key].check
        problem = check(value) if check else None
        if problem:
            raise ConfigError(key, problem)
    return Config(**values)


def _toml_literal(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def example() -> str:
    """A commented vox.toml listing every key with its default."""
    defaults = Config()
    lines = [
        "# vox.toml: every key is optional; shown with its default.",
        "# Each key can also be set as an environment variable VOX_<KEY> (e.g. VOX_REST_PORT=9000),",
        "# which wins over this file; command-line flags win over both.",
        "",
    ]
    for field in FIELDS:
        lines.append(f"# {field.doc}")
        lines.append(f"{field.name} = {_toml_literal(getattr(defaults, field.name))}")
        lines.append("")
    return "\n".join(lines)
