"""What Counter and ShardedCounter share: bad input, the int64 edges, copies,
subclasses.  Every test runs on both classes and on both implementations (the
``impl`` fixture: the C core, then the pure fallback); what only one class
has (Counter's add/set/compare_and_set/wait_until, ShardedCounter's stripes)
is in ``test_counter.py`` and ``test_sharded.py``.
"""

from __future__ import annotations

import copy
import enum
import pickle
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from _support import (
    INDEX_LIKE,
    INT64_MAX,
    INT64_MIN,
    NOT_INTEGERS,
    OUT_OF_RANGE,
    BadIndex,
    Index,
    arg_overflow,
    in_int64,
    result_overflow,
    stripe_overflow,
)

CLASSES = ["Counter", "ShardedCounter"]


@pytest.fixture(params=CLASSES)
def cls_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _iadd(c: Any, v: Any) -> None:
    x = c
    x += v
    assert x is c


def _isub(c: Any, v: Any) -> None:
    x = c
    x -= v
    assert x is c


# Every method that takes an integer: (id, name in messages, call(counter, arg)).
COMMON_TAKERS: list[tuple[str, str, Callable[[Any, Any], Any]]] = [
    ("increment", "increment", lambda c, v: c.increment(v)),
    ("increment-n=", "increment", lambda c, v: c.increment(n=v)),
    ("decrement", "decrement", lambda c, v: c.decrement(v)),
    ("decrement-n=", "decrement", lambda c, v: c.decrement(n=v)),
    ("+=", "+=", _iadd),
    ("-=", "-=", _isub),
]
COUNTER_TAKERS: list[tuple[str, str, Callable[[Any, Any], Any]]] = [
    ("add", "add", lambda c, v: c.add(v)),
    ("set", "set", lambda c, v: c.set(v)),
    ("cas-expected", "compare_and_set", lambda c, v: c.compare_and_set(v, 0)),
    ("cas-new", "compare_and_set", lambda c, v: c.compare_and_set(c.value(), v)),
    ("wait_until", "wait_until", lambda c, v: c.wait_until(v, timeout=0)),
]
TAKERS = {"Counter": COMMON_TAKERS + COUNTER_TAKERS, "ShardedCounter": COMMON_TAKERS}
TAKER_PARAMS = [
    pytest.param(cls, name, call, id=f"{cls}-{i}")
    for cls, takers in TAKERS.items()
    for i, name, call in takers
]

# The updates: (id, name in messages, subtracts?, call(counter, n)).
COMMON_UPDATES: list[tuple[str, str, bool, Callable[[Any, int], Any]]] = [
    ("increment", "increment", False, lambda c, n: c.increment(n)),
    ("increment-n=", "increment", False, lambda c, n: c.increment(n=n)),
    ("decrement", "decrement", True, lambda c, n: c.decrement(n)),
    ("decrement-n=", "decrement", True, lambda c, n: c.decrement(n=n)),
    ("+=", "+=", False, _iadd),
    ("-=", "-=", True, _isub),
]
UPDATES = {
    "Counter": [*COMMON_UPDATES, ("add", "add", False, lambda c, n: c.add(n))],
    "ShardedCounter": COMMON_UPDATES,
}
UPDATE_PARAMS = [
    pytest.param(cls, name, sub, call, id=f"{cls}-{i}")
    for cls, updates in UPDATES.items()
    for i, name, sub, call in updates
]


def _edge_message(cls: str, op: str, n: int, start: int) -> str:
    """A Counter names the value it stays at; a ShardedCounter's refusal is
    one stripe's (its other stripes are not read)."""
    return result_overflow(op, n, start) if cls == "Counter" else stripe_overflow(op, n)


# ---- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", NOT_INTEGERS)
@pytest.mark.parametrize(("cls", "fname", "call"), TAKER_PARAMS)
def test_non_integers_raise_type_error_and_change_nothing(
    impl: ModuleType, cls: str, fname: str, call: Callable[[Any, Any], Any], bad: Any
) -> None:
    c = getattr(impl, cls)(42)
    with pytest.raises(TypeError) as info:
        call(c, bad)
    assert type(info.value) is TypeError
    message = str(info.value)
    assert message.startswith(f"{fname}() expects an integer, not '")
    assert type(bad).__name__ in message  # names the type
    assert c.value() == 42


@pytest.mark.parametrize("bad", NOT_INTEGERS)
def test_constructor_rejects_non_integers(impl: ModuleType, cls_name: str, bad: Any) -> None:
    with pytest.raises(TypeError) as info:
        getattr(impl, cls_name)(bad)
    assert type(info.value) is TypeError
    assert str(info.value).startswith(f"{cls_name}() expects an integer, not '")
    assert type(bad).__name__ in str(info.value)


@pytest.mark.parametrize("big", OUT_OF_RANGE)
@pytest.mark.parametrize(("cls", "fname", "call"), TAKER_PARAMS)
def test_ints_outside_int64_raise_overflow_and_change_nothing(
    impl: ModuleType, cls: str, fname: str, call: Callable[[Any, Any], Any], big: Any
) -> None:
    c = getattr(impl, cls)(42)
    with pytest.raises(OverflowError) as info:
        call(c, big)
    assert type(info.value) is OverflowError
    assert str(info.value) == arg_overflow(fname, big)
    assert c.value() == 42


@pytest.mark.parametrize("big", OUT_OF_RANGE)
def test_constructor_rejects_ints_outside_int64(impl: ModuleType, cls_name: str, big: Any) -> None:
    with pytest.raises(OverflowError) as info:
        getattr(impl, cls_name)(big)
    assert type(info.value) is OverflowError
    assert str(info.value) == arg_overflow(cls_name, big)


@pytest.mark.parametrize(("cls", "fname", "call"), TAKER_PARAMS)
def test_a_failing_index_method_propagates_and_changes_nothing(
    impl: ModuleType, cls: str, fname: str, call: Callable[[Any, Any], Any]
) -> None:
    c = getattr(impl, cls)(42)
    with pytest.raises(ZeroDivisionError):
        call(c, BadIndex())
    assert c.value() == 42


class Colour(enum.IntEnum):
    GREEN = 3


class StrictInt(int):
    """An int subclass: its int value counts, whatever its __int__ says."""

    def __int__(self) -> int:
        return 99

    def __index__(self) -> int:
        return 98


@pytest.mark.parametrize(("obj", "meaning"), INDEX_LIKE)
def test_index_likes_are_accepted(impl: ModuleType, cls_name: str, obj: Any, meaning: int) -> None:
    cls = getattr(impl, cls_name)
    assert cls(obj).value() == meaning
    c = cls(100)
    c.increment(obj)
    assert c.value() == 100 + meaning
    c.increment(n=obj)
    c += obj
    assert c.value() == 100 + 3 * meaning
    c.decrement(obj)
    c.decrement(n=obj)
    c -= obj
    assert c.value() == 100


def test_int_subclasses_count_by_their_int_value(impl: ModuleType, cls_name: str) -> None:
    c = getattr(impl, cls_name)(Colour.GREEN)
    c.increment(StrictInt(5))
    assert c.value() == 8
    with pytest.raises(OverflowError):
        c.increment(StrictInt(2**64))
    assert c.value() == 8


# ---- overflow at both edges, for every update method --------------------------------

# (start, n): each is applied as "start + n" by the adding methods and "start - n"
# by the subtracting ones; Python's int arithmetic says which must overflow.
EDGE_CASES = [
    (INT64_MAX, 1),
    (INT64_MAX - 1, 1),
    (INT64_MAX, -1),
    (INT64_MIN, 1),
    (INT64_MIN, -1),
    (INT64_MIN + 1, -1),
    (INT64_MIN + 1, 1),
    (0, INT64_MAX),
    (1, INT64_MAX),
    (-1, INT64_MAX),
    (-2, INT64_MAX),
    (0, INT64_MIN),
    (-1, INT64_MIN),
    (1, INT64_MIN),
    (INT64_MIN, INT64_MIN),
    (INT64_MAX, INT64_MIN),
    (INT64_MIN, INT64_MAX),
    (INT64_MAX, INT64_MAX),
]


@pytest.mark.parametrize(("start", "n"), EDGE_CASES)
@pytest.mark.parametrize(("cls", "op", "sub", "call"), UPDATE_PARAMS)
def test_updates_at_the_int64_edges(
    impl: ModuleType,
    cls: str,
    op: str,
    sub: bool,
    call: Callable[[Any, int], Any],
    start: int,
    n: int,
) -> None:
    c = getattr(impl, cls)(start)
    expected = start - n if sub else start + n
    if in_int64(expected):
        result = call(c, n)
        assert c.value() == expected
        if op == "add":
            assert result == expected
    else:
        with pytest.raises(OverflowError) as info:
            call(c, n)
        assert type(info.value) is OverflowError
        assert str(info.value) == _edge_message(cls, op, n, start)
        assert c.value() == start


def test_decrement_by_int64_min_where_it_fits(impl: ModuleType, cls_name: str) -> None:
    cls = getattr(impl, cls_name)
    c = cls(-1)
    c.decrement(INT64_MIN)  # -1 - (-2**63) == 2**63 - 1
    assert c.value() == INT64_MAX
    c = cls(INT64_MIN)
    c -= INT64_MIN
    assert c.value() == 0
    with pytest.raises(OverflowError):
        c.decrement(INT64_MIN)  # 0 - (-2**63) does not fit
    assert c.value() == 0


# ---- C and pure say exactly the same thing -----------------------------------------


def _outcome(call: Callable[[], Any]) -> tuple[str, str]:
    try:
        return ("returned", repr(call()))
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def _scenarios() -> list[Any]:
    """(id, scenario(module) -> outcome) for every way to get an error."""
    out: list[Any] = []
    bad_args = [p.values[0] for p in NOT_INTEGERS] + [p.values[0] for p in OUT_OF_RANGE]
    bad_args += [BadIndex(), StrictInt(2**64), Index(2**100)]
    bad_ids = [p.id for p in NOT_INTEGERS] + [p.id for p in OUT_OF_RANGE]
    bad_ids += ["BadIndex", "StrictInt(2**64)", "Index(2**100)"]
    for cls, takers in TAKERS.items():
        for taker_id, _, call in takers:
            for bad_id, bad in zip(bad_ids, bad_args, strict=True):

                def scenario(
                    m: ModuleType, cls: str = cls, call: Any = call, bad: Any = bad
                ) -> Any:
                    c = getattr(m, cls)(7)
                    return _outcome(lambda: call(c, bad)), c.value()

                out.append(pytest.param(scenario, id=f"{cls}-{taker_id}-{bad_id}"))
            for start, n in [(INT64_MAX, 1), (INT64_MIN, -1), (INT64_MIN, 1), (-1, INT64_MIN)]:

                def scenario(
                    m: ModuleType, cls: str = cls, call: Any = call, start: int = start, n: int = n
                ) -> Any:
                    c = getattr(m, cls)(start)
                    return _outcome(lambda: call(c, n)), c.value()

                out.append(pytest.param(scenario, id=f"{cls}-{taker_id}-at-{start}-by-{n}"))
        for bad_id, bad in zip(bad_ids, bad_args, strict=True):

            def scenario(m: ModuleType, cls: str = cls, bad: Any = bad) -> Any:
                return _outcome(lambda: getattr(m, cls)(bad))

            out.append(pytest.param(scenario, id=f"{cls}-{bad_id}"))
    for timeout in [-1, float("nan"), "x", "0.01", [1], 10**400, float("inf"), 1e10]:

        def scenario(m: ModuleType, timeout: Any = timeout) -> Any:
            return _outcome(lambda: m.Counter(5).wait_until(5, timeout))

        out.append(pytest.param(scenario, id=f"Counter-wait_until-timeout-{timeout!r:.12}"))
    return out


@pytest.mark.parametrize("scenario", _scenarios())
def test_c_and_pure_report_identical_errors(
    core: ModuleType, pure: ModuleType, scenario: Callable[[ModuleType], Any]
) -> None:
    assert scenario(core) == scenario(pure)


# ---- pickle, copy, repr, subclasses -------------------------------------------------

VALUES = [0, 5, -5, INT64_MAX, INT64_MIN]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("v", VALUES)
def test_pickle_keeps_the_value(impl: ModuleType, cls_name: str, protocol: int, v: int) -> None:
    c = getattr(impl, cls_name)(v)
    clone = pickle.loads(pickle.dumps(c, protocol))
    assert type(clone) is type(c)
    assert clone.value() == v
    assert getattr(clone, "inflated", False) is False  # a ShardedCounter starts as one cell
    clone.decrement(1 if v > INT64_MIN else -1)
    assert c.value() == v


@pytest.mark.parametrize("v", VALUES)
def test_copy_and_deepcopy_keep_the_value(impl: ModuleType, cls_name: str, v: int) -> None:
    c = getattr(impl, cls_name)(v)
    for clone in (copy.copy(c), copy.deepcopy(c), copy.deepcopy([c, c])[0]):
        assert type(clone) is type(c)
        assert clone is not c
        assert clone.value() == v
        clone.reset()
        assert c.value() == v


def test_repr(impl: ModuleType, cls_name: str) -> None:
    cls = getattr(impl, cls_name)
    assert repr(cls()) == f"{cls_name}(0)"
    assert repr(cls(-12)) == f"{cls_name}(-12)"
    assert repr(cls(INT64_MAX)) == f"{cls_name}(9223372036854775807)"
    assert repr(cls(INT64_MIN)) == f"{cls_name}({INT64_MIN})"


def subclass_of(base: type) -> type:
    """A module-level subclass of ``base`` (so that pickle can find it) with a __dict__."""
    name = f"Tagged{base.__name__}_{base.__module__.replace('.', '_')}"
    cls = globals().get(name)
    if cls is None:

        def describe(self: Any) -> str:
            return f"{self.tag}={self.value()}"

        def increment(self: Any, n: int = 1) -> None:
            self.calls = getattr(self, "calls", 0) + 1
            base.increment(self, n)  # type: ignore[attr-defined]

        cls = type(name, (base,), {"__module__": __name__, "describe": describe})
        cls.increment = increment  # type: ignore[attr-defined]
        cls.__qualname__ = name
        globals()[name] = cls
    return cls


def test_subclass_works(impl: ModuleType, cls_name: str) -> None:
    base = getattr(impl, cls_name)
    Tagged = subclass_of(base)
    c = Tagged(3)
    c.tag = "jobs"
    c.increment(2)
    c += 1
    assert isinstance(c, base)
    assert c.value() == 6
    assert c.calls == 1
    assert c.describe() == "jobs=6"
    assert repr(c) == f"{Tagged.__name__}(6)"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_subclass_pickles_with_its_attributes(
    impl: ModuleType, cls_name: str, protocol: int
) -> None:
    Tagged = subclass_of(getattr(impl, cls_name))
    c = Tagged(-40)
    c.tag = "queue"
    clone = pickle.loads(pickle.dumps(c, protocol))
    assert type(clone) is Tagged
    assert clone.value() == -40
    assert clone.tag == "queue"
    for other in (copy.copy(c), copy.deepcopy(c)):
        assert other.value() == -40
        assert other.tag == "queue"
