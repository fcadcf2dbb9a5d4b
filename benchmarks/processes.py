"""``tallies bench --processes``: counters shared by processes, against peers.

Every round runs each configuration once (``harness.interleave``), and every
ratio is taken between runs of the same round:

1. 2 processes x N increments of one ``shm://`` name, each process's rate
   against one lone process doing the same (target: each >= 80 %), next to
   the same for a loop that shares nothing (how parallel the machine is now)
   and a control that forces both processes onto one cell (what slabs avoid).
2. The same 2 x N with ``multiprocessing.Value`` + its lock (target: tallies
   >= 20x faster) and with prometheus_client's multiprocess-mode Counter
   (``PROMETHEUS_MULTIPROC_DIR`` set before the workers import it; target
   >= 10x faster).  "Faster" compares the wall time of the two processes.
3. One ``shm://`` ``increment()`` against one in-process
   ``tallies.Counter.increment()`` in ns (target <= 2x), ``harness.per_call``
   over a local bound method, 31 rounds.

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
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from typing import Any

import tallies

from .harness import Row, Target, exact, interleave, median, per_call, per_round, spawn_workers

__all__ = ["run"]

TARGET_SCALING = 0.80
TARGET_VS_VALUE = 20.0
TARGET_VS_PROMETHEUS = 10.0
TARGET_SINGLE_OP = 2.0

Times = tuple[float, float]
"""A worker's (wall, cpu) seconds for its loop."""


def _calls(inc: Callable[[], object], n: int, barrier: Barrier, out: Any) -> None:
    """Wait for the other workers, call ``inc()`` ``n`` times, report (wall, cpu) seconds."""
    barrier.wait()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        inc()
    out.put((time.perf_counter() - t0, time.process_time() - c0))


def _shm_worker(url: str, n: int, barrier: Barrier, out: Any, one_cell: bool = False) -> None:
    """``n`` increments of the shared counter; with ``one_cell`` (the control) this
    process is forced onto slab 0's cell, which every other process uses too."""
    store = tallies.open(url)
    c = store.counter("hits")
    c.increment(0)  # claim this process's slab before the clock starts
    if one_cell:
        store._seg.c.bind(0)  # type: ignore[attr-defined]
    _calls(c.increment, n, barrier, out)
    store.close()


def _one_cell_worker(url: str, n: int, barrier: Barrier, out: Any) -> None:
    _shm_worker(url, n, barrier, out, one_cell=True)


def _baseline_worker(n: int, barrier: Barrier, out: Any) -> None:
    """Machine baseline: a loop that shares nothing (how parallel is this box?)."""
    barrier.wait()
    c0, t0 = time.process_time(), time.perf_counter()
    x = 0
    for i in range(n):
        x ^= i
    out.put((time.perf_counter() - t0, time.process_time() - c0))


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
    _calls(prom.Counter("bench_hits", "increments").inc, n, barrier, out)


def _prometheus_total(directory: str) -> float:
    prom: Any = importlib.import_module("prometheus_client")  # an optional peer
    multiprocess: Any = importlib.import_module("prometheus_client.multiprocess")

    registry = prom.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    value = registry.get_sample_value("bench_hits_total")
    return float(value or 0.0)


def _single_op(rounds: int, target_ns: float) -> Row:
    url = f"shm://bench-op-{os.getpid()}-{secrets.token_hex(4)}"
    store = tallies.open(url)
    try:
        shm_inc = store.counter("op").increment
        shm_inc(0)
        timed = per_call(
            {
                "shm": ("f()", {"f": shm_inc}),
                "core": ("f()", {"f": tallies.Counter().increment}),
            },
            rounds=rounds,
            unroll=10,
            target_ns=target_ns,
        ).ns
    finally:
        store.close()
        tallies.destroy(url)
    shm, core = median(timed["shm"]), median(timed["core"])
    row = Row("one increment()", "shm:// increment() vs in-process Counter.increment()", shm, "ns")
    row.ratios, row.of = per_round(timed["shm"], timed["core"]), "in-process"
    row.detail = f"in-process Counter {core:.1f} ns"
    row.data = {"shm_ns": timed["shm"], "core_ns": timed["core"]}
    return row.judge(Target("<=", TARGET_SINGLE_OP, of="in-process"), row.ratio)


def run(
    n: int = 1_000_000, rounds: int = 3, peers: bool = True, op_ns: float = 2_000_000
) -> list[Row]:
    """Measure every configuration in each of ``rounds`` rounds; the rows."""
    url = f"shm://bench-{os.getpid()}-{secrets.token_hex(4)}"
    runs: dict[str, list[list[Times]]] = {}

    def case(key: str, target: Callable[..., None], args: tuple[Any, ...], procs: int) -> None:
        def timing() -> float:
            times = spawn_workers(target, args, procs, timeout=300)
            runs.setdefault(key, []).append(times)
            return float(max(w for w, _ in times))

        cases[key] = timing

    cases: dict[str, Callable[[], float]] = {}
    case("lone", _shm_worker, (url, n), 1)
    case("pair", _shm_worker, (url, n), 2)
    case("base lone", _baseline_worker, (n,), 1)
    case("base pair", _baseline_worker, (n,), 2)
    case("one cell", _one_cell_worker, (url, n), 2)
    value = mp.get_context("spawn").Value("q", 0)
    prom_dir = tempfile.mkdtemp(prefix="tallies-bench-prom-")
    have_prom = importlib.util.find_spec("prometheus_client") is not None
    if peers:
        case("value", _value_worker, (value, n), 2)
        if have_prom:
            case("prometheus", _prometheus_worker, (prom_dir, n), 2)
    try:
        walls = interleave(cases, rounds)
        with tallies.open(url) as store:
            shm_total = store.counter("hits").value()
        prom_total = _prometheus_total(prom_dir) if peers and have_prom else 0.0
    finally:
        tallies.destroy(url)
        shutil.rmtree(prom_dir, ignore_errors=True)

    def wall(key: str, i: int) -> list[float]:
        return [times[i][0] for times in runs[key]]

    def cpu(key: str, i: int) -> list[float]:
        return [times[i][1] for times in runs[key]]

    part = f"processes: 2 x {n:,} increments of one shm:// name"
    lone = wall("lone", 0)
    rows = [
        Row(
            part,
            "lone process, shm://",
            n / median(lone),
            "incr/s",
            detail=f"{median(lone) * 1e9 / n:.1f} ns/op",
        )
    ]
    for i in range(2):
        row = Row(part, f"process {i + 1} of 2, shm://", n / median(wall("pair", i)), "incr/s")
        row.ratios, row.of = per_round(lone, wall("pair", i)), "a lone process"
        rows.append(row)
    slower = [max(times[0][0], times[1][0]) for times in runs["pair"]]
    scaling = Row(part, "scaling: the slower of the 2 vs a lone process", unit="x")
    scaling.ratios, scaling.of = per_round(lone, slower), "a lone process"
    scaling.value = scaling.ratio
    rows.append(scaling.judge(Target(">=", TARGET_SCALING, of="a lone process"), scaling.ratio))
    base = Row(part, "machine baseline: 2 processes of a loop that shares nothing", unit="x")
    base_pair = walls["base pair"]
    base.ratios, base.of = per_round(walls["base lone"], base_pair), "a lone one"
    base.value = base.ratio
    if base.ratio is not None and base.ratio < TARGET_SCALING:
        base.detail = "the machine is busy: the scaling above is bounded by it"
    rows.append(base)
    lone_cpu = cpu("lone", 0)
    for key, name in (
        ("pair", "the same in CPU time (cost per increment while running, blind to time-slicing)"),
        (
            "one cell",
            "control, both processes forced onto ONE shared cell (what slabs avoid), CPU time",
        ),
    ):
        slowest = [max(times[0][1], times[1][1]) for times in runs[key]]
        row = Row(part, name, unit="x")
        row.ratios, row.of = per_round(lone_cpu, slowest), "a lone process"
        row.value = row.ratio
        rows.append(row)
    expected = rounds * 5 * n
    total = Row(part, "shm:// total", float(shm_total), "", detail=f"of {expected:,} expected")
    rows.append(total.decide("exact", exact(shm_total, expected)))
    if peers:
        for key, name, target, got in (
            ("value", "multiprocessing.Value + lock", TARGET_VS_VALUE, int(value.value)),
            ("prometheus", "prometheus_client multiprocess", TARGET_VS_PROMETHEUS, prom_total),
        ):
            if key not in walls:
                rows.append(Row(part, name, detail="not installed: skipped"))
                continue
            peer = Row(part, f"{name}: tallies faster by", unit="x")
            peer.ratios, peer.of = per_round(walls[key], walls["pair"]), ""
            peer.value = peer.ratio
            peer.detail = (
                f"{2 * n / median(walls[key]):,.0f} incr/s total; total {got:,.0f}"
                f" ({exact(int(got), rounds * 2 * n)})"
            )
            rows.append(peer.judge(Target(">=", target), peer.ratio))
    return [*rows, _single_op(rounds=31 if rounds > 1 else 5, target_ns=op_ns)]
