"""Counting an iterable holds its distinct keys, not the whole input (issue 27).

``KeyedCounter(iterable)``, ``update(iterable)`` and ``subtract(iterable)``
used to copy the input into a list plus an array of hashes before counting:
53 / 94 / 175 MiB for 2.5M / 5M / 10M small ints, 246 MiB for 3M f-strings
of 10 distinct values, where ``collections.Counter`` stays flat.  They now
consume the input one element at a time into a private map of its distinct
keys (then apply it), so their peak does not grow with the input's length.
Measured with tracemalloc (every allocation of the C core and of Python is
traced), on both cores, against ``collections.Counter`` in the same run.
"""

from __future__ import annotations

import collections
import gc
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

import pytest

import tallies.keyed
from tallies._pure_keyed import KeyedCounter as PureKeyedCounter

KIB = 1024


@pytest.fixture(params=["c", "python"])
def KC(request: pytest.FixtureRequest) -> Any:
    if request.param == "c":
        if tallies.keyed.IMPLEMENTATION != "c":
            pytest.skip("the C core is not in use here (TALLIES_PURE=1 or not built)")
        return tallies.keyed.KeyedCounter
    return PureKeyedCounter


def _peak(fn: Callable[[], Any]) -> int:
    """Bytes allocated at the peak of fn() above what was allocated before."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    del result
    return peak


def _small_ints(n: int) -> list[int]:
    return [i % 10 for i in range(n)]  # built before the measurement: the caller's


def _fstrings(n: int) -> Iterable[str]:
    return (f"k{i % 10}" for i in range(n))  # each string freed once counted


@pytest.mark.parametrize("source", [_small_ints, _fstrings], ids=["small ints", "f-strings"])
def test_peak_memory_does_not_grow_with_the_input(KC: Any, source: Any) -> None:
    short, long, same = source(50_000), source(200_000), source(200_000)
    peak_short = _peak(lambda: KC(short))
    peak_long = _peak(lambda: KC(long))
    counter = _peak(lambda: collections.Counter(same))
    assert peak_long <= peak_short + 64 * KIB, (peak_short, peak_long)
    assert peak_long <= counter + 64 * KIB, (peak_long, counter)

    kc = KC(a=1, b=2)  # not empty: the keys counted are added to its own
    up, down = source(200_000), source(200_000)
    peak_update = _peak(lambda: kc.update(up))
    peak_subtract = _peak(lambda: kc.subtract(down))
    assert max(peak_update, peak_subtract) <= counter + 64 * KIB, (peak_update, peak_subtract)
    assert kc == collections.Counter(a=1, b=2) and len(kc) == 12


def test_an_iterable_that_fails_midway_changes_nothing(KC: Any) -> None:
    """Counting streams the input, yet stays all-or-nothing: nothing of it is
    applied until it is exhausted (an error on the way leaves the counter as
    it was), and an overflow while applying undoes what was applied."""

    def failing() -> Iterable[Any]:
        yield from ["a", "new", "b"] * 1000
        raise ValueError("the source broke")

    for kc in (KC(), KC(a=1)):
        before = list(kc.items())
        with pytest.raises(ValueError, match="the source broke"):
            kc.update(failing())
        with pytest.raises(TypeError, match="unhashable"):
            kc.subtract(iter(["a", "b"] * 1000 + [["unhashable"]]))
        assert list(kc.items()) == before
    kc = KC(a=1, top=2**63 - 2)
    with pytest.raises(OverflowError):
        kc.update(iter(["a", "new", "top", "top"]))
    assert list(kc.items()) == [("a", 1), ("top", 2**63 - 2)]
