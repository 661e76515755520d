"""The token-bucket arithmetic on its own: no clock, no I/O."""

from __future__ import annotations

import pytest

from vox.ephemeral import BucketResult
from vox.ephemeral.memory import BucketState, bucket_result, refill, take_tokens


def test_an_absent_bucket_is_full() -> None:
    state, result = take_tokens(None, 100.0, rate_per_s=2, burst=5)
    assert result == BucketResult(allowed=True, limit=5, remaining=4, reset_after_s=0.5, retry_after_s=0.0)
    assert state == BucketState(tokens=4.0, updated_at=100.0)


def test_burst_then_refused_with_the_time_to_one_token() -> None:
    state: BucketState | None = None
    for expected in (2, 1, 0):
        state, result = take_tokens(state, 0.0, rate_per_s=4, burst=3)
        assert result.allowed and result.remaining == expected
    state, refused = take_tokens(state, 0.0, rate_per_s=4, burst=3)
    assert refused == BucketResult(
        allowed=False, limit=3, remaining=0, reset_after_s=0.75, retry_after_s=0.25
    )
    assert state == BucketState(tokens=0.0, updated_at=0.0)


def test_partial_refill_shortens_retry_after() -> None:
    state = BucketState(tokens=0.0, updated_at=10.0)
    new_state, result = take_tokens(state, 10.4, rate_per_s=1, burst=5)
    assert not result.allowed
    assert result.remaining == 0
    assert result.retry_after_s == pytest.approx(0.6)
    assert result.reset_after_s == pytest.approx(4.6)
    # Nothing was taken, but the refill so far is kept with the new timestamp.
    assert new_state is not None
    assert new_state.tokens == pytest.approx(0.4) and new_state.updated_at == 10.4


def test_refused_take_consumes_nothing() -> None:
    state = BucketState(tokens=2.5, updated_at=0.0)
    new_state, result = take_tokens(state, 0.0, rate_per_s=1, burst=10, cost=3)
    assert not result.allowed
    assert result.remaining == 2
    assert result.retry_after_s == pytest.approx(0.5)
    assert new_state == state


def test_cost_above_one() -> None:
    state, result = take_tokens(None, 0.0, rate_per_s=0.5, burst=10, cost=7)
    assert result.allowed and result.remaining == 3
    assert result.reset_after_s == pytest.approx(14)
    state, result = take_tokens(state, 0.0, rate_per_s=0.5, burst=10, cost=7)
    assert not result.allowed
    assert result.retry_after_s == pytest.approx(8)  # 4 tokens missing at 0.5/s
    state, result = take_tokens(state, 8.0, rate_per_s=0.5, burst=10, cost=7)
    assert result.allowed and result.remaining == 0


def test_refill_is_capped_at_burst() -> None:
    state = BucketState(tokens=1.0, updated_at=0.0)
    assert refill(state, 1_000_000.0, rate_per_s=3, burst=4) == 4.0
    assert refill(None, 0.0, rate_per_s=3, burst=4) == 4.0


def test_a_lowered_burst_clamps_an_existing_bucket() -> None:
    state = BucketState(tokens=50.0, updated_at=0.0)
    _, result = take_tokens(state, 0.0, rate_per_s=1, burst=5)
    assert result.allowed and result.remaining == 4 and result.limit == 5


def test_a_clock_stepping_backwards_neither_refills_nor_drains() -> None:
    state = BucketState(tokens=1.5, updated_at=100.0)
    assert refill(state, 40.0, rate_per_s=10, burst=5) == 1.5
    _, result = take_tokens(state, 40.0, rate_per_s=10, burst=5)
    assert result.allowed and result.remaining == 0


def test_float_dust_does_not_refuse_a_refilled_token() -> None:
    # 0.3 - 0.2 is 0.09999999999999998: at 10/s that is a hair under one token.
    state = BucketState(tokens=0.0, updated_at=0.2)
    _, result = take_tokens(state, 0.3, rate_per_s=10, burst=1)
    assert result.allowed
    assert result.remaining == 0


def test_a_full_bucket_needs_no_state() -> None:
    state, result = take_tokens(None, 0.0, rate_per_s=1, burst=3, cost=0)
    assert state is None
    assert result == BucketResult(allowed=True, limit=3, remaining=3, reset_after_s=0.0, retry_after_s=0.0)
    # Refilled to the brim: equivalent to absent, so the backend can drop it.
    state, _ = take_tokens(BucketState(tokens=0.0, updated_at=0.0), 10.0, rate_per_s=1, burst=3, cost=0)
    assert state is None


def test_steady_traffic_is_held_to_burst_plus_rate() -> None:
    # 100 requests/s for 10 s against 5/s with burst 10: 10 + 5 * 10 = 60 allowed (give or take one).
    state: BucketState | None = None
    allowed = 0
    for i in range(1000):
        state, result = take_tokens(state, i / 100, rate_per_s=5, burst=10)
        allowed += result.allowed
    assert 59 <= allowed <= 61


@pytest.mark.parametrize(
    ("rate_per_s", "burst", "cost"),
    [(0, 1, 1), (-2, 1, 1), (float("nan"), 1, 1), (float("inf"), 1, 1), (1, 0, 0), (1, 2, 3), (1, 2, -1)],
)
def test_impossible_arguments(rate_per_s: float, burst: int, cost: int) -> None:
    with pytest.raises(ValueError):
        take_tokens(None, 0.0, rate_per_s=rate_per_s, burst=burst, cost=cost)


def test_bucket_result_is_what_the_lua_script_reply_is_turned_into() -> None:
    assert bucket_result(True, 2.75, rate_per_s=0.5, burst=4, cost=1) == BucketResult(
        allowed=True, limit=4, remaining=2, reset_after_s=2.5, retry_after_s=0.0
    )
    assert bucket_result(False, 0.75, rate_per_s=0.5, burst=4, cost=2) == BucketResult(
        allowed=False, limit=4, remaining=0, reset_after_s=6.5, retry_after_s=2.5
    )
