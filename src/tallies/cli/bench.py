"""``tallies bench``: what one increment costs, against a floor and against peers.

Method.  Every number is a ratio taken inside one run, because the absolute
numbers move with the machine and its load.

* Single thread: for each candidate a function is generated whose loop body is
  the candidate's statement written out ``unroll`` times, exactly as a user
  writes it, on a local variable (``c.increment()``; the bound method is not
  cached).  The same loop with an empty body is timed too and its cost per
  iteration subtracted.  Candidates run interleaved, one timing each per
  round, for many rounds, and each keeps its minimum: the run least disturbed
  by other work on the machine.  The floor is ``c.clear()`` on an empty list,
  the cheapest call of a C method there is.
* Workload: the tutorial's experiment (10 threads x 100,000 increments on one
  counter); the time runs from the first thread starting its loop to the last
  one finishing, and is compared with one thread doing all the increments.
* Sizes: ``sys.getsizeof`` of a new counter.
* Targets: the issue's limits, each checked against this run's numbers.

The parts are registries: ``single_thread_candidates()``, ``workloads()``,
``PARTS`` and ``TARGETS``; add a row or a part there.  Peers that are not
installed are reported as such, never given a number.
"""

from __future__ import annotations

import gc
import importlib
import itertools
import json
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any, cast

import tallies

from .demo import (
    free_threaded_build,
    gil_enabled,
    implementation_description,
    interpreter_description,
)
from .seed import ThreadSafeCounter

__all__ = [
    "PARTS",
    "TARGETS",
    "BenchConfig",
    "Candidate",
    "Part",
    "Target",
    "Workload",
    "main",
    "single_thread_candidates",
    "workloads",
]

Report = dict[str, Any]
"""The JSON object ``tallies bench --json`` prints; each part adds one key."""


@dataclass(frozen=True)
class BenchConfig:
    quick: bool
    rounds: int
    """Interleaved rounds of single-thread timings; each candidate keeps its minimum."""
    target_ns: int
    """About how long one single-thread timing lasts (sets its loop count)."""
    unroll: int
    """Copies of the statement in one loop iteration."""
    threads: int
    per_thread: int
    workload_rounds: int

    @classmethod
    def full_run(cls) -> BenchConfig:
        return cls(
            quick=False,
            rounds=31,
            target_ns=2_000_000,
            unroll=16,
            threads=10,
            per_thread=100_000,
            workload_rounds=3,
        )

    @classmethod
    def quick_run(cls) -> BenchConfig:
        return cls(
            quick=True,
            rounds=3,
            target_ns=200_000,
            unroll=16,
            threads=10,
            per_thread=10_000,
            workload_rounds=1,
        )


# ---------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """One single-thread row: ``stmt`` run on ``c = make()``."""

    name: str
    stmt: str
    make: Callable[[], object] | None
    group: str
    """"floor", "tallies", "seed", "peer" or "stdlib"."""
    missing: str = ""
    """Why ``make`` is None, e.g. "not installed"."""


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _peer(
    name: str, stmt: str, module: str, build: Callable[[Any], object], group: str = "peer"
) -> Candidate:
    mod = _module(module)
    if mod is None:
        return Candidate(name, stmt, None, group, f"not installed ({module})")
    return Candidate(name, stmt, lambda: build(mod), group)


def _prometheus_counter(mod: Any) -> object:
    registry = mod.CollectorRegistry()
    return mod.Counter("tallies_bench_total", "tallies bench", registry=registry)


FLOOR = "floor: [].clear()"


def single_thread_candidates() -> list[Candidate]:
    """The single-thread rows, floor first.  Append rows here."""
    return [
        Candidate(FLOOR, "c.clear()", list, "floor"),
        Candidate("tallies.Counter", "c.increment()", tallies.Counter, "tallies"),
        Candidate("tallies.ShardedCounter", "c.increment()", tallies.ShardedCounter, "tallies"),
        Candidate("seed ThreadSafeCounter (Lock)", "c.increment()", ThreadSafeCounter, "seed"),
        _peer("cereggii AtomicInt64 +=", "c += 1", "cereggii", lambda m: m.AtomicInt64()),
        _peer(
            "cereggii AtomicInt64.increment_and_get",
            "c.increment_and_get()",
            "cereggii",
            lambda m: m.AtomicInt64(),
        ),
        _peer("atomicx AtomicInt.inc", "c.inc()", "atomicx", lambda m: m.AtomicInt()),
        _peer(
            "fastcounter FastReadCounter",
            "c.increment()",
            "fastcounter",
            lambda m: m.FastReadCounter(),
        ),
        _peer(
            "fastcounter FastWriteCounter",
            "c.increment()",
            "fastcounter",
            lambda m: m.FastWriteCounter(),
        ),
        _peer("prometheus_client Counter.inc", "c.inc()", "prometheus_client", _prometheus_counter),
        Candidate("itertools.count", "next(c)", itertools.count, "stdlib"),
    ]


Timer = Callable[[object, int], int]


def _compile(src: str, name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {"perf_counter_ns": time.perf_counter_ns}
    exec(compile(src, f"<tallies bench: {name}>", "exec"), namespace)
    return cast("Callable[..., Any]", namespace[name])


def make_timer(stmt: str, unroll: int) -> Timer:
    """A function ``timer(c, loops) -> ns`` running ``stmt`` ``unroll`` times a loop."""
    body = "".join(f"        {stmt}\n" for _ in range(unroll))
    src = (
        "def timer(c, loops, _perf=perf_counter_ns, _range=range):\n"
        "    t0 = _perf()\n"
        "    for _ in _range(loops):\n"
        f"{body}"
        "    return _perf() - t0\n"
    )
    return cast(Timer, _compile(src, "timer"))


@dataclass
class SingleResult:
    name: str
    statement: str
    group: str
    status: str
    """"ok", "not installed (...)" or "error: ..."."""
    ns: float | None = None
    ratio_to_floor: float | None = None
    loops: int = 0


def run_single_thread(config: BenchConfig) -> Report:
    results: list[SingleResult] = []
    ready: list[tuple[SingleResult, object, Timer]] = []
    timers: dict[str, Timer] = {}
    for cand in single_thread_candidates():
        result = SingleResult(cand.name, cand.stmt, cand.group, "ok")
        results.append(result)
        if cand.make is None:
            result.status = cand.missing
            continue
        if cand.stmt not in timers:
            timers[cand.stmt] = make_timer(cand.stmt, config.unroll)
        timer = timers[cand.stmt]
        try:
            obj = cand.make()
            per_loop = max(timer(obj, 100), timer(obj, 100)) / 100  # warm up, calibrate
        except Exception as exc:  # a peer whose API changed: report it, measure the rest
            result.status = f"error: {type(exc).__name__}: {exc}"
            continue
        result.loops = max(20, int(config.target_ns / max(per_loop, 1.0)))
        ready.append((result, obj, timer))

    empty = make_timer("pass", config.unroll)
    empty_loops = max((r.loops for r, _, _ in ready), default=1000)
    empty(None, 100)
    best: dict[str, float] = {}
    best_empty = float("inf")
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_no in range(config.rounds):
            shift = round_no % max(len(ready), 1)
            order = ready[shift:] + ready[:shift]
            best_empty = min(best_empty, empty(None, empty_loops) / empty_loops)
            for result, obj, timer in order:
                per_loop = timer(obj, result.loops) / result.loops
                best[result.name] = min(best.get(result.name, float("inf")), per_loop)
    finally:
        if gc_was_enabled:
            gc.enable()

    for result, _, _ in ready:
        result.ns = (best[result.name] - best_empty) / config.unroll
    floor = next((r.ns for r in results if r.name == FLOOR and r.ns), None)
    for result in results:
        if result.ns is not None and floor:
            result.ratio_to_floor = result.ns / floor
    return {
        "rounds": config.rounds,
        "unroll": config.unroll,
        "statistic": "minimum over rounds, empty loop subtracted",
        "empty_loop_ns_per_iteration": best_empty,
        "rows": [asdict(r) for r in results],
    }


def _render_single(data: Report) -> list[str]:
    lines = [
        "Single thread: ns per call, each candidate's statement on a local `c`"
        f" (min of {data['rounds']} interleaved rounds, {data['unroll']} calls unrolled"
        " per loop, empty loop subtracted)",
    ]
    rows = data["rows"]
    width = max(len(r["name"]) for r in rows)
    swidth = max(len(r["statement"]) for r in rows)
    lines.append(f"  {'name':<{width}}  {'statement':<{swidth}}  {'ns':>7}  {'x floor':>7}")
    for r in rows:
        head = f"  {r['name']:<{width}}  {r['statement']:<{swidth}}"
        if r["ns"] is None:
            lines.append(f"{head}  {r['status']}")
        else:
            ratio = f"{r['ratio_to_floor']:.2f}" if r["ratio_to_floor"] is not None else "-"
            lines.append(f"{head}  {r['ns']:7.1f}  {ratio:>7}")
    return lines


# ---------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    """One row of the seed workload: threads run ``stmt`` on a shared ``c = make()``."""

    name: str
    stmt: str
    make: Callable[[], object] | None
    read: Callable[[Any], int]
    missing: str = ""


def workloads() -> list[Workload]:
    """The seed workload's rows.  Append rows here."""
    rows = [
        Workload("seed ThreadSafeCounter (Lock)", "c.increment()", ThreadSafeCounter, _read_value),
        Workload("tallies.Counter", "c.increment()", tallies.Counter, _read_value),
        Workload("tallies.ShardedCounter", "c.increment()", tallies.ShardedCounter, _read_value),
    ]
    cereggii = _module("cereggii")
    if cereggii is None:
        rows.append(Workload("cereggii AtomicInt64 +=", "c += 1", None, _read_get, "not installed"))
    else:
        rows.append(Workload("cereggii AtomicInt64 +=", "c += 1", cereggii.AtomicInt64, _read_get))
    return rows


def _read_value(c: Any) -> int:
    return int(c.value())


def _read_get(c: Any) -> int:
    return int(c.get())


def make_worker(stmt: str) -> Callable[[object, int, threading.Barrier, list[Any]], None]:
    src = (
        "def worker(c, n, start, times, _perf=perf_counter_ns):\n"
        "    start.wait()\n"
        "    t0 = _perf()\n"
        "    for _ in range(n):\n"
        f"        {stmt}\n"
        "    times.append((t0, _perf()))\n"
    )
    return _compile(src, "worker")


def time_threads(work: Workload, threads: int, per_thread: int) -> tuple[float, int]:
    """Seconds from the first thread starting to the last finishing, and the final count."""
    assert work.make is not None
    worker = make_worker(work.stmt)
    counter = work.make()
    start = threading.Barrier(threads)
    times: list[tuple[int, int]] = []
    pool = [
        threading.Thread(target=worker, args=(counter, per_thread, start, times))
        for _ in range(threads)
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    seconds = (max(t[1] for t in times) - min(t[0] for t in times)) / 1e9
    return seconds, work.read(counter)


@dataclass
class WorkloadResult:
    name: str
    statement: str
    status: str
    expected: int
    seconds: float | None = None
    ns_per_op: float | None = None
    final: int | None = None
    exact: bool | None = None
    one_thread_seconds: float | None = None
    ratio_to_one_thread: float | None = None


def run_workload(config: BenchConfig) -> Report:
    total = config.threads * config.per_thread
    results: list[WorkloadResult] = []
    ready: list[tuple[WorkloadResult, Workload]] = []
    for work in workloads():
        result = WorkloadResult(work.name, work.stmt, "ok", total)
        results.append(result)
        if work.make is None:
            result.status = work.missing
        else:
            ready.append((result, work))
    many: dict[str, float] = {}
    one: dict[str, float] = {}
    for _ in range(config.workload_rounds):
        for result, work in ready:
            seconds, final = time_threads(work, config.threads, config.per_thread)
            many[result.name] = min(many.get(result.name, float("inf")), seconds)
            if result.final is None or final != total:
                result.final = final
            alone, _ = time_threads(work, 1, total)
            one[result.name] = min(one.get(result.name, float("inf")), alone)
    for result, _ in ready:
        result.seconds = many[result.name]
        result.ns_per_op = result.seconds * 1e9 / total
        result.exact = result.final == total
        result.one_thread_seconds = one[result.name]
        result.ratio_to_one_thread = result.seconds / result.one_thread_seconds
    return {
        "threads": config.threads,
        "increments_per_thread": config.per_thread,
        "rounds": config.workload_rounds,
        "rows": [asdict(r) for r in results],
    }


def _render_workload(data: Report) -> list[str]:
    total = data["threads"] * data["increments_per_thread"]
    lines = [
        f"Seed workload: {data['threads']} threads x {data['increments_per_thread']:,}"
        f" increments on one counter, vs one thread doing all {total:,}"
        f" (min of {data['rounds']})",
    ]
    rows = data["rows"]
    width = max(len(r["name"]) for r in rows)
    lines.append(
        f"  {'name':<{width}}  {'seconds':>8}  {'ns/op':>6}  {'1 thread':>8}  {'ratio':>5}  final"
    )
    for r in rows:
        head = f"  {r['name']:<{width}}"
        if r["seconds"] is None:
            lines.append(f"{head}  {r['status']}")
            continue
        final = f"{r['final']:,}" + ("" if r["exact"] else f" (LOST {total - r['final']:,})")
        lines.append(
            f"{head}  {r['seconds']:8.4f}  {r['ns_per_op']:6.1f}  {r['one_thread_seconds']:8.4f}"
            f"  {r['ratio_to_one_thread']:5.2f}  {final}"
        )
    return lines


# ---------------------------------------------------------------- sizes


def run_sizes(config: BenchConfig) -> Report:
    return {
        "Counter": sys.getsizeof(tallies.Counter()),
        "ShardedCounter": sys.getsizeof(tallies.ShardedCounter()),
    }


def _render_sizes(data: Report) -> list[str]:
    return ["Sizes (sys.getsizeof of a new counter)"] + [
        f"  {name + '()':<16} {size:4d} bytes" for name, size in data.items()
    ]


# ---------------------------------------------------------------- parts and targets


@dataclass(frozen=True)
class Part:
    key: str
    run: Callable[[BenchConfig], Report]
    render: Callable[[Report], list[str]]


def run_keyed(config: BenchConfig) -> Report:
    from . import bench_keyed

    rows = bench_keyed.run(
        rounds=7 if config.quick else 15,
        iterations=400 if config.quick else 4000,
        thread_rounds=config.workload_rounds,
        per_thread=config.per_thread,
        memory_keys=1_000 if config.quick else 10_000,
    )
    return {"rows": rows}


def _render_keyed(data: Report) -> list[str]:
    from .bench_keyed import format_rows

    lines = format_rows(data["rows"]).splitlines()
    return ["KeyedCounter: counting events by key", *(f"  {line}" for line in lines)]


def run_rates(config: BenchConfig) -> Report:
    from . import bench_rates

    rows = bench_rates.run(
        rounds=7 if config.quick else 15,
        iterations=400 if config.quick else 4000,
        peer_seconds=0.5 if config.quick else 10.0,
        events=50_000 if config.quick else 1_000_000,
    )
    return {"rows": rows}


def _render_rates(data: Report) -> list[str]:
    from .bench_rates import format_rows

    lines = format_rows(data["rows"]).splitlines()
    return ["RateCounter: events in the last N seconds", *(f"  {line}" for line in lines)]


PARTS: list[Part] = [
    Part("single_thread", run_single_thread, _render_single),
    Part("workload", run_workload, _render_workload),
    Part("sizes", run_sizes, _render_sizes),
    Part("keyed", run_keyed, _render_keyed),
    Part("rates", run_rates, _render_rates),
]
"""The bench's parts, in order; each adds ``report[key]``.  Append one to add a part."""


@dataclass
class Target:
    name: str
    verdict: str
    """"PASS", "FAIL", or "SKIP" when this run could not measure it."""
    measured: float | None
    limit: float
    unit: str
    comparison: str
    """"<=" (at most the limit) or "<" (strictly below it)."""
    detail: str = ""


def _check(
    name: str, measured: float | None, limit: float, unit: str, detail: str, *, below: bool = False
) -> Target:
    comparison = "<" if below else "<="
    if measured is None:
        return Target(name, "SKIP", None, limit, unit, comparison, detail)
    ok = measured < limit if below else measured <= limit
    return Target(name, "PASS" if ok else "FAIL", measured, limit, unit, comparison, detail)


def _single(report: Report, name: str) -> float | None:
    for row in report["single_thread"]["rows"]:
        if row["name"] == name:
            return cast("float | None", row["ns"])
    return None


def _workload(report: Report, name: str) -> dict[str, Any] | None:
    for row in report["workload"]["rows"]:
        if row["name"] == name and row["seconds"] is not None:
            return cast("dict[str, Any]", row)
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def speed_targets(report: Report) -> list[Target]:
    floor = _single(report, FLOOR)
    counter = _single(report, "tallies.Counter")
    sharded = _single(report, "tallies.ShardedCounter")
    targets = [
        _check(
            "tallies.Counter.increment() <= 1.3x floor",
            _ratio(counter, floor),
            1.3,
            "x",
            "",
        ),
        _check(
            "tallies.ShardedCounter.increment() <= 1.4x floor",
            _ratio(sharded, floor),
            1.4,
            "x",
            "",
        ),
    ]
    cereggii = [
        (row["ns"], row["statement"])
        for row in report["single_thread"]["rows"]
        if row["name"].startswith("cereggii") and row["ns"] is not None
    ]
    fastest = min(cereggii, default=None)
    detail = (
        f"cereggii's fastest form: {fastest[1]} at {fastest[0]:.1f} ns"
        if fastest
        else "cereggii not installed"
    )
    peer = fastest[0] if fastest else None
    for name, ns in (("tallies.Counter", counter), ("tallies.ShardedCounter", sharded)):
        targets.append(
            _check(
                f"{name}.increment() faster than cereggii",
                _ratio(ns, peer),
                1.0,
                "x",
                detail,
                below=True,
            )
        )
    return targets


def workload_targets(report: Report) -> list[Target]:
    counter = _workload(report, "tallies.Counter")
    cereggii = _workload(report, "cereggii AtomicInt64 +=")
    return [
        _check(
            "seed workload: tallies.Counter no slower than cereggii",
            _ratio(counter["seconds"], cereggii["seconds"]) if counter and cereggii else None,
            1.0,
            "x",
            "" if cereggii else "cereggii not installed",
        ),
        _check(
            "seed workload: tallies.Counter <= 1.2x one thread",
            counter["ratio_to_one_thread"] if counter else None,
            1.2,
            "x",
            "",
        ),
    ]


def size_targets(report: Report) -> list[Target]:
    """48 and 64 bytes are the targets with a GIL, where an object's header is 16
    bytes; a free-threaded build's header is 32 (thread id, local and shared
    reference counts, type), so there the targets are the same bytes past it."""
    sizes = report["sizes"]
    extra = object.__basicsize__ - 16
    why = f"{extra} bytes more than a GIL build's object header" if extra else ""
    return [
        _check(
            f"sys.getsizeof(Counter()) <= {48 + extra}", sizes["Counter"], 48 + extra, "bytes", why
        ),
        _check(
            f"sys.getsizeof(ShardedCounter()) <= {64 + extra}",
            sizes["ShardedCounter"],
            64 + extra,
            "bytes",
            why,
        ),
    ]


def keyed_targets(report: Report) -> list[Target]:
    """The KeyedCounter rows carry their own target and verdict (see bench_keyed)."""
    verdicts = {"meets": "PASS", "misses": "FAIL", "WRONG RESULT": "FAIL"}
    out = []
    for row in report["keyed"]["rows"]:
        if row.get("target") and row.get("verdict") in verdicts:
            ratio = f"{row['ratio']:.2f}x; " if "ratio" in row else ""
            name = "KeyedCounter " + row["name"].replace("1 thread, ns per op: ", "")
            detail = f"{ratio}target {row['target']}"
            out.append(Target(name, verdicts[row["verdict"]], None, 0, "", "", detail))
    return out


def rates_targets(report: Report) -> list[Target]:
    """The rate rows carry their own target and verdict (see bench_rates)."""
    verdicts = {"met": "PASS", "missed": "FAIL"}
    return [
        Target(
            row["name"].replace(" 1 thread, ns per op:", ""),
            verdicts[row["verdict"]],
            None,
            0,
            "",
            "",
            f"{row['ns']:.1f} ns; target {row['target']}",
        )
        for row in report["rates"]["rows"]
        if row.get("target") and row.get("verdict") in verdicts
    ]


TARGETS: list[Callable[[Report], list[Target]]] = [
    speed_targets,
    workload_targets,
    size_targets,
    keyed_targets,
    rates_targets,
]
"""Functions that check the report against the project's targets.  Append one to add some."""


def _render_targets(targets: Sequence[Target]) -> list[str]:
    width = max(len(t.name) for t in targets)
    lines = ["Targets (checked against this run)"]
    for t in targets:
        if t.measured is None:
            measured = "" if t.detail else "-"
        elif t.unit == "x":
            measured = f"{t.measured:.3f}x (limit {t.comparison} {t.limit:g}x)"
        else:
            measured = f"{t.measured:g} {t.unit} (limit {t.comparison} {t.limit:g})"
        detail = f"  [{t.detail}]" if t.detail else ""
        lines.append(f"  {t.verdict:<4}  {t.name:<{width}}  {measured}{detail}")
    return lines


# ---------------------------------------------------------------- main


def main(config: BenchConfig, *, as_json: bool = False) -> int:
    report: Report = {
        "command": "tallies bench",
        "quick": config.quick,
        "python": platform.python_version(),
        "interpreter": interpreter_description(),
        "gil_enabled": gil_enabled(),
        "free_threaded_build": free_threaded_build(),
        "implementation": tallies.IMPLEMENTATION,
    }
    if not as_json:
        print(f"tallies bench{' --quick' if config.quick else ''}")
        print(f"interpreter: {report['interpreter']}")
        print(f"tallies implementation: {implementation_description()}")
    for part in PARTS:
        report[part.key] = part.run(config)
        if not as_json:
            print()
            print("\n".join(part.render(report[part.key])), flush=True)
    targets = [target for check in TARGETS for target in check(report)]
    report["targets"] = [asdict(t) for t in targets]
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print()
        print("\n".join(_render_targets(targets)))
    return 0
