"""The contract: a name used both ways by two writers (docs/contract.md, "Names").

Issue 24, 1: process A holds unflushed ``counter("orders")`` and
``counter("x")``; process B writes ``keyed("x")`` and flushes.  Every later
flush of A used to fail on Redis (``x`` is a hash) and A's exit lost
``orders`` too; SQLite silently kept ``x`` in both tables.  Now the second
use is refused once, where the store can see it: at ``keyed("x")`` when A's
``x`` is already registered (memory, shm, write-through), else at A's flush,
which sets ``x`` aside and lands everything else."""

from __future__ import annotations

import pytest
from _contract import another_writer

import tallies


def test_a_name_used_both_ways_blocks_nothing_else(store_url: str) -> None:
    a = tallies.open(store_url)
    try:
        a.counter("orders").increment(5)
        x = a.counter("x")
        x.increment(3)
        with tallies.open(another_writer(store_url)) as b:
            try:
                kx = b.keyed("x")
            except ValueError as exc:  # A's counter is registered already: refused here
                assert "'x' is a counter" in str(exc)
                clash_at_flush = False
            else:
                kx.increment("k", 7)
                b.flush()
                clash_at_flush = True
        if clash_at_flush:
            with pytest.raises(ValueError, match="'x' is a keyed counter in the store") as info:
                a.flush()
            assert info.value.items == [("x", None)]  # type: ignore[attr-defined]
            assert type(info.value).__name__ == "KindClashError"
            assert isinstance(info.value, tallies.StoreError)
            assert "every other delta of this flush was applied" in str(info.value)
            x.increment(2)  # still accepted locally, set aside by every flush, quietly
            a.flush()
            a.flush()
            assert a.pending()["set_aside"]["counters"] == {"x": 5}  # type: ignore[attr-defined]
            with pytest.raises(ValueError, match="set aside"):
                x.value()
        a.counter("orders").increment(1)
    finally:
        a.close()  # no error: nothing is stuck
    with tallies.open(another_writer(store_url)) as r:
        assert r.counter("orders").value() == 6
        assert r.names() == ["orders", "x"]
        if clash_at_flush:
            assert r.snapshot()["keyed"] == {"x": {"k": 7}}
            assert "x" not in r.snapshot()["counters"]
