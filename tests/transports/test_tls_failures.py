"""The handshake-failure log of one listener: client address and reason, token buckets per address
and per listener, suppressed lines counted, per-listener state."""

from __future__ import annotations

import logging
import ssl

import pytest
import trio

from vox.transports import tls_failures
from vox.transports.tls_failures import (
    BURST,
    LISTENER_BURST,
    PER_ADDRESS_RATE,
    HandshakeFailures,
    failure_reason,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.fields for r in caplog.records if r.getMessage() == "tls handshake failed"]  # type: ignore[attr-defined]


def test_per_address_burst_then_rate(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vox.tls")
    clock = Clock()
    log = HandshakeFailures("rest", clock=clock)
    results = [log.failed("192.0.2.1", "HTTP_REQUEST") for _ in range(BURST + 4)]
    assert results == [True] * BURST + [False] * 4
    lines = _lines(caplog)
    assert len(lines) == BURST
    assert lines[0] == {"listener": "rest", "client": "192.0.2.1", "reason": "HTTP_REQUEST"}
    # Another address is not held back by the first one's flood.
    assert log.failed("192.0.2.2", "WRONG_VERSION_NUMBER")
    # After one token's worth of time the first address gets a line again, saying what was held.
    clock.now += 1 / PER_ADDRESS_RATE
    assert log.failed("192.0.2.1", "HTTP_REQUEST")
    assert _lines(caplog)[-1]["suppressed"] == 4
    assert not log.failed("192.0.2.1", "HTTP_REQUEST")


def test_listener_wide_limit_bounds_many_addresses(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vox.tls")
    log = HandshakeFailures("gateway", clock=Clock())
    logged = sum(log.failed(f"198.51.100.{i % 250}-{i}", "x") for i in range(LISTENER_BURST * 3))
    assert logged == LISTENER_BURST
    assert log.suppressed == LISTENER_BURST * 2


def test_tracked_addresses_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls_failures, "MAX_TRACKED", 8)
    log = HandshakeFailures("rest", clock=Clock())
    for i in range(100):
        log.failed(f"203.0.113.{i}", "x")
    assert len(log._by_address) <= 8


def test_each_listener_has_its_own_buckets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vox.tls")
    clock = Clock()
    a, b = HandshakeFailures("rest", clock=clock), HandshakeFailures("rest", clock=clock)
    for _ in range(BURST):
        assert a.failed("192.0.2.9", "x")
    assert not a.failed("192.0.2.9", "x")
    assert b.failed("192.0.2.9", "x")


def test_failure_reason() -> None:
    err = ssl.SSLError(1, "[SSL: HTTP_REQUEST] http request")
    err.reason = "HTTP_REQUEST"  # type: ignore[misc]
    broken = trio.BrokenResourceError()
    broken.__cause__ = err
    assert failure_reason(broken) == "HTTP_REQUEST"
    assert failure_reason(err) == "HTTP_REQUEST"
    # The peer going away mid-handshake is not a TLS failure worth a line.
    assert failure_reason(trio.BrokenResourceError()) is None
    assert failure_reason(trio.TooSlowError()) is None
