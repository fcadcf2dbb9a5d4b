"""The contract, lifecycle: docs/contract.md, "Opening", "Closing" and
"Read your writes".  Every test runs on every store."""

from __future__ import annotations

import asyncio

import pytest
from _contract import another_writer, facts

import tallies
from tallies.stores import StoreError, StoreNotFoundError


def test_the_same_url_opened_twice_is_one_store(store_url: str) -> None:
    a = tallies.open(store_url)
    b = tallies.open(store_url)
    try:
        a.counter("n").increment(2)
        b.counter("n").increment(3)
        a.keyed("k").increment("x")
        assert a.counter("n").value() == b.counter("n").value() == 5
        assert b.keyed("k")["x"] == 1
        assert a.snapshot() == b.snapshot()
        b.close()  # the other handle stays open
        a.counter("n").increment()
        assert a.counter("n").value() == 6
    finally:
        a.close()
    with tallies.open(store_url) as c:  # memory://NAME lives until destroy() too
        assert c.counter("n").value() == 6


def test_close_twice_and_flush_after_close(store_url: str) -> None:
    s = tallies.open(store_url)
    c = s.counter("n")
    kc = s.keyed("k")
    c.increment(3)
    kc.increment("x")
    s.close()
    s.close()  # again: nothing
    s.flush()  # after close: nothing pending, nothing to do
    assert s.closed and "closed" in repr(s)
    for call in (lambda: s.counter("n"), lambda: s.keyed("k"), s.names, s.snapshot):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(ValueError, match="closed"), s:
        pass
    if facts(store_url).counters_outlive_close:  # in-process objects, mapped memory
        c.increment()
        kc.increment("x")
        assert c.value() == 4 and kc["x"] == 2
    else:  # nothing could write their deltas any more
        for update in (c.increment, lambda: kc.increment("x"), c.value, kc.reset):
            with pytest.raises(ValueError, match="closed"):
                update()
    with tallies.open(store_url) as again:
        assert again.counter("n").value() == (4 if facts(store_url).counters_outlive_close else 3)


def test_a_context_manager_flushes_and_closes(store_url: str) -> None:
    with tallies.open(store_url) as s:
        s.counter("n").increment(2)
    assert s.closed
    with tallies.open(another_writer(store_url)) as other:
        assert other.counter("n").value() == 2


def test_aopen_and_aflush(store_url: str) -> None:
    async def main() -> int:
        async with tallies.aopen(store_url) as s:
            s.counter("n").increment(4)
            await s.aflush()
            v: int = s.counter("n").value()
            return v

    assert asyncio.run(main()) == 4


def test_another_writer_reads_what_was_flushed(store_url: str) -> None:
    with tallies.open(store_url) as a, tallies.open(another_writer(store_url)) as b:
        a.counter("n").increment(2)
        a.keyed("k").increment("x", 3)
        a.flush()
        assert b.counter("n").value() == 2 and b.keyed("k")["x"] == 3
        b.counter("n").increment(1)
        b.flush()
        assert a.counter("n").value() == 3


def test_create_false_and_destroy(store_url: str) -> None:
    with tallies.open(store_url) as s:
        s.counter("n").increment()
    assert tallies.destroy(store_url) is True
    assert tallies.destroy(store_url) is False
    with pytest.raises(StoreNotFoundError):
        tallies.open(store_url, create=False)
    assert issubclass(StoreNotFoundError, StoreError)
