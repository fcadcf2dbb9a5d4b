"""KeyedCounter's own table (issue 12): the paths the C core added for it.

Each test runs on both cores (the ``KC`` fixture), with collections.Counter
as the model: growth and the switch from the str-only entry layout to the one
with stored hashes, keys whose __eq__ resizes the very table being probed,
bulk counting with its undo, the C operators and ==, and iterators that reuse
their result objects.
"""

from __future__ import annotations

import collections
import sys
from typing import Any

import pytest

from tallies._pure_keyed import KeyedCounter as PureKeyedCounter
from tallies.keyed import KeyedCounter

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


@pytest.fixture(params=["c", "python"])
def KC(request: pytest.FixtureRequest) -> Any:
    if request.param == "c":
        from tallies.keyed import IMPLEMENTATION

        if IMPLEMENTATION != "c":
            pytest.skip("the C core is not in use (TALLIES_PURE=1 or not built)")
        return KeyedCounter
    return PureKeyedCounter


def test_growth_and_layout_switch_keep_every_count_and_the_order(KC: Any) -> None:
    kc, c = KC(), collections.Counter()
    for i in range(3000):
        key = f"k{i}"
        kc.increment(key, i)
        c[key] += i
        if i % 7 == 0:
            kc.discard(f"k{i // 2}")
            c.pop(f"k{i // 2}", None)
    assert list(kc.items()) == list(c.items())
    odd: list[Any] = [frozenset({1}), (1, "a"), 3.5, 10**30, None]
    for j, key in enumerate(odd):  # the first non-str key changes the layout
        kc.increment(key, j + 1)
        c[key] += j + 1
    assert list(kc.items()) == list(c.items())
    assert kc.total() == c.total() and len(kc) == len(c)


def test_sizeof_counts_the_table(KC: Any) -> None:
    small = sys.getsizeof(KC())
    kc = KC({f"k{i}": i for i in range(1000)})
    assert sys.getsizeof(kc) > small + 1000 * 8


def test_a_key_whose_eq_grows_the_table_during_the_lookup(KC: Any) -> None:
    kc = KC()
    calls = [0]

    class Grower:
        def __hash__(self) -> int:
            return 42

        def __eq__(self, other: object) -> bool:
            calls[0] += 1
            for i in range(50):  # forces resizes of the table being probed
                kc.increment(f"g{calls[0]}-{i}")
            return self is other

    a, b = Grower(), Grower()
    kc.increment(a)
    kc.increment(b)  # probes past a: a.__eq__ runs and resizes
    kc.increment(b)
    assert kc.value(a) == 1 and kc.value(b) == 2
    assert kc.pop(a) == 1 and kc.pop(b) == 2
    assert calls[0] >= 1  # a.__eq__ did run inside the lookups
    assert len(kc) == 50 * calls[0] and all(k.startswith("g") for k in kc)


def test_counting_an_iterable_is_all_or_nothing(KC: Any) -> None:
    kc = KC(hi=INT64_MAX)
    before = list(kc.items())
    with pytest.raises(TypeError, match="unhashable"):
        kc.update(["new", "other", ["x"]])
    with pytest.raises(OverflowError):
        kc.update(iter(["new", "other", "hi"]))  # a generator: counted, then undone
    with pytest.raises(OverflowError):
        KC(lo=INT64_MIN).subtract(["fresh", "lo"])
    assert list(kc.items()) == before  # "new" and "other" were removed again
    kc.update(x for x in "abca")
    kc.subtract("ab")
    assert kc == collections.Counter(hi=INT64_MAX, a=1, c=1)
    assert list(kc) == ["hi", "a", "b", "c"]  # b stays, at 0, like Counter


@pytest.mark.parametrize("op", ["+", "-", "|", "&"])
def test_operators_match_counter_both_ways(KC: Any, op: Any) -> None:
    a = {"x": 3, "y": -2, "z": 0, (1, 2): 5, frozenset({1}): 7}
    b = {"y": 4, "x": 1, "w": -3, "v": 2, frozenset({1}): 9}
    ka, kb = KC(a), KC(b)
    ca, cb = collections.Counter(a), collections.Counter(b)
    f = {"+": lambda p, q: p + q, "-": lambda p, q: p - q}
    f |= {"|": lambda p, q: p | q, "&": lambda p, q: p & q}
    want = f[op](ca, cb)
    for got in (f[op](ka, kb), f[op](ka, cb), f[op](ca, kb)):
        assert type(got) is KC
        assert list(got.items()) == list(want.items())
    assert list((+ka).items()) == list((+ca).items())
    assert list((-ka).items()) == list((-ca).items())


def test_operator_overflow_and_bad_counter_values(KC: Any) -> None:
    kc = KC(a=INT64_MAX)
    with pytest.raises(OverflowError):
        kc + kc
    with pytest.raises(OverflowError):
        KC(a=5) - collections.Counter(a=INT64_MIN)  # 5 + 2**63: kept, cannot fit
    assert KC(a=-5) - collections.Counter(a=INT64_MAX) == KC()  # below: dropped
    with pytest.raises(TypeError):
        kc + collections.Counter(b=1.5)
    assert list(kc.items()) == [("a", INT64_MAX)]


def test_equality_matches_counter(KC: Any) -> None:
    kc = KC(a=1, b=0)
    assert kc == collections.Counter(a=1) and kc == KC(a=1)
    assert kc != collections.Counter(a=2) and kc != KC(a=1, c=1)
    assert kc == collections.Counter(a=1.0)  # Counter's rule: values compared as given
    assert kc != collections.Counter(a=2**70)
    assert (kc == {"a": 1}) is False  # a plain dict: dict equality (b: 0 differs)


def test_item_and_value_iterators_reuse_nothing_a_caller_keeps(KC: Any) -> None:
    counts = {f"k{i}": 1000 + i * 1_000_003 for i in range(200)}
    counts["small"] = 7
    counts["neg"] = -(10**15)
    kc = KC(counts)
    kept = []
    for k, v in kc.items():
        kept.append((k, v))  # keeps every int: none may be rewritten later
    assert kept == list(counts.items())
    seen = {}
    for k, v in kc.items():  # drops them: they may be reused, values stay right
        seen[k] = v + 0
    assert seen == counts
    assert list(kc.values()) == list(counts.values())
    pairs = list(kc.items())
    assert pairs == list(counts.items()) and len({id(p) for p in pairs}) == len(pairs)


def test_most_common_and_total(KC: Any) -> None:
    data = {f"k{i}": (i * 37) % 11 - 3 for i in range(100)}
    kc, c = KC(data), collections.Counter(data)
    for n in (None, 0, 1, 5, 99, 100, 1000, -1):
        assert kc.most_common(n) == c.most_common(n)
    assert kc.total() == c.total()
    assert KC(a=INT64_MAX, b=INT64_MAX).total() == 2 * INT64_MAX
