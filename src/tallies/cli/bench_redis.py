"""``tallies bench --stores``, part ``redis``: what ``redis://`` costs, against redis-py.

It starts its own ``redis-server`` (no persistence) on a free 127.0.0.1 port
in a temporary directory and stops it at the end; without ``redis-server`` or
redis-py every row says "not measured" and why.

* increment: ``c.increment()`` on a ``redis://`` counter against the
  in-process ``tallies.Counter.increment()`` (``bench.make_timer``: 16
  statements per loop, interleaved rounds, minimum each), and against redis-py
  ``r.incr(name)`` per call (one round trip each; minimum per call over
  rounds).
* flush of 1,000 dirty keys (one keyed counter with 1,000 keys; and 1,000
  counters): the wall time of ``store.flush()``, and the time Redis spent in
  the scripts (``INFO commandstats``, ``cmdstat_evalsha`` usec, reset before
  each flush): the time Redis was blocked by that flush.  Minimum of rounds.
* 4 processes x 250,000 increments on one ``redis://`` counter, each ending
  with ``flush()``: wall time from a common start to the last flush, the total
  read back with ``GET``; against pipelined ``INCRBY`` (1,000 per pipeline)
  per event.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

from .bench import make_timer

__all__ = ["bench_redis", "format_report", "redis_rows", "store_rows"]

TARGET_INC_VS_CORE = 1.5
TARGET_INC_VS_INCR = 1000.0
TARGET_FLUSH_MS = 20.0
TARGET_BLOCKED_MS = 3.0
TARGET_PROCS_VS_PIPELINE = 100.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None
        self.dir = tempfile.mkdtemp(prefix="tallies-bench-redis-")
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--logfile",
                os.path.join(self.dir, "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _why_not() -> str | None:
    if shutil.which("redis-server") is None:
        return "not measured: redis-server not installed"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "not measured: redis-py not installed (pip install tallies[redis])"
    return None


def _increment(url: str, r: Any, rounds: int, loops: int) -> dict[str, float]:
    import tallies

    store = tallies.open(url + "&prefix=bench-inc:")
    try:
        rc = store.counter("hits")
        core = tallies.Counter()
        unroll = 16
        timer = make_timer("c.increment()", unroll)
        empty = make_timer("pass", unroll)
        best = {"redis": float("inf"), "core": float("inf"), "empty": float("inf")}
        for _ in range(rounds):
            best["empty"] = min(best["empty"], empty(None, loops) / (loops * unroll))
            best["core"] = min(best["core"], timer(core, loops) / (loops * unroll))
            best["redis"] = min(best["redis"], timer(rc, loops) / (loops * unroll))
        incr = float("inf")
        n = 300
        for _ in range(max(3, rounds // 4)):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                r.incr("bench-incr")
            incr = min(incr, (time.perf_counter_ns() - t0) / n)
        store.flush()
        exact = int(r.get("bench-inc:{hits}")) == rounds * loops * unroll
    finally:
        store.close()
    return {
        "redis_ns": best["redis"] - best["empty"],
        "core_ns": best["core"] - best["empty"],
        "incr_ns": incr,
        "exact": float(exact),
    }


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


def _flush(url: str, r: Any, rounds: int) -> dict[str, Any]:
    import tallies

    out: dict[str, Any] = {}
    for label, keyed in (("1,000 keys of one keyed counter", True), ("1,000 counters", False)):
        prefix = "bench-fk:" if keyed else "bench-fc:"
        store = tallies.open(f"{url}&prefix={prefix}")
        try:
            bump = _bumper(store, keyed)
            bump()  # the keys exist in Redis from the first round on
            store.flush()
            best_ms = best_blocked = float("inf")
            calls = 0
            for _ in range(rounds):
                bump()
                r.config_resetstat()
                t0 = time.perf_counter()
                store.flush()
                ms = (time.perf_counter() - t0) * 1000
                stat = r.info("commandstats").get("cmdstat_evalsha", {})
                blocked = stat.get("usec", 0) / 1000
                calls = int(stat.get("calls", 0))
                best_ms = min(best_ms, ms)
                best_blocked = min(best_blocked, blocked)
            out[label] = {"flush_ms": best_ms, "blocked_ms": best_blocked, "script_calls": calls}
        finally:
            store.close()
            tallies.destroy(f"{url}&prefix={prefix}")
    return out


def _proc_worker(url: str, n: int, barrier: Any, q: Any) -> None:
    import tallies

    store = tallies.open(url)
    c = store.counter("procs")
    inc = c.increment
    inc(0)
    store.flush()
    barrier.wait()
    t0 = time.monotonic()
    for _ in range(n):
        inc()
    store.flush()
    q.put((t0, time.monotonic()))
    store.close()


def _processes(url: str, r: Any, procs: int, n: int) -> dict[str, Any]:
    import tallies

    purl = f"{url}&prefix=bench-p:"
    tallies.destroy(purl)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    q = ctx.Queue()
    workers = [ctx.Process(target=_proc_worker, args=(purl, n, barrier, q)) for _ in range(procs)]
    for w in workers:
        w.start()
    stamps = [q.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(60)
    wall = max(e for _, e in stamps) - min(s for s, _ in stamps)
    total = int(r.get("bench-p:{procs}") or 0)
    tallies.destroy(purl)
    # pipelined INCRBY, one client, 1,000 per pipeline
    m = min(n, 100_000)
    t0 = time.perf_counter()
    for _ in range(m // 1000):
        pipe = r.pipeline(transaction=False)
        for _ in range(1000):
            pipe.incrby("bench-pipe", 1)
        pipe.execute()
    pipe_ns = (time.perf_counter() - t0) / m * 1e9
    return {
        "procs": procs,
        "per_proc": n,
        "wall_s": wall,
        "total": total,
        "exact": total == procs * n,
        "ns_per_event": wall / (procs * n) * 1e9,
        "pipeline_ns_per_event": pipe_ns,
    }


def bench_redis(quick: bool = False) -> dict[str, Any]:
    """Every redis:// measurement of this run, or why none was taken."""
    why = _why_not()
    if why is not None:
        return {"status": why}
    import redis

    server = _Server()
    url = f"redis://127.0.0.1:{server.port}/0?flush=3600"
    r = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        rounds, loops = (5, 2000) if quick else (31, 20000)
        report: dict[str, Any] = {"status": "ok"}
        report["increment"] = _increment(url, r, rounds, loops)
        report["flush"] = _flush(url, r, 3 if quick else 15)
        procs, n = (4, 20_000) if quick else (4, 250_000)
        report["processes"] = _processes(url, r, procs, n)
        report["server"] = r.info("server").get("redis_version", "?")
        return report
    finally:
        r.close()
        server.stop()


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def redis_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, measured, target: met/missed) rows."""
    if report.get("status") != "ok":
        return [("redis:// (all rows)", report.get("status", "?"), "")]
    inc = report["increment"]
    rows = []
    ratio_core = inc["redis_ns"] / inc["core_ns"]
    rows.append(
        (
            "`increment()` on a redis:// counter vs in-process `Counter.increment()`",
            f"{inc['redis_ns']:.1f} ns vs {inc['core_ns']:.1f} ns: {ratio_core:.2f}x",
            f"<= {TARGET_INC_VS_CORE}x: {_verdict(ratio_core <= TARGET_INC_VS_CORE)}",
        )
    )
    ratio_incr = inc["incr_ns"] / inc["redis_ns"]
    rows.append(
        (
            "redis-py `r.incr(name)` per event vs redis:// `increment()`",
            f"{inc['incr_ns'] / 1000:.1f} us: {ratio_incr:,.0f}x slower",
            f">= {TARGET_INC_VS_INCR:,.0f}x: {_verdict(ratio_incr >= TARGET_INC_VS_INCR)}",
        )
    )
    for label, f in report["flush"].items():
        ok = f["flush_ms"] <= TARGET_FLUSH_MS and f["blocked_ms"] <= TARGET_BLOCKED_MS
        rows.append(
            (
                f"`flush()` of {label}",
                f"{f['flush_ms']:.1f} ms, Redis blocked {f['blocked_ms']:.2f} ms "
                f"({f['script_calls']} script calls)",
                f"<= {TARGET_FLUSH_MS:.0f} ms, blocked <= {TARGET_BLOCKED_MS:.0f} ms: "
                + _verdict(ok),
            )
        )
    p = report["processes"]
    ratio_pipe = p["pipeline_ns_per_event"] / p["ns_per_event"]
    rows.append(
        (
            f"{p['procs']} processes x {p['per_proc']:,} increments, then flush()",
            f"{p['wall_s'] * 1000:.0f} ms, {p['ns_per_event']:.1f} ns/event, total "
            f"{p['total']:,} ({'exact' if p['exact'] else 'NOT EXACT'})",
            f"exact: {_verdict(p['exact'])}",
        )
    )
    rows.append(
        (
            "pipelined `INCRBY` (1,000 per pipeline) per event vs the above",
            f"{p['pipeline_ns_per_event']:.0f} ns/event: {ratio_pipe:,.0f}x slower",
            f">= {TARGET_PROCS_VS_PIPELINE:.0f}x: "
            + _verdict(ratio_pipe >= TARGET_PROCS_VS_PIPELINE),
        )
    )
    return rows


def format_report(report: dict[str, Any]) -> str:
    lines = ["redis:// (a redis-server started for this run on 127.0.0.1)"]
    if report.get("status") == "ok":
        lines[0] += f", Redis {report['server']}"
    rows = redis_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for a, b, c in rows:
        lines.append(f"  {a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip())
    return "\n".join(lines)


def store_rows(quick: bool) -> list[Any]:
    """The ``redis`` part of ``tallies bench --stores`` (``bench_stores.Row`` rows)."""
    from .bench_stores import Row

    report = bench_redis(quick=quick)
    if report.get("status") != "ok":
        return [Row("redis", "redis:// (every row)", None, "", detail=str(report.get("status")))]
    inc = report["increment"]
    rows = []
    ratio = inc["redis_ns"] / inc["core_ns"]
    rows.append(
        Row(
            "redis",
            "increment() on redis:// vs Counter.increment()",
            ratio,
            "x",
            f"<= {TARGET_INC_VS_CORE}x",
            ratio <= TARGET_INC_VS_CORE,
            f"{inc['redis_ns']:.1f} ns vs {inc['core_ns']:.1f} ns",
        )
    )
    ratio = inc["incr_ns"] / inc["redis_ns"]
    rows.append(
        Row(
            "redis",
            "redis-py r.incr() per event vs redis:// increment()",
            ratio,
            "x",
            f">= {TARGET_INC_VS_INCR:,.0f}x",
            ratio >= TARGET_INC_VS_INCR,
            f"r.incr {inc['incr_ns'] / 1000:.1f} us",
        )
    )
    for label, f in report["flush"].items():
        rows.append(
            Row(
                "redis",
                f"flush() of {label}",
                f["flush_ms"],
                "ms",
                f"<= {TARGET_FLUSH_MS:.0f} ms",
                f["flush_ms"] <= TARGET_FLUSH_MS,
            )
        )
        rows.append(
            Row(
                "redis",
                f"  Redis blocked by it (INFO commandstats, {f['script_calls']} calls)",
                f["blocked_ms"],
                "ms",
                f"<= {TARGET_BLOCKED_MS:.0f} ms",
                f["blocked_ms"] <= TARGET_BLOCKED_MS,
            )
        )
    p = report["processes"]
    rows.append(
        Row(
            "redis",
            f"{p['procs']} processes x {p['per_proc']:,} increments + flush()",
            p["procs"] * p["per_proc"] / p["wall_s"],
            "incr/s",
            "exact",
            bool(p["exact"]),
            f"total {p['total']:,}",
        )
    )
    ratio = p["pipeline_ns_per_event"] / p["ns_per_event"]
    rows.append(
        Row(
            "redis",
            "  vs pipelined INCRBY (1,000 per pipeline) per event",
            ratio,
            "x",
            f">= {TARGET_PROCS_VS_PIPELINE:.0f}x",
            ratio >= TARGET_PROCS_VS_PIPELINE,
            f"INCRBY {p['pipeline_ns_per_event']:.0f} ns/event",
        )
    )
    return rows
