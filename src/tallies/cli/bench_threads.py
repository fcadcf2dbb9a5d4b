"""``tallies bench --threads``: does counting scale with threads?

For each form of counting, one thread does ``n`` updates, then ``T`` threads
(default: the CPU count, at least 2) do ``n`` updates each on the same shared
object; the scaling is the aggregate throughput of ``T`` threads over that of
one thread, ``(T * n / wall_T) / (n / wall_1)``, measured back to back in one
round, so both runs see the same machine load.  Rounds are interleaved (every
form once per round), and the report gives the median, minimum and maximum of
the per-round ratios and the load average.  Every thread measures its own start
and end (see ``_timing``); every run checks that the count is exact.

With a GIL, threads take turns and nothing scales (about 1x at best): the
targets are checked only on a free-threaded build running without the GIL,
with at least 2 CPUs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import tallies

from ._timing import timed_threads

__all__ = ["FORMS", "Form", "main", "run"]

Work = Callable[[int, int], Callable[[], object]]
"""``make(thread_index, n)`` -> the loop that thread runs (set up untimed)."""


@dataclass(frozen=True)
class Form:
    name: str
    setup: Callable[[], tuple[Work, Callable[[], int]]]
    """Returns (make, count): ``count()`` is what the object holds afterwards."""
    target: float | None = None
    """Minimum scaling (2 threads on 2 cores) a free-threaded build must reach."""
    weight: float = 1.0
    """Fraction of ``n`` this form runs (slow forms run fewer updates)."""


def _counter_method(cls: Any) -> tuple[Work, Callable[[], int]]:
    counter = cls()

    def make(i: int, n: int) -> Callable[[], object]:
        def loop(counter: Any = counter) -> None:  # the seed's idiom, counter a local
            for _ in range(n):
                counter.increment()

        return loop

    return make, counter.value


def _bound_method(cls: Any) -> tuple[Work, Callable[[], int]]:
    counter = cls()

    def make(i: int, n: int) -> Callable[[], object]:
        inc = counter.increment  # one bound method per thread

        def loop() -> None:
            for _ in range(n):
                inc()

        return loop

    return make, counter.value


def _keyed(distinct: bool) -> tuple[Work, Callable[[], int]]:
    kc = tallies.KeyedCounter()

    def make(i: int, n: int) -> Callable[[], object]:
        key = f"key{i}" if distinct else "hot"

        def loop(kc: Any = kc) -> None:
            for _ in range(n):
                kc.increment(key)

        return loop

    return make, kc.total


def _lock() -> tuple[Work, Callable[[], int]]:
    lock = threading.Lock()
    box = [0]

    def make(i: int, n: int) -> Callable[[], object]:
        def loop() -> None:
            for _ in range(n):
                with lock:
                    box[0] += 1

        return loop

    return make, lambda: box[0]


FORMS: list[Form] = [
    Form("Counter: counter.increment()", lambda: _counter_method(tallies.Counter)),
    Form(
        "ShardedCounter: counter.increment()",
        lambda: _counter_method(tallies.ShardedCounter),
        target=1.7,
    ),
    Form(
        "ShardedCounter: f = counter.increment; f()",
        lambda: _bound_method(tallies.ShardedCounter),
        target=1.85,
    ),
    Form("Counter: f = counter.increment; f()", lambda: _bound_method(tallies.Counter)),
    Form(
        "KeyedCounter.increment(key), a key per thread",
        lambda: _keyed(distinct=True),
        target=1.7,
    ),
    Form("KeyedCounter.increment(key), one hot key", lambda: _keyed(distinct=False), target=1.5),
    Form("threading.Lock around an int", _lock, weight=0.2),
]


@dataclass
class Result:
    name: str
    target: float | None
    ops_per_thread: int
    one_thread_ns: list[float] = field(default_factory=list)
    """ns per update, one thread, per round."""
    many_threads_ns: list[float] = field(default_factory=list)
    """wall ns / total updates with T threads, per round."""
    ratios: list[float] = field(default_factory=list)
    cpu_ratios: list[float] = field(default_factory=list)
    """T x (CPU time per update, 1 thread) / (CPU time per update, T threads): the
    scaling the threads would get with a core each.  Contention (a cache line
    bouncing between cores) costs CPU time, so it shows here too; but on a loaded
    machine the threads overlap less, which flatters it.  The wall-clock ratio
    is the one the targets use."""
    exact: bool = True

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)


def _one_run(form: Form, threads: int, n: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds summed over the threads) of one run."""
    make, count = form.setup()
    cpu = [0.0] * threads

    def timed(i: int) -> Callable[[], object]:
        loop = make(i, n)

        def run() -> None:
            t0 = time.thread_time()
            loop()
            cpu[i] = time.thread_time() - t0

        return run

    seconds = timed_threads(threads, timed)
    if count() != threads * n:
        raise AssertionError(f"{form.name}: counted {count()}, expected {threads * n}")
    return seconds, sum(cpu)


def gil_enabled() -> bool:
    probe: Callable[[], bool] = getattr(__import__("sys"), "_is_gil_enabled", lambda: True)
    return bool(probe())


def run(n: int, rounds: int, threads: int) -> dict[str, Any]:
    results = [Result(f.name, f.target, max(1, int(n * f.weight))) for f in FORMS]
    load_before = os.getloadavg()
    for _ in range(rounds):
        for form, res in zip(FORMS, results, strict=True):
            k = res.ops_per_thread
            one, one_cpu = _one_run(form, 1, k)
            many, many_cpu = _one_run(form, threads, k)
            res.one_thread_ns.append(one * 1e9 / k)
            res.many_threads_ns.append(many * 1e9 / (threads * k))
            res.ratios.append((threads * k / many) / (k / one))
            res.cpu_ratios.append(threads * threads * one_cpu / many_cpu if many_cpu else 0.0)
    load_after = os.getloadavg()
    checked = not gil_enabled() and threads >= 2 and (os.cpu_count() or 1) >= 2
    rows = []
    for res in results:
        row = asdict(res)
        row["median"] = res.median
        row["min"] = min(res.ratios)
        row["max"] = max(res.ratios)
        row["cpu_median"] = statistics.median(res.cpu_ratios)
        if res.target is None:
            row["verdict"] = "shown"
        elif not checked:
            row["verdict"] = "n/a (GIL)"
        else:
            row["verdict"] = "met" if res.median >= res.target else "missed"
        rows.append(row)
    return {
        "interpreter": f"{platform.python_implementation()} {platform.python_version()}",
        "gil_enabled": gil_enabled(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "rounds": rounds,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "tallies_implementation": tallies.IMPLEMENTATION,
        "rows": rows,
    }


def format_report(report: dict[str, Any]) -> str:
    t = report["threads"]
    gil = "GIL enabled" if report["gil_enabled"] else "no GIL"
    lines = [
        f"Scaling with threads: {report['interpreter']} ({gil}), {report['cpus']} CPUs,"
        f" 1 thread against {t} threads, {report['rounds']} interleaved rounds",
        "load average before / after: "
        + " / ".join(
            ", ".join(f"{x:.2f}" for x in la)
            for la in (report["load_average_before"], report["load_average_after"])
        ),
        "",
    ]
    head = (
        "form",
        "1 thread ns/op",
        f"{t} threads ns/op",
        "scaling median",
        "min",
        "max",
        "CPU-time scaling",
        "target",
        "",
    )
    cells = []
    for r in report["rows"]:
        cells.append(
            (
                r["name"],
                f"{statistics.median(r['one_thread_ns']):.1f}",
                f"{statistics.median(r['many_threads_ns']):.1f}",
                f"{r['median']:.2f}x",
                f"{r['min']:.2f}x",
                f"{r['max']:.2f}x",
                f"{r['cpu_median']:.2f}x",
                f">= {r['target']:.2f}x" if r["target"] else "",
                r["verdict"],
            )
        )
    widths = [max(len(str(c[i])) for c in [head, *cells]) for i in range(len(head))]
    for c in [head, *cells]:
        lines.append(
            "  "
            + c[0].ljust(widths[0])
            + "  "
            + "  ".join(str(x).rjust(w) for x, w in zip(c[1:], widths[1:], strict=True))
        )
    lines += [
        "",
        f"ns/op with {t} threads is wall time over all updates (aggregate); scaling is"
        f" aggregate throughput over one thread's, per round (median, min, max).  CPU-time"
        f" scaling is {t} x CPU time per update of 1 thread over that of {t} threads (median):"
        " what a core per thread would give; a loaded machine flatters it.  Every count was"
        " exact.",
    ]
    if report["gil_enabled"]:
        lines.append("With the GIL threads take turns: the targets apply to free-threaded builds.")
    return "\n".join(lines)


def main(*, quick: bool = False, as_json: bool = False, threads: int | None = None) -> int:
    t = threads or max(2, os.cpu_count() or 1)
    n, rounds = (20_000, 1) if quick else (500_000, 7)
    report = run(n, rounds, t)
    print(json.dumps(report, indent=2) if as_json else format_report(report))
    return 0
