"""KeyedCounter where it meets collections.Counter's own edges (issues 27 and 28).

Each case is run on collections.Counter and on both cores, and the three must
agree (results, their order, their types, and the exception types):
reversed() of the counter and of its views, the mixed operators with plain
dicts (``c | d`` is the dict's own ``|``: a dict; ``+ - &`` raise TypeError;
the in-place forms take any mapping), ``most_common`` with any argument
Counter takes, weak references, and a subclass's ``__slots__`` and
``__dict__`` through pickle and copies.  What still differs from
collections.Counter is listed in KeyedCounter's docstring (and the README's
KeyedCounter section) and checked at the end.
"""

from __future__ import annotations

import collections
import copy
import gc
import json
import operator
import pickle
import weakref
from collections import OrderedDict
from typing import Any

import pytest

import tallies.keyed
from tallies._pure_keyed import KeyedCounter as PureKeyedCounter


@pytest.fixture(params=["c", "python"])
def KC(request: pytest.FixtureRequest) -> Any:
    if request.param == "c":
        if tallies.keyed.IMPLEMENTATION != "c":
            pytest.skip("the C core is not in use here (TALLIES_PURE=1 or not built)")
        return tallies.keyed.KeyedCounter
    return PureKeyedCounter


def outcome(fn: Any) -> Any:
    """What fn() gives: (type name, items in order), or the exception's type."""
    try:
        r = fn()
    except Exception as exc:  # the outcome under comparison
        return type(exc)
    if isinstance(r, (list, tuple)):
        return ("list", list(r))
    if hasattr(r, "items"):
        kind = (
            "multiset"
            if isinstance(r, collections.Counter) or hasattr(r, "increment")
            else type(r).__name__
        )
        return (kind, list(r.items()))
    return (type(r).__name__, r)


START = {"a": 1, "b": 3, "n": -1, "z": 0}


def test_reversed_matches_counter(KC: Any) -> None:
    """reversed(kc) raised TypeError on the C core and gave [0, 0, ...] (kc[1],
    kc[0] through the sequence protocol) on the fallback."""
    kc, c = KC(START), collections.Counter(START)
    assert list(reversed(kc)) == list(reversed(c)) == ["z", "n", "b", "a"]
    assert list(reversed(kc.keys())) == list(reversed(c.keys()))
    assert list(reversed(kc.values())) == list(reversed(c.values()))
    assert list(reversed(kc.items())) == list(reversed(c.items()))
    it = reversed(kc)
    kc["new"] = 1  # a copy, taken at once
    assert list(it) == ["z", "n", "b", "a"]


MIXED = {
    "|": operator.or_,
    "+": operator.add,
    "-": operator.sub,
    "&": operator.and_,
}
OTHERS = {
    "dict": lambda: {"b": 2, "z": 5, "q": -4},
    "OrderedDict": lambda: OrderedDict([("q", 7), ("a", 9)]),
    "empty dict": dict,
}


@pytest.mark.parametrize("op", sorted(MIXED))
@pytest.mark.parametrize("other", sorted(OTHERS))
def test_mixed_operators_with_plain_mappings_match_counter(KC: Any, op: str, other: str) -> None:
    """``kc | {"b": 2}`` raised TypeError where Counter returns a dict."""
    f, make = MIXED[op], OTHERS[other]
    assert outcome(lambda: f(KC(START), make())) == outcome(
        lambda: f(collections.Counter(START), make())
    )
    assert outcome(lambda: f(make(), KC(START))) == outcome(
        lambda: f(make(), collections.Counter(START))
    )


@pytest.mark.parametrize("op", ["__iadd__", "__isub__", "__ior__", "__iand__"])
@pytest.mark.parametrize(
    "other", [{"b": 2, "z": 5}, {"a": 4, "b": 1, "n": 0, "z": 2}, {}, None, 1, [("a", 1)]]
)
def test_in_place_operators_with_any_operand_match_counter(KC: Any, op: str, other: Any) -> None:
    kc, c = KC(START), collections.Counter(START)
    assert outcome(lambda: getattr(kc, op)(copy.copy(other))) == outcome(
        lambda: getattr(c, op)(copy.copy(other))
    )
    assert list(kc.items()) == list(c.items())  # what was applied before an error, too


MOST_COMMON_ARGS = [
    None,
    0,
    1,
    2,
    3,
    10,
    -1,
    -(2**64),
    2**64,
    2**63,
    True,
    False,
    1.0,
    2.0,
    0.5,
    0.0,
    "x",
]


@pytest.mark.parametrize("n", MOST_COMMON_ARGS, ids=repr)
@pytest.mark.parametrize(
    "start", [START, {}, {"a": 2, "b": 2, "c": 2}], ids=["mixed", "empty", "ties"]
)
def test_most_common_takes_what_counter_takes(KC: Any, n: Any, start: dict[str, int]) -> None:
    """most_common(2**64) raised OverflowError and most_common(1.0) TypeError."""
    assert outcome(lambda: KC(start).most_common(n)) == outcome(
        lambda: collections.Counter(start).most_common(n)
    )


def test_a_keyed_counter_takes_weak_references(KC: Any) -> None:
    kc = KC(START)
    ref = weakref.ref(kc)
    cache = weakref.WeakValueDictionary({"kc": kc})
    assert ref() is kc and cache["kc"] is kc
    del kc
    gc.collect()
    assert ref() is None and "kc" not in cache


def _subclass(base: type, slots: tuple[str, ...]) -> type:
    name = f"Keyed{'_'.join(slots) or 'Plain'}_{base.__module__.replace('.', '_')}"
    cls = globals().get(name)
    if cls is None:
        cls = type(name, (base,), {"__module__": __name__, "__slots__": slots})
        cls.__qualname__ = name
        globals()[name] = cls
    return cls


@pytest.mark.parametrize("slots", [("tag",), ("tag", "__dict__")])
def test_a_subclass_keeps_its_state_through_pickle_and_copies(
    KC: Any, slots: tuple[str, ...]
) -> None:
    cls = _subclass(KC, slots)
    kc = cls(START)
    kc.tag = ["t"]
    if "__dict__" in slots:
        kc.note = "n"
    clones = [pickle.loads(pickle.dumps(kc, p)) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    for clone in [*clones, copy.copy(kc), copy.deepcopy(kc)]:
        assert type(clone) is cls and clone is not kc
        assert list(clone.items()) == list(kc.items())
        assert clone.tag == ["t"] and getattr(clone, "note", "n") == "n"
    assert copy.deepcopy(kc).tag is not kc.tag


def test_what_still_differs_from_counter_is_what_the_docs_say(KC: Any) -> None:
    """Not a dict: isinstance(kc, dict) is False and json.dumps(kc) raises
    TypeError; json.dumps(kc.snapshot()) is the one-line way (issue 28)."""
    kc = KC(START)
    assert not isinstance(kc, dict)
    with pytest.raises(TypeError):
        json.dumps(kc)
    assert json.loads(json.dumps(kc.snapshot())) == START
    assert json.loads(json.dumps({"k": kc.snapshot()})) == {"k": START}
    doc = tallies.keyed.KeyedCounter.__doc__ or ""
    assert "drop-in" not in doc and "json.dumps(kc.snapshot())" in doc


def test_an_iterables_length_hint_is_not_asked(KC: Any) -> None:
    """Counting an iterable asks nothing of it but its elements, as Counter
    does: a __length_hint__ that raises does not matter."""

    class Elements:
        def __iter__(self) -> Any:
            return iter("abca")

        def __length_hint__(self) -> int:
            raise ValueError("not asked")

    kc, c = KC(a=1), collections.Counter(a=1)
    kc.update(Elements())
    c.update(Elements())
    assert list(kc.items()) == list(c.items())
