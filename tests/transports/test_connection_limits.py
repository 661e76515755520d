"""ListenerLimits: admit under both limits, refuse politely over them, drop a flood."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from vox.transports.limits import REFUSING_MAX, ConnectionLimits, ListenerLimits, Verdict


def test_per_ip_then_total() -> None:
    tally = ListenerLimits("rest", total=3, per_ip=2)
    a1, a2 = tally.admit("10.0.0.1"), tally.admit("10.0.0.1")
    assert a1.verdict is a2.verdict is Verdict.ADMIT
    third = tally.admit("10.0.0.1")
    assert (third.verdict, third.reason) == (Verdict.REFUSE, "per_ip")
    assert tally.admit("10.0.0.2").verdict is Verdict.ADMIT
    full = tally.admit("10.0.0.3")
    assert (full.verdict, full.reason) == (Verdict.REFUSE, "total")
    assert tally.open == 3 and tally.refusing == 2
    # Releasing frees exactly what was taken: the refused ones never held a slot.
    tally.release("10.0.0.1", third)
    tally.release("10.0.0.3", full)
    tally.release("10.0.0.1", a1)
    assert tally.open == 2 and tally.refusing == 0 and tally.from_ip("10.0.0.1") == 1
    assert tally.admit("10.0.0.1").verdict is Verdict.ADMIT
    assert tally.refused == {"per_ip": 1, "total": 1, "dropped": 0}


def test_a_flood_beyond_the_refusals_in_progress_is_dropped() -> None:
    tally = ListenerLimits("gateway", total=10, per_ip=1)
    assert tally.admit("10.0.0.1").verdict is Verdict.ADMIT
    refusals = [tally.admit("10.0.0.1") for _ in range(REFUSING_MAX)]
    assert {r.verdict for r in refusals} == {Verdict.REFUSE}
    assert tally.admit("10.0.0.1").verdict is Verdict.DROP
    tally.release("10.0.0.1", refusals[0])
    assert tally.admit("10.0.0.1").verdict is Verdict.REFUSE
    assert tally.refused["dropped"] == 1


def test_hold_releases_on_error_and_empty_addresses_are_forgotten() -> None:
    tally = ListenerLimits("rest", total=5, per_ip=5)
    with pytest.raises(RuntimeError), tally.hold("10.0.0.9") as admission:
        assert admission.verdict is Verdict.ADMIT and tally.open == 1
        raise RuntimeError
    assert tally.open == 0 and tally.from_ip("10.0.0.9") == 0
    assert tally._by_ip == {}


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ListenerLimits("rest", total=0, per_ip=1)


def test_metrics_are_exported_once_per_registry() -> None:
    limits = ConnectionLimits()
    tally = limits.listener("rest", total=1, per_ip=1)
    assert limits.listener("rest", total=99, per_ip=99) is tally
    registry = CollectorRegistry()
    limits.export_to(registry)
    limits.export_to(registry)  # a second listener asking again does not register twice
    tally.admit("10.0.0.1")
    tally.admit("10.0.0.1")
    text = generate_latest(registry).decode()
    assert 'vox_connections{listener="rest"} 1.0' in text
    assert 'vox_connections_refused_total{listener="rest",reason="total"} 1.0' in text
