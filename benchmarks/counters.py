"""Counter and ShardedCounter: one increment against a floor and the peers, the
tutorial's workload, and the objects' sizes (parts of ``tallies bench``).

* Single thread: each candidate's statement exactly as a user writes it
  (``c.increment()`` on a local ``c``; the bound method is not cached), 16 per
  loop, through ``harness.per_call`` (interleaved rounds, the empty loop's
  cost subtracted).  The floor is ``c.clear()`` on an empty list, the
  cheapest call of a C method there is; each row's ratio is taken per round.
* Workload: the tutorial's experiment (10 threads x 100,000 increments on one
  counter), each thread timing itself from a common start, against one thread
  doing all the increments in the same round (each the fastest of 3 runs).
* Sizes: ``sys.getsizeof`` of a new counter.

Peers that are not installed are reported as such, never given a number;
``single_thread_candidates()`` and ``workloads()`` are the lists to add a row to.
"""

from __future__ import annotations

import importlib
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import tallies
from tallies.cli.seed import ThreadSafeCounter

from .harness import (
    Row,
    Target,
    Verdict,
    interleave,
    make_timer,
    median,
    per_call,
    per_call_rows,
    per_round,
    timed_threads,
)

__all__ = ["FLOOR", "Candidate", "Workload", "run", "single_thread_candidates", "workloads"]

FLOOR = "floor: [].clear()"


@dataclass(frozen=True)
class Candidate:
    """One single-thread row: ``stmt`` run on ``c = make()``."""

    name: str
    stmt: str
    make: Callable[[], object] | None
    missing: str = ""
    """Why ``make`` is None, e.g. "not installed (cereggii)"."""


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _peer(name: str, stmt: str, module: str, build: Callable[[Any], object]) -> Candidate:
    mod = _module(module)
    if mod is None:
        return Candidate(name, stmt, None, f"not installed ({module})")
    return Candidate(name, stmt, lambda: build(mod))


def _prometheus_counter(mod: Any) -> object:
    registry = mod.CollectorRegistry()
    return mod.Counter("tallies_bench_total", "tallies bench", registry=registry)


def single_thread_candidates() -> list[Candidate]:
    """The single-thread rows, floor first.  Append rows here."""
    return [
        Candidate(FLOOR, "c.clear()", list),
        Candidate("tallies.Counter", "c.increment()", tallies.Counter),
        Candidate("tallies.ShardedCounter", "c.increment()", tallies.ShardedCounter),
        Candidate("seed ThreadSafeCounter (Lock)", "c.increment()", ThreadSafeCounter),
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
        Candidate("itertools.count", "next(c)", itertools.count),
    ]


def single_thread(rounds: int, target_ns: int, unroll: int = 16) -> list[Row]:
    part = "single thread: ns per call"
    cands = single_thread_candidates()
    cases: dict[str, tuple[str, dict[str, object]]] = {}
    rows: dict[str, Row] = {}
    for cand in cands:
        rows[cand.name] = Row(part, cand.name, unit="ns", detail=cand.stmt)
        if cand.make is None:
            rows[cand.name].detail += f"; {cand.missing}"
        else:
            cases[cand.name] = (cand.stmt, {"c": cand.make()})
    timed = per_call(cases, rounds=rounds, unroll=unroll, target_ns=target_ns)
    for name, why in timed.errors.items():
        rows[name].detail += f"; error: {why}"
    for name, row in per_call_rows(part, timed, FLOOR).items():
        row.detail = rows[name].detail
        rows[name] = row
    rows["tallies.Counter"].judge(Target("<=", 1.3, of="floor"), rows["tallies.Counter"].ratio)
    rows["tallies.ShardedCounter"].judge(
        Target("<=", 1.4, of="floor"), rows["tallies.ShardedCounter"].ratio
    )
    out = list(rows.values())
    cereggii = [name for name in timed.ns if name.startswith("cereggii")]
    for ours in ("tallies.Counter", "tallies.ShardedCounter"):
        row = Row(part, f"{ours}.increment() vs cereggii's fastest form", unit="x", of="cereggii")
        if cereggii and ours in timed.ns:
            fastest = [min(per) for per in zip(*(timed.ns[c] for c in cereggii), strict=True)]
            row.ratios = per_round(timed.ns[ours], fastest)
            row.value = row.ratio
            best = min(cereggii, key=lambda c: median(timed.ns[c]))
            row.detail = f"cereggii's fastest form: {cases[best][0]}"
        row.judge(Target("<", 1.0, of="cereggii"), row.ratio, "cereggii not installed")
        out.append(row)
    return out


# ---------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    """One row of the seed workload: threads run ``stmt`` on a shared ``c = make()``."""

    name: str
    stmt: str
    make: Callable[[], object] | None
    read: Callable[[Any], int]
    missing: str = ""


def _read_value(c: Any) -> int:
    return int(c.value())


def _read_get(c: Any) -> int:
    return int(c.get())


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


def _threads_case(work: Workload, threads: int, per_thread: int, finals: list[int]) -> Any:
    """A timing: ``threads`` threads run ``per_thread`` statements each on a fresh
    shared counter; returns the seconds and records the final count."""
    loop = make_timer(work.stmt, unroll=1)
    assert work.make is not None
    make = work.make

    def case() -> float:
        counter = make()
        seconds = timed_threads(threads, lambda i: lambda: loop(per_thread, counter))
        finals.append(work.read(counter))
        return seconds

    return case


def workload(rounds: int, threads: int, per_thread: int) -> list[Row]:
    total = threads * per_thread
    part = f"seed workload: {threads} threads x {per_thread:,} on one counter"
    cases: dict[str, Callable[[], float]] = {}
    finals: dict[str, list[int]] = {}
    rows: dict[str, Row] = {}
    for work in workloads():
        row = rows[work.name] = Row(part, work.name, unit="s", of=f"1 thread doing {total:,}")
        if work.make is None:
            row.detail = work.missing
            continue
        finals[work.name] = []
        cases[f"{work.name} many"] = _threads_case(work, threads, per_thread, finals[work.name])
        cases[f"{work.name} one"] = _threads_case(work, 1, total, [])
    times = interleave(cases, rounds, repeat=3)
    for name, fin in finals.items():
        row = rows[name]
        many, one = times[f"{name} many"], times[f"{name} one"]
        row.value = median(many)
        row.ratios = per_round(many, one)
        row.data = {"seconds": many, "one_thread_seconds": one, "finals": fin}
        lost = [total - f for f in fin if f != total]
        row.detail = f"{row.value * 1e9 / total:.1f} ns/op, final {fin[-1]:,}" + (
            f" (LOST {lost[0]:,})" if lost else ""
        )
        if lost:
            row.decide("exact", Verdict("missed", f"lost {lost[0]:,} of {total:,}"))
    counter = rows["tallies.Counter"]
    if not counter.verdict:
        counter.judge(Target("<=", 1.2, of="1 thread"), counter.ratio)
    vs = Row(part, "tallies.Counter vs cereggii AtomicInt64 +=", unit="x", of="cereggii")
    if "cereggii AtomicInt64 +=" in finals:
        vs.ratios = per_round(times["tallies.Counter many"], times["cereggii AtomicInt64 += many"])
        vs.value = vs.ratio
    vs.judge(Target("<=", 1.0, of="cereggii"), vs.ratio, "cereggii not installed")
    return [*rows.values(), vs]


# ---------------------------------------------------------------- sizes


def sizes() -> list[Row]:
    """48 and 64 bytes are the targets with a GIL, where an object's header is 16
    bytes; a free-threaded build's header is 32 (thread id, local and shared
    reference counts, type), so there the targets are the same bytes past it."""
    part = "sizes: sys.getsizeof of a new counter"
    extra = object.__basicsize__ - 16
    why = f"{extra} bytes more than a GIL build's object header" if extra else ""
    rows = []
    for cls, limit in ((tallies.Counter, 48), (tallies.ShardedCounter, 64)):
        size = sys.getsizeof(cls())
        row = Row(part, f"{cls.__name__}()", float(size), "B", detail=why)
        rows.append(row.judge(Target("<=", limit + extra, unit="bytes"), size))
    return rows


def run(quick: bool) -> list[Row]:
    """The three parts of ``tallies bench``: a full run, or a short one of the same shape."""
    rows = single_thread(rounds=3 if quick else 31, target_ns=200_000 if quick else 2_000_000)
    per_thread = 10_000 if quick else 100_000
    rows += workload(rounds=1 if quick else 3, threads=10, per_thread=per_thread)
    return rows + sizes()
