"""KeyedCounter under real threads: ledgers that must balance exactly.

32+ threads, a switch interval of 1 microsecond (so the interpreter switches
threads in the middle of everything), and every operation that moves counts:
increment, decrement, ``kc[k] += n``, ``kc[k] -= n``, update, reset(key),
reset(), pop; plus iteration, snapshots and reads racing with inserts and
removals.  Each thread keeps a ledger of what it added and what its resets
and pops returned; at the end, for every key,

    count left in the counter + everything taken == everything added.

Runs on the C core and on the pure fallback.
"""

from __future__ import annotations

import collections
import os
import pickle
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _threads import interleaving, run_threads

import tallies.keyed
from tallies import _pure_keyed

THREADS = 32


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


@pytest.fixture(autouse=True)
def tiny_switch_interval() -> Iterator[None]:
    with interleaving():
        yield


@pytest.mark.parametrize("keys", ["str", "mixed"])
def test_ledgers_balance_exactly(KC: Any, keys: str) -> None:
    """str keys keep the C core in small mode (counts in [-5, 256] as shared
    small ints, others in cells); a frozenset key puts everything in cells."""
    kc = KC()
    shared: list[Any] = [f"k{i}" for i in range(24)]
    if keys == "mixed":
        shared[::4] = [frozenset({i}) for i in range(6)]
    added: list[collections.Counter[Any]] = [collections.Counter() for _ in range(THREADS)]
    taken: list[collections.Counter[Any]] = [collections.Counter() for _ in range(THREADS)]
    ops = 1200

    def worker(t: int) -> None:
        rng = random.Random(t)
        add, took = added[t], taken[t]
        for i in range(ops):
            # mostly shared keys (contention); some fresh ones (inserts)
            key: Any = rng.choice(shared) if rng.random() < 0.85 else f"t{t}-{i % 7}"
            n = rng.randint(1, 5)
            r = rng.random()
            if r < 0.22:
                kc.increment(key, n)
                add[key] += n
            elif r < 0.42:
                kc[key] += n
                add[key] += n
            elif r < 0.50:
                kc.decrement(key, n)
                add[key] -= n
            elif r < 0.58:
                kc[key] -= n
                add[key] -= n
            elif r < 0.64:
                kc.update([key, key])
                add[key] += 2
            elif r < 0.72:
                took[key] += kc.reset(key)
            elif r < 0.82:
                took[key] += kc.pop(key, 0)
            elif r < 0.84:
                took.update(kc.reset())
            elif r < 0.88:
                for k in kc:  # iteration while others insert and pop
                    kc.value(k)
            elif r < 0.92:
                snap = kc.snapshot()
                assert all(type(v) is int for v in snap.values())
            elif r < 0.96:
                _ = list(kc.items()), kc.most_common(3), len(kc), key in kc
            else:
                _ = kc[key] + 0, kc.get(key), kc.total()

    run_threads(THREADS, worker)
    total_added = sum(added, collections.Counter())
    total_taken = sum(taken, collections.Counter())
    keys = set(total_added) | set(total_taken) | set(kc)
    # collections.Counter's + drops non-positive counts: compare key by key.
    added_by_key = {k: sum(a[k] for a in added) for k in keys}
    taken_by_key = {k: sum(t[k] for t in taken) for k in keys}
    assert sum(abs(v) for v in added_by_key.values()) > 0
    assert total_added or total_taken  # the workload really ran
    for k in keys:
        assert kc.value(k) + taken_by_key[k] == added_by_key[k], k


def test_augmented_assignment_is_exact_under_threads(KC: Any) -> None:
    kc = KC()
    keys = ["a", "b", "c", "d"]
    per_thread = 1500

    def worker(t: int) -> None:
        for i in range(per_thread):
            k = keys[(i + t) % len(keys)]
            kc[k] += 1
            if i % 3 == 0:
                kc[k] -= 1
                kc[k] = kc[k] + 1  # the explicit spelling is exact too

    run_threads(THREADS, worker)
    expected = THREADS * per_thread // len(keys)
    assert kc.snapshot() == collections.Counter({k: expected for k in keys})


def test_pop_racing_with_increments_loses_nothing(KC: Any) -> None:
    """The removal protocol: increments of a key that another thread keeps
    popping are either in a pop's result or still in the counter.  The
    poppers go on while any incrementer runs, and at least 3 pops must take
    a count while increments go on (the race happened)."""
    kc = KC()
    per_thread = 2000
    popped: list[int] = []
    fruitful = [0]  # pops that took a count while increments were still going on
    incrementing = [THREADS - THREADS // 4]
    lock = threading.Lock()

    def worker(t: int) -> None:
        if t % 4 == 0:
            got = i = 0
            while i < per_thread // 4 or incrementing[0]:  # pop for as long as others count
                n = kc.pop("hot", 0)
                if n and incrementing[0]:
                    with lock:
                        fruitful[0] += 1
                got += n
                kc.discard("cold")  # removals of a key nobody counts
                i += 1
            popped.append(got)
        else:
            for _ in range(per_thread):
                kc.increment("hot")
            with lock:
                incrementing[0] -= 1

    run_threads(THREADS, worker)
    incrementers = THREADS - THREADS // 4
    assert sum(popped) + kc.value("hot") == incrementers * per_thread
    assert fruitful[0] >= 3, fruitful  # the race happened: pops cut into live increments


def test_iteration_never_raises_while_keys_change(KC: Any) -> None:
    kc = KC("seed")
    stop = threading.Event()
    writer_errors: list[BaseException] = []
    inserted = [0]

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set():
                kc.increment(i)  # insert a key ...
                kc.discard(i - 40)  # ... and remove an old one: about 40 live keys
                i += 1
                inserted[0] = i
        except BaseException as exc:  # reported below
            writer_errors.append(exc)

    w = threading.Thread(target=writer)
    w.start()
    seen_during_reads: list[int] = []
    try:

        def reader(t: int) -> None:
            # 40 rounds, and more (10 s at most) until the writer has moved
            # during this reader's rounds: a loaded machine may not schedule
            # it during 40 short ones
            start, rounds, deadline = inserted[0], 0, time.monotonic() + 10
            while rounds < 40 or (inserted[0] == start and time.monotonic() < deadline):
                rounds += 1
                seen_during_reads.append(inserted[0])
                for _k in kc:
                    pass
                list(kc.keys())
                list(kc.values())
                list(kc.items())
                sum(1 for _ in kc.elements())
                kc.most_common(2)
                repr(kc)
                _ = kc == collections.Counter()
                pickle.loads(pickle.dumps(kc))

        run_threads(THREADS, reader)
    finally:
        stop.set()
        w.join()
    assert not writer_errors, writer_errors
    # The writer really ran while the readers iterated: the readers saw its
    # progress move, so they walked a changing counter, not a static one.
    assert len(set(seen_during_reads)) > 1, "the writer made no progress during the reads"
    # Its last 40 keys are live (the seed's letters too), each counted once.
    last = inserted[0]
    assert all(kc.value(k) == 1 for k in range(max(0, last - 40), last))
    assert all(kc.value(k) == 0 for k in range(0, max(0, last - 40)))


class SlowKey(str):
    """A str key whose comparison lets other threads run (sleep(0) releases the
    GIL): an operation that compares two such keys may be interleaved with
    another thread's updates on a GIL build too, as it may be anywhere on a
    free-threaded one."""

    def __eq__(self, other: object) -> bool:
        time.sleep(0)
        return str.__eq__(self, other) is True

    __hash__ = str.__hash__


def test_binary_operations_read_one_snapshot_of_each_operand(KC: Any) -> None:
    """Issue 27: ``left + right`` looked the right operand's keys up in the live
    left table.  One thread keeps ``left["x"]`` at 0 or absent; ``right["x"]``
    is 5 (-5 for ``-``), so every result must hold ``x: 5`` whichever instant
    the left operand is read at.  Both operands hold a key "b" as two distinct
    SlowKeys, so each operation compares them (and lets the other thread run)
    after it has read the left operand and before it looks "x" up in it.
    Before the fix, 300 to 400 of the 5,000 results had lost right's count."""
    left = KC({"a": 1, SlowKey("b"): 1})
    right, negative = KC({"x": 5, SlowKey("b"): 1}), KC({"x": -5, SlowKey("b"): 1})
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                left["x"] = 0
                time.sleep(0)  # let the operations run while "x" is present ...
                left.discard("x")
                time.sleep(0)  # ... and while it is absent
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=churn)
    t.start()
    wrong: list[tuple[str, Any]] = []
    try:
        for _ in range(1000):
            for name, result in (
                ("+", left + right),
                ("|", left | right),
                ("-", left - negative),
                ("reflected +", right + left),
                ("reflected |", right | left),
            ):
                if result.value("x") != 5 or result.value("a") != 1:
                    wrong.append((name, result.snapshot()))
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert not wrong, f"{len(wrong)} inconsistent results, e.g. {wrong[:3]}"


class YieldingKey(str):
    """A str key whose hashing lets other threads run (sleep(0) releases the GIL)."""

    def __hash__(self) -> int:
        time.sleep(0)
        return str.__hash__(self)


def test_in_place_and_reads_one_snapshot_of_the_other_operand(KC: Any) -> None:
    """``left &= right`` read right key by key, live (issue 27: every operation
    must read its operands as snapshots).  One thread keeps at least one of
    right's keys "p" and "q" present (at 10) at every instant, so ``left &=
    right`` on p: 10, q: 10 must keep a total of at least 10; reading p at an
    instant when only q is there and q at one when only p is there gave 0."""
    right = KC(p=10)
    # Hashing left's keys lets the mover run between the lookups of p and q.
    left_counts = {YieldingKey("p"): 10, YieldingKey("q"): 10}
    stop = threading.Event()
    errors: list[BaseException] = []

    def move() -> None:
        try:
            while not stop.is_set():
                for here, gone in (("q", "p"), ("p", "q")):
                    right[here] = 10
                    time.sleep(0)  # both present
                    del right[gone]
                    time.sleep(0)  # only `here`
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=move)
    t.start()
    totals = []
    try:
        for _ in range(500):
            left = KC(left_counts)
            left &= right
            totals.append(left.total())
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert min(totals) >= 10, f"{sum(1 for x in totals if x < 10)} results lost both keys"
