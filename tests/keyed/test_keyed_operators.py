"""The multiset operators and == read one snapshot of each operand (issue 27).

``left + right`` (and ``-``, ``|``, ``&``, ``==``, reflected or not) is
computed from a copy of each operand taken before anything else runs, never
from the live tables: neither another thread (tests/keyed/test_keyed_threads.py,
tests/c/stress_keyed_ops.c) nor a key's own ``__hash__`` or ``__eq__``
running in the middle of the operation can change what the result is
computed from.  Both cores.
"""

from __future__ import annotations

import collections
import operator
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


class Intruder:
    """A key that, the first time it is hashed once armed, counts itself 7 in
    ``target`` (the left operand) and disarms."""

    def __init__(self) -> None:
        self.target: Any = None

    def __hash__(self) -> int:
        target, self.target = self.target, None
        if target is not None:
            target.increment(self, 7)
        return 12345

    def __eq__(self, other: object) -> bool:
        return self is other

    def __repr__(self) -> str:
        return "Intruder()"


@pytest.mark.parametrize(
    ("op", "right_count", "expected"),
    [
        (operator.add, 5, {"a": 2, "k": 5}),
        (operator.or_, 5, {"a": 1, "k": 5}),
        (operator.sub, -5, {"k": 5}),
    ],
)
def test_a_keys_hash_cannot_change_the_left_operand_mid_operation(
    KC: Any, op: Any, right_count: int, expected: dict[str, int]
) -> None:
    """The issue's case: a key of the right operand whose __hash__ inserts it
    into the left one gave ``left + right -> {'a': 1}``; the left operand read
    before the operation has no such key, so the right one's count stands."""
    for as_counter in (False, True):
        k = Intruder()
        left = KC(a=1)
        right_counts = {"a": 1, k: right_count}
        right = collections.Counter(right_counts) if as_counter else KC(right_counts)
        want = [(k if key == "k" else key, v) for key, v in expected.items()]
        k.target = left
        assert list(op(left, right).items()) == want


def test_a_keys_hash_cannot_change_equality_mid_comparison(KC: Any) -> None:
    for as_counter in (False, True):
        k = Intruder()
        left = KC()
        right = collections.Counter({k: 0}) if as_counter else KC({k: 0})
        k.target = left
        assert left == right  # a count of 0 equals a missing key


def test_an_operand_with_itself_is_one_snapshot(KC: Any) -> None:
    kc = KC(a=2, b=-1, c=0)
    assert dict((kc + kc).items()) == {"a": 4}
    assert dict((kc - kc).items()) == {}
    assert dict((kc | kc).items()) == {"a": 2}
    assert dict((kc & kc).items()) == {"a": 2}
    assert kc == kc
    assert (kc != kc) is False


@pytest.mark.parametrize("op", [operator.add, operator.sub, operator.or_, operator.and_])
def test_operands_with_removed_keys_match_counter(KC: Any, op: Any) -> None:
    """A snapshot keeps the table's removed entries in place (serial mode copies
    the table as it is): they must be skipped, on either side."""
    left, model = KC(a=2, b=-1, c=3, d=1), collections.Counter(a=2, b=-1, c=3, d=1)
    for key in ("b", "d"):
        del left[key], model[key]
    right = KC(c=1, e=4, f=-2)
    del right["e"]
    theirs = collections.Counter(c=1, f=-2)
    assert list(op(left, right).items()) == list(op(model, theirs).items())
    assert list(op(right, left).items()) == list(op(theirs, model).items())
    assert list(op(left, theirs).items()) == list(op(model, theirs).items())
    assert (left == right) is (model == theirs) is False
    assert left == model and right == theirs
