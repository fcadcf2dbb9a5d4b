"""KeyedRateCounter: per-key rates against the exact model, sweeps, most_common, bad input."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import pytest
from _rates_support import Clock, RateModel
from _support import INT64_MAX, INT64_MIN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

KEYS = st.sampled_from(["a", "b", "c", 1, (2, "x")])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("inc"), KEYS, st.integers(-2, 5)),
        st.tuples(st.just("fwd"), st.just(None), st.integers(0, 24).map(lambda k: k / 8)),
        st.tuples(st.just("back"), st.just(None), st.integers(1, 16).map(lambda k: k / 8)),
        st.tuples(st.just("count"), KEYS, st.integers(1, 64)),
        st.tuples(st.just("snap"), st.just(None), st.integers(1, 64)),
        st.tuples(st.just("sweep"), st.just(None), st.just(0)),
    ),
    max_size=60,
)


@SETTINGS
@given(
    resolution=st.sampled_from([0.25, 0.5, 1.0]),
    ratio=st.sampled_from([1.0, 2.5, 4.0, 10.0]),
    ops=OPS,
)
def test_keyed_counts_match_the_model(
    rates_impl: ModuleType, resolution: float, ratio: float, ops: list[tuple[str, Any, Any]]
) -> None:
    window = resolution * ratio
    clock = Clock(500.0)
    kr = rates_impl.KeyedRateCounter(window, resolution, clock=clock)
    models: dict[Any, RateModel] = {}
    for op, key, arg in ops:
        if op == "inc":
            kr.increment(key, arg)
            models.setdefault(key, RateModel(window, resolution)).add(clock.t, arg)
        elif op == "fwd":
            clock.t += arg
        elif op == "back":
            clock.t -= arg
        elif op == "count":
            w = min(window, arg / 8)
            m = models.get(key)
            want = m.count(clock.t, w) if m is not None else 0
            # a key swept away (all buckets expired) counts 0, as its model does
            assert kr.count(key, w) == want
            assert kr.per_second(key, w) == want / w
        elif op == "snap":
            w = min(window, arg / 8)
            want = {k: m.count(clock.t, w) for k, m in models.items()}
            want = {k: v for k, v in want.items() if v}
            assert kr.snapshot(w) == want
            mc = kr.most_common(None, w)
            assert sorted(mc, key=lambda kv: repr(kv)) == sorted(want.items(), key=repr)
            assert [v for _, v in mc] == sorted(want.values(), reverse=True)
        else:
            kr.sweep()
        # a swept key (every bucket left the window) forgets its past; so does its model
        held = set(kr._keys())
        for k in list(models):
            if k not in held:
                m = models.pop(k)
                assert m.latest is not None
                assert m.latest < math.floor(clock.t / resolution) - m.nb + 1
        assert held == set(models)


def test_sweep_frees_expired_keys(rates_impl: ModuleType) -> None:
    clock = Clock(0.0)
    kr = rates_impl.KeyedRateCounter(10.0, 1.0, clock=clock)
    for i in range(1000):
        kr.increment(f"old{i}")
    clock.t = 5.0
    kr.increment("young")
    assert len(kr) == 1001
    clock.t = 10.5  # the old keys' bucket (0) has left the window; "young" (5) has not
    assert kr.sweep() == 1000
    assert len(kr) == 1
    assert kr.count("old3") == 0 and kr.count("young") == 1
    clock.t = 100.0
    assert len(kr) == 0  # len() sweeps first


def test_sweep_runs_by_itself_once_per_window(rates_impl: ModuleType) -> None:
    """No read at all: an increment at least one window after the last sweep sweeps."""
    clock = Clock(0.0)
    kr = rates_impl.KeyedRateCounter(10.0, 1.0, clock=clock)
    kr.increment("first")  # the first increment sweeps (nothing) and schedules the next
    for i in range(500):
        kr.increment(i)
    clock.t = 9.0
    kr.increment("x")  # not due yet
    clock.t = 25.0
    kr.increment("y")  # due: keys whose newest bucket left the window are dropped
    assert kr.snapshot() == {"y": 1}
    assert len(kr) == 1


def test_most_common(rates_impl: ModuleType) -> None:
    clock = Clock(0.0)
    kr = rates_impl.KeyedRateCounter(10.0, 1.0, clock=clock)
    for key, n in [("a", 1), ("b", 5), ("c", 3), ("d", 5), ("z", 0)]:
        kr.increment(key, n)
    assert kr.most_common() == [("b", 5), ("d", 5), ("c", 3), ("a", 1)]
    assert kr.most_common(2) == [("b", 5), ("d", 5)]
    assert kr.most_common(0) == []
    clock.t = 3.0
    kr.increment("a", 10)
    assert kr.most_common(1, window=1.0) == [("a", 10)]
    with pytest.raises(
        TypeError, match="most_common\\(\\) n must be an integer or None, not 'str'"
    ):
        kr.most_common("2")


def test_keyed_default_clock(rates_impl: ModuleType) -> None:
    kr = rates_impl.KeyedRateCounter()
    for _ in range(100):
        kr.increment("GET /")
    kr.increment("POST /", 7)
    assert kr.snapshot() == {"GET /": 100, "POST /": 7}
    assert kr.count("GET /") == 100
    assert kr.per_second("POST /") == 7 / 60.0
    kr.clear()
    assert len(kr) == 0 and kr.snapshot() == {}
    assert repr(kr) == "KeyedRateCounter(window=60.0, resolution=1.0, keys=0)"


def test_keyed_bad_input_changes_nothing(rates_impl: ModuleType) -> None:
    clock = Clock(0.0)
    kr = rates_impl.KeyedRateCounter(10.0, 1.0, clock=clock)
    kr.increment("a", 2)
    with pytest.raises(TypeError, match="unhashable"):
        kr.increment(["a"])
    with pytest.raises(TypeError, match=r"increment\(\) expects an integer, not 'float'"):
        kr.increment("a", 1.5)
    with pytest.raises(TypeError, match=r"increment\(\) expects an integer, not 'float'"):
        kr.increment("new", 1.5)
    with pytest.raises(ValueError, match=r"count\(\) window must be a number of seconds > 0"):
        kr.count("a", 11)
    with pytest.raises(ValueError, match=r"snapshot\(\) window must be"):
        kr.snapshot(0)
    with pytest.raises(ValueError, match="KeyedRateCounter\\(\\) resolution must be"):
        rates_impl.KeyedRateCounter(1.0, 2.0)
    kr.increment("big", INT64_MAX)
    with pytest.raises(OverflowError) as info:
        kr.increment("big")
    assert str(info.value) == (
        "increment(1) would move the total of 'big' outside the signed 64-bit range; "
        f"it stays at {INT64_MAX}"
    )
    with pytest.raises(OverflowError) as info:
        kr.decrement("fresh", INT64_MIN)  # 0 - INT64_MIN is not an int64: never inserted
    assert str(info.value) == (
        f"decrement({INT64_MIN}) would move the total of 'fresh' outside the signed 64-bit "
        "range; it stays at 0"
    )
    assert kr.snapshot() == {"a": 2, "big": INT64_MAX}
    assert len(kr) == 2


class _Colliding:
    """Keys that share one hash, so a dict compares them with __eq__; the
    counter's own __eq__ may count a key of the same counter meanwhile."""

    def __init__(self, name: str, on_eq: Any = None) -> None:
        self.name = name
        self.on_eq = on_eq

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        if self.on_eq is not None:
            hook, self.on_eq = self.on_eq, None
            hook()
        return isinstance(other, _Colliding) and other.name == self.name

    def __repr__(self) -> str:
        return f"K({self.name})"


def test_an_increment_during_a_keys_removal_is_not_lost(rates_impl: ModuleType) -> None:
    clock = Clock(0.0)
    kr = rates_impl.KeyedRateCounter(10.0, 1.0, clock=clock)
    x, y = _Colliding("x"), _Colliding("y")
    kr.increment(x)
    kr.increment(y)
    clock.t = 5.0
    kr.increment(x)  # x stays young (and it sits before y in the probe chain)
    clock.t = 12.0  # y's only bucket (0) has left the window; x's (5) has not
    x.on_eq = lambda: kr.increment(y, 3)  # runs while the sweep deletes y
    assert kr.sweep() == 1
    assert x.on_eq is None  # the increment ran inside the sweep, from x's __eq__
    assert kr.count(y) == 3  # counted again in a fresh ring, at the sweep's time
    assert kr.count(x) == 1  # x's bucket 0 has left the window, bucket 5 has not
    assert kr.snapshot() == {x: 1, y: 3}
