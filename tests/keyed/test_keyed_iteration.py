"""Iteration walks a copy of the keys taken at once, whatever the loop body (or a
finaliser, or another thread) does to the counter meanwhile.

With a GIL the C iterators borrow the keys from the table instead of taking a
reference to each (keyed.c, "keys_about_to_drop"): before the counter drops any
key (a removal, a clear, a garbage collection), every iterator still borrowing
takes its own references to the keys it has not handed out.  These tests hold
both builds and the pure-Python fallback to the same behaviour, and check that
no reference is lost or leaked on the way.
"""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any

import pytest

from tallies import _pure_keyed
from tallies.keyed import IMPLEMENTATION, KeyedCounter

IMPLS = [KeyedCounter] + ([_pure_keyed.KeyedCounter] if IMPLEMENTATION == "c" else [])


class Key:
    """A key whose only strong reference can be the counter's."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.n == self.n

    def __repr__(self) -> str:
        return f"Key({self.n})"


@pytest.fixture(params=IMPLS, ids=lambda c: c.__module__)
def KC(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.mark.parametrize("view", ["keys", "items", "iter"])
def test_removing_every_key_in_the_loop_still_yields_every_key(KC: Any, view: str) -> None:
    kc = KC()
    for i in range(100):
        kc.increment(Key(i), i + 1)  # the counter holds the only reference
    refs = [weakref.ref(k) for k in list(kc)]
    seen = []
    it = {"keys": kc.keys, "items": kc.items, "iter": lambda: kc}[view]()
    for x in it:
        k = x[0] if view == "items" else x
        seen.append(k.n)
        if k.n == 0:
            kc.clear()  # drops every key not yet reached
        elif k.n % 2:
            kc.pop(Key(k.n + 1), None)
    assert seen == list(range(100))
    assert len(kc) == 0
    del it, x, k
    gc.collect()
    assert [r() for r in refs] == [None] * 100  # nothing leaked


def test_items_yield_the_counts_of_the_copy(KC: Any) -> None:
    kc = KC(a=1, b=2, c=3)
    out = []
    for k, v in kc.items():
        out.append((k, v))
        del kc["c"]  # removed before it is reached: still yielded
        kc.increment("d")  # inserted after the copy: not yielded
    assert out == [("a", 1), ("b", 2), ("c", 3)]


def test_an_abandoned_iterator_returns_every_reference(KC: Any) -> None:
    keys = [f"key-{i}-{'x' * i}" for i in range(50)]
    kc = KC(dict.fromkeys(keys, 7))
    before = [sys.getrefcount(k) for k in keys]
    for stop in (0, 1, 25, 49, 50):
        it = iter(kc.items())
        for _ in range(stop):
            next(it)
        if stop == 25:
            kc.pop(keys[30])  # the iterator takes its own references here
            kc[keys[30]] = 7
        del it
        assert [sys.getrefcount(k) for k in keys] == before


def test_a_finaliser_that_clears_the_counter_during_iteration(KC: Any) -> None:
    kc = KC()

    cleared_after: list[int] = []

    class Bomb:
        def __del__(self) -> None:
            kc.clear()
            cleared_after.append(len(seen))

    for i in range(20):
        kc.increment(Key(i))
    bomb_holder = [Bomb()]
    seen = []
    for k in kc:
        seen.append(k.n)
        if k.n == 3:
            bomb_holder.clear()  # runs __del__: clears the counter mid-loop
    assert seen == list(range(20))
    assert cleared_after == [4]  # the counter was cleared with 16 keys still to visit
    assert len(kc) == 0


def test_a_cycle_through_an_iterator_is_collected(KC: Any) -> None:
    kc = KC()
    k = Key(1)
    kc.increment(k)
    kc.increment(Key(2))
    it = iter(kc)
    k.it = it  # type: ignore[attr-defined]  # kc -> k -> it -> kc
    probe = weakref.ref(k)
    del kc, it, k
    gc.collect()
    assert probe() is None


def test_two_iterators_and_a_removal(KC: Any) -> None:
    kc = KC({Key(i): i for i in range(10)})
    a, b = iter(kc), iter(kc.items())
    assert next(a).n == 0 and next(b)[0].n == 0
    for i in range(10):
        kc.pop(Key(i))
    assert [k.n for k in a] == list(range(1, 10))
    assert [(k.n, v) for k, v in b] == [(i, i) for i in range(1, 10)]
