"""tallies ShardedCounter: a model-based test of every method, then bad input, edges, copies.

Each test runs on the C core and on the pure fallback (the ``impl`` fixture).
In one thread nothing contends, so the striped counter never inflates and
behaves exactly like one int64 cell: that is the model.
"""

from __future__ import annotations

import copy
import pickle
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar

import pytest
from _support import (
    amounts,
    arg_overflow,
    in_int64,
    int64_values,
    non_integers,
    stripe_overflow,
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


class ShardedModel(RuleBasedStateMachine):
    """Model: a plain Python int, ``self.model``, the value the counter must hold.

    Updates are applied to both; when the amount or the result leaves
    [-2**63, 2**63 - 1] the counter must raise exactly OverflowError with the
    documented message and keep its value (the model does not change); a
    non-integer raises exactly TypeError and changes nothing.  Invariant after
    every step: ``counter.value() == model`` and, single-threaded, the counter
    has not inflated.
    """

    impl: ClassVar[ModuleType]

    def __init__(self) -> None:
        super().__init__()
        self.counter: Any = None
        self.model = 0

    @initialize(initial=int64_values, form=st.sampled_from(["default", "positional", "keyword"]))
    def create(self, initial: int, form: str) -> None:
        if form == "default":
            self.counter, self.model = self.impl.ShardedCounter(), 0
        elif form == "positional":
            self.counter, self.model = self.impl.ShardedCounter(initial), initial
        else:
            self.counter, self.model = self.impl.ShardedCounter(initial=initial), initial

    def refused(self, exc_type: type[BaseException], message: str, call: Callable[[], Any]) -> None:
        before = self.model
        with pytest.raises(exc_type) as info:
            call()
        assert type(info.value) is exc_type
        assert str(info.value) == message
        assert self.counter.value() == before

    def update(self, op: str, n: int, sub: bool, call: Callable[[], Any]) -> None:
        before = self.model
        if not in_int64(n):
            self.refused(OverflowError, arg_overflow(op, n), call)
            return
        new = before - n if sub else before + n
        if not in_int64(new):
            self.refused(OverflowError, stripe_overflow(op, n), call)
            return
        assert call() is None
        self.model = new

    def inplace(self, n: Any, sub: bool) -> None:
        c = self.counter
        if sub:
            c -= n
        else:
            c += n
        assert c is self.counter

    @rule(n=amounts, keyword=st.booleans())
    def increment(self, n: int, keyword: bool) -> None:
        c = self.counter
        self.update(
            "increment",
            n,
            False,
            (lambda: c.increment(n=n)) if keyword else (lambda: c.increment(n)),
        )

    @rule()
    def increment_by_one(self) -> None:
        self.update("increment", 1, False, self.counter.increment)

    @rule(n=amounts, keyword=st.booleans())
    def decrement(self, n: int, keyword: bool) -> None:
        c = self.counter
        self.update(
            "decrement",
            n,
            True,
            (lambda: c.decrement(n=n)) if keyword else (lambda: c.decrement(n)),
        )

    @rule()
    def decrement_by_one(self) -> None:
        self.update("decrement", 1, True, self.counter.decrement)

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

    @rule(protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
    def pickle_round_trip(self, protocol: int) -> None:
        clone = pickle.loads(pickle.dumps(self.counter, protocol))
        assert type(clone) is type(self.counter)
        assert clone is not self.counter
        assert clone.value() == self.model
        self.counter = clone

    @rule(deep=st.booleans())
    def copy_is_independent(self, deep: bool) -> None:
        clone = copy.deepcopy(self.counter) if deep else copy.copy(self.counter)
        assert clone is not self.counter
        assert clone.value() == self.model
        clone.reset()
        clone.increment(1 if self.model != 1 else 2)
        assert self.counter.value() == self.model

    @rule(bad=non_integers, method=st.sampled_from(["increment", "decrement", "+=", "-="]))
    def non_integer(self, bad: Any, method: str) -> None:
        c = self.counter
        calls: dict[str, Callable[[], Any]] = {
            "increment": lambda: c.increment(bad),
            "decrement": lambda: c.decrement(bad),
            "+=": lambda: self.inplace(bad, sub=False),
            "-=": lambda: self.inplace(bad, sub=True),
        }
        with pytest.raises(TypeError) as info:
            calls[method]()
        assert type(info.value) is TypeError
        assert type(bad).__name__ in str(info.value)
        assert c.value() == self.model

    @invariant()
    def matches_model(self) -> None:
        assert self.counter.value() == self.model
        assert self.counter.inflated is False


def test_sharded_counter_matches_int_model(impl: ModuleType) -> None:
    machine = type(f"ShardedModel_{impl.__name__}", (ShardedModel,), {"impl": impl})
    run_state_machine_as_test(machine, settings=STATEFUL)


# ---- the basics ----------------------------------------------------------------------


def test_basic_counting(impl: ModuleType) -> None:
    c = impl.ShardedCounter()
    assert c.value() == 0
    assert c.inflated is False
    assert c.increment() is None
    assert c.increment(9) is None
    assert c.decrement() is None
    assert c.decrement(n=3) is None
    alias = c
    c += 5
    c -= 1
    assert c is alias
    assert c.value() == 10
    assert int(c) == 10
    assert repr(c) == "ShardedCounter(10)"
    assert c.reset() == 10
    assert c.value() == 0
    assert impl.ShardedCounter(initial=-4).value() == -4


# ---- size (what ShardedCounter shares with Counter: test_both_counters.py) ----------


def test_c_sharded_counter_is_small(core: ModuleType) -> None:
    """64 bytes at most on every build: 48 with the GIL (the header, the base cell,
    the stripes' pointer and count, the weak-reference list), 64 on a free-threaded build,
    whose object header is 16 bytes larger (see test_c_counter_is_small).  The stripes
    are allocated only when the counter inflates."""
    assert sys.getsizeof(core.ShardedCounter()) <= 64
