"""KeyedCounter against collections.Counter (issues 3 and 12), a part of ``tallies bench``.

Every target of issue 12 is one row with its verdict, each a ratio taken per
round in this same run (``harness``):

* Per-call costs: each statement 50 times a loop over locals
  (``harness.per_call``); the floor is ``l.clear()`` on an empty list.
* New keys: a fresh counter per round, then one statement per key of a list of
  50,000 distinct str keys, minus the same loop with nothing in it (timed in
  the same round).  Whole-counter operations: counters of 50,000 distinct str
  keys (counts 1..1,000) built the same way for both sides; in each round a
  side's time is the least of 5 back-to-back timings.
* Threads: 10 threads x 100,000 increments over 1,000 keys, each thread timing
  itself from a common start (the fastest of 3 runs a round); each candidate's
  result checked exactly.
* Memory: tracemalloc (the bytes requested while the structure was built; the
  key objects exist before and are shared by both), cross-checked with
  ``sys.getsizeof`` of the KeyedCounter, which counts its table.
"""

from __future__ import annotations

import collections
import gc
import importlib
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from tallies import KeyedCounter

from .harness import (
    LIST_FLOOR,
    MISSED,
    Row,
    Target,
    Verdict,
    interleave,
    median,
    per_call,
    per_call_rows,
    per_round,
    sharing,
    timed_threads,
)

__all__ = ["measure", "run"]

UNROLL = 50
KEPT_SMALL = "KeyedCounter.increment(key), count kept <= 256"
STATEMENTS = {
    "KeyedCounter.increment(key), count >= 1,000": "kc.increment(k)",
    KEPT_SMALL: "kc.increment(s); kc.decrement(s)",
    "collections.Counter c[k] += 1": "c[k] += 1",
    "KeyedCounter kc[k] += 1": "kc[k] += 1",
    "collections.Counter c[k] (read)": "c[k]",
    "KeyedCounter kc[k] (read)": "kc[k]",
    "KeyedCounter.value(key)": "kc.value(k)",
}
"""The per-call rows, each a statement over the locals ``kc``, ``c``, ``k``, ``s``."""
PART_CALLS = "KeyedCounter, 1 thread: ns per op"
PART_BULK = "KeyedCounter vs collections.Counter, whole counters"
PART_THREADS = "KeyedCounter, threads"
PART_MEMORY = "KeyedCounter, memory"


def _per_call(rounds: int, iterations: int) -> list[Row]:
    key = "event-kind-42"
    kc = KeyedCounter({key: 1000})
    c: collections.Counter[str] = collections.Counter({key: 1000})
    small = "rare-kind"  # its count stays small
    kc.increment(small, 100)
    env = {"kc": kc, "c": c, "k": key, "s": small}
    timed = per_call(sharing(env, STATEMENTS), rounds=rounds, unroll=UNROLL, loops=iterations,
                     calls={KEPT_SMALL: 2})  # fmt: skip
    rows = per_call_rows(PART_CALLS, timed, LIST_FLOOR)
    for name, row in rows.items():
        if name.startswith("KeyedCounter.increment(key)"):
            row.judge(Target("<=", 2.0, of="floor"), row.ratio)
    out = list(rows.values())
    for ours, theirs, label in (
        ("KeyedCounter kc[k] += 1", "collections.Counter c[k] += 1", "kc[k] += 1"),
        ("KeyedCounter kc[k] (read)", "collections.Counter c[k] (read)", "kc[k] read"),
    ):
        row = Row(PART_CALLS, f"{label} vs collections.Counter", median(timed.ns[ours]), "ns")
        row.ratios, row.of = per_round(timed.ns[ours], timed.ns[theirs]), "collections.Counter"
        out.append(row.judge(Target("<=", 1.3, of="collections.Counter"), row.ratio))
    return out


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


Factory = Callable[[], Callable[[], Any]]
"""Called untimed; returns what is timed."""


def _bulk(rounds: int, nkeys: int) -> list[Row]:
    """Whole-counter operations and new keys, KeyedCounter vs collections.Counter."""
    keys = [f"key-{i:06d}" for i in range(nkeys)]
    counts = {k: 1 + (i * 7919) % 1000 for i, k in enumerate(keys)}
    stream = [k for k in keys for _ in range(4)]  # 4 x nkeys elements
    c: collections.Counter[str] = collections.Counter(counts)
    kc = KeyedCounter(counts)
    c2: collections.Counter[str] = collections.Counter({k: v // 2 for k, v in counts.items()})
    kc2 = KeyedCounter({k: v // 2 for k, v in counts.items()})
    c_same: collections.Counter[str] = collections.Counter(counts)
    c_up: collections.Counter[str] = collections.Counter(counts)  # update() grows these
    kc_up = KeyedCounter(counts)
    kc_same = KeyedCounter(counts)

    def new_keys_counter() -> Callable[[], None]:
        d: collections.Counter[str] = collections.Counter()

        def go() -> None:
            for k in keys:
                d[k] += 1

        return go

    def new_keys_keyed() -> Callable[[], None]:
        i = KeyedCounter().increment

        def go() -> None:
            for k in keys:
                i(k)

        return go

    def empty_loop() -> Callable[[], None]:
        def go() -> None:
            for _k in keys:
                pass

        return go

    def drain(it: Any) -> None:
        for _ in it:
            pass

    def drain_items(it: Any) -> None:
        for _k, _v in it:
            pass

    new_key = f"new key: {nkeys:,} distinct keys, kc.increment(k) vs c[k] += 1"
    # name -> (collections.Counter side, KeyedCounter side, target ratio)
    cases: dict[str, tuple[Factory, Factory, float]] = {
        new_key: (new_keys_counter, new_keys_keyed, 1.3),
        f"KeyedCounter(iterable) vs Counter(iterable), {len(stream):,} elements": (
            lambda: lambda: collections.Counter(stream),
            lambda: lambda: KeyedCounter(stream),
            1.0,
        ),
        f"update(iterable) on an existing counter, {len(stream):,} elements": (
            lambda: lambda: c_up.update(stream),
            lambda: lambda: kc_up.update(stream),
            1.0,
        ),
        "most_common(10)": (
            lambda: lambda: c.most_common(10),
            lambda: lambda: kc.most_common(10),
            1.3,
        ),
        "total()": (lambda: c.total, lambda: kc.total, 1.3),
        "for k, v in x.items()": (
            lambda: lambda: drain_items(c.items()),
            lambda: lambda: drain_items(kc.items()),
            1.3,
        ),
        "for k in x (iteration)": (lambda: lambda: drain(c), lambda: lambda: drain(kc), 1.3),
        "x + y": (lambda: lambda: c + c2, lambda: lambda: kc + kc2, 1.3),
        "x - y": (lambda: lambda: c - c2, lambda: lambda: kc - kc2, 1.3),
        "x & y": (lambda: lambda: c & c2, lambda: lambda: kc & kc2, 1.3),
        "x | y": (lambda: lambda: c | c2, lambda: lambda: kc | kc2, 1.3),
        "x == copy of x (equal: every key compared)": (
            lambda: lambda: c == c_same,
            lambda: lambda: kc == kc_same,
            1.3,
        ),
    }

    def timing(factory: Factory) -> Callable[[], float]:
        def case() -> float:
            fn = factory()
            gc.collect()
            return _timed(fn)

        return case

    timings: dict[str, Callable[[], float]] = {"empty": timing(empty_loop)}
    for name, (theirs, ours, _target) in cases.items():
        timings[f"{name} theirs"], timings[f"{name} ours"] = timing(theirs), timing(ours)
    times = interleave(timings, rounds, repeat=5)
    rows: list[Row] = []
    for name, (_t, _o, target) in cases.items():
        ours_s, theirs_s = times[f"{name} ours"], times[f"{name} theirs"]
        if name == new_key:  # the loop around the statement is not the statement's cost
            ours_s = [t - e for t, e in zip(ours_s, times["empty"], strict=True)]
            theirs_s = [t - e for t, e in zip(theirs_s, times["empty"], strict=True)]
        row = Row(PART_BULK, f"{nkeys:,} str keys: {name}", median(ours_s), "s")
        row.ratios, row.of = per_round(ours_s, theirs_s), "collections.Counter"
        row.data = {"seconds": ours_s, "counter_seconds": theirs_s}
        rows.append(row.judge(Target("<=", target, of="collections.Counter"), row.ratio))
    return rows


Setup = Callable[[], tuple[Callable[[list[str]], Callable[[], None]], Callable[[], bool]]]
"""Returns (make a thread's work from its keys, check the final counts)."""


def _seed_workload(rounds: int, threads: int, per_thread: int, nkeys: int) -> list[Row]:
    keys = [f"event-{i}" for i in range(nkeys)]
    seq = keys * (per_thread // nkeys)
    seqs = [list(seq) for _ in range(threads)]
    expected = threads * (per_thread // nkeys)

    def keyed_per_event() -> Any:
        kc = KeyedCounter()

        def make(s: list[str]) -> Callable[[], None]:
            def w() -> None:
                inc = kc.increment
                for k in s:
                    inc(k)

            return w

        return make, lambda: all(kc.value(k) == expected for k in keys) and len(kc) == nkeys

    def keyed_augmented() -> Any:
        kc = KeyedCounter()

        def make(s: list[str]) -> Callable[[], None]:
            def w() -> None:
                for k in s:
                    kc[k] += 1

            return w

        return make, lambda: all(kc.value(k) == expected for k in keys) and len(kc) == nkeys

    def keyed_batched() -> Any:
        kc = KeyedCounter()
        return (lambda s: lambda: kc.update(s)), lambda: all(kc.value(k) == expected for k in keys)

    def counter_lock() -> Any:
        c: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()

        def make(s: list[str]) -> Callable[[], None]:
            def w() -> None:
                for k in s:
                    with lock:
                        c[k] += 1

            return w

        return make, lambda: all(c[k] == expected for k in keys)

    ref = "KeyedCounter.increment(key) per event"
    setups: dict[str, Setup] = {
        ref: keyed_per_event,
        "collections.Counter + threading.Lock per event": counter_lock,
        "KeyedCounter kc[key] += 1 per event (exact)": keyed_augmented,
        "KeyedCounter.update(batch) (100,000 keys per call)": keyed_batched,
    }
    cereggii: Any
    try:
        cereggii = importlib.import_module("cereggii")  # optional peer, untyped
    except ImportError:
        cereggii = None
    peer = "cereggii AtomicDict.reduce_sum(((key, 1),)) per event"
    if cereggii is not None:

        def cereggii_sum_per_event() -> Any:
            d = cereggii.AtomicDict()

            def make(s: list[str]) -> Callable[[], None]:
                def w() -> None:
                    rs = d.reduce_sum
                    for k in s:
                        rs(((k, 1),))

                return w

            return make, lambda: all(d[k] == expected for k in keys)

        # reduce_count(batch) from 10 threads hung or crashed (munmap_chunk:
        # invalid pointer) with cereggii 1.0.1 on CPython 3.11 here, so the
        # batched cereggii form is not measured.
        setups[peer] = cereggii_sum_per_event
    exact: dict[str, bool] = dict.fromkeys(setups, True)

    def timing(name: str, setup: Setup) -> Callable[[], float]:
        def case() -> float:
            make, check = setup()
            work = [make(s) for s in seqs]
            gc.collect()
            seconds = timed_threads(threads, lambda i: work[i])
            exact[name] = exact[name] and bool(check())
            return seconds

        return case

    # cereggii is many times slower: one round says enough.
    times = interleave({n: timing(n, s) for n, s in setups.items()}, rounds, once=[peer], repeat=3)
    rows: list[Row] = []
    for name, secs in times.items():
        row = Row(
            PART_THREADS,
            f"{threads} threads x {per_thread:,} over {nkeys:,} keys: {name}",
            median(secs),
            "s",
            per_round(secs, times[ref][: len(secs)]),
            "KeyedCounter.increment",
        )
        row.data = {"seconds": secs, "exact": exact[name]}
        if name.startswith("collections.Counter"):
            row.judge(Target(">=", 10, of="the KeyedCounter.increment time"), row.ratio)
        if name == peer and row.ratio is not None:
            row.detail = "KeyedCounter faster" if row.ratio > 1 else "cereggii faster"
        if not exact[name]:
            row.decide(row.target or "exact", Verdict(MISSED, "WRONG RESULT"))
        rows.append(row)
    return rows


def _traced(build: Callable[[], Any]) -> tuple[int, Any]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        obj = build()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before, obj


class _UserKey:
    """A user class key with its own __hash__ and __eq__."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i

    def __hash__(self) -> int:
        return hash(("user", self.i))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _UserKey) and other.i == self.i


def _memory(nkeys: int) -> list[Row]:
    str_keys = [f"key-{i:06d}" for i in range(nkeys)]
    rows: list[Row] = []
    for label, base, ks, target in (
        ("str keys, counts 1..100", 1, str_keys, 1.0),
        ("str keys, counts >= 1,000", 1_000, str_keys, 0.7),
        ("tuple keys, counts 1..100", 1, [("key", i) for i in range(nkeys)], 1.2),
        ("tuple keys, counts >= 1,000", 1_000, [("key", i) for i in range(nkeys)], 1.2),
        ("frozenset keys, counts 1..100", 1, [frozenset({i}) for i in range(nkeys)], 1.2),
        ("int keys, counts 1..100", 1, [10**6 + i for i in range(nkeys)], 1.2),
        ("user-class keys, counts 1..100", 1, [_UserKey(i) for i in range(nkeys)], 1.2),
    ):
        counts = [base + (i % 100) for i in range(nkeys)]

        def counter(counts: list[int] = counts, ks: list[Any] = ks) -> Any:
            c: collections.Counter[Any] = collections.Counter()
            for k, v in zip(ks, counts, strict=True):
                c[k] += v  # one int per count, as counting makes
            return c

        def keyed(counts: list[int] = counts, ks: list[Any] = ks) -> Any:
            kc = KeyedCounter()
            for k, v in zip(ks, counts, strict=True):
                kc.increment(k, v)
            return kc

        c_bytes, c_obj = _traced(counter)
        k_bytes, k_obj = _traced(keyed)
        assert k_obj.snapshot() == c_obj
        name = f"memory per key, {nkeys:,} keys, {label}"
        rows.append(Row(PART_MEMORY, f"{name}: collections.Counter", c_bytes / nkeys, "B"))
        row = Row(PART_MEMORY, f"{name}: KeyedCounter", k_bytes / nkeys, "B")
        row.ratios, row.of = [k_bytes / c_bytes], "collections.Counter"
        row.detail = f"sys.getsizeof: {sys.getsizeof(k_obj) / nkeys:.1f} B/key"
        rows.append(row.judge(Target("<=", target, of="collections.Counter"), row.ratio))
    return rows


def run(quick: bool) -> list[Row]:
    """The part of ``tallies bench``: a full run, or a short one of the same shape."""
    if quick:
        return measure(
            rounds=7, iterations=400, thread_rounds=1, per_thread=10_000, memory_keys=1_000
        )
    return measure(rounds=15, iterations=4000, thread_rounds=3, per_thread=100_000)


def measure(
    *,
    rounds: int = 7,
    iterations: int = 4000,
    thread_rounds: int = 3,
    per_thread: int = 100_000,
    memory_keys: int = 10_000,
    bulk_keys: int | None = None,
    bulk_rounds: int | None = None,
) -> list[Row]:
    """Measure everything once.  The whole-counter rows use 5 x memory_keys keys
    (50,000 by default; the quick bench's 1,000 memory keys make them 5,000)."""
    rows = _per_call(rounds, iterations)
    nbulk = bulk_keys if bulk_keys is not None else 5 * memory_keys
    rows += _bulk(bulk_rounds if bulk_rounds is not None else (5 if nbulk >= 50_000 else 3), nbulk)
    rows += _seed_workload(thread_rounds, threads=10, per_thread=per_thread, nkeys=1_000)
    return rows + _memory(memory_keys)
