"""The "events by key" part of ``tallies demo``: counting event kinds from threads.

The same threads count the same events with the patterns people write and
with ``tallies.KeyedCounter``; ``run()`` returns rows (name, expected, final,
lost, seconds) and a few sentences written from what actually happened.
Nothing is simulated: a lost update is a real one.  Every run here uses the
same shortened switch interval (1 microsecond by default) so that the
interpreter switches threads often, as a busy server would over hours.
"""

from __future__ import annotations

import collections
import platform
import sys
import sysconfig
import threading
from collections.abc import Callable
from typing import Any

from ..keyed import KeyedCounter
from ._timing import timed_threads

__all__ = ["format_report", "main", "run"]

KINDS = ("view", "click", "login", "purchase", "error")
Row = dict[str, Any]


class EventTally:
    """A plain dict behind a small helper, as real code has: the read and the
    write of one update are separated by a Python call (the validation)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def _checked(self, n: int) -> int:
        if n < 0:
            raise ValueError("a count cannot be negative")
        return n

    def record(self, kind: str) -> None:
        self.counts[kind] = self._checked(self.counts.get(kind, 0) + 1)


# Each pattern returns (bind, final): every worker thread calls bind() once, in
# that thread, for its own recorder (a function or bound method of its own, as
# `kc.increment(kind)` written in the worker's loop would be).  One recorder
# object shared by every thread would be a reference count that all of them
# write on every call, a cost of the demo's plumbing, not of the pattern.
Bind = Callable[[], Callable[[str], None]]


def _pattern_counter_augmented() -> tuple[Bind, Callable[[], int]]:
    c: collections.Counter[str] = collections.Counter()

    def bind() -> Callable[[str], None]:
        def record(kind: str) -> None:
            c[kind] += 1

        return record

    return bind, lambda: sum(c.values())


def _pattern_dict_get() -> tuple[Bind, Callable[[], int]]:
    d: dict[str, int] = {}

    def bind() -> Callable[[str], None]:
        def record(kind: str) -> None:
            d[kind] = d.get(kind, 0) + 1

        return record

    return bind, lambda: sum(d.values())


def _pattern_helper() -> tuple[Bind, Callable[[], int]]:
    t = EventTally()
    return lambda: t.record, lambda: sum(t.counts.values())


def _pattern_counter_lock() -> tuple[Bind, Callable[[], int]]:
    c: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def bind() -> Callable[[str], None]:
        def record(kind: str) -> None:
            with lock:
                c[kind] += 1

        return record

    return bind, lambda: sum(c.values())


def _pattern_keyed_increment() -> tuple[Bind, Callable[[], int]]:
    kc = KeyedCounter()
    return lambda: kc.increment, kc.total


def _pattern_keyed_augmented() -> tuple[Bind, Callable[[], int]]:
    kc = KeyedCounter()

    def bind() -> Callable[[str], None]:
        def record(kind: str) -> None:
            kc[kind] += 1

        return record

    return bind, kc.total


PATTERNS: list[tuple[str, bool, Callable[[], Any]]] = [
    ("collections.Counter, c[kind] += 1 (no lock)", False, _pattern_counter_augmented),
    ("dict, d[kind] = d.get(kind, 0) + 1 (no lock)", False, _pattern_dict_get),
    ("dict behind a helper method (read, validate, write)", False, _pattern_helper),
    ("collections.Counter + threading.Lock", True, _pattern_counter_lock),
    ("tallies.KeyedCounter.increment(kind)", True, _pattern_keyed_increment),
    ("tallies.KeyedCounter, kc[kind] += 1", True, _pattern_keyed_augmented),
]


#: Rows that CPython itself makes slow without the GIL, and why.  On a build running
#: without the GIL they count ``events // SLOW_ROW_DIVISOR`` events per thread (the
#: demo says so on screen), so that the demo stays quick there: tens of microseconds
#: per event would make each of them take about a minute.
SLOW_WITHOUT_GIL = {
    "dict, d[kind] = d.get(kind, 0) + 1 (no lock)": "dict.get",
    "dict behind a helper method (read, validate, write)": "dict.get",
}
SLOW_ROW_DIVISOR = 10


def _gil_enabled() -> bool:
    probe: Callable[[], bool] = getattr(sys, "_is_gil_enabled", lambda: True)
    return bool(probe())


def _events_for(name: str, events: int) -> int:
    """Events per thread for the pattern ``name`` on this interpreter (see SLOW_WITHOUT_GIL)."""
    if name in SLOW_WITHOUT_GIL and not _gil_enabled():
        return max(1, events // SLOW_ROW_DIVISOR)
    return events


def _one(factory: Callable[[], Any], threads: int, events: int) -> tuple[int, float]:
    bind, final = factory()

    def prepare(t: int) -> Callable[[], None]:
        seq = [KINDS[(i + t) % len(KINDS)] for i in range(events)]
        rec = bind()  # this thread's own recorder (see Bind)

        def work() -> None:
            for kind in seq:
                rec(kind)

        return work

    # Each thread reads the clock itself after the common start (see _timing).
    seconds = timed_threads(threads, prepare)
    return int(final()), seconds


def run(
    threads: int = 10, events: int = 100_000, switch_interval: float = 1e-6
) -> tuple[list[Row], list[str]]:
    """Run every pattern; rows (name, expected, final, lost, seconds) and sentences."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval)
    rows: list[Row] = []
    try:
        for name, safe, factory in PATTERNS:
            per_thread = _events_for(name, events)
            expected = threads * per_thread
            final, secs = _one(factory, threads, per_thread)
            rows.append(
                {
                    "name": name,
                    "expected": expected,
                    "final": final,
                    "lost": expected - final,
                    "seconds": round(secs, 6),
                    "safe": safe,
                }
            )
    finally:
        sys.setswitchinterval(old)
    return rows, _sentences(rows, switch_interval) + _fewer_events(rows, threads, events)


def _fewer_events(rows: list[Row], threads: int, events: int) -> list[str]:
    """Say which rows counted fewer events, and why (see SLOW_WITHOUT_GIL)."""
    fewer = [r for r in rows if r["expected"] != threads * events]
    if not fewer:
        return []
    names = " and ".join(f"'{r['name']}'" for r in fewer)
    costs = ", ".join(f"{r['seconds'] * 1e6 / r['expected']:,.1f}" for r in fewer)
    per_thread = fewer[0]["expected"] // threads
    full = sum(r["seconds"] for r in fewer) * events / per_thread
    return [
        f"Without the GIL, {names} counted {per_thread:,} events per thread instead of"
        f" {events:,}: in CPython 3.13 dict.get takes the dict's own lock (a critical"
        f" section), so {threads} threads sharing one dict queue for it ({costs}"
        f" microseconds per event in this run); at the full count those rows alone would"
        f" have taken about {full:.0f} s.  Their lost events are real all the same."
    ]


def _sentences(rows: list[Row], switch_interval: float) -> list[str]:
    gil = "without a GIL" if sysconfig.get_config_var("Py_GIL_DISABLED") else "with the GIL"
    where = f"CPython {platform.python_version()} {gil}"
    unsafe = [r for r in rows if not r["safe"]]
    lost = [r for r in unsafe if r["lost"] > 0]
    kept = [r for r in unsafe if r["lost"] == 0]
    out = []
    if lost:
        names = "; ".join(f"{r['name']} lost {r['lost']:,} of {r['expected']:,}" for r in lost)
        out.append(
            f"On {where}, with the switch interval shortened to {switch_interval:g} s "
            f"for every run, the unsafe patterns lost events: {names}: "
            + (
                "a thread switched between reading a count and writing it back, and the "
                "other threads' updates in between were overwritten."
                if _gil_enabled()
                else "the threads ran at the same time, and whenever two of them read the same "
                "count, both wrote back that count plus one and one event vanished."
            )
        )
    if kept:
        names = "; ".join(r["name"] for r in kept)
        out.append(
            f"{names}: no loss on this run; its read and its write are still separate "
            "steps, and this interpreter just did not switch threads between them "
            "here; nothing guarantees that, and a free-threaded build runs them truly "
            "in parallel."
        )
    elif not lost:
        out.append(
            f"On {where} none of the unsafe patterns happened to lose an event this time; "
            "that is luck of scheduling, not a guarantee."
        )
    safe = {r["name"]: r for r in rows if r["safe"]}
    exact = all(r["lost"] == 0 for r in safe.values())
    kc = safe.get("tallies.KeyedCounter.increment(kind)")
    lock = safe.get("collections.Counter + threading.Lock")
    if kc is not None and lock is not None:
        verdict = "counted every event" if exact else "DID NOT count every event"
        out.append(
            f"KeyedCounter {verdict}, with increment() and with kc[kind] += 1 alike, "
            f"and increment() took {kc['seconds']:.2f} s against "
            f"{lock['seconds']:.2f} s for collections.Counter behind a Lock."
        )
        aug = safe.get("tallies.KeyedCounter, kc[kind] += 1")
        if aug is not None:
            cmp = "more" if aug["seconds"] > lock["seconds"] else "less"
            out.append(
                f"kc[kind] += 1 is exact because kc[kind] returns an int that remembers "
                "what it read, so the store applies only the difference; building that "
                f"int costs time ({aug['seconds']:.2f} s here, {cmp} than the Lock), so "
                "increment() is the form to use where speed matters."
            )
    return out


def format_report(rows: list[Row], sentences: list[str]) -> str:
    width = max(len(r["name"]) for r in rows)
    head = f"{'events by key':<{width}}  {'expected':>10} {'final':>10} {'lost':>9}"
    lines = [f"{head} {'seconds':>8}"]
    for r in rows:
        lines.append(
            f"{r['name']:<{width}}  {r['expected']:>10,} {r['final']:>10,} "
            f"{r['lost']:>9,} {r['seconds']:>8.3f}"
        )
    return "\n".join([*lines, "", *sentences])


def main() -> None:
    rows, sentences = run()
    print(format_report(rows, sentences))


if __name__ == "__main__":
    main()
