"""ICE configuration helpers of the SFU (vox.transports.webrtc)."""

from __future__ import annotations

from vox.transports.webrtc import add_public_ip, ice_configuration, parse_ice_servers

SDP = (
    "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=candidate:abc 1 udp 2130706431 10.0.0.5 50000 typ host\r\n"
    "a=candidate:def 1 udp 1694498815 198.51.100.9 50001 typ srflx raddr 10.0.0.5 rport 50000\r\n"
)


def test_no_ice_servers_means_no_stun() -> None:
    assert parse_ice_servers("", "", "") == []
    assert ice_configuration([]).iceServers == []


def test_ice_servers_carry_the_turn_credentials() -> None:
    (server,) = parse_ice_servers("stun:a.example:3478, turn:b.example:3478", "u", "p")
    assert server.urls == ["stun:a.example:3478", "turn:b.example:3478"]
    assert (server.username, server.credential) == ("u", "p")


def test_public_ip_duplicates_host_candidates_only() -> None:
    out = add_public_ip(SDP, "203.0.113.7")
    lines = [line for line in out.split("\r\n") if line.startswith("a=candidate:")]
    assert len(lines) == 3
    assert "a=candidate:abcp 1 udp 2130706430 203.0.113.7 50000 typ host" in lines
    assert add_public_ip(SDP, "") == SDP
