"""``tallies bench --processes``: counters shared by processes, against peers.

Measured in one run, so the ratios compare like with like:

1. 2 processes x N increments of one ``shm://`` name, each process's rate
   against one lone process doing the same (target: each >= 80 %).
2. The same 2 x N with ``multiprocessing.Value`` + its lock (target: tallies
   >= 20x faster) and with prometheus_client's multiprocess-mode Counter
   (``PROMETHEUS_MULTIPROC_DIR`` set before the workers import it; target
   >= 10x faster).  "Faster" compares the wall time of the two processes.
3. One ``shm://`` ``increment()`` against one in-process
   ``tallies.Counter.increment()`` in ns (target <= 2x): unrolled loops over
   a local bound method, the empty loop's cost subtracted, rounds
   interleaved, minima taken.

Every worker is started with the ``spawn`` method (a fresh interpreter), waits
at a barrier, times only its own loop, and the totals are checked exactly.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing as mp
import os
import secrets
import shutil
import tempfile
import time
from multiprocessing.synchronize import Barrier
from typing import Any

__all__ = ["bench_processes", "format_report", "main"]

TARGET_SCALING = 0.80
TARGET_VS_VALUE = 20.0
TARGET_VS_PROMETHEUS = 10.0
TARGET_SINGLE_OP = 2.0


def _shm_worker(url: str, n: int, barrier: Barrier, out: Any) -> None:
    import tallies

    store = tallies.open(url)
    c = store.counter("hits")
    inc = c.increment
    inc(0)  # claim this process's slab before the clock starts
    barrier.wait()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        inc()
    out.put((time.perf_counter() - t0, time.process_time() - c0))
    store.close()


def _baseline_worker(n: int, barrier: Barrier, out: Any) -> None:
    """Machine baseline: a loop that shares nothing (how parallel is this box?)."""
    barrier.wait()
    c0, t0 = time.process_time(), time.perf_counter()
    x = 0
    for i in range(n):
        x ^= i
    out.put((time.perf_counter() - t0, time.process_time() - c0))


def _one_cell_worker(url: str, n: int, barrier: Barrier, out: Any) -> None:
    """Control: every process forced onto slab 0's cell (what slabs avoid)."""
    import tallies

    store = tallies.open(url)
    c = store.counter("hits")
    c.increment(0)
    store._seg.c.bind(0)  # type: ignore[attr-defined]
    inc = c.increment
    barrier.wait()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        inc()
    out.put((time.perf_counter() - t0, time.process_time() - c0))
    store.close()


def _value_worker(value: Any, n: int, barrier: Barrier, out: Any) -> None:
    lock = value.get_lock()
    barrier.wait()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        with lock:
            value.value += 1
    out.put((time.perf_counter() - t0, time.process_time() - c0))


def _prometheus_worker(directory: str, n: int, barrier: Barrier, out: Any) -> None:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # before the import
    prom: Any = importlib.import_module("prometheus_client")  # an optional peer

    c = prom.Counter("bench_hits", "increments")
    inc = c.inc
    barrier.wait()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        inc()
    out.put((time.perf_counter() - t0, time.process_time() - c0))


def _run(target: Any, args: tuple[Any, ...], procs: int) -> list[tuple[float, float]]:
    """Start ``procs`` spawned workers at a barrier; their (wall, cpu) seconds."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    workers = [ctx.Process(target=target, args=(*args, barrier, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    times = [out.get(timeout=300) for _ in workers]
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"a benchmark worker failed (exit code {w.exitcode})")
    return times


def _single_op_ns(rounds: int, loops: int) -> dict[str, float]:
    import tallies

    url = f"shm://bench-op-{os.getpid()}-{secrets.token_hex(4)}"
    store = tallies.open(url)
    try:
        shm_inc = store.counter("op").increment
        core_inc = tallies.Counter().increment
        shm_inc(0)

        def timed(f: Any) -> float:
            t0 = time.perf_counter_ns()
            for _ in range(loops):
                f()
                f()
                f()
                f()
                f()
                f()
                f()
                f()
                f()
                f()
            return time.perf_counter_ns() - t0

        def empty() -> float:
            t0 = time.perf_counter_ns()
            for _ in range(loops):
                pass
            return time.perf_counter_ns() - t0

        best = {"shm": float("inf"), "core": float("inf"), "empty": float("inf")}
        for _ in range(rounds):
            best["shm"] = min(best["shm"], timed(shm_inc))
            best["core"] = min(best["core"], timed(core_inc))
            best["empty"] = min(best["empty"], empty())
        calls = loops * 10
        return {
            "shm_ns": (best["shm"] - best["empty"]) / calls,
            "core_ns": (best["core"] - best["empty"]) / calls,
        }
    finally:
        store.close()
        tallies.destroy(url)


def bench_processes(
    n: int = 1_000_000, rounds: int = 3, peers: bool = True, op_loops: int = 200_000
) -> dict[str, Any]:
    """Run every measurement once; a dict of the raw numbers (see format_report)."""
    import tallies

    url = f"shm://bench-{os.getpid()}-{secrets.token_hex(4)}"
    res: dict[str, Any] = {"n": n, "rounds": rounds, "cpus": os.cpu_count()}
    res["load_before"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    try:
        lone: list[tuple[float, float]] = []
        pair: list[list[tuple[float, float]]] = []
        base_lone: list[float] = []
        base_pair: list[float] = []
        for _ in range(rounds):  # interleave lone and pair runs
            lone.append(_run(_shm_worker, (url, n), 1)[0])
            pair.append(_run(_shm_worker, (url, n), 2))
            base_lone.append(_run(_baseline_worker, (n,), 1)[0][0])
            base_pair.append(max(w for w, _ in _run(_baseline_worker, (n,), 2)))
        res["baseline_share"] = min(base_lone) / min(base_pair)
        one_cell = [_run(_one_cell_worker, (url, n), 2) for _ in range(rounds)]
        with tallies.open(url) as store:
            total = store.counter("hits").value()
        res["shm_total"] = total
        res["shm_expected"] = rounds * 5 * n
        res["one_cell_cpu_s"] = [min(r[i][1] for r in one_cell) for i in range(2)]
        res["lone_s"] = min(w for w, _ in lone)
        res["lone_cpu_s"] = min(cpu for _, cpu in lone)
        best_pair = min(pair, key=lambda ts: max(w for w, _ in ts))
        res["pair_s"] = [w for w, _ in best_pair]
        res["pair_cpu_s"] = [cpu for _, cpu in best_pair]
    finally:
        tallies.destroy(url)

    if peers:
        ctx = mp.get_context("spawn")
        value = ctx.Value("q", 0)
        res["value_s"] = [w for w, _ in _run(_value_worker, (value, n), 2)]
        res["value_total"] = value.value
        if importlib.util.find_spec("prometheus_client") is None:
            res["prometheus_s"] = None
        else:
            directory = tempfile.mkdtemp(prefix="tallies-bench-prom-")
            try:
                res["prometheus_s"] = [w for w, _ in _run(_prometheus_worker, (directory, n), 2)]
                res["prometheus_total"] = _prometheus_total(directory)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
    res.update(_single_op_ns(rounds=max(5, rounds * 3), loops=op_loops))
    return res


def _prometheus_total(directory: str) -> float:
    prom: Any = importlib.import_module("prometheus_client")  # an optional peer
    multiprocess: Any = importlib.import_module("prometheus_client.multiprocess")

    registry = prom.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    value = registry.get_sample_value("bench_hits_total")
    return float(value or 0.0)


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def format_report(r: dict[str, Any]) -> str:
    """The printable table of ``bench_processes()`` results."""
    n = r["n"]
    lone_rate = n / r["lone_s"]
    load = r.get("load_before")
    lines = [
        f"tallies bench --processes: 2 processes x {n:,} increments of one shared name "
        f"(best of {r['rounds']}, {r['cpus']} CPUs"
        + (f", load average {load:.1f} before the run)" if load is not None else ")"),
        "",
        f"  lone process, shm://           {lone_rate / 1e6:7.2f} M/s  "
        f"({r['lone_s'] * 1e9 / n:6.1f} ns/op)",
    ]
    worst = 1.0
    for i, t in enumerate(r["pair_s"]):
        share = (n / t) / lone_rate
        worst = min(worst, share)
        lines.append(
            f"  process {i + 1} of 2, shm://        {n / t / 1e6:7.2f} M/s  "
            f"({t * 1e9 / n:6.1f} ns/op)  {share:6.1%} of lone"
        )
    lines.append(
        f"  scaling: each process >= {TARGET_SCALING:.0%} of a lone one: "
        f"{worst:.1%}  {_verdict(worst >= TARGET_SCALING)}"
    )
    lines.append(
        f"  machine baseline: 2 processes of a loop that shares nothing get "
        f"{r['baseline_share']:.1%} of a lone one here"
        + (
            "  (the machine is busy: the scaling above is bounded by it)"
            if r["baseline_share"] < TARGET_SCALING
            else ""
        )
    )
    cpu_worst = min(r["lone_cpu_s"] / t for t in r["pair_cpu_s"])
    lines.append(
        f"  the same in CPU time (cost per increment while running, blind to "
        f"time-slicing): {cpu_worst:.1%}"
    )
    cell_worst = min(r["lone_cpu_s"] / t for t in r["one_cell_cpu_s"])
    lines.append(
        f"  control, both processes forced onto ONE shared cell (what slabs avoid), "
        f"CPU time: {cell_worst:.1%}"
    )
    exact = r["shm_total"] == r["shm_expected"]
    lines.append(
        f"  shm:// total {r['shm_total']:,} of {r['shm_expected']:,} expected  {_verdict(exact)}"
    )
    pair_wall = max(r["pair_s"])
    if "value_s" in r:
        lines.append("")
        vw = max(r["value_s"])
        speed = vw / pair_wall
        lines.append(
            f"  multiprocessing.Value + lock   {2 * n / vw / 1e6:7.2f} M/s total  "
            f"({vw * 1e9 / n:6.1f} ns/op per process)  tallies {speed:5.1f}x faster "
            f"(target >= {TARGET_VS_VALUE:.0f}x)  {_verdict(speed >= TARGET_VS_VALUE)}"
            f"  [total {r['value_total']:,}]"
        )
        if r.get("prometheus_s") is None:
            lines.append("  prometheus_client              not installed: skipped")
        else:
            pw = max(r["prometheus_s"])
            speed = pw / pair_wall
            lines.append(
                f"  prometheus_client multiprocess {2 * n / pw / 1e6:7.2f} M/s total  "
                f"({pw * 1e9 / n:6.1f} ns/op per process)  tallies {speed:5.1f}x faster "
                f"(target >= {TARGET_VS_PROMETHEUS:.0f}x)  "
                f"{_verdict(speed >= TARGET_VS_PROMETHEUS)}"
                f"  [total {r['prometheus_total']:,.0f}]"
            )
    ratio = r["shm_ns"] / r["core_ns"]
    lines += [
        "",
        f"  one increment(): shm:// {r['shm_ns']:5.1f} ns, in-process Counter "
        f"{r['core_ns']:5.1f} ns: {ratio:.2f}x (target <= {TARGET_SINGLE_OP:.0f}x)  "
        f"{_verdict(ratio <= TARGET_SINGLE_OP)}",
    ]
    return "\n".join(lines)


def main(n: int = 1_000_000, rounds: int = 3, peers: bool = True) -> str:
    """Run and return the report (the CLI prints it)."""
    return format_report(bench_processes(n=n, rounds=rounds, peers=peers))


if __name__ == "__main__":
    import sys

    print(main(n=int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
