"""RetryPolicy, worth_a_warning and ThrottledWarning on their own: pure, a Clock where time matters."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, Logger

from pystrands.ratelimit import ThrottledWarning
from pystrands.retry import RetryPolicy, worth_a_warning


def lowest(low: float, high: float) -> float:
    return low


def highest(low: float, high: float) -> float:
    return high


def test_delays_grow_by_the_factor_up_to_the_cap() -> None:
    policy = RetryPolicy(initial=1.0, maximum=30.0, factor=2.0)
    assert [policy.delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_very_long_outage_stays_at_the_cap_without_overflow() -> None:
    assert RetryPolicy(initial=0.5, maximum=60.0, factor=10.0).delay(10**6) == 60.0
    assert RetryPolicy(initial=2.0, maximum=60.0, factor=1.0).delay(10**6) == 2.0
    assert RetryPolicy(initial=0.0, maximum=5.0, factor=3.0).delay(40) == 0.0


def test_jitter_spreads_within_its_bound_and_never_past_the_cap() -> None:
    policy = RetryPolicy(initial=4.0, maximum=10.0, factor=2.0, jitter=0.25)
    assert policy.delay(1, lowest) == 3.0 and policy.delay(1, highest) == 5.0
    assert policy.delay(3, highest) == 10.0  # 16 capped to 10 before and after the jitter
    assert policy.delay(3, lowest) == 7.5
    spread = {policy.delay(2) for _ in range(50)}
    assert len(spread) > 1 and all(6.0 <= delay <= 10.0 for delay in spread)


def test_no_retry_means_a_single_attempt() -> None:
    assert RetryPolicy(retry=False).delay(1) is None


def test_max_retries_bounds_the_failures_in_a_row() -> None:
    policy = RetryPolicy(initial=1.0, maximum=8.0, max_retries=3)
    assert [policy.delay(n) for n in range(1, 5)] == [1.0, 2.0, 4.0, None]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"initial": -1.0}, "initial must be a finite number >= 0"),
    ({"maximum": float("inf")}, "maximum must be a finite number"),
    ({"factor": 0.5}, "factor must be a finite number >= 1"),
    ({"jitter": 1.5}, "jitter must be at most 1"),
    ({"jitter": float("nan")}, "jitter must be a finite number"),
])
def test_bad_parameters_are_refused_naming_them(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**kwargs)


def test_failures_start_at_one() -> None:
    with pytest.raises(ValueError, match="failures must be >= 1"):
        RetryPolicy().delay(0)


def test_warnings_on_the_first_failure_then_at_doubling_counts() -> None:
    assert [n for n in range(70) if worth_a_warning(n)] == [1, 2, 4, 8, 16, 32, 64]


def test_a_throttled_warning_logs_the_first_then_once_a_second_with_the_count() -> None:
    clock = Clock()
    logged: list[dict[str, Any]] = []
    warn = ThrottledWarning(Logger(observer=logged.append), clock, "bad {thing}")
    for _ in range(5):
        warn(thing="frame")
    clock.advance(0.5)
    warn(thing="frame")
    assert [(event["thing"], event["held_back"]) for event in logged] == [("frame", 0)]
    clock.advance(0.5)
    warn(thing="later")
    warn(thing="later")
    assert [(event["thing"], event["held_back"]) for event in logged] == [("frame", 0), ("later", 5)]
    assert [formatEvent(event) for event in logged] == ["bad frame", "bad later; 5 more since the last warning"]
    assert all(event["log_level"].name == "warn" for event in logged)
