"""``tallies bench --stores``, part ``redis``: what ``redis://`` costs, against redis-py.

It starts its own ``redis-server`` (``servers.RedisServer``, the tests'
launcher: no persistence, a free 127.0.0.1 port, a temporary directory) and
stops it at the end; without ``redis-server`` or redis-py its one row says
"not measured" and why.

* increment: ``c.increment()`` on a ``redis://`` counter against the
  in-process ``tallies.Counter.increment()`` and against redis-py
  ``r.incr(name)`` (one round trip each), all through ``harness.per_call``,
  ratios per round.  The counter's count is then checked against Redis.
* flush of 1,000 dirty keys (one keyed counter with 1,000 keys; and 1,000
  counters): the wall time of ``store.flush()``, and the time Redis spent in
  the scripts (``INFO commandstats``, ``cmdstat_evalsha`` usec, reset before
  each flush): the time Redis was blocked by that flush.  The targets are
  times on this machine, checked on the fastest of the rounds (the median
  is in the JSON).
* 4 processes x 250,000 increments on one ``redis://`` counter, each ending
  with ``flush()``: wall time from a common start to the last flush, the total
  read back with ``GET``; against pipelined ``INCRBY`` (1,000 per pipeline)
  per event, measured in the same round.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import tallies

from .harness import Row, Target, exact, interleave, median, per_call, per_round, spawn_workers
from .servers import RedisServer
from .stores import store_worker

__all__ = ["rows", "why_not"]

PART = "redis"
TARGET_INC_VS_CORE = 1.5
TARGET_INC_VS_INCR = 1000.0
TARGET_FLUSH_MS = 20.0
TARGET_BLOCKED_MS = 3.0
TARGET_PROCS_VS_PIPELINE = 100.0


def why_not() -> str | None:
    """Why this run cannot measure Redis, or None."""
    if shutil.which("redis-server") is None:
        return "not measured: redis-server not installed"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "not measured: redis-py not installed (benchmarks/requirements.txt)"
    return None


def _increment(url: str, r: Any, quick: bool) -> list[Row]:
    store = tallies.open(url + "&prefix=bench-inc:")
    try:
        rc = store.counter("hits")
        timed = per_call(
            {
                "core": ("c.increment()", {"c": tallies.Counter()}),
                "redis": ("c.increment()", {"c": rc}),
                "incr": ("r.incr('bench-incr')", {"r": r}),
            },
            rounds=5 if quick else 31,
            target_ns=1_000_000 if quick else 5_000_000,
        )
        store.flush()
        in_redis = int(r.get("bench-inc:{hits}"))
    finally:
        store.close()
    core, mine, incr = timed.ns["core"], timed.ns["redis"], timed.ns["incr"]
    counted = timed.calls["redis"]
    vs_core = Row(PART, "increment() on redis:// vs Counter.increment()", median(mine), "ns")
    vs_core.ratios, vs_core.of = per_round(mine, core), "in-process Counter"
    vs_core.detail = f"in-process Counter {median(core):.1f} ns; {counted:,} increments"
    vs_core.judge(Target("<=", TARGET_INC_VS_CORE, of="in-process Counter"), vs_core.ratio)
    if in_redis != counted:  # a fast increment that loses counts is no result
        vs_core.decide(vs_core.target, exact(in_redis, counted))
    vs_incr = Row(PART, "redis-py r.incr() per event vs redis:// increment()", median(incr), "ns")
    vs_incr.ratios, vs_incr.of = per_round(incr, mine), "redis:// increment()"
    vs_incr.judge(Target(">=", TARGET_INC_VS_INCR, of="redis:// increment()"), vs_incr.ratio)
    return [vs_core, vs_incr]


def _bumper(store: Any, keyed: bool) -> Any:
    """A function making 1,000 keys (or counters) of ``store`` dirty."""
    kc = store.keyed("k")
    cs = [store.counter(f"c{i}") for i in range(1000)] if not keyed else []
    keys = [f"key{i}" for i in range(1000)]

    def bump() -> None:
        if keyed:
            for k in keys:
                kc.increment(k)
        else:
            for c in cs:
                c.increment()

    return bump


def _flush(url: str, r: Any, rounds: int) -> list[Row]:
    rows: list[Row] = []
    for label, keyed in (("1,000 keys of one keyed counter", True), ("1,000 counters", False)):
        prefix = "bench-fk:" if keyed else "bench-fc:"
        store = tallies.open(f"{url}&prefix={prefix}")
        try:
            bump = _bumper(store, keyed)
            bump()  # the keys exist in Redis from the first round on
            store.flush()
            ms: list[float] = []
            blocked: list[float] = []
            calls = 0
            for _ in range(rounds):
                bump()
                r.config_resetstat()
                t0 = time.perf_counter()
                store.flush()
                ms.append((time.perf_counter() - t0) * 1000)
                stat = r.info("commandstats").get("cmdstat_evalsha", {})
                blocked.append(stat.get("usec", 0) / 1000)
                calls = int(stat.get("calls", 0))
        finally:
            store.close()
            tallies.destroy(f"{url}&prefix={prefix}")
        flush = Row(PART, f"flush() of {label} (fastest)", min(ms), "ms")
        flush.detail, flush.data = f"median {median(ms):.1f} ms", {"ms": ms}
        rows.append(flush.judge(Target("<=", TARGET_FLUSH_MS, unit="ms"), min(ms)))
        held = Row(PART, f"  Redis blocked by that flush (INFO commandstats, {calls} calls)")
        held.value, held.unit = min(blocked), "ms"
        held.detail, held.data = f"median {median(blocked):.2f} ms", {"ms": blocked}
        rows.append(held.judge(Target("<=", TARGET_BLOCKED_MS, unit="ms"), min(blocked)))
    return rows


def _processes(url: str, r: Any, procs: int, n: int, rounds: int) -> list[Row]:
    purl = f"{url}&prefix=bench-p:"
    totals: list[int] = []

    def processes() -> float:
        tallies.destroy(purl)
        stamps = spawn_workers(store_worker, (purl, n), procs, timeout=300)
        totals.append(int(r.get("bench-p:{hits}") or 0))
        tallies.destroy(purl)
        wall = max(e for _, e in stamps) - min(s for s, _ in stamps)
        return float(wall / (procs * n) * 1e9)

    def pipeline() -> float:
        """Pipelined INCRBY, one client, 1,000 per pipeline: ns per event."""
        m = min(n, 100_000)
        t0 = time.perf_counter()
        for _ in range(m // 1000):
            pipe = r.pipeline(transaction=False)
            for _ in range(1000):
                pipe.incrby("bench-pipe", 1)
            pipe.execute()
        return (time.perf_counter() - t0) / m * 1e9

    ns = interleave({"processes": processes, "pipeline": pipeline}, rounds)
    name = f"{procs} processes x {n:,} increments + flush()"
    row = Row(PART, name, 1e9 / median(ns["processes"]), "incr/s")
    row.detail = f"totals {', '.join(f'{t:,}' for t in totals)}"
    row.data = {"ns_per_event": ns["processes"], "totals": totals}
    wrong = [t for t in totals if t != procs * n]
    row.decide("exact", exact(wrong[0] if wrong else procs * n, procs * n))
    pipe = Row(PART, "  vs pipelined INCRBY (1,000 per pipeline) per event", unit="x")
    pipe.ratios, pipe.of = per_round(ns["pipeline"], ns["processes"]), "redis://"
    pipe.value = pipe.ratio
    pipe.detail = f"INCRBY {median(ns['pipeline']):.0f} ns/event"
    pipe.data = {"pipeline_ns_per_event": ns["pipeline"]}
    return [row, pipe.judge(Target(">=", TARGET_PROCS_VS_PIPELINE, of="redis://"), pipe.ratio)]


def rows(quick: bool) -> list[Row]:
    """The ``redis`` part of ``tallies bench --stores``: every row, or one saying why none."""
    why = why_not()
    if why is not None:
        return [Row(PART, "redis:// (every row)", detail=why)]
    import redis

    with (
        tempfile.TemporaryDirectory(prefix="tallies-bench-redis-") as d,
        RedisServer(Path(d)).start() as server,
    ):
        url = f"redis://127.0.0.1:{server.port}/0?flush=3600"
        r = redis.Redis(host="127.0.0.1", port=server.port)
        try:
            out = _increment(url, r, quick)
            out += _flush(url, r, 3 if quick else 15)
            procs, n = (4, 20_000) if quick else (4, 250_000)
            out += _processes(url, r, procs, n, 1 if quick else 3)
            version = r.info("server").get("redis_version", "?")
        finally:
            r.close()
    for row in out:
        row.data["redis_version"] = version
    return out
