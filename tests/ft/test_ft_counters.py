"""Counter and ShardedCounter with threads that really run at the same time.

On a free-threaded build these are what a GIL build cannot show: every public
mutating method called from several cores at once, repeated ``ROUNDS`` times on
fresh objects, with per-thread ledgers that must balance exactly:

    final value + everything reset() took == everything the threads applied

plus the properties that only an atomic read-modify-write gives: ``add(1)``
hands out every value exactly once, ``compare_and_set`` increments never
collide, a reader never sees a count go backwards while others only add, and
``wait_until`` wakes.  Run on the C core and on the pure-Python fallback.
"""

from __future__ import annotations

import itertools
import random
from types import ModuleType
from typing import Any

import pytest
from _ft_stress import GIL_OFF, ROUND_SECONDS, ROUNDS, THREADS, Deadline, ops, together

COUNTER_OPS = ("increment", "increment()", "decrement", "decrement()", "add", "iadd", "isub")


def _mixed(counter: Any, seed: int, n: int, kinds: tuple[str, ...]) -> list[tuple[int, int]]:
    """Every thread runs ``n`` random updates and resets; returns (applied, taken) each."""
    deadline = Deadline()

    def work(i: int) -> tuple[int, int]:
        rng = random.Random(seed * 7919 + i)
        c = counter
        applied = taken = 0
        for k in range(n):
            if k % 256 == 0 and deadline.expired():
                break
            kind = rng.choice(kinds)
            m = rng.randint(-1000, 1000)
            if kind == "increment":
                c.increment(m)
                applied += m
            elif kind == "increment()":
                c.increment()
                applied += 1
            elif kind == "decrement":
                c.decrement(m)
                applied -= m
            elif kind == "decrement()":
                c.decrement()
                applied -= 1
            elif kind == "add":
                c.add(m)
                applied += m
            elif kind == "iadd":
                c += m
                applied += m
            elif kind == "isub":
                c -= m
                applied -= m
            elif kind == "reset":
                taken += c.reset()
            elif kind == "cas":  # an increment by compare-and-set: retried until it lands
                while True:
                    v = c.value()
                    if c.compare_and_set(v, v + m):
                        applied += m
                        break
            else:
                raise AssertionError(kind)
        return applied, taken

    return together(THREADS, work)


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_counter_every_mutator_balances(impl: ModuleType, round_: int) -> None:
    """increment, decrement (with and without n), add, +=, -=, reset and
    compare_and_set, all at once on one Counter."""
    c = impl.Counter(round_)
    kinds = (*COUNTER_OPS, "reset", "cas")
    ledgers = _mixed(
        c, round_, ops(20_000 if impl.__name__ == "tallies._tallies" else 4_000), kinds
    )
    applied = sum(a for a, _ in ledgers)
    taken = sum(t for _, t in ledgers)
    assert c.value() + taken == round_ + applied


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_counter_add_hands_out_every_value_exactly_once(impl: ModuleType, round_: int) -> None:
    """add(1) is one atomic read-modify-write: the values it returns to all threads
    together are exactly 1..N, each once, and increase within each thread."""
    c = impl.Counter()
    n = ops(20_000 if impl.__name__ == "tallies._tallies" else 4_000)

    def work(i: int) -> list[int]:
        add = c.add
        return [add(1) for _ in range(n)]

    seen = together(THREADS, work)
    for mine in seen:
        assert all(a < b for a, b in itertools.pairwise(mine))
    assert sorted(v for mine in seen for v in mine) == list(range(1, THREADS * n + 1))
    assert c.value() == THREADS * n


def test_counter_set_leaves_a_value_some_thread_set_last(impl: ModuleType) -> None:
    """set() racing with set() and value(): every read is a value some thread set,
    and the final value is one thread's last set()."""
    c = impl.Counter(-1)
    n = ops(5_000)

    def work(i: int) -> tuple[int, set[int]]:
        reads = set()
        v = -1
        for k in range(n):
            v = i * 1_000_000 + k
            c.set(v)
            reads.add(c.value())
        return v, reads

    results = together(THREADS, work)
    lasts = {last for last, _ in results}
    assert c.value() in lasts
    for _, reads in results:
        for v in reads:
            assert 0 <= v % 1_000_000 < n and v // 1_000_000 < THREADS


def test_counter_wait_until_wakes_every_waiter(impl: ModuleType) -> None:
    """Half the threads increment, half wait for the total; every waiter wakes
    (with a timeout far above the time the writers need) and sees the target."""
    c = impl.Counter()
    writers = max(1, THREADS // 2)
    n = ops(20_000)
    target = writers * n

    def work(i: int) -> bool:
        if i < writers:
            for _ in range(n):
                c.increment()
            return True
        woke = c.wait_until(target, timeout=60)
        return bool(woke and c.value() >= target)

    assert all(together(THREADS + 1, work))
    assert c.value() == target


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_sharded_every_mutator_balances(impl: ModuleType, round_: int) -> None:
    """increment, decrement, +=, -= and reset at once on a fresh ShardedCounter,
    which inflates into striped cells during the updates when they collide."""
    c = impl.ShardedCounter(round_)
    kinds = ("increment", "increment()", "decrement", "decrement()", "iadd", "isub", "reset")
    ledgers = _mixed(
        c, round_, ops(20_000 if impl.__name__ == "tallies._tallies" else 4_000), kinds
    )
    applied = sum(a for a, _ in ledgers)
    taken = sum(t for _, t in ledgers)
    assert c.value() + taken == round_ + applied


def test_sharded_inflates_while_threads_update_it(core: ModuleType) -> None:
    """Fresh ShardedCounters, hammered by every thread from their first update: the
    inflation (first failed CAS on the base -> a table of striped cells published with
    one CAS) happens in the middle of the updates, and no update is lost across it.
    Without the GIL the threads collide within a few rounds, and the test insists on
    seeing it; with the GIL (the C methods run under it, no CAS ever fails) the
    counter stays one cell, which is what the GIL build promises."""
    n = ops(20_000)
    inflated = 0
    rounds = 0
    deadline = Deadline(max(ROUND_SECONDS, 10.0))
    while rounds < ROUNDS or (GIL_OFF and not inflated and not deadline.expired()):
        c = core.ShardedCounter()
        assert not c.inflated

        def work(i: int, c: Any = c) -> int:
            inc = c.increment
            for _ in range(n):
                inc()
            return n

        assert sum(together(THREADS, work)) == c.value() == THREADS * n
        inflated += c.inflated
        rounds += 1
    if GIL_OFF:
        assert inflated, f"no round of {rounds} inflated: the threads never collided"
    else:
        assert inflated == 0


@pytest.mark.parametrize("cls", ["Counter", "ShardedCounter"])
def test_a_reader_never_sees_the_count_go_back(impl: ModuleType, cls: str) -> None:
    """While every other thread only increments, each reader's successive value()
    calls never decrease and never exceed what was applied (a ShardedCounter read
    sums base and cells one by one: not a snapshot, but monotonic).  The reader
    must see some count strictly between 0 and the total (forced: halfway the
    writers wait until it has): it read while the increments went on."""
    c = getattr(impl, cls)()
    n = ops(20_000 if impl.__name__ == "tallies._tallies" else 4_000)
    total = (THREADS - 1) * n
    between: set[int] = set()  # counts the reader saw while increments went on

    def work(i: int) -> bool:
        if i == 0:
            last = 0
            while last < total:
                v = c.value()
                assert last <= v <= total, (last, v)
                if 0 < v < total:
                    between.add(v)
                last = v
            return True
        for j in range(n):
            if j == n // 2:
                deadline = Deadline(10.0)
                while not between and not deadline.expired():
                    pass
            c.increment()
        return True

    assert all(together(THREADS, work))
    assert c.value() == total
    assert between, "the reader never saw the increments in progress"
