"""``tallies bench --threads``: does counting scale with threads?

For each form of counting, one thread does ``n`` updates, then ``T`` threads
(default: the CPU count, at least 2) do ``n`` updates each on the same shared
object; the scaling is the aggregate throughput of ``T`` threads over that of
one thread, ``(T * n / wall_T) / (n / wall_1)``, measured back to back in one
round, so both runs see the same machine load.  Rounds are interleaved (every
form once per round), and the report gives the median, minimum and maximum of
the per-round ratios and the load average.  Every thread measures its own start
and end (see ``_timing``); every run checks that the count is exact.

On a shared machine other jobs take the cores away and the wall-clock ratio
drops with them; so each thread also reads its wall and CPU clocks every
``CHUNK`` updates, and the report adds the same ratio taken only over the
chunks during which all the threads were running at once ("while all ran"):
how the code scales when the threads really run together.

The first row, a loop that shares nothing (``x += 1`` on a thread's own
local), is the ceiling this machine allows at that moment: no counter can
scale better than the interpreter's own loop does.  On a shared virtual
machine that ceiling moves: some of the time the second CPU is not really
there (here, at such moments, one thread alone ran 1.7x faster than usual and
two threads together no faster than one).  So every form's runs in a round are
bracketed by the same loop run right before them, 1 thread then T threads
("paired floor"), and the verdict counts only the rounds in which that floor
scaled to at least FLOOR_OK * T: rounds in which the machine delivered the
CPUs.  All rounds are still reported; with fewer than MIN_ROUNDS such rounds
the verdict is "inconclusive".  A round's ratios are taken inside the round
(``harness.per_round`` semantics: never minima of separate runs).

Each form's target is stated for 2 threads; with T threads it asks for the
same share of perfect scaling (``target * T / 2``: 1.7x at 2 threads is 6.8x
at 8).  ``--threads 2,4,8,16`` runs the whole report for each count and ends
with the curve: every form's scaling at each count, and the same as a share
of the paired floor's ("of floor": how close the form comes to code that
shares nothing, on the machine as it is at that moment).

With a GIL, threads take turns and nothing scales (about 1x at best): the
targets are checked only on a free-threaded build running without the GIL,
with at least 2 CPUs; elsewhere the verdict is "inconclusive" with the reason.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tallies
from tallies.cli.demo import gil_enabled

from .harness import (
    INCONCLUSIVE,
    MET,
    MISSED,
    Row,
    Target,
    Verdict,
    format_rows,
    header,
    report_json,
    timed_threads,
)

__all__ = ["FORMS", "Form", "main", "run"]

Work = Callable[[int, int], Callable[[], object]]
"""``make(thread_index, chunk)`` -> a function doing ``chunk`` updates (set up untimed);
the harness calls it ``n / chunk`` times, reading the clocks in between."""

CHUNK = 1_000
FLOOR_OK = 0.9
"""A round counts for a verdict when the paired floor scaled to >= FLOOR_OK * T."""
MIN_ROUNDS = 3


@dataclass(frozen=True)
class Form:
    name: str
    setup: Callable[[], tuple[Work, Callable[[], int]]]
    """Returns (make, count): ``count()`` is what the object holds afterwards."""
    target: float | None = None
    """Minimum scaling of 2 threads (on 2 free cores) a free-threaded build must reach;
    with T threads, ``target * T / 2``."""
    weight: float = 1.0
    """Fraction of ``n`` this form runs (slow forms run fewer updates)."""


def _counter_method(cls: Any) -> tuple[Work, Callable[[], int]]:
    counter = cls()

    def make(i: int, n: int) -> Callable[[], object]:
        def loop(counter: Any = counter) -> None:  # the seed's idiom: counter is a local
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


def _floor() -> tuple[Work, Callable[[], int]]:
    """Nothing shared: each thread adds 1 to its own local int (the same loop
    around no call at all): how far this machine lets any code scale now."""
    totals: list[list[int]] = []

    def make(i: int, n: int) -> Callable[[], object]:
        mine = [0]
        totals.append(mine)

        def loop() -> None:
            x = 0
            for _ in range(n):
                x += 1
            mine[0] += x

        return loop

    return make, lambda: sum(m[0] for m in totals)


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
    Form("floor: x += 1 on a local int, nothing shared", _floor),
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
    floor_ratios: list[float] = field(default_factory=list)
    """The paired floor's scaling measured right before this form's runs, per round."""
    overlap_ns: list[int] = field(default_factory=lambda: [0, 0])
    """Wall ns in on-CPU chunks: [1 thread, T threads all running at once]."""
    overlap_chunks: list[int] = field(default_factory=lambda: [0, 0])

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def of_floor(self) -> float:
        """Median over the rounds of this form's scaling over its paired floor's."""
        return statistics.median(r / f for r, f in zip(self.ratios, self.floor_ratios, strict=True))

    def counted(self, threads: int) -> list[float]:
        """This form's ratios in the rounds whose paired floor scaled."""
        return [
            r
            for r, f in zip(self.ratios, self.floor_ratios, strict=True)
            if f >= FLOOR_OK * threads
        ]


Sample = tuple[int, int]
"""(time.perf_counter_ns(), time.thread_time_ns()) read by a thread after a chunk."""


def _one_run(form: Form, threads: int, n: int) -> tuple[float, list[list[Sample]]]:
    """Wall seconds of one run, and each thread's samples (its first one is its start)."""
    make, count = form.setup()
    chunks = max(1, n // CHUNK)
    samples: list[list[Sample]] = [[] for _ in range(threads)]

    def timed(i: int) -> Callable[[], object]:
        loop = make(i, CHUNK)
        mine = samples[i]

        def run() -> None:
            wall, cpu = time.perf_counter_ns, time.thread_time_ns
            mine.append((wall(), cpu()))
            for _ in range(chunks):
                loop()
                mine.append((wall(), cpu()))

        return run

    seconds = timed_threads(threads, timed)
    if count() != threads * chunks * CHUNK:
        raise AssertionError(f"{form.name}: counted {count()}, expected {threads * chunks * CHUNK}")
    return seconds, samples


def _on_cpu(samples: list[Sample]) -> list[tuple[int, int]]:
    """(start, end) of the chunks during which the thread was running all along
    (its CPU time is at least 97 % of the wall time)."""
    out = []
    for (w0, c0), (w1, c1) in itertools.pairwise(samples):
        if w1 > w0 and c1 - c0 >= 0.97 * (w1 - w0):
            out.append((w0, w1))
    return out


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


def _overlap(per_thread: list[list[Sample]]) -> tuple[int, int]:
    """(wall ns, chunks) summed over the chunks during which this thread and every
    other one were all running: the cost of an update while the threads really run
    at the same time, whatever else the machine does."""
    spans = [_on_cpu(s) for s in per_thread]
    others = [[_merged(x) for j, x in enumerate(spans) if j != i] for i in range(len(spans))]
    ns = count = 0
    for i, mine in enumerate(spans):
        for a, b in mine:
            if all(any(x <= a and b <= y for x, y in other) for other in others[i]):
                ns += b - a
                count += 1
    return ns, count


def target_at(target: float | None, threads: int) -> float | None:
    """A 2-thread target asked of ``threads`` threads: the same share of perfect scaling."""
    return None if target is None else target * threads / 2


def _why_unchecked(threads: int) -> str | None:
    """Why this run's scaling cannot be held to a target, or None when it can."""
    if gil_enabled():
        return "the GIL is enabled: threads take turns"
    if threads < 2:
        return "1 thread"
    if (os.cpu_count() or 1) < 2:
        return "1 CPU"
    return None


def _verdicts(res: Result, threads: int, overlap: float | None) -> tuple[Verdict, Verdict]:
    """The verdict on the rounds whose paired floor scaled, and on "while all ran"."""
    assert res.target is not None
    unchecked = _why_unchecked(threads)
    if unchecked:
        return Verdict(INCONCLUSIVE, unchecked), Verdict(INCONCLUSIVE, unchecked)
    counted = res.counted(threads)
    if len(counted) < MIN_ROUNDS:
        why = f"{len(counted)} of {len(res.ratios)} rounds had the CPUs, {MIN_ROUNDS} needed"
        verdict = Verdict(INCONCLUSIVE, why)
    else:
        m = statistics.median(counted)
        why = f"median {m:.2f}x over the {len(counted)} rounds that had the CPUs"
        verdict = Verdict(MET if m >= res.target else MISSED, why)
    if overlap is None:
        return verdict, Verdict(INCONCLUSIVE, "no overlap seen")
    return verdict, Verdict(MET if overlap >= res.target else MISSED)


def run(n: int, rounds: int, threads: int) -> list[Row]:
    """One report: a row per form, its scaling per round, and its verdict."""
    results = [
        Result(f.name, target_at(f.target, threads), max(1, int(n * f.weight))) for f in FORMS
    ]
    floor = FORMS[0]
    load_before = os.getloadavg()
    for _ in range(rounds):
        for form, res in zip(FORMS, results, strict=True):
            k = res.ops_per_thread
            floor_one, _ = _one_run(floor, 1, k)
            one, one_samples = _one_run(form, 1, k)
            floor_many, _ = _one_run(floor, threads, k)
            many, many_samples = _one_run(form, threads, k)
            k = max(1, k // CHUNK) * CHUNK
            res.one_thread_ns.append(one * 1e9 / k)
            res.many_threads_ns.append(many * 1e9 / (threads * k))
            res.ratios.append(threads * one / many)
            res.floor_ratios.append(threads * floor_one / floor_many)
            for slot, samples in ((0, one_samples), (1, many_samples)):
                ns, chunks = _overlap(samples)
                res.overlap_ns[slot] += ns
                res.overlap_chunks[slot] += chunks
    load_after = os.getloadavg()
    rounds_text = "1 round" if rounds == 1 else f"{rounds} interleaved rounds"
    part = f"scaling: 1 thread against {threads} threads, {rounds_text}"
    rows = []
    for res in results:
        (ns1, ns_t), (c1, c_t) = res.overlap_ns, res.overlap_chunks
        overlap = threads * (ns1 / c1) / (ns_t / c_t) if c1 and c_t and ns_t else None
        counted = res.counted(threads)
        row = Row(part, res.name, res.median, "x", list(res.ratios), "1 thread")
        row.data = {
            "threads": threads,
            "rounds": rounds,
            "one_thread_ns": res.one_thread_ns,
            "many_threads_ns": res.many_threads_ns,
            "floor_ratios": res.floor_ratios,
            "of_floor": res.of_floor,
            "counted_rounds": len(counted),
            "counted_median": statistics.median(counted) if counted else None,
            "overlap": overlap,
            "overlap_chunks": res.overlap_chunks,
            "load_average_before": load_before,
            "load_average_after": load_after,
        }
        running = "-" if overlap is None else f"{overlap:.2f}x ({res.overlap_chunks[1]} chunks)"
        row.detail = (
            f"ns/op {statistics.median(res.one_thread_ns):.1f} alone,"
            f" {statistics.median(res.many_threads_ns):.1f} with {threads};"
            f" {res.of_floor:.0%} of floor; while all ran {running}"
        )
        if res.target is not None:
            verdict, running_verdict = _verdicts(res, threads, overlap)
            row.decide(str(Target(">=", res.target)), verdict)
            row.data["overlap_verdict"] = running_verdict.word
            if running_verdict != verdict:
                row.detail += f": {running_verdict}"
        rows.append(row)
    return rows


def _table(head: tuple[str, ...], cells: list[tuple[str, ...]]) -> list[str]:
    """Rows of text: the first column left-aligned, the others right-aligned."""
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    return [
        "  "
        + c[0].ljust(widths[0])
        + "  "
        + "  ".join(x.rjust(w) for x, w in zip(c[1:], widths[1:], strict=True))
        for c in [head, *cells]
    ]


def note(threads: int) -> str:
    return (
        f"ns/op with {threads} threads is wall time over all updates (aggregate); scaling is"
        " aggregate throughput over one thread's, per round (median, lowest-highest).  The"
        f" verdict counts the rounds in which the nothing-shared loop, run right before the"
        f" form, scaled to >= {FLOOR_OK * threads:.2f}x (the machine delivered the CPUs;"
        f" fewer than {MIN_ROUNDS} such rounds: inconclusive).  'of floor' is the median over"
        " all rounds of the form's scaling over its paired floor's.  'while all ran' is the"
        f" same ratio taken only over the chunks of {CHUNK:,} updates during which every"
        " thread was on a CPU (CPU time >= 97 % of wall time) at the same time: what the"
        " code does when the threads really run together, whatever else loads the"
        " machine.  Every count was exact."
        + (
            "  With the GIL threads take turns: the targets apply to free-threaded builds."
            if gil_enabled()
            else ""
        )
    )


def format_curve(reports: list[list[Row]]) -> str:
    """Every form's scaling at each thread count, and as a share of the paired floor's."""
    counts = [rows[0].data["threads"] for rows in reports]
    head = ("form", *(f"{t} threads" for t in counts))
    cells: list[tuple[str, ...]] = []
    for i, form in enumerate(FORMS):
        cell = [form.name]
        for rows in reports:
            r = rows[i]
            verdict = f" {r.verdict}" if r.verdict else ""
            cell.append(f"{r.value:.2f}x ({r.data['of_floor']:.0%}){verdict}")
        cells.append(tuple(cell))
    first = reports[0][0].data
    lines = [
        *textwrap.wrap(
            f"Scaling curve: {first['rounds']} rounds per count: aggregate throughput of T"
            " threads over 1 thread (median), in brackets as a share of the nothing-shared"
            " floor's in the same rounds; the verdict as in each count's table (targets"
            " scaled to T: target * T / 2).",
            width=100,
        ),
        "",
        *_table(head, cells),
    ]
    return "\n".join(lines)


def main(
    *,
    quick: bool = False,
    as_json: bool = False,
    threads: list[int] | None = None,
    rounds: int | None = None,
) -> int:
    counts = threads or [max(2, os.cpu_count() or 1)]
    n, default_rounds = (20_000, 1) if quick else (500_000, 11)
    command = "tallies bench --threads"
    if not as_json:
        print(header(command), end="\n\n", flush=True)
    reports = []
    for t in counts:
        rows = run(n, rounds or default_rounds, t)
        reports.append(rows)
        if not as_json:
            load = [rows[0].data[f"load_average_{when}"] for when in ("before", "after")]
            print(format_rows(rows))
            print(
                "  load average before / after: "
                + " / ".join(", ".join(f"{x:.2f}" for x in la) for la in load),
                end="\n\n",
            )
            print("\n".join(textwrap.wrap(note(t), width=100)), end="\n\n", flush=True)
    if as_json:
        print(json.dumps(report_json(command, [r for rows in reports for r in rows]), indent=2))
    elif len(reports) > 1:
        print(format_curve(reports))
    return 0
