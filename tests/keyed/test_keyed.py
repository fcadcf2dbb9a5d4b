"""KeyedCounter specification: a drop-in for collections.Counter with int counts.

Every test runs on the C core (tallies._tallies) and on the pure fallback.
The model of the stateful test is collections.Counter itself.
"""

from __future__ import annotations

import collections
import copy
import operator
import os
import pickle
import sys
import threading
import weakref
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import tallies
import tallies.keyed
from tallies import _pure_keyed
from tallies.keyed.api import Count

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _c_class() -> Any:
    if tallies.keyed.IMPLEMENTATION != "c":
        if os.environ.get("TALLIES_PURE") == "1":
            pytest.skip("TALLIES_PURE=1: the C core is deliberately not used")
        pytest.fail("the C extension tallies._tallies is not built")
    return tallies.keyed.KeyedCounter


IMPLS = {"c": _c_class, "python": lambda: _pure_keyed.KeyedCounter}


@pytest.fixture(params=["c", "python"])
def KC(request: pytest.FixtureRequest) -> Any:
    return IMPLS[request.param]()


def test_exported_class_is_the_selected_one() -> None:
    assert tallies.KeyedCounter is tallies.keyed.KeyedCounter
    assert tallies.KeyedCounter.__name__ == "KeyedCounter"
    if os.environ.get("TALLIES_PURE") == "1":
        assert tallies.keyed.IMPLEMENTATION == "python"


# ---- constructor forms, reading ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwds"),
    [
        ((), {}),
        (("abracadabra",), {}),
        ((["x", "y", "x", 1, 1.0, True],), {}),
        (({"a": 3, "b": -2, "c": 0},), {}),
        ((collections.Counter(a=5, b=1),), {}),
        ((), {"a": 2, "b": 7}),
        (("aab",), {"a": 10, "z": 1}),
        ((None,), {"q": 4}),
    ],
)
def test_constructor_forms_match_counter(KC: Any, args: Any, kwds: Any) -> None:
    kc = KC(*args, **kwds)
    c = collections.Counter(*args, **kwds)
    assert list(kc.items()) == list(c.items())
    assert kc == c and c == kc
    assert repr(kc) == repr(c).replace("Counter", "KeyedCounter", 1)
    assert len(kc) == len(c)
    assert list(kc) == list(c)
    assert list(kc.keys()) == list(c.keys())
    assert list(kc.values()) == list(c.values())
    assert kc.total() == c.total()
    assert kc.most_common() == c.most_common()
    assert kc.most_common(2) == c.most_common(2)
    assert sorted(map(repr, kc.elements())) == sorted(map(repr, c.elements()))
    assert bool(kc) == bool(c)


def test_reading_absent_key_does_not_insert(KC: Any) -> None:
    kc = KC(a=1)
    assert kc["missing"] == 0
    assert kc.value("missing") == 0
    assert kc.get("missing") is None
    assert kc.get("missing", 7) == 7
    assert kc.reset("missing") == 0
    assert "missing" not in kc
    assert len(kc) == 1


def test_fromkeys_is_undefined_like_counter(KC: Any) -> None:
    with pytest.raises(NotImplementedError) as ours:
        KC.fromkeys("abc")
    with pytest.raises(NotImplementedError) as theirs:
        collections.Counter.fromkeys("abc")
    assert str(ours.value) == str(theirs.value).replace("Counter", "KeyedCounter")


def test_views(KC: Any) -> None:
    kc = KC("hello")
    c = collections.Counter("hello")
    assert kc.keys() == c.keys()
    assert kc.keys() & {"l", "z"} == {"l"}
    assert ("l", 2) in kc.items() and ("l", 3) not in kc.items() and ("z", 0) not in kc.items()
    assert 2 in kc.values()
    assert dict(kc.items()) == dict(c)
    assert isinstance(kc, collections.abc.MutableMapping)
    assert KC[str] is not None  # generic alias, like collections.Counter[str]


def test_count_is_an_int_that_pickles_as_int(KC: Any) -> None:
    kc = KC(a=41)
    v = kc["a"]
    assert isinstance(v, int) and type(v) is Count
    assert v == 41 and v + 1 == 42 and 1 + v == 42 and v - 1 == 40 and v * 2 == 82
    assert type(v * 2) is int and type(-v) is int
    assert hash(v) == hash(41) and repr(v) == "41" and f"{v:04d}" == "0041"
    for loaded in (pickle.loads(pickle.dumps(v)), copy.copy(v), copy.deepcopy(v)):
        assert type(loaded) is int and loaded == 41
    assert b"Count" not in pickle.dumps(v)  # no reference to the counter or the tag


# ---- writing -------------------------------------------------------------------


def test_item_assignment_and_augmented_forms(KC: Any) -> None:
    kc, c = KC(), collections.Counter()
    for obj in (kc, c):
        obj["a"] += 3
        obj["b"] -= 2
        obj["a"] = obj["a"] + 1
        obj["c"] = 5
        obj["c"] = obj["c"] * 3  # a plain assignment
        obj["d"] = obj["d"]  # inserts d at 0, like Counter
        obj["e"] += 0
        obj["f"] = 1 + obj["f"]
        obj["b"] = obj["a"] + 100  # a Count from another key: plain assignment
        del obj["c"]
        del obj["never-there"]  # no KeyError, like Counter
    assert list(kc.items()) == list(c.items())


def test_assigning_a_value_read_earlier_restores_it(KC: Any) -> None:
    """saved = kc[k]; ...; kc[k] = saved restores saved, as in Counter (issue
    24, 6): the value a Count remembers only serves kc[k] += n / -= n."""
    for between in (
        lambda o: o.__setitem__("a", 0),
        lambda o: o.__delitem__("a"),
        lambda o: o.update(a=10),
        lambda o: o.subtract(a=2),
    ):
        kc, c = KC(a=5), collections.Counter(a=5)
        for obj in (kc, c):
            saved = obj["a"]
            between(obj)
            obj["a"] = saved
        assert kc["a"] == c["a"] == 5
    kc = KC(a=5)
    kc.reset()
    saved = 5
    kc["a"] = kc["a"]  # read and assigned back at once: a plain assignment of 0
    assert kc["a"] == 0
    kc["a"] += saved
    assert kc["a"] == 5


def test_subtracting_int64_min_in_place(KC: Any) -> None:
    """kc[k] -= INT64_MIN where it fits: a difference of 2**63, applied as a
    decrement by INT64_MIN (found by the store differential test)."""
    kc, c = KC(y=INT64_MIN), collections.Counter(y=INT64_MIN)
    for obj in (kc, c):
        obj["y"] -= INT64_MIN
    assert kc["y"] == c["y"] == 0
    with pytest.raises(OverflowError):
        kc["y"] -= INT64_MIN  # 0 + 2**63 does not fit
    assert kc["y"] == 0


def test_increment_decrement_value(KC: Any) -> None:
    kc = KC()
    kc.increment("a")
    kc.increment("a", 4)
    kc.increment("b", n=2)
    kc.decrement("a")
    kc.decrement("c", 3)
    kc.increment("z", 0)  # inserts, like Counter.update({"z": 0})
    assert kc.value("a") == 4 and kc.value("b") == 2 and kc.value("c") == -3
    assert list(kc.items()) == [("a", 4), ("b", 2), ("c", -3), ("z", 0)]


def test_reset_pop_discard_clear_popitem_setdefault(KC: Any) -> None:
    kc = KC(a=3, b=2, c=1)
    assert kc.reset("a") == 3 and kc["a"] == 0 and "a" in kc
    taken = kc.reset()
    assert type(taken) is collections.Counter and taken == collections.Counter(b=2, c=1)
    assert list(kc.items()) == [("a", 0), ("b", 0), ("c", 0)]
    kc.update(a=5, d=1)
    assert kc.pop("a") == 5 and "a" not in kc
    assert kc.pop("a", "dflt") == "dflt"
    with pytest.raises(KeyError):
        kc.pop("a")
    kc.discard("b")
    kc.discard("b")
    assert kc.popitem() == ("d", 1)
    assert kc.setdefault("n", 9) == 9 and kc.setdefault("n", 1) == 9
    assert kc.setdefault("m") == 0
    kc.clear()
    assert len(kc) == 0 and kc == collections.Counter()
    with pytest.raises(KeyError):
        kc.popitem()


def test_snapshot_is_a_plain_counter(KC: Any) -> None:
    kc = KC("mississippi")
    snap = kc.snapshot()
    assert type(snap) is collections.Counter
    assert snap == collections.Counter("mississippi")
    assert all(type(v) is int for v in snap.values())
    kc.increment("m")
    assert snap["m"] == 1


def test_update_and_subtract_match_counter(KC: Any) -> None:
    kc, c = KC("abc"), collections.Counter("abc")
    for obj in (kc, c):
        obj.update("aaz")
        obj.update({"b": 5, "y": -1})
        obj.update(collections.Counter(q=2), q=3, r=1)
        obj.subtract("ab")
        obj.subtract({"z": 4, "w": 2})
        obj.subtract(k=1)
        obj.update()
    kc.update(KC(a=1))
    c.update(collections.Counter(a=1))
    assert list(kc.items()) == list(c.items())


# ---- operators and comparisons -----------------------------------------------

OPERANDS = [
    ({}, {}),
    ({"a": 3, "b": 1, "c": 0, "d": -2}, {"b": 4, "c": -1, "e": 2, "d": -5}),
    ({"x": 1}, {"x": 1, "y": 0}),
    ({"x": 2, "y": 1}, {"x": 1}),
    ({"x": -1}, {}),
]


@pytest.mark.parametrize(("left", "right"), OPERANDS)
def test_operators_match_counter(KC: Any, left: Any, right: Any) -> None:
    cl, cr = collections.Counter(left), collections.Counter(right)
    for other_ours in (KC(right), cr):  # with a KeyedCounter and with a Counter
        kl = KC(left)
        for op in ("__add__", "__sub__", "__or__", "__and__"):
            ours = getattr(kl, op)(other_ours)
            theirs = getattr(cl, op)(cr)
            assert type(ours) is KC
            assert list(ours.items()) == list(theirs.items()), op
        for cmp in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"):
            assert getattr(kl, cmp)(other_ours) == getattr(cl, cmp)(cr), cmp
    # reflected: collections.Counter on the left
    kr = KC(right)
    assert list((cl + kr).items()) == list((cl + cr).items())
    assert list((cl - kr).items()) == list((cl - cr).items())
    assert list((cl | kr).items()) == list((cl | cr).items())
    assert list((cl & kr).items()) == list((cl & cr).items())
    assert (cl == kr) == (cl == cr) and (cl <= kr) == (cl <= cr) and (cl > kr) == (cl > cr)
    kl = KC(left)
    assert list((+kl).items()) == list((+cl).items())
    assert list((-kl).items()) == list((-cl).items())


@pytest.mark.parametrize(("left", "right"), OPERANDS)
@pytest.mark.parametrize("op", ["__iadd__", "__isub__", "__ior__", "__iand__"])
def test_inplace_operators_match_counter(KC: Any, left: Any, right: Any, op: str) -> None:
    for other_ours in (KC(right), collections.Counter(right)):
        kl, cl = KC(left), collections.Counter(left)
        res = getattr(kl, op)(other_ours)
        getattr(cl, op)(collections.Counter(right))
        assert res is kl
        assert list(kl.items()) == list(cl.items()), op


def test_operators_refuse_plain_dicts_like_counter(KC: Any) -> None:
    kc = KC(a=1)
    with pytest.raises(TypeError):
        kc + {"a": 1}
    with pytest.raises(TypeError):
        _ = kc <= {"a": 1}
    kc += {"a": 1}  # in-place forms take any mapping, like Counter
    assert kc["a"] == 2


def test_equality_with_counter_and_dict(KC: Any) -> None:
    kc = KC(a=1, b=0)
    assert kc == collections.Counter(a=1) and collections.Counter(a=1) == kc  # zero == missing
    plain = {"a": 1, "b": 0}
    assert kc == plain and plain == kc  # plain dict: dict equality
    assert kc != {"a": 1}
    assert not kc.__eq__({"a": 1})
    assert collections.Counter(a=1, b=0) != {"a": 1}  # the same rule for Counter itself
    assert kc != 5 and kc != "a"
    assert kc == KC(a=1)
    with pytest.raises(TypeError):
        hash(kc)


def test_pickle_copy_deepcopy(KC: Any) -> None:
    kc = KC({"a": 5, (1, 2): -3, 7: INT64_MAX, "z": INT64_MIN})
    for clone in (
        pickle.loads(pickle.dumps(kc)),
        pickle.loads(pickle.dumps(kc, protocol=0)),
        copy.copy(kc),
        copy.deepcopy(kc),
        kc.copy(),
    ):
        assert type(clone) is KC and clone is not kc
        assert list(clone.items()) == list(kc.items())
        clone.increment("a")
        assert kc["a"] == 5


# ---- bad input -----------------------------------------------------------------


class BadHash:
    def __hash__(self) -> int:
        raise RuntimeError("no hash for you")


class BadEq:
    """Hashes like an existing key and refuses to compare."""

    def __init__(self, h: int) -> None:
        self.h = h

    def __hash__(self) -> int:
        return self.h

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        raise ValueError("no eq for you")


def _state(kc: Any) -> list[Any]:
    return list(kc._items())


def test_unhashable_key_raises_typeerror_and_changes_nothing(KC: Any) -> None:
    kc = KC(a=1)
    before = _state(kc)
    for call in (
        lambda: kc.increment([1]),
        lambda: kc.decrement({}),
        lambda: kc.__setitem__([1], 3),
        lambda: kc[[1]],
        lambda: kc.value([1]),
        lambda: kc.pop([1]),
        lambda: kc.reset([1]),
        lambda: kc.update(["b", ["c"]]),
        lambda: kc.update({"b": 1}, **{}) or kc.update([["x"]]),
    ):
        with pytest.raises(TypeError, match="unhashable"):
            call()
    assert kc.value("b") == 1  # from the one update that was valid
    kc.decrement("b")
    kc.discard("b")
    assert _state(kc) == before


@pytest.mark.parametrize("bad", [1.5, "1", None, [1], 1j])
def test_non_integer_amount_raises_typeerror(KC: Any, bad: Any) -> None:
    kc = KC(a=1)
    with pytest.raises(TypeError, match=r"increment\(\) expects an integer"):
        kc.increment("a", bad)
    with pytest.raises(TypeError, match=r"decrement\(\) expects an integer"):
        kc.decrement("a", bad)
    with pytest.raises(TypeError):
        kc["a"] = bad
    with pytest.raises(TypeError):
        kc.update({"a": 1, "b": bad})
    with pytest.raises(TypeError):
        kc.update(a=1, b=bad)
    with pytest.raises(TypeError):
        kc.subtract({"a": 1, "b": bad})
    assert _state(kc) == [("a", 1)]


def test_index_objects_are_accepted(KC: Any) -> None:
    class Idx:
        def __index__(self) -> int:
            return 3

    kc = KC()
    kc.increment("a", Idx())
    kc["b"] = Idx()  # type: ignore[assignment]
    assert kc == collections.Counter(a=3, b=3)


def test_overflow_at_both_edges_changes_nothing(KC: Any) -> None:
    kc = KC(hi=INT64_MAX, lo=INT64_MIN)
    with pytest.raises(OverflowError, match="stays at 9223372036854775807"):
        kc.increment("hi")
    with pytest.raises(OverflowError, match="stays at -9223372036854775808"):
        kc.decrement("lo")
    with pytest.raises(OverflowError):
        kc["hi"] += 1
    with pytest.raises(OverflowError):
        kc["lo"] -= 1
    with pytest.raises(OverflowError):
        kc.decrement("fresh", INT64_MIN)  # 0 - INT64_MIN does not fit
    with pytest.raises(OverflowError, match="outside the signed 64-bit range"):
        kc.increment("a", 2**63)
    with pytest.raises(OverflowError):
        kc["a"] = 2**63
    with pytest.raises(OverflowError):
        kc.update({"a": 5, "hi": 1})  # the first addition is undone
    with pytest.raises(OverflowError):
        kc.update(["new", "hi"], hi=1)
    with pytest.raises(OverflowError):
        kc += collections.Counter(b=1, lo=-1)
    assert _state(kc) == [("hi", INT64_MAX), ("lo", INT64_MIN)]
    kc.decrement("hi")
    kc.increment("lo")
    assert _state(kc) == [("hi", INT64_MAX - 1), ("lo", INT64_MIN + 1)]


def test_key_whose_hash_raises(KC: Any) -> None:
    kc = KC(a=1)
    for call in (
        lambda: kc.increment(BadHash()),
        lambda: kc.value(BadHash()),
        lambda: kc[BadHash()],
        lambda: kc.pop(BadHash()),
        lambda: kc.update(["b", BadHash()]),
        lambda: kc.update({"b": 1, BadHash(): 1}),
    ):
        with pytest.raises(RuntimeError, match="no hash"):
            call()
    assert _state(kc) == [("a", 1)]
    kc.increment("a")
    assert kc["a"] == 2


def test_key_whose_eq_raises(KC: Any) -> None:
    kc = KC()
    first = BadEq(12345)
    kc.increment(first, 3)
    intruder = BadEq(12345)  # same hash: the lookup must call first.__eq__
    for call in (
        lambda: kc.increment(intruder),
        lambda: kc.value(intruder),
        lambda: kc.pop(intruder),
        lambda: kc.discard(intruder),
        lambda: kc.reset(intruder),
        lambda: kc.__setitem__(intruder, 1),
    ):
        with pytest.raises(ValueError, match="no eq"):
            call()
    assert _state(kc) == [(first, 3)]
    kc.increment(first)
    assert kc.pop(first) == 4 and len(kc) == 0


def test_key_whose_eq_touches_the_same_counter_does_not_deadlock(KC: Any) -> None:
    kc = KC()

    class Meddler:
        def __hash__(self) -> int:
            return 777

        def __eq__(self, other: object) -> bool:
            kc.increment("side")  # re-enters the same counter
            _ = kc.value("side")
            return self is other

    a, b = Meddler(), Meddler()
    done: list[Any] = []

    def work() -> None:
        kc.increment(a)
        kc.increment(b)  # collides with a: runs __eq__
        kc[b] += 1
        done.append(kc.pop(a))
        kc.discard(b)
        done.append(True)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "deadlock: a key's __eq__ touching the counter blocked it"
    assert done == [1, True]
    assert kc.value("side") >= 1 and a not in kc and b not in kc


def test_counts_move_between_small_ints_and_cells(KC: Any) -> None:
    """On GIL builds the C core stores counts in [-5, 256] as shared small
    ints while every key is a str/int/bool/float/bytes/None or a tuple of
    those, and other counts in
    cells; the first mutation with another key type turns all into cells.
    The behaviour must not change across those moves."""
    kc, c = KC(), collections.Counter()
    steps = [250, 6, 1, -300, 0, 600, -5, -6, 257, -1, 1, -(2**62), 2**62]
    for key in ("s", 7, b"b", 2.5, True):
        for n in steps:
            kc.increment(key, n)
            c[key] += n
            kc[key] += 1
            c[key] += 1
            assert kc.value(key) == c[key]
        kc[key] = 256
        c[key] = 256
        assert kc.reset(key) == 256 and kc[key] == 0
        c[key] = 0
    kc.increment("x", 300)
    c["x"] += 300
    assert kc.reset() == collections.Counter({"x": 300})
    for k in c:
        c[k] = 0
    kc.update({"s": 3, "x": 500})
    c.update({"s": 3, "x": 500})
    kc.increment(frozenset({"key"}), 3)  # leaves small mode for good
    c[frozenset({"key"})] += 3
    assert list(kc.items()) == list(c.items())
    for key in list(c):
        kc[key] += 1
        c[key] += 1
    assert kc.pop("s") == c.pop("s")
    assert list(kc.items()) == list(c.items())


def test_iteration_survives_mutation(KC: Any) -> None:
    kc = KC("abc")
    seen = []
    for key in kc:
        kc.increment(key + key)  # inserting while iterating: fine
        kc.discard("c")
        seen.append(key)
    assert seen == ["a", "b", "c"]
    for key, _ in kc.items():
        kc.increment(key * 3)
    assert len(kc) == 10  # a b aa bb cc, then the five tripled


def test_subclass_keeps_type(KC: Any) -> None:
    class Mine(KC):  # type: ignore[misc, valid-type]
        __slots__ = ()

    m = Mine("aab")
    assert type(m + m) is Mine and type(m.copy()) is Mine
    assert type(copy.deepcopy(m)) is Mine  # through __reduce__, as pickle does
    assert repr(m) == "Mine({'a': 2, 'b': 1})"


# ---- the stateful test: collections.Counter is the model ------------------------

KEYS = st.sampled_from(["a", "b", "c", 1, 2.0, (1, 2), frozenset({3})])
# Counts anywhere in the int64 range live on their own keys, so that the
# rules which add many small amounts never straddle an edge by accident.
EDGE_KEYS = st.sampled_from(["hi", "lo"])
SMALL = st.integers(-4, 6)
ANY64 = st.one_of(SMALL, st.integers(INT64_MIN, INT64_MAX), st.sampled_from([INT64_MIN, INT64_MAX]))
COUNTERS = st.dictionaries(KEYS, SMALL, max_size=5).map(collections.Counter)


def _fits(v: int) -> bool:
    return INT64_MIN <= v <= INT64_MAX


class KeyedVsCounter(RuleBasedStateMachine):
    """Model: collections.Counter.  Every rule does the same to both."""

    cls: Any = None

    @initialize(start=COUNTERS)
    def start(self, start: collections.Counter[Any]) -> None:
        self.kc = self.cls(start)
        self.model = collections.Counter(start)
        self.saved: list[tuple[Any, Any]] = []  # (key, value read earlier by kc[key])

    def _expect_overflow(self, new: int, fn: Any) -> bool:
        if _fits(new):
            return False
        with pytest.raises(OverflowError):
            fn()
        return True

    @rule(key=KEYS, n=SMALL)
    def increment_small(self, key: Any, n: int) -> None:
        self.kc.increment(key, n)
        self.model[key] += n
        self.kc.decrement(key)
        self.model[key] -= 1

    @rule(key=EDGE_KEYS, n=ANY64)
    def increment(self, key: Any, n: int) -> None:
        if not self._expect_overflow(self.model[key] + n, lambda: self.kc.increment(key, n)):
            self.kc.increment(key, n)
            self.model[key] += n

    @rule(key=EDGE_KEYS, n=ANY64)
    def decrement(self, key: Any, n: int) -> None:
        if not self._expect_overflow(self.model[key] - n, lambda: self.kc.decrement(key, n)):
            self.kc.decrement(key, n)
            self.model[key] -= n

    @rule(key=KEYS, n=SMALL)
    def augmented(self, key: Any, n: int) -> None:
        self.kc[key] += n
        self.model[key] += n
        self.kc[key] -= 1
        self.model[key] -= 1

    @rule(key=st.one_of(KEYS, EDGE_KEYS), n=SMALL)
    def assign_small(self, key: Any, n: int) -> None:
        self.kc[key] = n
        self.model[key] = n

    @rule(key=EDGE_KEYS, n=ANY64)
    def assign(self, key: Any, n: int) -> None:
        self.kc[key] = n
        self.model[key] = n

    @rule(key=st.one_of(KEYS, EDGE_KEYS))
    def read(self, key: Any) -> None:
        assert self.kc[key] == self.model[key]
        assert self.kc.value(key) == self.model[key]
        assert self.kc.get(key, None) == self.model.get(key, None)
        assert (key in self.kc) == (key in self.model)

    @rule(key=st.one_of(KEYS, EDGE_KEYS))
    def save(self, key: Any) -> None:
        """Keep a value read with kc[key] for a later assignment (issue 24, 6)."""
        self.saved.append((key, self.kc[key]))

    @rule(which=st.integers(0, 7))
    def restore(self, which: int) -> None:
        """kc[key] = a value read earlier: a plain assignment, whatever was done
        to the key since (assignments, del, update, reset), as in Counter."""
        if not self.saved:
            return
        key, value = self.saved[which % len(self.saved)]
        self.kc[key] = value
        self.model[key] = int(value)

    @rule(key=KEYS)
    def delete(self, key: Any) -> None:
        del self.kc[key]
        del self.model[key]

    @rule(key=st.one_of(KEYS, EDGE_KEYS))
    def pop(self, key: Any) -> None:
        assert self.kc.pop(key, None) == self.model.pop(key, None)

    @rule(key=KEYS)
    def discard(self, key: Any) -> None:
        self.kc.discard(key)
        self.model.pop(key, None)

    @rule(key=KEYS)
    def reset_key(self, key: Any) -> None:
        assert self.kc.reset(key) == self.model.get(key, 0)
        if key in self.model:
            self.model[key] = 0

    @rule()
    def reset_all(self) -> None:
        taken = self.kc.reset()
        assert list(taken.items()) == list(self.model.items())
        for key in self.model:
            self.model[key] = 0

    @rule()
    def clear(self) -> None:
        self.kc.clear()
        self.model.clear()

    @rule(key=KEYS, n=SMALL)
    def setdefault(self, key: Any, n: int) -> None:
        assert self.kc.setdefault(key, n) == self.model.setdefault(key, n)

    @rule()
    def popitem(self) -> None:
        if self.model:
            assert self.kc.popitem() == self.model.popitem()
        else:
            with pytest.raises(KeyError):
                self.kc.popitem()

    @rule(elems=st.lists(KEYS, max_size=6), kw=st.dictionaries(st.sampled_from("ab"), SMALL))
    def update_iterable(self, elems: list[Any], kw: dict[str, int]) -> None:
        self.kc.update(elems, **kw)
        self.model.update(elems, **kw)

    @rule(other=COUNTERS, as_dict=st.booleans())
    def update_mapping(self, other: collections.Counter[Any], as_dict: bool) -> None:
        arg = dict(other) if as_dict else other
        self.kc.update(arg)
        self.model.update(arg)

    @rule(elems=st.lists(KEYS, max_size=6), other=COUNTERS)
    def subtract(self, elems: list[Any], other: collections.Counter[Any]) -> None:
        self.kc.subtract(elems)
        self.model.subtract(elems)
        self.kc.subtract(other)
        self.model.subtract(other)

    @rule(big=st.sampled_from([INT64_MAX, INT64_MIN]), key=EDGE_KEYS)
    def update_that_overflows_changes_nothing(self, big: int, key: Any) -> None:
        pairs = {"a": 1, "new": 1, key: big}
        if all(_fits(self.model[k] + v) for k, v in pairs.items()):
            self.kc.update(pairs)
            self.model.update(pairs)
        else:
            before = list(self.kc.items())
            with pytest.raises(OverflowError):
                self.kc.update(pairs)
            assert list(self.kc.items()) == before

    @rule(
        other=COUNTERS,
        op=st.sampled_from([operator.add, operator.sub, operator.or_, operator.and_]),
    )
    def binary(self, other: collections.Counter[Any], op: Any) -> None:
        def same(ours: Any, theirs: collections.Counter[Any]) -> None:
            if all(_fits(v) for v in theirs.values()):
                assert list(ours().items()) == list(theirs.items())
            else:  # a result count outside int64 (e.g. 0 - -2**63)
                with pytest.raises(OverflowError):
                    ours()

        theirs = op(self.model, other)
        same(lambda: op(self.kc, other), theirs)
        same(lambda: op(self.kc, self.cls(other)), theirs)
        same(lambda: op(other, self.kc), op(other, self.model))  # Counter on the left

    @rule()
    def unary(self) -> None:
        assert list((+self.kc).items()) == list((+self.model).items())
        neg = -self.model
        if all(_fits(v) for v in neg.values()):
            assert list((-self.kc).items()) == list(neg.items())
        else:  # -(-2**63) is not an int64
            with pytest.raises(OverflowError):
                _ = -self.kc

    @rule(other=COUNTERS, op=st.sampled_from(["__iadd__", "__isub__", "__ior__", "__iand__"]))
    def inplace(self, other: collections.Counter[Any], op: str) -> None:
        model_after = getattr(collections.Counter(self.model), op)(other)
        if not all(_fits(v) for v in model_after.values()):
            return  # overflow in place is covered by test_overflow_at_both_edges
        getattr(self.kc, op)(other)
        self.model = model_after

    @rule(other=COUNTERS)
    def compare(self, other: collections.Counter[Any]) -> None:
        for cmp in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"):
            assert getattr(self.kc, cmp)(other) == getattr(self.model, cmp)(other)
        assert (self.kc == dict(other)) == (dict(self.model) == dict(other))

    @rule(n=st.one_of(st.none(), st.integers(0, 8)))
    def queries(self, n: int | None) -> None:
        assert self.kc.most_common(n) == self.model.most_common(n)
        assert self.kc.total() == self.model.total()
        if sum(v for v in self.model.values() if v > 0) < 1000:
            els = sorted(map(repr, self.kc.elements()))
            assert els == sorted(map(repr, self.model.elements()))
        assert self.kc.snapshot() == self.model
        assert repr(self.kc) == repr(self.model).replace("Counter", "KeyedCounter", 1)

    # ---- where Counter leaves the operation to a plain dict, and its edges
    # (issues 27 and 28): the outcome (result type, items in order, or the
    # exception type) must be Counter's, and the counter must be left as the
    # model is.

    @staticmethod
    def _outcome(fn: Any) -> Any:
        try:
            r = fn()
        except Exception as exc:  # the outcome under comparison
            return type(exc)
        if isinstance(r, list):
            return r
        kind = (
            "multiset" if isinstance(r, collections.Counter) or hasattr(r, "increment") else type(r)
        )
        return (kind, list(r.items()))

    @rule(
        other=COUNTERS,
        op=st.sampled_from([operator.add, operator.sub, operator.or_, operator.and_]),
    )
    def binary_with_a_plain_dict(self, other: collections.Counter[Any], op: Any) -> None:
        d = dict(other)
        if not all(_fits(v) for v in op(self.model, other).values()):
            return  # overflow: covered by `binary`
        assert self._outcome(lambda: op(self.kc, d)) == self._outcome(lambda: op(self.model, d))
        assert self._outcome(lambda: op(d, self.kc)) == self._outcome(lambda: op(d, self.model))

    @rule(other=COUNTERS, op=st.sampled_from(["__iadd__", "__isub__", "__ior__", "__iand__"]))
    def inplace_with_a_plain_dict(self, other: collections.Counter[Any], op: str) -> None:
        model_after = collections.Counter(self.model)
        expected = self._outcome(lambda: getattr(model_after, op)(dict(other)))
        if not all(_fits(v) for v in model_after.values()):
            return  # overflow in place is covered by test_overflow_at_both_edges
        assert self._outcome(lambda: getattr(self.kc, op)(dict(other))) == expected
        self.model = model_after

    @rule()
    def reversed_views(self) -> None:
        assert list(reversed(self.kc)) == list(reversed(self.model))
        assert list(reversed(self.kc.keys())) == list(reversed(self.model.keys()))
        assert list(reversed(self.kc.values())) == list(reversed(self.model.values()))
        assert list(reversed(self.kc.items())) == list(reversed(self.model.items()))

    @rule(
        n=st.one_of(
            st.integers(-(2**70), 2**70),
            st.sampled_from([2**64, -(2**64), 1.0, 2.0, 0.5, 0.0, True, False, "x"]),
        )
    )
    def most_common_any_argument(self, n: Any) -> None:
        ours = self._outcome(lambda: self.kc.most_common(n))
        assert ours == self._outcome(lambda: self.model.most_common(n))

    @rule()
    def weak_reference(self) -> None:
        ref = weakref.ref(self.kc)
        assert ref() is self.kc

    @rule()
    def pickled(self) -> None:
        clone = pickle.loads(pickle.dumps(self.kc))
        assert list(clone.items()) == list(self.model.items())
        self.kc = clone

    @invariant()
    def same_counts_same_order(self) -> None:
        assert list(self.kc.items()) == list(self.model.items())
        assert list(self.kc) == list(self.model)
        assert len(self.kc) == len(self.model)


@pytest.mark.parametrize("impl", ["c", "python"])
def test_stateful_against_collections_counter(impl: str) -> None:
    machine = type(f"KeyedVsCounter_{impl}", (KeyedVsCounter,), {"cls": IMPLS[impl]()})
    runner = machine.TestCase
    runner.settings = settings(
        max_examples=int(os.environ.get("TALLIES_HYPOTHESIS_EXAMPLES", "150")),
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    runner("runTest").runTest()


def test_refcounts_do_not_leak(KC: Any) -> None:
    if not hasattr(sys, "getrefcount"):
        pytest.skip("no sys.getrefcount on this interpreter")
    key = "refcount-probe-key-" + str(id(KC))
    kc = KC()
    base = sys.getrefcount(key)
    for _ in range(100):
        kc.increment(key)
        kc.value(key)
        kc.reset(key)
    assert sys.getrefcount(key) == base + 1  # the dict's one reference
    kc.pop(key)
    assert sys.getrefcount(key) == base


def test_a_count_made_after_others_were_freed_is_whole(KC: Any) -> None:
    """Freed Counts are reused (the C core keeps a few on GIL builds): a new one
    carries only its own value, counter and key, with nothing left of the old."""
    a, b = KC(x=5), KC(y=-(2**62))
    for i in range(3):
        counts = [a["x"] for _ in range(40)]  # more than the free list keeps
        assert counts == [5 - 5 * i] * 40
        del counts  # all freed, some kept for reuse
        big = b["y"]
        assert big == -(2**62) + 8 * i and type(big) is Count
        b.increment("y")  # in between: kept, since only the difference is applied
        b["y"] = big + 7  # to b's "y", not to a's "x"
        small = a["x"]
        a["x"] = small - 5
    assert a == collections.Counter(x=-10) and b == collections.Counter(y=-(2**62) + 24)
    zero = a["absent"]
    assert zero == 0 and "absent" not in a
    a["absent"] = zero + 1
    assert a["absent"] == 1


def test_a_count_in_a_reference_cycle_is_collected(KC: Any) -> None:
    """A reused Count is tracked by the collector like a new one: a cycle through
    it (key -> Count -> counter -> key) is freed by gc.collect()."""
    import gc
    import weakref

    class Key:
        def __hash__(self) -> int:
            return 1

    for _ in range(3):  # the second and third rounds take Counts from the free list
        kc = KC()
        key = Key()
        kc[key] += 1
        key.count = kc[key]  # type: ignore[attr-defined]
        assert gc.is_tracked(key.count)  # type: ignore[attr-defined]
        gone = weakref.ref(key)
        del kc, key
        gc.collect()
        assert gone() is None
