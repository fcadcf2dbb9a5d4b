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
    INDEX_LIKE,
    INT64_MAX,
    INT64_MIN,
    NOT_INTEGERS,
    OUT_OF_RANGE,
    BadIndex,
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


# ---- bad input -------------------------------------------------------------------------


def _iadd(c: Any, v: Any) -> None:
    x = c
    x += v
    assert x is c


def _isub(c: Any, v: Any) -> None:
    x = c
    x -= v
    assert x is c


# (id, name in messages, subtracts?, call(counter, n))
UPDATES: list[tuple[str, str, bool, Callable[[Any, Any], Any]]] = [
    ("increment", "increment", False, lambda c, n: c.increment(n)),
    ("increment-n=", "increment", False, lambda c, n: c.increment(n=n)),
    ("decrement", "decrement", True, lambda c, n: c.decrement(n)),
    ("decrement-n=", "decrement", True, lambda c, n: c.decrement(n=n)),
    ("+=", "+=", False, _iadd),
    ("-=", "-=", True, _isub),
]
ARG_PARAMS = [pytest.param(name, call, id=i) for i, name, _, call in UPDATES]
UPDATE_PARAMS = [pytest.param(name, sub, call, id=i) for i, name, sub, call in UPDATES]


@pytest.mark.parametrize("bad", NOT_INTEGERS)
@pytest.mark.parametrize(("fname", "call"), ARG_PARAMS)
def test_non_integers_raise_type_error_and_change_nothing(
    impl: ModuleType, fname: str, call: Callable[[Any, Any], Any], bad: Any
) -> None:
    c = impl.ShardedCounter(42)
    with pytest.raises(TypeError) as info:
        call(c, bad)
    assert type(info.value) is TypeError
    assert str(info.value).startswith(f"{fname}() expects an integer, not '")
    assert type(bad).__name__ in str(info.value)
    assert c.value() == 42


@pytest.mark.parametrize("bad", NOT_INTEGERS)
def test_constructor_rejects_non_integers(impl: ModuleType, bad: Any) -> None:
    with pytest.raises(TypeError) as info:
        impl.ShardedCounter(bad)
    assert type(info.value) is TypeError
    assert str(info.value).startswith("ShardedCounter() expects an integer, not '")
    assert type(bad).__name__ in str(info.value)


@pytest.mark.parametrize("big", OUT_OF_RANGE)
@pytest.mark.parametrize(("fname", "call"), ARG_PARAMS)
def test_ints_outside_int64_raise_overflow_and_change_nothing(
    impl: ModuleType, fname: str, call: Callable[[Any, Any], Any], big: Any
) -> None:
    c = impl.ShardedCounter(42)
    with pytest.raises(OverflowError) as info:
        call(c, big)
    assert type(info.value) is OverflowError
    assert str(info.value) == arg_overflow(fname, big)
    assert c.value() == 42


@pytest.mark.parametrize("big", OUT_OF_RANGE)
def test_constructor_rejects_ints_outside_int64(impl: ModuleType, big: Any) -> None:
    with pytest.raises(OverflowError) as info:
        impl.ShardedCounter(big)
    assert str(info.value) == arg_overflow("ShardedCounter", big)


@pytest.mark.parametrize(("fname", "call"), ARG_PARAMS)
def test_a_failing_index_method_propagates(
    impl: ModuleType, fname: str, call: Callable[[Any, Any], Any]
) -> None:
    c = impl.ShardedCounter(42)
    with pytest.raises(ZeroDivisionError):
        call(c, BadIndex())
    assert c.value() == 42


@pytest.mark.parametrize(("obj", "meaning"), INDEX_LIKE)
def test_index_likes_are_accepted(impl: ModuleType, obj: Any, meaning: int) -> None:
    assert impl.ShardedCounter(obj).value() == meaning
    c = impl.ShardedCounter(100)
    c.increment(obj)
    c.increment(n=obj)
    c += obj
    assert c.value() == 100 + 3 * meaning
    c.decrement(obj)
    c.decrement(n=obj)
    c -= obj
    assert c.value() == 100


# ---- overflow at both edges ----------------------------------------------------------

EDGE_CASES = [
    (INT64_MAX, 1),
    (INT64_MAX - 1, 1),
    (INT64_MAX, -1),
    (INT64_MIN, 1),
    (INT64_MIN, -1),
    (INT64_MIN + 1, -1),
    (0, INT64_MAX),
    (1, INT64_MAX),
    (-2, INT64_MAX),
    (0, INT64_MIN),
    (-1, INT64_MIN),
    (INT64_MIN, INT64_MIN),
    (INT64_MAX, INT64_MAX),
]


@pytest.mark.parametrize(("start", "n"), EDGE_CASES)
@pytest.mark.parametrize(("op", "sub", "call"), UPDATE_PARAMS)
def test_updates_at_the_int64_edges(
    impl: ModuleType, op: str, sub: bool, call: Callable[[Any, int], Any], start: int, n: int
) -> None:
    c = impl.ShardedCounter(start)
    expected = start - n if sub else start + n
    if in_int64(expected):
        call(c, n)
        assert c.value() == expected
    else:
        with pytest.raises(OverflowError) as info:
            call(c, n)
        assert type(info.value) is OverflowError
        assert str(info.value) == stripe_overflow(op, n)
        assert c.value() == start


def test_decrement_by_int64_min_where_it_fits(impl: ModuleType) -> None:
    c = impl.ShardedCounter(-1)
    c.decrement(INT64_MIN)
    assert c.value() == INT64_MAX
    c.reset()
    with pytest.raises(OverflowError):
        c.decrement(INT64_MIN)
    assert c.value() == 0


# ---- C and pure say exactly the same thing -------------------------------------------


def _outcome(call: Callable[[], Any]) -> tuple[str, str]:
    try:
        return ("returned", repr(call()))
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def _scenarios() -> list[Any]:
    out: list[Any] = []
    bad = [(p.id, p.values[0]) for p in NOT_INTEGERS + OUT_OF_RANGE] + [("BadIndex", BadIndex())]
    for uid, _, _, call in UPDATES:
        for bid, b in bad:

            def scenario(m: ModuleType, call: Any = call, b: Any = b) -> Any:
                c = m.ShardedCounter(7)
                return _outcome(lambda: call(c, b)), c.value()

            out.append(pytest.param(scenario, id=f"{uid}-{bid}"))
        for start, n in [(INT64_MAX, 1), (INT64_MIN, -1), (INT64_MIN, 1)]:

            def scenario(m: ModuleType, call: Any = call, start: int = start, n: int = n) -> Any:
                c = m.ShardedCounter(start)
                return _outcome(lambda: call(c, n)), c.value()

            out.append(pytest.param(scenario, id=f"{uid}-at-{start}-by-{n}"))
    for bid, b in bad:

        def scenario(m: ModuleType, b: Any = b) -> Any:
            return _outcome(lambda: m.ShardedCounter(b))

        out.append(pytest.param(scenario, id=f"ShardedCounter-{bid}"))
    return out


@pytest.mark.parametrize("scenario", _scenarios())
def test_c_and_pure_report_identical_errors(
    core: ModuleType, pure: ModuleType, scenario: Callable[[ModuleType], Any]
) -> None:
    assert scenario(core) == scenario(pure)


# ---- pickle, copy, repr, subclasses, size ------------------------------------------

VALUES = [0, 5, -5, INT64_MAX, INT64_MIN]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("v", VALUES)
def test_pickle_keeps_the_value(impl: ModuleType, protocol: int, v: int) -> None:
    c = impl.ShardedCounter(v)
    clone = pickle.loads(pickle.dumps(c, protocol))
    assert type(clone) is type(c)
    assert clone.value() == v
    assert clone.inflated is False


@pytest.mark.parametrize("v", VALUES)
def test_copy_and_deepcopy_keep_the_value(impl: ModuleType, v: int) -> None:
    c = impl.ShardedCounter(v)
    for clone in (copy.copy(c), copy.deepcopy(c)):
        assert type(clone) is type(c)
        assert clone is not c
        assert clone.value() == v
        clone.reset()
        assert c.value() == v


def test_repr(impl: ModuleType) -> None:
    assert repr(impl.ShardedCounter()) == "ShardedCounter(0)"
    assert repr(impl.ShardedCounter(INT64_MIN)) == f"ShardedCounter({INT64_MIN})"


def subclass_of(base: type) -> type:
    """A module-level subclass (so that pickle can find it) with a __dict__."""
    name = f"Tagged{base.__name__}_{base.__module__.replace('.', '_')}"
    cls = globals().get(name)
    if cls is None:
        cls = type(name, (base,), {"__module__": __name__})
        cls.__qualname__ = name
        globals()[name] = cls
    return cls


def test_subclass_works(impl: ModuleType) -> None:
    Tagged = subclass_of(impl.ShardedCounter)
    c = Tagged(2)
    c.tag = "hits"
    c.increment()
    c += 2
    assert isinstance(c, impl.ShardedCounter)
    assert c.value() == 5
    assert repr(c) == f"{Tagged.__name__}(5)"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_subclass_pickles_with_its_attributes(impl: ModuleType, protocol: int) -> None:
    Tagged = subclass_of(impl.ShardedCounter)
    c = Tagged(11)
    c.tag = "hits"
    clone = pickle.loads(pickle.dumps(c, protocol))
    assert type(clone) is Tagged
    assert clone.value() == 11
    assert clone.tag == "hits"


def test_c_sharded_counter_is_small(core: ModuleType) -> None:
    """64 bytes at most on every build: 48 with the GIL (the header, the base cell,
    the stripes' pointer and count, the weak-reference list), 64 on a free-threaded build,
    whose object header is 16 bytes larger (see test_c_counter_is_small).  The stripes
    are allocated only when the counter inflates."""
    assert sys.getsizeof(core.ShardedCounter()) <= 64
