"""Every accepted (window, resolution) counts exactly its window, in the C core and the fallback.

Window and resolution are normalised once, to whole nanoseconds, and the ring
has ceil(window_ns / resolution_ns) buckets, derived from those integers.  Before,
the bucket count came from the floats and the bucket width from the rounded
nanoseconds: ``RateCounter(window=1e-3, resolution=1.4e-9)`` had 714,286 buckets
of 1 ns and forgot an event 0.8 ms old.  The property test draws random pairs
(odd floats, thirds, tiny resolutions, counts near the 1,000,000-bucket cap) and
checks each accepted one against ``RateModel`` (the README's definition, in
integer nanoseconds, which never cuts a window short) with a driven clock.
"""

from __future__ import annotations

import importlib
import time
from types import ModuleType

import pytest
from _rates_support import Clock, RateModel, ns, window_pairs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _both() -> list[ModuleType]:
    return [importlib.import_module(m) for m in ("tallies._tallies", "tallies._pure.rate")]


def _make(mod: ModuleType, window: float, resolution: float, clock: Clock) -> object:
    try:
        return mod.RateCounter(window, resolution, clock=clock)
    except ValueError as exc:
        return exc


@SETTINGS
@given(
    pair=window_pairs(),
    start=st.floats(0.0, 1e6),
    events=st.lists(st.tuples(st.floats(0.0, 1.5), st.integers(1, 9)), min_size=1, max_size=12),
    reads=st.lists(st.tuples(st.floats(0.0, 2.5), st.floats(0.0, 1.0)), min_size=1, max_size=8),
)
def test_every_accepted_rate_counts_exactly_its_window(
    pair: tuple[float, float],
    start: float,
    events: list[tuple[float, int]],
    reads: list[tuple[float, float]],
) -> None:
    window, resolution = pair
    made = [(mod, _make(mod, window, resolution, Clock(start))) for mod in _both()]
    refused = [isinstance(rc, ValueError) for _, rc in made]
    assert refused[0] == refused[1], made  # the same rule in C and in the fallback
    event("refused" if refused[0] else "accepted")
    if refused[0]:
        assert str(made[0][1]) == str(made[1][1])  # word for word
        W, R = ns(window), ns(resolution)
        assert not (1e-9 <= resolution <= window <= 1e9 and -(-W // R) <= 1_000_000), (
            f"refused a representable rate: {made[0][1]}"
        )
        return
    model = RateModel(window, resolution)
    # the ring covers the whole window: ceil(W / R) buckets of R whole nanoseconds
    for _, rc in made:
        assert rc.buckets == model.nb <= 1_000_000  # type: ignore[attr-defined]
        assert rc.resolution == model.R / 10**9 and rc.window == model.W / 10**9  # type: ignore[attr-defined]
        # and they round-trip: a rate made from the reported values is the same rate
        assert (ns(rc.window), ns(rc.resolution)) == (model.W, model.R)  # type: ignore[attr-defined]
    # a timeline, forward only: events spread over 1.5 windows, reads over 2.5
    ops = sorted(
        [(start + f * window, "inc", n) for f, n in events]
        + [(start + f * window, "read", g) for f, g in reads]
    )
    for mod, rc in made:
        model = RateModel(window, resolution)
        clock = rc.clock  # type: ignore[attr-defined]
        for t, op, arg in ops:
            clock.t = t
            if op == "inc":
                rc.increment(arg)  # type: ignore[attr-defined]
                model.add(t, int(arg))
            else:
                w = max(arg * window, 1e-9)  # arg <= 1: w <= window
                assert rc.count(w) == model.count(t, w), (mod.__name__, t, w)  # type: ignore[attr-defined]
                assert rc.count() == model.count(t, window), (mod.__name__, t)  # type: ignore[attr-defined]


@pytest.mark.parametrize("mod", ["tallies._tallies", "tallies._pure.rate"])
def test_the_issue_case_is_normalised_to_whole_nanoseconds(mod: str) -> None:
    rc = importlib.import_module(mod).RateCounter(window=1e-3, resolution=1.4e-9)
    assert (rc.window, rc.resolution, rc.buckets) == (1e-3, 1e-9, 1_000_000)
    assert repr(rc) == "RateCounter(window=0.001, resolution=1e-09, total=0)"


def test_the_issue_case_counts_a_whole_millisecond_on_the_system_clock() -> None:
    """1 ms in buckets of 1.4 ns: normalised to 1 ns buckets, 1,000,000 of them (the
    cap), so an event 0.8 ms old is still in the window (it was out: 714,286 buckets
    of 1 ns covered 0.71 ms).  The C core only: the fallback's count() scans up to
    250,000 marks in Python here, longer than the window itself, so its reads
    cannot land inside the millisecond (the property test above checks its rule)."""
    mod = "tallies._tallies"
    rc = importlib.import_module(mod).RateCounter(window=1e-3, resolution=1.4e-9)
    now = time.clock_gettime_ns
    mono = time.CLOCK_MONOTONIC
    trials = counted = 0
    for _ in range(400):
        before = now(mono)
        rc.increment()
        after = now(mono)
        while now(mono) - after < 750_000:  # the event is at least 0.75 ms old
            pass
        called = now(mono)
        got = rc.count()  # reads the clock first, then scans the marks
        if called - before < 900_000:  # and less than 0.9 ms old when count() was called
            trials += 1
            counted += got
        rc.reset()
        if trials == 20:
            break
    assert trials >= 5, "the machine never called count() within 0.9 ms of an increment"
    # The old ring (714,286 buckets of 1 ns) never counted an event 0.75 ms old.  A
    # trial may miss legitimately only if the thread is preempted for more than
    # 0.1 ms between `called` and count()'s own clock read.
    assert counted >= 0.8 * trials, (counted, trials)


@pytest.mark.parametrize("mod", ["tallies._tallies", "tallies._pure.rate"])
def test_a_count_of_the_window_as_given_is_accepted(mod: str) -> None:
    """The window 1/3 s is kept as 333,333,333 ns; count(1/3) asks for that window.
    Buckets of 1/3000 s are 333,333 ns: 1,001 of them cover the window."""
    rc = importlib.import_module(mod).RateCounter(window=1 / 3, resolution=1 / 3000)
    assert (rc.window, rc.resolution, rc.buckets) == (0.333333333, 0.000333333, 1001)
    rc.increment(4)
    assert rc.count(1 / 3) == 4 and rc.per_second(1 / 3) == 4 / (1 / 3)
    assert rc.per_second() == 4 / 0.333333333
    with pytest.raises(ValueError, match=r"<= 0\.333333333, not 0\.3333333339"):
        rc.count(0.3333333339)


def test_a_clock_far_out_of_range_is_the_same_error_in_c_and_the_fallback() -> None:
    """10**400 is no float: both raise ValueError naming inf (C raised OverflowError)."""
    msgs = []
    for mod in _both():
        rc = mod.RateCounter(10.0, 1.0, clock=lambda: 10**400)
        with pytest.raises(ValueError) as info:
            rc.increment()
        msgs.append(str(info.value))
        assert rc.total() == 0
    assert (
        msgs[0]
        == msgs[1]
        == ("clock() returned inf; expected a finite number of seconds within 4e18 buckets of 0")
    )
