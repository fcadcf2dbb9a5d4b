"""RateCounter against an exact model with a driven clock, on the C core and the fallback.

The clock only takes multiples of 1/8 s and resolutions are binary fractions,
so every floor(t / r) is exact in floating point and the model needs no
tolerance.
"""

from __future__ import annotations

import math
import time
from types import ModuleType
from typing import Any

import pytest
from _rates_support import Clock, RateModel
from _support import INT64_MAX, INT64_MIN, NOT_INTEGERS, OUT_OF_RANGE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

EIGHTHS = st.integers(min_value=0, max_value=400).map(lambda k: k / 8)

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("inc"), st.integers(-3, 5)),
        st.tuples(st.just("dec"), st.integers(0, 3)),
        st.tuples(st.just("fwd"), st.integers(0, 24).map(lambda k: k / 8)),
        st.tuples(st.just("jump"), st.integers(1, 400).map(lambda k: k / 8)),
        st.tuples(st.just("back"), st.integers(1, 40).map(lambda k: k / 8)),
        st.tuples(st.just("count"), st.integers(1, 64)),
        st.tuples(st.just("reset"), st.just(0)),
    ),
    max_size=60,
)


@SETTINGS
@given(
    resolution=st.sampled_from([0.125, 0.25, 0.5, 1.0, 2.0]),
    ratio=st.sampled_from([1.0, 1.5, 2.0, 3.0, 4.5, 8.0, 20.0]),
    ops=OPS,
)
def test_count_matches_the_model(
    rates_impl: ModuleType, resolution: float, ratio: float, ops: list[tuple[str, Any]]
) -> None:
    window = resolution * ratio
    clock = Clock(1000.0)
    rc = rates_impl.RateCounter(window, resolution, clock=clock)
    model = RateModel(window, resolution)
    assert rc.buckets == model.nb
    monotone = True
    for op, arg in ops:
        if op == "inc":
            rc.increment(arg)
            model.add(clock.t, arg)
        elif op == "dec":
            rc.decrement(arg)
            model.add(clock.t, -arg)
        elif op in ("fwd", "jump"):
            clock.t += arg
        elif op == "back":
            clock.t -= arg
            monotone = False
        elif op == "reset":
            assert rc.reset() == model.reset(clock.t)
            monotone = False  # the model's events restart; the bound below needs all
        else:
            w = min(window, arg / 8)
            got = rc.count(w)
            assert got == model.count(clock.t, w), (op, w, clock.t)
            assert rc.per_second(w) == got / w
            if monotone:
                # the documented error bound against a true sliding window
                diff = abs(got - model.sliding(clock.t, w))
                assert diff <= model.edge_bucket(clock.t, w)
        assert rc.total() == model.total
    assert rc.count() == model.count(clock.t, window)


@SETTINGS
@given(
    times=st.lists(EIGHTHS, min_size=1, max_size=80).map(sorted),
    w=st.integers(1, 80).map(lambda k: k / 8),
)
def test_error_bound_against_a_sliding_window(
    rates_impl: ModuleType, times: list[float], w: float
) -> None:
    """Increments only, a clock that only moves forward: count(w) never exceeds the
    true sliding window except inside the current bucket, and misses at most the
    events of the one bucket at the window's old edge."""
    clock = Clock(times[0])
    rc = rates_impl.RateCounter(10.0, 0.5, clock=clock)
    model = RateModel(10.0, 0.5)
    for t in times:
        clock.t = t
        rc.increment()
        model.add(t, 1)
    clock.t = times[-1] + 0.25
    true = model.sliding(clock.t, w)
    got = rc.count(w)
    assert abs(got - true) <= model.edge_bucket(clock.t, w)
    if w >= 0.5:
        assert got <= true
    assert got == model.count(clock.t, w)


def test_clock_standing_still_and_going_backwards_loses_nothing(rates_impl: ModuleType) -> None:
    clock = Clock(100.0)
    rc = rates_impl.RateCounter(10.0, 1.0, clock=clock)
    for _ in range(5):
        rc.increment()  # standing still
    clock.t = 105.5
    rc.increment(2)
    clock.t = 90.0  # backwards, before the window: lands in the newest bucket
    rc.increment(3)
    assert rc.total() == 10
    assert rc.count(1.0) == 5  # the newest bucket (105) holds 2 + 3
    assert rc.count() == 10
    clock.t = 114.0  # forward again: bucket 100 left, bucket 105 still in
    assert rc.count() == 5


def test_jump_longer_than_the_window_empties_the_ring(rates_impl: ModuleType) -> None:
    clock = Clock(0.0)
    rc = rates_impl.RateCounter(60.0, 1.0, clock=clock)
    for i in range(120):
        clock.t = i * 0.5
        rc.increment()
    assert rc.count() == 120
    clock.t = 1e12  # 30,000 years later: one step, not a walk over the gap
    assert rc.count() == 0
    rc.increment()
    assert rc.count() == 1
    assert rc.total() == 121


def test_default_clock_counts_now(rates_impl: ModuleType) -> None:
    rc = rates_impl.RateCounter(60.0, 1.0)
    for _ in range(1000):
        rc.increment()
    assert rc.count() == 1000
    assert rc.total() == 1000
    assert rc.per_second() == pytest.approx(1000 / 60.0)
    assert rc.reset() == 1000
    assert rc.count() == 0 and rc.total() == 0
    rc.increment()
    assert rc.count() == 1
    assert rc.clock is None and rc.window == 60.0 and rc.resolution == 1.0


def test_fine_resolution_uses_the_precise_clock(rates_impl: ModuleType) -> None:
    """A resolution under 10 ticks of CLOCK_MONOTONIC_COARSE (a tick is 1-4
    ms) is read from CLOCK_MONOTONIC, the clock time.monotonic() reads: once
    that clock has moved 2.5 ms past an increment, the 1 ms bucket the
    increment went to has left count(0.001), every time.  (The coarse clock,
    4 ms ticks on this project's machine, would still show it in about 3
    tries of 8.)"""
    rc = rates_impl.RateCounter(0.05, 0.001)
    assert rc.buckets == 50
    still_there = []
    for _ in range(20):
        rc.increment()
        t = time.monotonic()
        while time.monotonic() < t + 0.0025:
            pass
        still_there.append(rc.count(0.001))
    assert still_there == [0] * 20
    assert rc.total() == 20


def test_reset_takes_the_total_and_starts_the_window_again(rates_impl: ModuleType) -> None:
    clock = Clock(10.0)
    rc = rates_impl.RateCounter(5.0, 1.0, clock=clock)
    rc.increment(4)
    clock.t = 11.0
    rc.increment(3)
    clock.t = 9.0  # a reset while the clock reads before the newest bucket
    assert rc.reset() == 7
    assert rc.count() == 0
    rc.increment()
    clock.t = 11.5
    assert rc.count(1.0) == 1  # landed in the newest bucket (11)
    clock.t = 20.0
    assert rc.count() == 0 and rc.total() == 1


def test_repr(rates_impl: ModuleType) -> None:
    rc = rates_impl.RateCounter(2, 0.5)
    rc.increment(3)
    assert repr(rc) == "RateCounter(window=2.0, resolution=0.5, total=3)"


# ---- bad input: clear errors, nothing changed ---------------------------------


def _bound(rates_impl: ModuleType) -> tuple[Any, Clock]:
    clock = Clock(50.0)
    rc = rates_impl.RateCounter(10.0, 1.0, clock=clock)
    rc.increment(5)
    return rc, clock


def _unchanged(rc: Any) -> None:
    assert rc.total() == 5 and rc.count() == 5


@pytest.mark.parametrize(
    ("args", "exc", "message"),
    [
        (
            (0,),
            ValueError,
            "RateCounter() window must be a number of seconds > 0 and <= 1e9, not 0.0",
        ),
        ((-1.0,), ValueError, "window must be a number of seconds > 0 and <= 1e9, not -1.0"),
        ((math.nan,), ValueError, "window must be a number of seconds > 0 and <= 1e9, not nan"),
        ((math.inf,), ValueError, "window must be a number of seconds > 0 and <= 1e9, not inf"),
        ((2e9,), ValueError, "not 2000000000.0"),
        (
            (10, 0),
            ValueError,
            "RateCounter() resolution must be a number of seconds >= 1e-9 and <= the window "
            "(10.0), not 0.0",
        ),
        ((10, 11), ValueError, "<= the window (10.0), not 11.0"),
        ((10, math.nan), ValueError, "not nan"),
        ((10, -1), ValueError, "not -1.0"),
        (
            (100, 1e-5),
            ValueError,
            "RateCounter() window / resolution needs 10000000 buckets; the limit is 1000000",
        ),
        (("60",), TypeError, "RateCounter() window must be a number of seconds, not 'str'"),
        (
            (60, None),
            TypeError,
            "RateCounter() resolution must be a number of seconds, not 'NoneType'",
        ),
        ((60, 1j), TypeError, "not 'complex'"),
    ],
)
def test_bad_construction(
    rates_impl: ModuleType, args: tuple[Any, ...], exc: type, message: str
) -> None:
    with pytest.raises(exc) as info:
        rates_impl.RateCounter(*args)
    assert message in str(info.value)


def test_bad_clock_argument(rates_impl: ModuleType) -> None:
    with pytest.raises(
        TypeError, match=r"clock must be a callable returning seconds, or None, not 'int'"
    ):
        rates_impl.RateCounter(clock=5)
    with pytest.raises(TypeError):
        rates_impl.RateCounter(60, 1, lambda: 0.0)  # clock is keyword-only


def test_the_cap_is_exact(rates_impl: ModuleType) -> None:
    assert rates_impl.RateCounter(1e6, 1.0).buckets == rates_impl.MAX_BUCKETS == 1_000_000
    with pytest.raises(ValueError, match="needs 1000001 buckets"):
        rates_impl.RateCounter(1e6 + 1, 1.0)


@pytest.mark.parametrize("bad", NOT_INTEGERS)
def test_non_integer_amounts(rates_impl: ModuleType, bad: object) -> None:
    rc, _ = _bound(rates_impl)
    for fname in ("increment", "decrement"):
        with pytest.raises(TypeError, match=rf"{fname}\(\) expects an integer, not "):
            getattr(rc, fname)(bad)
    _unchanged(rc)


@pytest.mark.parametrize("big", OUT_OF_RANGE)
def test_out_of_range_amounts(rates_impl: ModuleType, big: object) -> None:
    rc, _ = _bound(rates_impl)
    with pytest.raises(
        OverflowError, match=r"increment\(\) argument .* is outside the signed 64-bit range"
    ):
        rc.increment(big)
    _unchanged(rc)


def test_total_never_wraps(rates_impl: ModuleType) -> None:
    clock = Clock(5.0)
    rc = rates_impl.RateCounter(10.0, 1.0, clock=clock)
    rc.increment(INT64_MAX)
    with pytest.raises(OverflowError) as info:
        rc.increment()
    assert str(info.value) == (
        "increment(1) would move the rate's total outside the signed 64-bit range; "
        f"it stays at {INT64_MAX}"
    )
    clock.t = 7.0  # a new bucket: still refused, still nothing changed
    with pytest.raises(OverflowError):
        rc.increment(2)
    assert rc.total() == INT64_MAX and rc.count() == INT64_MAX
    rc.decrement(INT64_MAX)
    rc.decrement(INT64_MAX)
    rc.decrement(1)
    assert rc.total() == INT64_MIN
    with pytest.raises(OverflowError, match=r"decrement\(1\) would move the rate's total"):
        rc.decrement()
    assert rc.count() == INT64_MIN  # total - mark, formed exactly
    assert rc.count(1.0) == INT64_MIN - INT64_MAX  # below int64: a Python int


@pytest.mark.parametrize(
    ("w", "exc", "message"),
    [
        (0, ValueError, "count() window must be a number of seconds > 0 and <= 10.0, not 0.0"),
        (10.5, ValueError, "<= 10.0, not 10.5"),
        (math.nan, ValueError, "not nan"),
        (-1, ValueError, "not -1.0"),
        ("1", TypeError, "count() window must be a number of seconds, not 'str'"),
    ],
)
def test_bad_count_windows(rates_impl: ModuleType, w: object, exc: type, message: str) -> None:
    rc, _ = _bound(rates_impl)
    with pytest.raises(exc) as info:
        rc.count(w)
    assert message in str(info.value)
    with pytest.raises(exc):
        rc.per_second(w)
    _unchanged(rc)


@pytest.mark.parametrize(
    ("value", "exc", "message"),
    [
        (math.nan, ValueError, "clock() returned nan; expected a finite number of seconds"),
        (math.inf, ValueError, "clock() returned inf"),
        (1e300, ValueError, "clock() returned 1e+300"),
        ("now", TypeError, "clock() must return a number of seconds, not 'str'"),
        (None, TypeError, "clock() must return a number of seconds, not 'NoneType'"),
    ],
)
def test_bad_clock_values_change_nothing(
    rates_impl: ModuleType, value: object, exc: type, message: str
) -> None:
    rc, clock = _bound(rates_impl)
    clock.t = value  # type: ignore[assignment]
    for call in (rc.increment, rc.count, rc.reset):
        with pytest.raises(exc) as info:
            call()
        assert message in str(info.value)
    clock.t = 50.0
    _unchanged(rc)


class BreakingClock(Clock):
    """A test clock that raises while ``broken`` is set."""

    broken = False

    def __call__(self) -> float:
        if self.broken:
            raise ZeroDivisionError("no time today")
        return self.t


def test_a_clock_that_raises_changes_nothing(rates_impl: ModuleType) -> None:
    """The counter's own clock raises: every call that reads it raises that
    error, and the counts it already holds are untouched."""
    clock = BreakingClock(50.0)
    rc = rates_impl.RateCounter(10.0, 1.0, clock=clock)
    rc.increment(5)
    clock.broken = True
    for call in (rc.increment, rc.decrement, rc.count, rc.per_second, rc.reset):
        with pytest.raises(ZeroDivisionError, match="no time today"):
            call()
    clock.broken = False
    _unchanged(rc)
    fresh = rates_impl.RateCounter(10.0, 1.0, clock=BreakingClock())
    fresh.clock.broken = True
    with pytest.raises(ZeroDivisionError):
        fresh.increment()
    assert fresh.total() == 0


def test_both_implementations_agree_on_messages() -> None:
    """Word for word, C and fallback (the parametrized tests above check substrings)."""
    import importlib

    mods = [importlib.import_module(m) for m in ("tallies._tallies", "tallies._pure.rate")]
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((0,), {}),
        ((10, 20), {}),
        ((1e7, 1),),  # type: ignore[list-item]
        (("x",), {}),
        ((), {"clock": 3}),
    ]
    for case in cases:
        args, kwargs = case[0], (case[1] if len(case) > 1 else {})
        msgs = []
        for m in mods:
            with pytest.raises((TypeError, ValueError)) as info:
                m.RateCounter(*args, **kwargs)
            msgs.append((type(info.value), str(info.value)))
        assert msgs[0] == msgs[1]
