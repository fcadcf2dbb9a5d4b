"""The contract, counters: docs/contract.md, "Counters" and "int64".

Every test runs on every store of ``_contract.STORES``."""

from __future__ import annotations

import pytest
from _contract import another_writer, facts
from _support import INT64_MAX, INT64_MIN, Index

import tallies
from tallies.stores import CountOverflowError


def test_increments_decrements_and_reads(store_url: str) -> None:
    with tallies.open(store_url) as s:
        c = s.counter("hits")
        assert s.counter("hits") is c
        c.increment()
        c.increment(4)
        c.decrement()
        c.decrement(n=2)
        c += 10
        c -= 3
        c.increment(Index(5))  # anything with __index__
        assert c.value() == 14 and int(c) == 14
        assert s.snapshot()["counters"] == {"hits": 14}
        s.flush()
        assert c.value() == 14


def test_reset_returns_what_it_took_and_zeroes(store_url: str) -> None:
    with tallies.open(store_url) as s:
        c = s.counter("jobs")
        c.increment(7)
        s.flush()
        c.increment(2)
        assert c.reset() == 9
        assert c.value() == 0
        assert c.reset() == 0
        c.increment()
        assert c.value() == 1


def test_a_counter_at_zero_is_listed(store_url: str) -> None:
    with tallies.open(store_url) as s:
        s.counter("idle")
        c = s.counter("back-to-zero")
        c.increment(3)
        c.decrement(3)
        assert s.snapshot()["counters"] == {"back-to-zero": 0, "idle": 0}
        s.flush()
        assert s.snapshot()["counters"] == {"back-to-zero": 0, "idle": 0}
        assert s.names() == ["back-to-zero", "idle"]


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (1.5, TypeError),
        ("1", TypeError),
        (None, TypeError),
        (2**63, OverflowError),
        (INT64_MIN - 1, OverflowError),
    ],
)
def test_bad_amounts_raise_and_change_nothing(store_url: str, bad: object, error: type) -> None:
    with tallies.open(store_url) as s:
        c = s.counter("n")
        c.increment(2)
        for update in (c.increment, c.decrement):
            with pytest.raises(error):
                update(bad)  # type: ignore[arg-type]
        with pytest.raises(error):
            c += bad  # type: ignore[operator]
        assert c.value() == 2
        s.flush()
        assert c.value() == 2


def test_a_count_never_leaves_int64(store_url: str) -> None:
    """An update that would move a count outside int64 raises OverflowError and
    is not applied: at the update where the store sees the count (memory,
    shm, write-through), at the flush on a write-behind store, whose
    CountOverflowError says so and holds the delta (still in value())."""
    with tallies.open(store_url) as s:
        c = s.counter("edge")
        other = s.counter("other")
        c.increment(INT64_MAX)
        s.flush()
        if facts(store_url).buffered:
            c.increment(1)
            other.increment(4)
            with pytest.raises(CountOverflowError, match="every other delta of this flush"):
                s.flush()
            assert other.value() == 4
            assert c.value() == INT64_MAX + 1  # held, not lost
            c.decrement(1)
            s.flush()
        else:
            with pytest.raises(OverflowError):
                c.increment(1)
            with pytest.raises(OverflowError):
                c += 1
            other.increment(4)  # another count is not held up by the refusal
        assert c.value() == INT64_MAX
        c.decrement(5)
        assert c.value() == INT64_MAX - 5
        assert other.value() == 4
        s.flush()
        assert s.snapshot()["counters"] == {"edge": INT64_MAX - 5, "other": 4}


def test_the_low_edge_too(store_url: str) -> None:
    with tallies.open(store_url) as s:
        c = s.counter("low")
        c.decrement(INT64_MAX)
        c.decrement(1)
        s.flush()
        assert c.value() == INT64_MIN
        if not facts(store_url).buffered:
            with pytest.raises(OverflowError):
                c.decrement(1)
            assert c.value() == INT64_MIN


def test_an_overflow_says_exactly_what_was_applied(store_url: str) -> None:
    """Issue 28, 1: the message said "nothing of it was applied" while the rest
    of the flush had landed (a caller who trusted it and sent again counted
    twice).  Now: the offending count is named and not applied, every other
    delta is, and the message says so; an update refused at the update says
    that it was not applied."""
    with tallies.open(store_url) as s:
        big, other, k = s.counter("big"), s.counter("other"), s.keyed("k")
        big.increment(INT64_MAX)
        s.flush()
        if facts(store_url).buffered:
            big += 1
            other += 4
            k["x"] += 7
            with pytest.raises(CountOverflowError) as info:
                s.flush()
            message = str(info.value)
            assert "'big' outside the signed 64-bit range: not applied, held" in message
            assert message.endswith("every other delta of this flush was applied")
            assert "nothing" not in message
            assert info.value.items == [("big", None)]
            big -= 1  # back in range: the held delta is 0
        else:
            with pytest.raises(OverflowError) as over:
                big += 1
            said = str(over.value)
            assert any(w in said for w in ("not applied", "it stays at", "nothing was changed"))
            other += 4
            k["x"] += 7
    with tallies.open(another_writer(store_url)) as r:  # what was applied
        assert r.counter("other").value() == 4 and r.keyed("k")["x"] == 7
        assert r.counter("big").value() == INT64_MAX
