"""Finding a peer server: its base URL and its public key (docs/federation.md, "Discovery").

Static peers from the config win; any other domain is looked up in DNS: the SRV record
``_vox._tcp.<domain>`` names the host and port (no SRV record: ``<domain>`` on port 443) and the
TXT record ``_vox-key.<domain>`` carries the key, ``v=vox1; k=ed25519; p=<base64url key>``.
Answers are cached for their DNS TTL (bounded) in the ``PeerDirectory`` the Federation service
owns. dnspython's resolver runs in a worker thread with a deadline, so the event loop never waits
on DNS.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.rdatatype
import dns.resolver
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vox.errors import ConfigError, PeerUnavailable
from vox.protocol.federation import is_valid_domain, public_key_from_b64

__all__ = ["Peer", "PeerDirectory", "parse_key_record", "parse_static_peers"]

log = logging.getLogger("vox.federation")

# DNS TTLs are honoured within these bounds: a zero TTL must not turn every request into a
# lookup, and a day-long one must not pin a rotated key for a day.
MIN_CACHE_S = 30.0
MAX_CACHE_S = 3600.0


@dataclass(frozen=True, slots=True)
class Peer:
    domain: str
    base_url: str  # scheme://host[:port], no trailing slash
    public_key: Ed25519PublicKey
    static: bool = False


def parse_static_peers(spec: str) -> dict[str, Peer]:
    """``"b.test=http://127.0.0.1:9001=<key>,..."``; raises ConfigError naming ``federation_peers``."""
    peers: dict[str, Peer] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        domain, _, rest = item.partition("=")
        base_url, _, key = rest.rpartition("=")
        domain, base_url = domain.strip().lower(), base_url.strip().rstrip("/")
        if not domain or not base_url or not key:
            raise ConfigError("federation_peers", f"{item!r} is not domain=base_url=public_key")
        if not is_valid_domain(domain):
            raise ConfigError("federation_peers", f"{domain!r} is not a lower-case domain name")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError("federation_peers", f"{base_url!r} is not an http:// or https:// URL")
        try:
            public_key = public_key_from_b64(key)
        except ValueError:
            raise ConfigError(
                "federation_peers", f"the key of {domain!r} is not a base64url Ed25519 key"
            ) from None
        if domain in peers:
            raise ConfigError("federation_peers", f"{domain!r} is listed twice")
        peers[domain] = Peer(domain, base_url, public_key, static=True)
    return peers


def parse_key_record(strings: list[str]) -> Ed25519PublicKey | None:
    """The key of a ``v=vox1; k=ed25519; p=...`` TXT record, or None when it is not one."""
    fields: dict[str, str] = {}
    for part in "".join(strings).split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name.strip().lower()] = value.strip()
    if fields.get("v") != "vox1" or fields.get("k", "ed25519") != "ed25519" or "p" not in fields:
        return None
    try:
        return public_key_from_b64(fields["p"])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _Cached:
    peer: Peer
    expires_at: float  # trio.current_time()


class PeerDirectory:
    """Static peers plus a TTL cache of DNS answers; one per Federation service."""

    def __init__(
        self,
        static: dict[str, Peer],
        *,
        dns_server: str = "",
        insecure_http: bool = False,
        timeout_s: float = 5.0,
    ) -> None:
        self.static = static
        self.insecure_http = insecure_http
        self.timeout_s = timeout_s
        self._cache: dict[str, _Cached] = {}
        self._dns_server = dns_server
        self._resolver: dns.resolver.Resolver | None = None

    def forget(self, domain: str) -> None:
        """Drop a cached DNS answer (after its key failed to verify a signature: maybe rotated)."""
        self._cache.pop(domain, None)

    async def resolve(self, domain: str) -> Peer:
        """The peer for ``domain``; raises PeerUnavailable when it has no usable address or key."""
        domain = domain.lower()
        static = self.static.get(domain)
        if static is not None:
            return static
        if not is_valid_domain(domain):
            raise PeerUnavailable(domain, "not a domain name")
        cached = self._cache.get(domain)
        if cached is not None and cached.expires_at > trio.current_time():
            return cached.peer
        peer, ttl = await trio.to_thread.run_sync(self._lookup, domain, abandon_on_cancel=True)
        cache_s = min(max(ttl, MIN_CACHE_S), MAX_CACHE_S)
        self._cache[domain] = _Cached(peer, trio.current_time() + cache_s)
        log.debug(
            "peer found in DNS", extra={"fields": {"peer": domain, "url": peer.base_url, "cache_s": cache_s}}
        )
        return peer

    def _query(self, name: str, rdtype: str) -> Any:
        try:
            if self._resolver is None:
                # Built on first use, in the worker thread: reading resolv.conf is blocking I/O,
                # and a host without one only fails when a peer really needs DNS.
                self._resolver = _make_resolver(self._dns_server)
            return self._resolver.resolve(name, rdtype, lifetime=self.timeout_s, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as exc:
            raise _LookupFailed(f"DNS lookup of {name} failed: {type(exc).__name__}") from None

    def _lookup(self, domain: str) -> tuple[Peer, float]:
        """Blocking: runs in a worker thread."""
        try:
            return self._lookup_records(domain)
        except _LookupFailed as exc:
            raise PeerUnavailable(domain, str(exc)) from None

    def _lookup_records(self, domain: str) -> tuple[Peer, float]:
        ttls: list[float] = []
        txt = self._query(f"_vox-key.{domain}", "TXT")
        key: Ed25519PublicKey | None = None
        if txt is not None:
            ttls.append(txt.rrset.ttl)
            for record in txt:
                key = parse_key_record([s.decode("ascii", "replace") for s in record.strings])
                if key is not None:
                    break
        if key is None:
            raise PeerUnavailable(domain, f"no vox key record at _vox-key.{domain}")
        srv = self._query(f"_vox._tcp.{domain}", "SRV")
        if srv is not None and len(srv):
            ttls.append(srv.rrset.ttl)
            # Lowest priority first; among equals the heaviest weight (no random spreading:
            # one peer is one community, several targets are its failover, not a pool).
            best = min(srv, key=lambda r: (r.priority, -r.weight))
            host, port = best.target.to_text(omit_final_dot=True), int(best.port)
        else:
            host, port = domain, 443
        if self.insecure_http:
            # Plain http is for loopback tests and private networks, whose names the configured
            # nameserver knows and the system resolver may not: connect to the address it gives.
            host = self._address(host, ttls)
            base_url = f"http://{_bracket(host)}:{port}"
        else:
            base_url = f"https://{host}" if port == 443 else f"https://{host}:{port}"
        return Peer(domain, base_url, key), min(ttls) if ttls else MIN_CACHE_S

    def _address(self, host: str, ttls: list[float]) -> str:
        if _is_ip(host):
            return host
        for rdtype in ("A", "AAAA"):
            answer = self._query(host, rdtype)
            if answer is not None and len(answer):
                ttls.append(answer.rrset.ttl)
                return str(answer[0].address)
        raise _LookupFailed(f"no address for {host}")


class _LookupFailed(Exception):
    pass


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _make_resolver(dns_server: str) -> dns.resolver.Resolver:
    if not dns_server:
        return dns.resolver.Resolver()
    host, _, port = dns_server.rpartition(":")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host.strip("[]")]
    resolver.port = int(port)
    return resolver
