"""Finding peers: static entries from the config, DNS (SRV + TXT + A) through the test
nameserver with its cache, and two daemons that only know each other through DNS."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.e2e.helpers import db_rows
from tests.federation.dns_server import DnsServer
from tests.federation.fed_helpers import Pings, Server, envelope, post_inbox, stop
from vox import config as vox_config
from vox.errors import ConfigError, FederationForbidden, PeerError, PeerUnavailable
from vox.protocol.federation import public_key_b64
from vox.services.federation_peers import PeerDirectory, parse_key_record, parse_static_peers

KEY = public_key_b64(Ed25519PrivateKey.generate())
OTHER_KEY = public_key_b64(Ed25519PrivateKey.generate())


async def start_dns(nursery: trio.Nursery) -> DnsServer:
    server = DnsServer()
    await nursery.start(server.serve)
    return server


def directory(dns: DnsServer, **kwargs: object) -> PeerDirectory:
    return PeerDirectory({}, dns_server=f"127.0.0.1:{dns.port}", timeout_s=5.0, **kwargs)  # type: ignore[arg-type]


async def test_dns_discovery_and_its_cache(nursery: trio.Nursery) -> None:
    dns = await start_dns(nursery)
    dns.add_peer("b.test", port=9001, public_key=KEY)
    peers = directory(dns, insecure_http=True)
    peer = await peers.resolve("b.test")
    assert peer.base_url == "http://127.0.0.1:9001" and not peer.static
    assert public_key_b64(peer.public_key) == KEY
    asked = list(dns.queries)
    assert ("_vox._tcp.b.test", "SRV") in asked and ("_vox-key.b.test", "TXT") in asked
    assert ("vox.b.test", "A") in asked

    # Cached for the record's TTL: no new query, even once the record changed.
    dns.add_peer("b.test", port=9002, public_key=OTHER_KEY)
    assert (await peers.resolve("B.test")).base_url == "http://127.0.0.1:9001"
    assert dns.queries == asked
    # Forgetting (a signature failed: maybe a rotated key) asks again.
    peers.forget("b.test")
    again = await peers.resolve("b.test")
    assert again.base_url == "http://127.0.0.1:9002" and public_key_b64(again.public_key) == OTHER_KEY


async def test_https_unless_insecure_and_the_no_srv_fallback(nursery: trio.Nursery) -> None:
    dns = await start_dns(nursery)
    dns.add_peer("b.test", port=8448, public_key=KEY)
    dns.set("_vox-key.c.test", "TXT", f'"v=vox1; k=ed25519; p={KEY}"')
    peers = directory(dns)
    assert (await peers.resolve("b.test")).base_url == "https://vox.b.test:8448"
    # No SRV record: the domain itself on 443.
    assert (await peers.resolve("c.test")).base_url == "https://c.test"


async def test_unusable_records_make_a_peer_unavailable(nursery: trio.Nursery) -> None:
    dns = await start_dns(nursery)
    peers = directory(dns, insecure_http=True)
    with pytest.raises(PeerUnavailable):
        await peers.resolve("nowhere.test")
    # An address and port but no key: nothing to verify the peer with.
    dns.add_peer("b.test", port=9001, public_key=KEY)
    dns.set("_vox-key.b.test", "TXT")
    with pytest.raises(PeerUnavailable):
        await peers.resolve("b.test")
    dns.set("_vox-key.b.test", "TXT", '"v=spf1 -all"', '"v=vox1; k=rsa; p=abc"')
    with pytest.raises(PeerUnavailable):
        await peers.resolve("b.test")
    # A key but a host name with no address.
    dns.set("_vox-key.b.test", "TXT", f'"v=vox1; k=ed25519; p={KEY}"')
    dns.set("vox.b.test", "A")
    with pytest.raises(PeerUnavailable):
        await peers.resolve("b.test")
    with pytest.raises(PeerUnavailable):
        await peers.resolve("not a domain")


async def test_a_silent_nameserver_times_out(nursery: trio.Nursery) -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    with sock:
        peers = PeerDirectory({}, dns_server=f"127.0.0.1:{sock.getsockname()[1]}", timeout_s=0.5)
        with trio.fail_after(10), pytest.raises(PeerUnavailable):
            await peers.resolve("b.test")


async def test_static_peers_win_over_dns(nursery: trio.Nursery) -> None:
    dns = await start_dns(nursery)
    dns.add_peer("b.test", port=9001, public_key=KEY)
    static = parse_static_peers(f"b.test=http://127.0.0.1:7000/={OTHER_KEY}")
    peers = PeerDirectory(static, dns_server=f"127.0.0.1:{dns.port}", insecure_http=True)
    peer = await peers.resolve("b.test")
    assert peer.static and peer.base_url == "http://127.0.0.1:7000"
    assert public_key_b64(peer.public_key) == OTHER_KEY
    assert dns.queries == []


def test_static_peer_lists() -> None:
    peers = parse_static_peers(
        f" b.test=http://127.0.0.1:9001={KEY} , c.test=https://chat.c.test={OTHER_KEY}"
    )
    assert sorted(peers) == ["b.test", "c.test"]
    assert peers["c.test"].base_url == "https://chat.c.test"
    assert parse_static_peers("") == {}
    for bad in (
        "b.test",
        f"b.test=ftp://x={KEY}",
        "b.test=http://x=notakey",
        f"B_TEST=http://x={KEY}",
        f"b.test=http://x={KEY},b.test=http://y={KEY}",
    ):
        with pytest.raises(ConfigError) as caught:
            parse_static_peers(bad)
        assert caught.value.key == "federation_peers"


def test_key_records() -> None:
    assert parse_key_record([f"v=vox1; k=ed25519; p={KEY}"]) is not None
    # Long TXT values arrive split in several strings.
    assert parse_key_record(["v=vox1; k=ed25519; p=", KEY]) is not None
    assert parse_key_record([f"v=vox1;p={KEY}"]) is not None
    for bad in (["v=vox2; p=" + KEY], ["v=vox1; k=ed25519"], ["v=vox1; p=short"], ["hello"]):
        assert parse_key_record(bad) is None


def test_config_checks_the_federation_keys() -> None:
    good = vox_config.load(
        env={},
        overrides={
            "server_name": "a.test",
            "federation_policy": "allowlist",
            "federation_allowlist": "b.test, c.test",
            "federation_peers": f"b.test=http://127.0.0.1:9001={KEY}",
            "federation_dns_server": "127.0.0.1:5353",
        },
    )
    assert good.server_name == "a.test" and good.federation_max_skew_s == 300.0
    for key, value in (
        ("server_name", "https://a.test"),
        ("federation_policy", "sometimes"),
        ("federation_allowlist", "b.test,Not A Domain"),
        ("federation_peers", "b.test=nope"),
        ("federation_dns_server", "localhost"),
        ("federation_dns_server", "dns.example:53"),
        ("federation_rate", "0"),
    ):
        with pytest.raises(ConfigError) as caught:
            vox_config.load(env={}, overrides={key: value})
        assert caught.value.key == key


async def test_two_daemons_federate_through_dns(nursery: trio.Nursery, tmp_path: Path, pings: Pings) -> None:
    dns = await start_dns(nursery)
    a, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    for server in (a, b):
        dns.add_peer(server.name, port=server.port, public_key=server.public_key)
    settings = {"federation_dns_server": f"127.0.0.1:{dns.port}", "federation_insecure_http": True}
    da = await a.start(nursery, tmp_path, **settings)
    db = await b.start(nursery, tmp_path, **settings)

    # A synchronous signed call, a.test -> b.test, found through SRV/A, verified through TXT.
    document = await pings.services["a.test"].request("b.test", "GET", "/api/v1/federation/key")
    assert document == {"server_name": "b.test", "public_key": b.public_key, "algorithm": "ed25519"}
    # Error answers are signed too: the caller sees the peer's own status and code, not garbage.
    with pytest.raises(PeerError) as caught:
        await pings.services["a.test"].request("b.test", "GET", "/api/v1/federation/no-such-route")
    assert (caught.value.peer_status, caught.value.peer_code) == (404, "not_found")
    # Deliveries both ways.
    await pings.services["a.test"].enqueue("b.test", "ping", {"n": 1})
    await pings.services["b.test"].enqueue("a.test", "ping", {"n": 2})
    assert await pings.wait_for("b.test", 1) == [("a.test", {"n": 1})]
    assert await pings.wait_for("a.test", 1) == [("b.test", {"n": 2})]
    assert ("_vox-key.a.test", "TXT") in dns.queries and ("_vox._tcp.b.test", "SRV") in dns.queries
    await stop(da)
    await stop(db)


async def test_a_rotated_key_is_looked_up_again(nursery: trio.Nursery, tmp_path: Path, pings: Pings) -> None:
    dns = await start_dns(nursery)
    a, b = Server.make(tmp_path, "a.test"), Server.make(tmp_path, "b.test")
    dns.add_peer("a.test", port=a.port, public_key=a.public_key)
    daemon = await b.start(
        nursery, tmp_path, federation_dns_server=f"127.0.0.1:{dns.port}", federation_insecure_http=True
    )
    async with daemon.http() as http:
        assert (await post_inbox(http, a, envelope(1, n=1))).status_code == 200
        key_queries = dns.queries.count(("_vox-key.a.test", "TXT"))
        # a.test rotates its key and republishes it; b.test still caches the old one.
        a.key = Ed25519PrivateKey.generate()
        dns.add_peer("a.test", port=a.port, public_key=a.public_key)
        response = await post_inbox(http, a, envelope(2, n=2))
        assert response.status_code == 200, response.text
        assert dns.queries.count(("_vox-key.a.test", "TXT")) == key_queries + 1
        # A forgery costs one fresh lookup at most, and is refused.
        forger = Server(a.name, a.data_dir, Ed25519PrivateKey.generate(), a.port)
        forged = await post_inbox(http, forger, envelope(3, n=3))
        assert forged.status_code == 401 and forged.json()["error"]["reason"] == "bad_signature"
        assert dns.queries.count(("_vox-key.a.test", "TXT")) == key_queries + 2
    assert pings.of("b.test") == [("a.test", {"n": 1}), ("a.test", {"n": 2})]
    await stop(daemon)


async def test_our_policy_also_limits_what_we_send(
    nursery: trio.Nursery, tmp_path: Path, pings: Pings
) -> None:
    a, b, c = (Server.make(tmp_path, n) for n in ("a.test", "b.test", "c.test"))
    daemon = await a.start(
        nursery,
        tmp_path,
        federation_peers=f"{b.peer_entry()},{c.peer_entry()}",
        federation_policy="allowlist",
        federation_allowlist="c.test",
    )
    service = pings.services["a.test"]
    with pytest.raises(FederationForbidden):
        await service.enqueue("b.test", "ping", {})
    with pytest.raises(FederationForbidden):
        await service.request("b.test", "GET", "/api/v1/federation/key")
    with pytest.raises(FederationForbidden):
        service.issue_voucher(subject="u1", name="alice", audience="b.test")
    # Nor to ourselves.
    with pytest.raises(FederationForbidden):
        await service.enqueue("a.test", "ping", {})
    await service.enqueue("c.test", "ping", {})
    assert [r[0] for r in db_rows(daemon, "SELECT destination FROM federation_outbox")] == ["c.test"]
    await stop(daemon)
