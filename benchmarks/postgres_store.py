"""``tallies bench --stores``, part ``postgresql``: what ``postgresql://`` costs,
and why its flush is built the way it is.

It starts its own PostgreSQL server (``servers.PostgresServer``, the tests'
launcher: initdb in a temporary directory, a free 127.0.0.1 port, fsync ON)
and stops it at the end; without the server binaries or psycopg its one row
says "not measured" and why.

* increment: ``c.increment()`` on a ``postgresql://`` counter against the
  in-process ``tallies.Counter.increment()`` and against psycopg ``UPDATE
  counters SET n = n + 1`` per event (autocommit: a round trip and a commit
  each), all through ``harness.per_call``, ratios per round; the count is
  then checked against the table.
* flush of 1,000 dirty keys of one keyed counter (the fastest of the rounds;
  the median in the detail), and of 10^6 (not in ``--quick``).
* the convoy: 16 writer processes, each adding 1 to the same 1,000 keys
  every 100 ms and flushing, for 30 s (2 s in ``--quick``): flush latency
  p50 / p99 and every count checked exact; beside it the same load on keys
  of each writer's own (the control: what the machine allows), one sorted
  ``INSERT ... ON CONFLICT`` per flush on one row per key (the hot rows),
  and (not in ``--quick``) a client-driven transaction upserting in each
  writer's own key order (deadlocks retried) and ``UPDATE ... SET n = n + 1``
  per event (their latency: the time to write one period's 1,000 events).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import tempfile
import time
from typing import Any

import tallies

from .harness import Row, Target, exact, median, per_call, per_round
from .servers import PG_PASSWORD, PostgresServer, pg_bindir

__all__ = ["rows", "why_not"]

PART = "postgresql"
TARGET_INC_VS_CORE = 1.5
TARGET_INC_VS_UPDATE = 1000.0
TARGET_FLUSH_MS = 20.0
TARGET_MILLION_S = 4.0
TARGET_CONVOY_P99_MS = 100.0
KEYS = 1000
WRITERS = 16
PERIOD = 0.1

MODES = {
    "store": "16 writers, the same 1,000 keys: postgresql:// flush",
    "control": "  the same, each writer on 1,000 keys of its own",
    "upsert": "  one row per key: one sorted UPSERT per flush",
    "tx": "  one row per key: BEGIN, UPSERT per key in the writer's order, COMMIT",
    "event": "  one row per key: UPDATE ... SET n = n + 1 per event",
}


def why_not() -> str | None:
    """Why this run cannot measure PostgreSQL, or None."""
    if pg_bindir() is None:
        return "not measured: the PostgreSQL server is not installed"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "not measured: psycopg is not installed (pip install tallies[postgres])"
    return None


def _conninfo(server: PostgresServer, db: str) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.port, "user": "tallies",
            "password": PG_PASSWORD, "dbname": db}  # fmt: skip


def _connect(conninfo: dict[str, Any]) -> Any:
    import psycopg

    return psycopg.connect(autocommit=True, **conninfo)


def _increment(server: PostgresServer, quick: bool) -> list[Row]:
    db = server.new_database()
    store = tallies.open(server.url(db, flush="1"))
    conn = _connect(_conninfo(server, db))
    try:
        conn.execute("CREATE TABLE public.counters (name text PRIMARY KEY, n bigint NOT NULL)")
        conn.execute("INSERT INTO public.counters VALUES ('n', 0)")
        timed = per_call(
            {
                "core": ("c.increment()", {"c": tallies.Counter()}),
                "pg": ("c.increment()", {"c": store.counter("n")}),
                "update": ("conn.execute(q)", {"conn": conn, "q": "UPDATE public.counters "
                                                "SET n = n + 1 WHERE name = 'n'"}),
            },
            rounds=5 if quick else 31,
            target_ns=1_000_000 if quick else 5_000_000,
        )  # fmt: skip
        store.flush()
        stored = store.counter("n").value()
    finally:
        conn.close()
        store.close()
    core, mine, update = timed.ns["core"], timed.ns["pg"], timed.ns["update"]
    vs_core = Row(PART, "increment() on postgresql:// vs Counter.increment()", median(mine), "ns")
    vs_core.ratios, vs_core.of = per_round(mine, core), "in-process Counter"
    vs_core.detail = f"in-process Counter {median(core):.1f} ns; {timed.calls['pg']:,} increments"
    vs_core.judge(Target("<=", TARGET_INC_VS_CORE, of="in-process Counter"), vs_core.ratio)
    if stored != timed.calls["pg"]:  # a fast increment that loses counts is no result
        vs_core.decide(vs_core.target, exact(stored, timed.calls["pg"]))
    vs_update = Row(PART, "psycopg UPDATE per event vs postgresql:// increment()",
                    median(update), "ns")  # fmt: skip
    vs_update.ratios, vs_update.of = per_round(update, mine), "postgresql:// increment()"
    vs_update.judge(
        Target(">=", TARGET_INC_VS_UPDATE, of="postgresql:// increment()"), vs_update.ratio
    )
    return [vs_core, vs_update]


def _flush(server: PostgresServer, quick: bool) -> list[Row]:
    db = server.new_database()
    out: list[Row] = []
    with tallies.open(server.url(db, flush="3600")) as store:
        kc = store.keyed("k")
        keys = [f"key{i:04d}" for i in range(KEYS)]
        for k in keys:
            kc.increment(k)
        store.flush()  # the rows exist: the timed flushes are the steady state
        ms = []
        for _ in range(3 if quick else 15):
            for k in keys:
                kc.increment(k)
            t0 = time.perf_counter()
            store.flush()
            ms.append((time.perf_counter() - t0) * 1000)
        row = Row(PART, "flush() of 1,000 keys of one keyed counter (fastest)", min(ms), "ms")
        row.detail, row.data = f"median {median(ms):.1f} ms", {"ms": ms}
        out.append(row.judge(Target("<=", TARGET_FLUSH_MS, unit="ms"), min(ms)))
        if not quick:
            big = store.keyed("big")
            for label in ("new", "existing"):
                for i in range(1_000_000):
                    big.increment(f"k{i}")
                t0 = time.perf_counter()
                store.flush()
                s = time.perf_counter() - t0
                row = Row(PART, f"flush() of 10^6 keys of one keyed counter ({label} rows)", s, "s")
                out.append(row.judge(Target("<=", TARGET_MILLION_S, unit="s"), s))
    return out


# ---- the convoy ---------------------------------------------------------------------


def _writer(mode: str, url: str, conninfo: dict[str, Any], seconds: float, go: str,
            out: Any, index: int) -> None:  # fmt: skip
    keys = [f"k{i:04d}" for i in range(KEYS)]
    if mode == "control":
        keys = [f"w{index:02d}k{i:04d}" for i in range(KEYS)]
    lat: list[float] = []
    deadlocks = periods = 0
    store: Any = None
    conn: Any = None
    if mode in ("store", "control"):
        store = tallies.open(url)
        kc = store.keyed("hot")
    else:
        conn = _connect(conninfo)
        order = keys[:]
        random.Random(os.getpid()).shuffle(order)  # each writer's own order
    out.put(("ready", index))
    while not os.path.exists(go):
        time.sleep(0.005)
    with open(go) as f:
        start = float(f.read())
    while time.time() < start:
        time.sleep(0.001)
    end = start + seconds
    nxt = time.monotonic()
    import psycopg

    while time.time() < end:
        t0 = time.perf_counter()
        if store is not None:
            for k in keys:
                kc.increment(k)
            t0 = time.perf_counter()
            store.flush()
        elif mode == "upsert":
            conn.execute(
                "INSERT INTO naive.hot AS t (key, n) SELECT k, 1 FROM unnest(%s::text[]) k "
                "ORDER BY k ON CONFLICT (key) DO UPDATE SET n = t.n + excluded.n",
                (keys,),
            )
        elif mode == "tx":
            while time.time() < end + 60:
                try:
                    with conn.transaction():
                        conn.cursor().executemany(
                            "INSERT INTO naive.hot AS t (key, n) VALUES (%s, 1) "
                            "ON CONFLICT (key) DO UPDATE SET n = t.n + excluded.n",
                            [(k,) for k in order],
                        )
                    break
                except psycopg.errors.DeadlockDetected:
                    deadlocks += 1
        else:
            for k in order:
                if time.time() > end + 60:
                    break
                conn.execute("UPDATE naive.hot SET n = n + 1 WHERE key = %s", (k,))
        lat.append(time.perf_counter() - t0)
        periods += 1
        nxt += PERIOD
        time.sleep(max(0.0, nxt - time.monotonic()))
    if store is not None:
        store.close()
    if conn is not None:
        conn.close()
    out.put(("done", lat, periods, deadlocks))


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def _convoy(server: PostgresServer, mode: str, seconds: float) -> Row:
    db = server.new_database()
    url = server.url(db, flush="3600")
    conninfo = _conninfo(server, db)
    if mode in ("store", "control"):
        with tallies.open(url) as s:  # the schema and the rows exist before the clock starts
            kc = s.keyed("hot")
            for i in range(KEYS):
                kc.increment(f"k{i:04d}", 0)
                for w in range(WRITERS if mode == "control" else 0):
                    kc.increment(f"w{w:02d}k{i:04d}", 0)
    else:
        with _connect(conninfo) as conn:
            conn.execute("CREATE SCHEMA naive")
            conn.execute("CREATE TABLE naive.hot (key text PRIMARY KEY, n bigint NOT NULL)")
            conn.execute(
                "INSERT INTO naive.hot SELECT 'k' || lpad(i::text, 4, '0'), 0 "
                "FROM generate_series(0, %s) i",
                (KEYS - 1,),
            )
    ctx = mp.get_context("fork")
    q: Any = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="tallies-bench-pg-") as tmp:
        go = os.path.join(tmp, "go")
        procs = [ctx.Process(target=_writer, args=(mode, url, conninfo, seconds, go, q, i))
                 for i in range(WRITERS)]  # fmt: skip
        for p in procs:
            p.start()
        for _ in procs:
            q.get(timeout=300)  # every writer connected: start together
        with open(go + ".tmp", "w") as f:
            f.write(str(time.time() + 0.5))
        os.rename(go + ".tmp", go)
        results = [q.get(timeout=seconds + 600) for _ in procs]
        for p in procs:
            p.join()
    lat = [x for r in results for x in r[1]]
    periods = sum(r[2] for r in results)
    deadlocks = sum(r[3] for r in results)
    verdict = None  # the naive modes have no exactly-once to check
    with _connect(conninfo) as conn:
        if mode == "store":
            rows = conn.execute(
                "SELECT key, value FROM tallies.keyed WHERE name = 'hot'"
            ).fetchall()
            verdict = exact(sum(v for _, v in rows), periods * KEYS)
        elif mode == "control":
            ((total,),) = conn.execute("SELECT sum(value) FROM tallies.keyed").fetchall()
            verdict = exact(int(total), periods * KEYS)
    row = Row(PART, MODES[mode], _pct(lat, 99) * 1000, "ms")
    row.detail = (
        f"p50 {_pct(lat, 50) * 1000:,.0f} ms, {periods:,} of {WRITERS * round(seconds / PERIOD):,}"
        f" flushes in {seconds:g} s" + (f", {deadlocks} deadlocks" if deadlocks else "")
    )
    row.data = {"p50_ms": _pct(lat, 50) * 1000, "flushes": periods, "deadlocks": deadlocks}
    if mode == "store":
        row.judge(Target("<=", TARGET_CONVOY_P99_MS, unit="ms"), row.value)
        if verdict is not None and verdict.word != "met":
            row.decide(row.target, verdict)
    elif verdict is not None:
        row.decide("exact", verdict)
    return row


def rows(quick: bool) -> list[Row]:
    """The ``postgresql`` part of ``tallies bench --stores``: every row, or one saying why none."""
    why = why_not()
    if why is not None:
        return [Row(PART, "postgresql:// (every row)", detail=why)]
    server = PostgresServer(fsync=True)
    try:
        out = _increment(server, quick)
        out += _flush(server, quick)
        seconds = 2.0 if quick else 30.0
        modes = ("store", "control", "upsert") if quick else tuple(MODES)
        for mode in modes:
            out.append(_convoy(server, mode, seconds))
        version = server.sql("SHOW server_version")[0][0]
    finally:
        server.close()
    for row in out:
        row.data["postgresql_version"] = version
    return out
