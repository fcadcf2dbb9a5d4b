"""The one harness every benchmark uses: timing, ratios per round, verdicts, the report.

Every number a benchmark reports is a ratio taken inside one run, because the
absolute numbers move with the machine and its load (this project's machine is
shared).  The method, written once here:

* Interleaving (``interleave``): every case (ours, the floor, the peers) is
  timed once per round, in an order rotated each round, for many rounds, so a
  machine that changes state mid-run slows every case of the rounds it touches.
* Ratio per round (``per_round``): a row's ratio is taken between two cases of
  the SAME round, then the rows report the median of those ratios and their
  spread (lowest, highest) with every round's ratio in the JSON.  Never the
  minimum of separately timed runs: two minima can come from two different
  machine states.
* Per-call costs (``per_call``): a statement exactly as a user writes it
  (``c.increment()`` on a local ``c``) written out ``unroll`` times in a
  generated loop over locals; the same loop with nothing in it is timed in
  every round too, and its median cost subtracted.  In a round each case keeps
  the fastest of a few back-to-back timings: one the scheduler interrupted
  does not decide the round.
* Threads (``timed_threads``, the demo's helper in ``tallies.cli._timing``):
  every thread reads its own clock after a common start.  Processes
  (``spawn_workers``): spawned workers wait at a barrier and time themselves.
* Verdicts: one vocabulary, ``met`` / ``missed`` / ``inconclusive``, each
  with the reason (``Target.judge``).  A peer that is not installed makes its
  rows say so and its targets inconclusive, never a number.
* Report: one ``Row`` type for every benchmark, one text table
  (``format_rows`` and ``format_targets``) and one JSON object
  (``report_json``: date, machine, commit, Python, every row with every
  round's ratios), so documentation can be generated from a saved run.
"""

from __future__ import annotations

import datetime
import gc
import json
import multiprocessing as mp
import os
import platform
import queue
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import tallies
from tallies.cli._timing import timed_threads
from tallies.cli.demo import (
    free_threaded_build,
    gil_enabled,
    implementation_description,
    interpreter_description,
)

__all__ = [
    "INCONCLUSIVE",
    "LIST_FLOOR",
    "MET",
    "MISSED",
    "ROOT",
    "Row",
    "Target",
    "Verdict",
    "emit",
    "exact",
    "format_rows",
    "format_targets",
    "interleave",
    "make_timer",
    "median",
    "per_call",
    "per_call_rows",
    "per_round",
    "report_json",
    "sharing",
    "spawn_workers",
    "timed_threads",
]

ROOT = Path(__file__).resolve().parents[1]
"""The checkout the benchmarks run from."""

# ---------------------------------------------------------------- verdicts

MET, MISSED, INCONCLUSIVE = "met", "missed", "inconclusive"


@dataclass(frozen=True)
class Verdict:
    word: str
    """``MET``, ``MISSED`` or ``INCONCLUSIVE``."""
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.word} ({self.reason})" if self.reason else self.word


@dataclass(frozen=True)
class Target:
    """A limit a measured figure must meet, e.g. ``Target("<=", 1.3, of="floor")``."""

    op: str
    """``"<="``, ``"<"``, ``">="`` or ``">"``."""
    limit: float
    unit: str = "x"
    of: str = ""
    """What a ratio is taken against, for the text (``"floor"``)."""

    def __str__(self) -> str:
        amount = f"{self.limit:,g}x" if self.unit == "x" else f"{self.limit:,g} {self.unit}"
        return " ".join(filter(None, (self.op, amount, self.of)))

    def holds(self, value: float) -> bool:
        return {
            "<=": value <= self.limit,
            "<": value < self.limit,
            ">=": value >= self.limit,
            ">": value > self.limit,
        }[self.op]

    def judge(self, value: float | None, missing: str = "not measured") -> Verdict:
        """Met or missed by ``value``; inconclusive, for ``missing``, without one."""
        if value is None:
            return Verdict(INCONCLUSIVE, missing)
        return Verdict(MET if self.holds(value) else MISSED)


def exact(total: int, expected: int) -> Verdict:
    """Whether a run counted exactly what its workers did."""
    if total == expected:
        return Verdict(MET)
    return Verdict(MISSED, f"counted {total:,} of {expected:,}")


# ---------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def per_round(ours: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """Each round's ratio ``ours[i] / theirs[i]`` (a round in which ``theirs`` measured
    nothing above zero, all of it lost in the noise, is left out)."""
    return [a / b for a, b in zip(ours, theirs, strict=True) if b > 0]


# ---------------------------------------------------------------- timing


def _compile(src: str, name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {"perf_counter_ns": time.perf_counter_ns}
    exec(compile(src, f"<benchmark: {name}>", "exec"), namespace)  # generated, not user input
    return cast("Callable[..., Any]", namespace[name])


Timer = Callable[..., int]
"""``timer(loops, *values) -> ns``."""


def make_timer(stmt: str, names: Sequence[str] = ("c",), unroll: int = 16) -> Timer:
    """A function ``timer(loops, *values) -> ns`` running ``stmt`` written out
    ``unroll`` times a loop, ``loops`` times, over the locals ``names`` bound
    to ``values``; ``stmt=""`` is the same loop with nothing in it."""
    body = "".join(f"        {stmt}\n" for _ in range(unroll)) if stmt else "        pass\n"
    params = "".join(f", {n}" for n in names)
    src = (
        f"def timer(_loops{params}, _perf=perf_counter_ns, _range=range):\n"
        "    t0 = _perf()\n"
        "    for _ in _range(_loops):\n"
        f"{body}"
        "    return _perf() - t0\n"
    )
    return cast(Timer, _compile(src, "timer"))


def interleave(
    cases: Mapping[str, Callable[[], float]],
    rounds: int,
    *,
    once: Iterable[str] = (),
    repeat: int = 1,
) -> dict[str, list[float]]:
    """Run every case once per round, the order rotated by one each round; returns
    each case's value in every round.  With ``repeat``, a case's value in a round
    is the least of that many timings taken back to back: one the scheduler
    interrupted is dropped, while the machine's state (which changes over seconds)
    is the same for all of them.  The cases named in ``once`` (peers many times
    slower) run in the first round only."""
    names = list(cases)
    first_only = set(once)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            if r == 0 or name not in first_only:
                out[name].append(min(cases[name]() for _ in range(repeat)))
    return out


@dataclass
class PerCall:
    ns: dict[str, list[float]]
    """ns per call of each statement, every round."""
    errors: dict[str, str]
    """Statements that raised while warming up (a peer whose API changed): why."""
    calls: dict[str, int]
    """How many times each statement ran in all (warm-up included)."""


def per_call(
    cases: Mapping[str, tuple[str, Mapping[str, object]]],
    *,
    rounds: int,
    unroll: int = 16,
    loops: int | None = None,
    target_ns: float = 2_000_000,
    calls: Mapping[str, int] | None = None,
    repeat: int = 5,
) -> PerCall:
    """ns per call of each case ``name: (statement, its locals)``, in interleaved
    rounds, the cost of the empty loop (timed in every round too; its median)
    subtracted.  In
    a round each statement runs ``loops`` iterations, or as many as take about
    ``target_ns``, as ``repeat`` timings back to back of which the fastest counts
    (``interleave``); ``calls`` says how many calls one statement makes (default
    1).  The garbage collector is off while timing."""
    timed: dict[str, Callable[[], float]] = {}
    counts: dict[str, int] = {}
    errors: dict[str, str] = {}

    def case(timer: Timer, n: int, values: list[object]) -> Callable[[], float]:
        return lambda: timer(n, *values) / n

    for name, (stmt, env) in cases.items():
        timer = make_timer(stmt, list(env), unroll)
        values = list(env.values())
        try:
            per_loop = max(timer(100, *values), timer(100, *values)) / 100  # warm up, calibrate
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        counts[name] = max(1, round((loops or max(20, target_ns / max(per_loop, 1.0))) / repeat))
        timed[name] = case(timer, counts[name], values)
    empty = make_timer("", (), unroll)
    empty(100)
    timed[""] = case(empty, max(counts.values(), default=1000), [])
    was = gc.isenabled()
    gc.disable()
    try:
        raw = interleave(timed, rounds, repeat=repeat)
    finally:
        if was:
            gc.enable()
    # The loop's own cost is timed in every round with the others, and its median
    # over the rounds subtracted: subtracted round by round, one disturbed timing
    # of a loop that does nothing swung that round's ratios (0.25x to 5.6x for
    # Counter.increment() against the floor at load 12 on 2 CPUs).
    loop_ns = median(raw.pop(""))
    ns = {
        name: [max(t - loop_ns, 0.0) / unroll / (calls or {}).get(name, 1) for t in times]
        for name, times in raw.items()
    }
    ran = {name: (200 + rounds * repeat * counts[name]) * unroll for name in ns}
    return PerCall(ns, errors, ran)


LIST_FLOOR = "floor: l.clear()"
"""The floor of the tables timed by ``sharing``: ``l.clear()`` on an empty list,
the cheapest call of a C method there is."""


def sharing(
    env: Mapping[str, object], stmts: Mapping[str, str]
) -> dict[str, tuple[str, Mapping[str, object]]]:
    """``per_call`` cases whose statements all run over the same locals ``env``, the
    floor ``LIST_FLOOR`` first (an empty list ``l`` is added to ``env``)."""
    env = {**env, "l": []}
    return {name: (stmt, env) for name, stmt in {LIST_FLOOR: "l.clear()", **stmts}.items()}


def per_call_rows(
    part: str, timed: PerCall, floor: str, against: Mapping[str, str] | None = None
) -> dict[str, Row]:
    """A row per statement of ``timed``: the median ns per call and, round by round,
    the ratio to the ``floor`` statement (or to the statement ``against`` names)."""
    rows: dict[str, Row] = {}
    for name, ns in timed.ns.items():
        of = (against or {}).get(name, floor)
        row = rows[name] = Row(part, name, median(ns), "ns", data={"ns": ns})
        if name != of:
            row.ratios, row.of = per_round(ns, timed.ns[of]), "floor" if of == floor else of
    return rows


# ---------------------------------------------------------------- processes


def spawn_workers(
    target: Callable[..., None],
    args: tuple[Any, ...],
    procs: int,
    *,
    method: str = "spawn",
    timeout: float = 600,
) -> list[Any]:
    """Start ``procs`` workers ``target(*args, barrier, out)`` (a fresh interpreter
    each with ``spawn``); each waits at the barrier, times itself and puts one
    result in ``out``.  Returns the results; a worker that dies or a run past
    ``timeout`` seconds raises RuntimeError after every worker is gone."""
    ctx: Any = mp.get_context(method)
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    workers = [ctx.Process(target=target, args=(*args, barrier, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    results: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(results) < procs:
        try:
            results.append(out.get(timeout=0.5))
        except queue.Empty:
            dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for w in workers:
                    w.kill()
                for w in workers:
                    w.join(10)
                why = f"exit codes {dead}" if dead else f"no result after {timeout:g} s"
                raise RuntimeError(f"a benchmark worker failed ({why})") from None
    for w in workers:
        w.join(60)
        if w.exitcode != 0:
            raise RuntimeError(f"a benchmark worker failed (exit code {w.exitcode})")
    return results


# ---------------------------------------------------------------- rows


@dataclass
class Row:
    """One line of a report.  ``value`` is the headline figure in ``unit``;
    ``ratios`` is every round's ratio against ``of``; a row with a target carries
    its verdict (``met`` / ``missed`` / ``inconclusive``) and the reason."""

    part: str
    name: str
    value: float | None = None
    unit: str = ""
    ratios: list[float] = field(default_factory=list)
    of: str = ""
    target: str = ""
    verdict: str = ""
    reason: str = ""
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    """Further figures for the JSON (every round's values)."""

    @property
    def ratio(self) -> float | None:
        """The median of the per-round ratios."""
        return median(self.ratios) if self.ratios else None

    def judge(self, target: Target, value: float | None, missing: str = "not measured") -> Row:
        """Set the target and this row's verdict on ``value``; returns the row."""
        return self.decide(str(target), target.judge(value, missing))

    def decide(self, target: str, verdict: Verdict) -> Row:
        self.target, self.verdict, self.reason = target, verdict.word, verdict.reason
        return self

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        if self.ratios:
            out["ratio_min"], out["ratio_max"] = min(self.ratios), max(self.ratios)
        return out


def _amount(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:,.2f}x"
    if unit == "s":
        return f"{value:.4g} s"
    if value == int(value) or abs(value) >= 10_000:
        return f"{value:,.0f} {unit}".rstrip()
    return f"{value:,.1f} {unit}".rstrip()


def _x(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.2f}x"


def _ratio_text(row: Row) -> str:
    """``1.27x floor [1.21-1.35, 31 rounds]``: the median of the per-round ratios and
    their spread."""
    if row.ratio is None:
        return ""
    text = f"{_x(row.ratio)} {row.of}".rstrip()
    if len(row.ratios) > 1:
        low, high = _x(min(row.ratios)), _x(max(row.ratios))
        text += f" [{low[:-1]}-{high}, {len(row.ratios)} rounds]"
    return text


def _value_text(row: Row) -> str:
    """The value column; empty where the value is the ratio the next column shows."""
    return "" if row.unit == "x" and row.ratios else _amount(row.value, row.unit)


def format_rows(rows: Sequence[Row]) -> str:
    """The table: a heading per part; each row's name, value, the median of its
    per-round ratios with their spread, its target and verdict, and its detail."""
    width = max((len(r.name) for r in rows), default=0)
    vwidth = max((len(_value_text(r)) for r in rows), default=0)
    rwidth = max((len(_ratio_text(r)) for r in rows), default=0)
    lines: list[str] = []
    part = None
    for r in rows:
        if r.part != part:
            part = r.part
            lines += ["", part] if lines else [part]
        line = f"  {r.name:<{width}}  {_value_text(r):>{vwidth}}"
        line += f"  {_ratio_text(r):<{rwidth}}"
        if r.target:
            line += f"  [{r.target}: {Verdict(r.verdict, r.reason)}]"
        if r.detail:
            line += f"  ({r.detail})"
        lines.append(line.rstrip())
    return "\n".join(lines)


def format_targets(rows: Sequence[Row]) -> str:
    """Every row with a target: its verdict, part and name, what it measured and the
    target, for the end of a report."""
    judged = [(r, f"{r.part}: {r.name.strip()}") for r in rows if r.target]
    width = max((len(name) for _, name in judged), default=0)
    lines = ["Targets (checked against this run)"]
    for r, name in judged:
        measured = _ratio_text(r) or _amount(r.value, r.unit)
        reason = f" ({r.reason})" if r.reason else ""
        lines.append(f"  {r.verdict:<12}  {name:<{width}}  {measured}; target {r.target}{reason}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the report


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown (git not found)"
    return done.stdout.strip() or "unknown (not a git checkout)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def python() -> dict[str, Any]:
    return {
        "implementation": platform.python_implementation(),
        "version": platform.python_version(),
        "description": interpreter_description(),
        "gil_enabled": gil_enabled(),
        "free_threaded_build": free_threaded_build(),
        "executable": sys.executable,
    }


def report_json(command: str, rows: Iterable[Row], **extra: Any) -> dict[str, Any]:
    """The JSON object of a run: when, where, what code, which Python, every row."""
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "commit": _commit(),
        "python": python(),
        "tallies": {"version": tallies.__version__, "implementation": tallies.IMPLEMENTATION},
        **extra,
        "rows": [r.to_json() for r in rows],
    }


def header(command: str) -> str:
    """The text report's first lines: the same facts as the JSON's."""
    m = machine()
    load = m["load_average"]
    lines = [
        f"{command}  ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC,"
        f" commit {_commit()})",
        f"interpreter: {interpreter_description()}",
        f"tallies implementation: {implementation_description()}",
        f"machine: {m['cpus']} CPUs ({m['cpu']})"
        + (f", load average {', '.join(f'{x:.2f}' for x in load)}" if load else ""),
    ]
    return "\n".join(lines)


def emit(command: str, rows: Sequence[Row], *, as_json: bool, note: str = "") -> None:
    """Print a finished report: the JSON object, or the header, table, note and targets."""
    if as_json:
        print(json.dumps(report_json(command, rows), indent=2))
        return
    print(header(command))
    print()
    print(format_rows(rows))
    if note:
        print()
        print("\n".join(textwrap.wrap(note, width=100)))
    if any(r.target for r in rows):
        print()
        print(format_targets(rows))
