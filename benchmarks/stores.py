"""``tallies bench --stores``: the durable scopes against the in-process core and peers.

Every ratio is taken per round (``harness``); the flush targets are times on
this machine.  Parts (``PARTS``: a list; a scope adds its own ``StorePart``):

``sqlite-increment``  one ``increment()`` on a ``sqlite://`` counter against
    ``tallies.Counter.increment()``, and one ``kc.increment(key)`` of an
    existing key on a ``sqlite://`` keyed counter against the same call on a
    ``tallies.KeyedCounter`` (attribute load included; issue 19)
    (``harness.per_call``: 16 statements a loop on a local, the empty loop
    subtracted, interleaved rounds, all four in the same rounds).  The
    store's background flusher runs meanwhile (interval 1 s).  Targets
    <= 1.5x each.
``sqlite-flush``  one ``flush()`` carrying 1,000 dirty keys of a keyed counter
    (each key incremented since the last flush); the fastest and the median of
    many flushes.  Target: the fastest <= 10 ms.
``sqlite-processes``  4 spawned processes x 250,000 increments of one shared
    name, write-behind (each process's final ``flush()`` included in its
    time; the wall time runs from the earliest start to the latest end, after
    a barrier), checked exact; against the same 4 processes doing diskcache
    ``Cache.incr`` on one key, a raw SQLite transaction per increment
    (``BEGIN IMMEDIATE; INSERT ... ON CONFLICT DO UPDATE; COMMIT``, WAL,
    synchronous=NORMAL) and ``sqlite://?flush=0`` (write-through).  The
    per-event peers do fewer increments (they are ~1,000x slower), so the
    comparison is of throughput (increments per second, all processes
    together), per round, each candidate on fresh files (``--quick``, for the
    tests: one round, forked workers).  Targets: write-behind >= 100x
    diskcache and >= 50x the raw UPSERT; write-through >= 1x diskcache.
``redis``  ``redis_store.py``.
``redis-wait``  ``redis_wait.py``: a flush with ``wait=1`` against ``wait=0``
    (one replica), and ``WAIT`` / ``WAITAOF`` as raw commands.
``postgresql``  ``postgres_store.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing as mp
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tallies

from .harness import Row, Target, exact, interleave, median, per_call, per_round, spawn_workers

__all__ = ["PARTS", "StorePart", "run", "store_worker"]


@dataclass(frozen=True)
class StorePart:
    name: str
    run: Callable[[bool], list[Row]]
    """run(quick) -> rows"""


# ---- sqlite-increment ---------------------------------------------------------------


def _sqlite_increment(quick: bool) -> list[Row]:
    d = tempfile.mkdtemp(prefix="tallies-bench-")
    try:
        store = tallies.open(f"sqlite:///{d}/inc.db?flush=1")
        key = "user:0000042"
        kcs = [tallies.KeyedCounter(), store.keyed("k")]
        for kc in kcs:
            kc.increment(key)  # an existing key: its first use is not timed
        timed = per_call(
            {
                "core": ("c.increment()", {"c": tallies.Counter()}),
                "sqlite": ("c.increment()", {"c": store.counter("n")}),
                "core-keyed": ("kc.increment(k)", {"kc": kcs[0], "k": key}),
                "sqlite-keyed": ("kc.increment(k)", {"kc": kcs[1], "k": key}),
            },
            rounds=5 if quick else 31,
            target_ns=2_000_000 if quick else 20_000_000,
        ).ns
        store.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    part = "sqlite-increment"
    core = Row(part, "tallies.Counter.increment()", median(timed["core"]), "ns")
    mine = Row(part, "sqlite:// counter increment()", median(timed["sqlite"]), "ns")
    mine.ratios, mine.of = per_round(timed["sqlite"], timed["core"]), "in-process Counter"
    rows = [core, mine.judge(Target("<=", 1.5, of="in-process Counter"), mine.ratio)]
    core_k = Row(part, "tallies.KeyedCounter kc.increment(key)", median(timed["core-keyed"]), "ns")
    mine_k = Row(
        part, "sqlite:// keyed increment, existing key", median(timed["sqlite-keyed"]), "ns"
    )
    mine_k.ratios = per_round(timed["sqlite-keyed"], timed["core-keyed"])
    mine_k.of = "KeyedCounter"
    target = Target("<=", 1.5, of="KeyedCounter.increment")
    return [*rows, core_k, mine_k.judge(target, mine_k.ratio)]


# ---- sqlite-flush -------------------------------------------------------------------


def _sqlite_flush(quick: bool) -> list[Row]:
    d = tempfile.mkdtemp(prefix="tallies-bench-")
    times = []
    try:
        with tallies.open(f"sqlite:///{d}/flush.db?flush=3600") as store:
            kc = store.keyed("k")
            keys = [f"key-{i:04d}" for i in range(1000)]
            for k in keys:
                kc.increment(k)
            store.flush()  # first flush inserts the rows; measure updates and inserts both
            for r in range(10 if quick else 40):
                if r % 10 == 0:  # now and then 1,000 new keys (inserts, not updates)
                    keys = [f"key-{r:02d}-{i:04d}" for i in range(1000)]
                for k in keys:
                    kc.increment(k)
                t0 = time.perf_counter()
                store.flush()
                times.append(time.perf_counter() - t0)
            assert sum(kc.snapshot().values()) == 1000 * (1 + len(times))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    ms = [t * 1e3 for t in times]
    part = "sqlite-flush"
    fastest = Row(part, "one flush of 1,000 dirty keys (fastest)", min(ms), "ms")
    fastest.data = {"ms": ms}
    return [
        fastest.judge(Target("<=", 10, unit="ms"), min(ms)),
        Row(part, "one flush of 1,000 dirty keys (median)", statistics.median(ms), "ms",
            detail=f"{len(ms)} flushes"),
    ]  # fmt: skip


# ---- sqlite-processes ---------------------------------------------------------------


def store_worker(url: str, n: int, barrier: Any, out: Any) -> None:
    """``n`` increments of the store's counter ``hits``, then ``flush()``; reports
    (start, end) of that, after a barrier (the counter exists before: untimed)."""
    store = tallies.open(url)
    inc = store.counter("hits").increment
    inc(0)
    store.flush()
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(n):
        inc()
    store.flush()
    out.put((t0, time.perf_counter()))
    store.close()


def _w_diskcache(path: str, n: int, barrier: Any, out: Any) -> None:
    diskcache: Any = importlib.import_module("diskcache")
    cache = diskcache.Cache(path)
    incr = cache.incr
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(n):
        incr("hits")
    cache.close()
    out.put((t0, time.perf_counter()))


def _w_upsert(path: str, n: int, barrier: Any, out: Any) -> None:
    con = sqlite3.connect(path, isolation_level=None, timeout=60)
    con.execute("PRAGMA synchronous = NORMAL")
    ex = con.execute
    sql = (
        "INSERT INTO counters(name, value) VALUES ('hits', 1) "
        "ON CONFLICT(name) DO UPDATE SET value = value + 1"
    )
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(n):
        ex("BEGIN IMMEDIATE")
        ex(sql)
        ex("COMMIT")
    con.close()
    out.put((t0, time.perf_counter()))


def _wall(spans: list[tuple[float, float]]) -> float:
    """From the earliest start to the latest end."""
    return float(max(e for _, e in spans) - min(s for s, _ in spans))


def _sqlite_processes(quick: bool) -> list[Row]:
    procs = 4
    n = 25_000 if quick else 250_000
    n_peer = 250 if quick else 2_500
    rounds = 1 if quick else 3
    method = "fork" if quick and "fork" in mp.get_all_start_methods() else "spawn"
    diskcache: Any = (
        importlib.import_module("diskcache") if importlib.util.find_spec("diskcache") else None
    )
    totals: dict[str, list[int]] = {}
    expected = {"wb": procs * n, "wt": procs * n_peer, "up": procs * n_peer, "dc": procs * n_peer}

    def fresh(key: str, count: Callable[[str], int], prepare: Callable[[str], str]) -> Any:
        """A timing on fresh files: the rate of ``procs`` workers; records the total."""
        target = {"wb": store_worker, "wt": store_worker, "up": _w_upsert, "dc": _w_diskcache}[key]

        def timing() -> float:
            d = tempfile.mkdtemp(prefix="tallies-bench-")
            try:
                where = prepare(d)
                spans = spawn_workers(target, (where, expected[key] // procs), procs, method=method)
                totals.setdefault(key, []).append(count(where))
                return expected[key] / _wall(spans)
            finally:
                shutil.rmtree(d, ignore_errors=True)

        return timing

    def store_total(url: str) -> int:
        with tallies.open(url) as s:
            return s.counter("hits").value()

    def upsert_file(d: str) -> str:
        path = os.path.join(d, "upsert.db")
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        con.close()
        return path

    def upsert_total(path: str) -> int:
        con = sqlite3.connect(path)
        try:
            return int(con.execute("SELECT value FROM counters").fetchone()[0])
        finally:
            con.close()

    def diskcache_total(path: str) -> int:
        with diskcache.Cache(path) as cache:
            return int(cache.get("hits"))

    cases = {
        "wb": fresh("wb", store_total, lambda d: f"sqlite:///{d}/wb.db"),
        "wt": fresh("wt", store_total, lambda d: f"sqlite:///{d}/wt.db?flush=0"),
        "up": fresh("up", upsert_total, upsert_file),
    }
    if diskcache is not None:
        cases["dc"] = fresh("dc", diskcache_total, lambda d: os.path.join(d, "dc"))
    rates = interleave(cases, rounds)

    part = "sqlite-processes"

    def rate_row(key: str, name: str) -> Row:
        row = Row(part, name, median(rates[key]), "incr/s")
        row.detail = f"totals {', '.join(f'{t:,}' for t in totals[key])}"
        row.data = {"rates": rates[key], "totals": totals[key]}
        return row

    rows = [
        rate_row("wb", f"sqlite:// write-behind, {procs} x {n:,}"),
        rate_row("wt", f"sqlite://?flush=0 write-through, {procs} x {n_peer:,}"),
    ]
    for row, key in zip(rows, ("wb", "wt"), strict=True):
        wrong = [t for t in totals[key] if t != expected[key]]
        row.decide("exact", exact(wrong[0] if wrong else expected[key], expected[key]))
    rows.append(rate_row("up", f"raw UPSERT transaction per increment, {procs} x {n_peer:,}"))
    if "dc" in rates:
        rows.append(rate_row("dc", f"diskcache Cache.incr, {procs} x {n_peer:,}"))
    else:
        rows.append(
            Row(part, "diskcache Cache.incr", detail="not installed (benchmarks/requirements.txt)")
        )

    def vs(name: str, a: str, b: str, limit: float) -> Row:
        row = Row(part, name, unit="x")
        if b in rates:
            row.ratios = per_round(rates[a], rates[b])
            row.value = row.ratio
        return row.judge(Target(">=", limit), row.ratio, "diskcache not installed")

    rows.append(vs("write-behind vs diskcache Cache.incr", "wb", "dc", 100))
    rows.append(vs("write-behind vs raw UPSERT per increment", "wb", "up", 50))
    rows.append(vs("write-through (flush=0) vs diskcache Cache.incr", "wt", "dc", 1))
    return rows


def _redis(quick: bool) -> list[Row]:
    from .redis_store import rows  # starts its own redis-server

    return rows(quick)


def _redis_wait(quick: bool) -> list[Row]:
    from .redis_wait import rows  # starts a master and a replica

    return rows(quick)


def _postgresql(quick: bool) -> list[Row]:
    from .postgres_store import rows  # starts its own PostgreSQL server

    return rows(quick)


PARTS: list[StorePart] = [
    StorePart("sqlite-increment", _sqlite_increment),
    StorePart("sqlite-flush", _sqlite_flush),
    StorePart("sqlite-processes", _sqlite_processes),
    StorePart("redis", _redis),
    StorePart("redis-wait", _redis_wait),
    StorePart("postgresql", _postgresql),
]
"""The parts ``tallies bench --stores`` runs, in order.  Add a scope's parts here."""


def run(quick: bool = False, parts: list[str] | None = None) -> list[Row]:
    """Run the parts (all, or those named) and return every row."""
    rows: list[Row] = []
    for part in PARTS:
        if parts is None or part.name in parts:
            rows.extend(part.run(quick))
    return rows
