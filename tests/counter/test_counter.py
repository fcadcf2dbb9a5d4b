"""tallies Counter: a model-based test of every method, then bad input, edges and copies.

Each test runs on the C core and on the pure fallback (the ``impl`` fixture).
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from _support import (
    FREE_THREADED,
    INDEX_LIKE,
    INT64_MAX,
    INT64_MIN,
    Index,
    amounts,
    arg_overflow,
    in_int64,
    int64_values,
    non_integers,
    result_overflow,
    set_values,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

STATEFUL = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_FAILED = object()  # what CounterModel.update returns when the update was refused


class CounterModel(RuleBasedStateMachine):
    """Model: a plain Python int, ``self.model``, the value the counter must hold.

    Every operation is applied to the counter and, with Python's unbounded
    arithmetic, to the int.  When the amount or the result leaves
    [-2**63, 2**63 - 1] the counter must raise exactly OverflowError with the
    documented message, and the model (so the counter) stays as it was; a
    non-integer must raise exactly TypeError and change nothing either.  The
    invariant checked after every step: ``counter.value() == model``.
    """

    impl: ClassVar[ModuleType]

    def __init__(self) -> None:
        super().__init__()
        self.counter: Any = None
        self.model = 0

    @initialize(initial=int64_values, form=st.sampled_from(["default", "positional", "keyword"]))
    def create(self, initial: int, form: str) -> None:
        if form == "default":
            self.counter, self.model = self.impl.Counter(), 0
        elif form == "positional":
            self.counter, self.model = self.impl.Counter(initial), initial
        else:
            self.counter, self.model = self.impl.Counter(initial=initial), initial

    # -- helpers ------------------------------------------------------------

    def refused(self, exc_type: type[BaseException], message: str | None, call: Callable[[], Any]):
        """``call`` must raise exactly ``exc_type`` (with ``message``) and change nothing."""
        before = self.model
        with pytest.raises(exc_type) as info:
            call()
        assert type(info.value) is exc_type
        if message is not None:
            assert str(info.value) == message
        assert self.counter.value() == before

    def update(self, op: str, n: int, sub: bool, call: Callable[[], Any]) -> Any:
        """Apply an update of ``n`` to counter and model; returns call()'s result or _FAILED."""
        before = self.model
        if not in_int64(n):
            self.refused(OverflowError, arg_overflow(op, n), call)
            return _FAILED
        new = before - n if sub else before + n
        if not in_int64(new):
            self.refused(OverflowError, result_overflow(op, n, before), call)
            return _FAILED
        result = call()
        self.model = new
        return result

    def inplace(self, n: int, sub: bool) -> None:
        c = self.counter
        if sub:
            c -= n
        else:
            c += n
        assert c is self.counter  # += and -= update in place and keep the object

    # -- updates ------------------------------------------------------------

    @rule(n=amounts, keyword=st.booleans())
    def increment(self, n: int, keyword: bool) -> None:
        c = self.counter
        call = (lambda: c.increment(n=n)) if keyword else (lambda: c.increment(n))
        assert self.update("increment", n, False, call) in (None, _FAILED)

    @rule()
    def increment_by_one(self) -> None:
        assert self.update("increment", 1, False, self.counter.increment) in (None, _FAILED)

    @rule(n=amounts, keyword=st.booleans())
    def decrement(self, n: int, keyword: bool) -> None:
        c = self.counter
        call = (lambda: c.decrement(n=n)) if keyword else (lambda: c.decrement(n))
        assert self.update("decrement", n, True, call) in (None, _FAILED)

    @rule()
    def decrement_by_one(self) -> None:
        assert self.update("decrement", 1, True, self.counter.decrement) in (None, _FAILED)

    @rule(n=amounts)
    def add(self, n: int) -> None:
        result = self.update("add", n, False, lambda: self.counter.add(n))
        if result is not _FAILED:
            assert result == self.model  # add returns the value it produced
            assert type(result) is int

    @rule(n=amounts)
    def iadd(self, n: int) -> None:
        self.update("+=", n, False, lambda: self.inplace(n, sub=False))

    @rule(n=amounts)
    def isub(self, n: int) -> None:
        self.update("-=", n, True, lambda: self.inplace(n, sub=True))

    @rule()
    def reset(self) -> None:
        old = self.counter.reset()
        assert old == self.model
        assert type(old) is int
        self.model = 0

    @rule(v=set_values)
    def set(self, v: int) -> None:
        if not in_int64(v):
            self.refused(OverflowError, arg_overflow("set", v), lambda: self.counter.set(v))
            return
        assert self.counter.set(v) is None
        self.model = v

    @rule(
        expected=st.one_of(st.none(), set_values),
        new=set_values,
        keyword=st.booleans(),
    )
    def compare_and_set(self, expected: int | None, new: int, keyword: bool) -> None:
        e = self.model if expected is None else expected  # None: the current value
        c = self.counter
        if keyword:

            def call() -> Any:
                return c.compare_and_set(expected=e, new=new)
        else:

            def call() -> Any:
                return c.compare_and_set(e, new)

        for arg in (e, new):  # the expected value is checked first
            if not in_int64(arg):
                self.refused(OverflowError, arg_overflow("compare_and_set", arg), call)
                return
        swapped = call()
        assert swapped is (e == self.model)
        if swapped:
            self.model = new

    # -- reads --------------------------------------------------------------

    @rule()
    def value(self) -> None:
        v = self.counter.value()
        assert v == self.model
        assert type(v) is int

    @rule()
    def int_(self) -> None:
        assert int(self.counter) == self.model

    @rule()
    def repr_(self) -> None:
        assert repr(self.counter) == f"{type(self.counter).__name__}({self.model})"

    @rule(goal=set_values)
    def wait_until_now(self, goal: int) -> None:
        c = self.counter
        if not in_int64(goal):
            self.refused(
                OverflowError,
                arg_overflow("wait_until", goal),
                lambda: c.wait_until(goal, timeout=0),
            )
            return
        assert c.wait_until(goal, timeout=0) is (self.model >= goal)

    # -- copies -------------------------------------------------------------

    @rule(protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
    def pickle_round_trip(self, protocol: int) -> None:
        clone = pickle.loads(pickle.dumps(self.counter, protocol))
        assert type(clone) is type(self.counter)
        assert clone is not self.counter
        assert clone.value() == self.model
        self.counter = clone  # go on with the copy: it must be a full counter

    @rule(deep=st.booleans())
    def copy_is_independent(self, deep: bool) -> None:
        clone = copy.deepcopy(self.counter) if deep else copy.copy(self.counter)
        assert clone is not self.counter
        assert clone.value() == self.model
        clone.set(0 if self.model != 0 else 1)
        assert self.counter.value() == self.model

    # -- bad input ----------------------------------------------------------

    @rule(
        bad=non_integers,
        method=st.sampled_from(
            ["increment", "decrement", "add", "set", "+=", "-=", "cas-expected", "cas-new"]
        ),
    )
    def non_integer(self, bad: Any, method: str) -> None:
        c = self.counter
        calls: dict[str, Callable[[], Any]] = {
            "increment": lambda: c.increment(bad),
            "decrement": lambda: c.decrement(bad),
            "add": lambda: c.add(bad),
            "set": lambda: c.set(bad),
            "+=": lambda: self.inplace(bad, sub=False),
            "-=": lambda: self.inplace(bad, sub=True),
            "cas-expected": lambda: c.compare_and_set(bad, 0),
            "cas-new": lambda: c.compare_and_set(self.model, bad),
        }
        before = self.model
        with pytest.raises(TypeError) as info:
            calls[method]()
        assert type(info.value) is TypeError
        assert "expects an integer" in str(info.value)
        assert type(bad).__name__ in str(info.value)
        assert c.value() == before

    @invariant()
    def matches_model(self) -> None:
        assert self.counter.value() == self.model


def test_counter_matches_int_model(impl: ModuleType) -> None:
    machine = type(f"CounterModel_{impl.__name__}", (CounterModel,), {"impl": impl})
    run_state_machine_as_test(machine, settings=STATEFUL)


# ---- the basics, spelled out ---------------------------------------------------


def test_basic_counting(impl: ModuleType) -> None:
    c = impl.Counter()
    assert c.value() == 0
    assert c.increment() is None
    assert c.increment(5) is None
    assert c.decrement() is None
    assert c.decrement(n=2) is None
    assert c.value() == 3
    assert c.add(10) == 13
    assert c.add(-20) == -7
    assert c.reset() == -7
    assert c.value() == 0
    assert c.set(41) is None
    assert c.compare_and_set(40, 0) is False
    assert c.compare_and_set(expected=41, new=42) is True
    assert int(c) == 42
    assert repr(c) == "Counter(42)"
    assert impl.Counter(initial=-9).value() == -9


def test_inplace_operators_keep_the_object(impl: ModuleType) -> None:
    c = impl.Counter(1)
    alias = c
    c += 10
    c -= 3
    assert c is alias
    assert c.value() == 8


# ---- Counter's own methods (what it shares with ShardedCounter: test_both_counters.py) --


@pytest.mark.parametrize(("obj", "meaning"), INDEX_LIKE)
def test_index_likes_are_accepted_by_counters_own_methods(
    impl: ModuleType, obj: Any, meaning: int
) -> None:
    c = impl.Counter(100)
    assert c.add(obj) == 100 + meaning
    c.set(obj)
    assert c.value() == meaning
    assert c.compare_and_set(obj, 5) is True
    assert c.compare_and_set(5, obj) is True
    assert c.value() == meaning
    assert c.wait_until(obj, timeout=0) is True
    assert c.wait_until(Index(meaning + 1), timeout=0) is False


def test_numpy_integers_are_accepted(impl: ModuleType) -> None:
    np = pytest.importorskip("numpy", reason="numpy is not installed (numpy-like is tested above)")
    c = impl.Counter(np.int64(5))
    c.increment(np.int32(2))
    c.add(np.uint8(3))
    c += np.int16(1)
    assert c.value() == 11
    with pytest.raises(TypeError):
        c.increment(np.float64(1.0))
    with pytest.raises(OverflowError):
        c.increment(np.uint64(2**64 - 1))
    assert c.value() == 11


# ---- the whole range ------------------------------------------------------------


def test_the_whole_range_is_usable(impl: ModuleType) -> None:
    c = impl.Counter(INT64_MIN)
    assert c.add(INT64_MAX) == -1
    assert c.add(INT64_MAX) == INT64_MAX - 1
    c.increment()
    assert c.value() == INT64_MAX
    assert c.reset() == INT64_MAX
    assert repr(impl.Counter(INT64_MIN)) == f"Counter({INT64_MIN})"


# ---- wait_until's timeout argument -------------------------------------------------


@pytest.mark.parametrize("timeout", [-1, -0.001, float("-inf"), float("nan")])
def test_wait_until_rejects_negative_or_nan_timeouts(impl: ModuleType, timeout: float) -> None:
    c = impl.Counter(0)
    with pytest.raises(ValueError) as info:
        c.wait_until(1, timeout)
    assert type(info.value) is ValueError
    assert str(info.value) == "wait_until() timeout must be a non-negative number"
    assert c.value() == 0


@pytest.mark.parametrize("timeout", ["x", "0.01", [0.1], 1j, object()])
def test_wait_until_rejects_non_number_timeouts(impl: ModuleType, timeout: Any) -> None:
    c = impl.Counter(0)
    with pytest.raises(TypeError) as info:
        c.wait_until(1, timeout=timeout)
    assert type(info.value) is TypeError
    assert str(info.value) == (
        f"wait_until() timeout must be a number or None, not {type(timeout).__name__!r}"
    )


# ---- size, re-import ------------------------------------------------------------


def test_c_counter_is_small(core: ModuleType) -> None:
    """48 bytes at most with the GIL (40 on CPython 3.10-3.13 x86-64: the 16-byte
    header, the value, the wait_until() waiter list, the weak-reference list).  On a
    free-threaded build a Counter is 64 bytes: the object header is 32 bytes there
    instead of 16 (ob_tid, ob_flags, ob_mutex, ob_gc_bits, ob_ref_local,
    ob_ref_shared), and the waiter list has its own PyMutex (1 byte, padded to 8)."""
    limit = 64 if FREE_THREADED else 48
    assert sys.getsizeof(core.Counter()) <= limit


_REIMPORT_SCRIPT = """
import importlib, sys
import tallies._tallies as first
del sys.modules["tallies._tallies"]
second = importlib.import_module("tallies._tallies")  # multi-phase init: fresh types
assert second.Counter is not first.Counter
for cls in (second.Counter, second.ShardedCounter, first.Counter, first.ShardedCounter):
    c = cls(1)
    c += 5
    c -= 2
    assert c.value() == 4, c
for mod in (second, first):
    kc = mod.KeyedCounter()
    kc.increment("k", 3)
    r = mod.RateCounter(60.0, 1.0)
    r.increment(2)
    assert kc.value("k") == 3 and r.count() == 2, (kc.value("k"), r.count())
print("ok")
"""


def test_c_core_still_works_after_a_reimport(core: ModuleType) -> None:
    """A second module object (re-import, sub-interpreter) has its own types; all must work."""
    src = str(Path(core.__file__).resolve().parents[1])  # the folder holding tallies
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _REIMPORT_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
