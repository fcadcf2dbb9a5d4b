"""``tallies demo``: the tutorial's experiment, run for real on this interpreter.

Ten threads each call ``counter.increment()`` 100,000 times on one shared
counter; a correct counter ends at 1,000,000.  Every count shown is what the
counter really held when the threads finished: lost updates are real races,
never simulated.

The demo is a list of sections (``SECTIONS``).  A section is a function that
takes the ``DemoConfig`` and returns a ``Section``: rows for the table plus
plain sentences, written from that run's numbers, saying what happened and why.
To add a part, write such a function and append it to ``SECTIONS``.
"""

from __future__ import annotations

import functools
import json
import platform
import sys
import sysconfig
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import tallies

from ._timing import timed_threads
from .seed import ThreadSafeCounter, ThreadUnsafeCounter

__all__ = [
    "SECTIONS",
    "DemoConfig",
    "Row",
    "Section",
    "ValidatingUnsafeCounter",
    "gil_enabled",
    "interpreter_description",
    "main",
    "run_threads",
]


# ---------------------------------------------------------------- interpreter


def gil_enabled() -> bool:
    """True when this interpreter runs with a GIL right now."""
    probe: Callable[[], bool] = getattr(sys, "_is_gil_enabled", lambda: True)
    return bool(probe())


def free_threaded_build() -> bool:
    """True when this CPython was built free-threaded (``Py_GIL_DISABLED``)."""
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def interpreter_description() -> str:
    """For example ``CPython 3.11.7 (with the GIL)``."""
    name = f"{platform.python_implementation()} {platform.python_version()}"
    if not free_threaded_build():
        return f"{name} (with the GIL)"
    if gil_enabled():
        return f"{name} free-threaded build (GIL enabled at run time)"
    return f"{name} free-threaded (no GIL)"


def implementation_description() -> str:
    """``tallies.IMPLEMENTATION`` with the module it names."""
    where = "tallies._tallies, C" if tallies.IMPLEMENTATION == "c" else "tallies._pure, pure Python"
    return f"{tallies.IMPLEMENTATION} ({where})"


# ---------------------------------------------------------------- the counters


class ValidatingUnsafeCounter:
    """The seed's unsafe counter as real code grows it: ``increment(n)`` checks ``n``.

    ``self._counter += self._checked(n)`` reads ``self._counter``, then calls
    ``_checked``, and only then writes the sum back.  The read-modify-write
    spans a Python call, and a call is a point where CPython may hand the GIL
    to another thread.  Not thread-safe: it is here to lose updates.
    """

    def __init__(self) -> None:
        self._counter = 0

    def _checked(self, n: int) -> int:
        if not isinstance(n, int):
            raise TypeError(f"increment() expects an integer, not {type(n).__name__!r}")
        return n

    def increment(self, n: int = 1) -> None:
        self._counter += self._checked(n)

    def value(self) -> int:
        return self._counter


class _Counting(Protocol):
    def increment(self) -> None: ...

    def value(self) -> int: ...


# ---------------------------------------------------------------- running


@dataclass(frozen=True)
class DemoConfig:
    threads: int = 10
    increments: int = 100_000
    switch_interval: float | None = 1e-6
    """Switch interval for the unsafe runs only; None keeps the interpreter's."""
    processes: int = 4
    """Processes for the shm:// part (0 skips it)."""


@dataclass
class Row:
    name: str
    expected: int
    final: int
    lost: int
    seconds: float
    ns_per_op: float
    thread_safe: bool
    switch_interval: float
    section: str = ""


@dataclass
class Section:
    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


def _task(counter: _Counting, increments: int) -> None:
    # The tutorial's task(), with the count as a parameter.
    for _ in range(increments):
        counter.increment()


def run_threads(
    name: str,
    factory: Callable[[], _Counting],
    config: DemoConfig,
    *,
    thread_safe: bool,
) -> Row:
    """Run the experiment once on a fresh counter and report what it held."""
    old_interval = sys.getswitchinterval()
    interval = config.switch_interval if not thread_safe else None
    counter = factory()
    try:
        if interval is not None:
            sys.setswitchinterval(interval)
        # Each thread reads the clock itself after the common start (see _timing).
        seconds = timed_threads(
            config.threads, lambda _: functools.partial(_task, counter, config.increments)
        )
    finally:
        sys.setswitchinterval(old_interval)
    expected = config.threads * config.increments
    final = counter.value()
    return Row(
        name=name,
        expected=expected,
        final=final,
        lost=expected - final,
        seconds=seconds,
        ns_per_op=seconds * 1e9 / expected,
        thread_safe=thread_safe,
        switch_interval=interval if interval is not None else old_interval,
    )


def _pct(row: Row) -> str:
    return f"{100.0 * row.lost / row.expected:.1f} %"


def _lost_phrase(row: Row) -> str:
    return f"lost {row.lost:,} of {row.expected:,} updates ({_pct(row)})"


def counters_section(config: DemoConfig) -> Section:
    """The seed's two counters, a realistic unsafe one, and tallies' counters."""
    seed_factory: Callable[[], _Counting] = ThreadUnsafeCounter
    lock_factory: Callable[[], _Counting] = ThreadSafeCounter
    default_interval = sys.getswitchinterval()
    seed = run_threads("seed ThreadUnsafeCounter", seed_factory, config, thread_safe=False)
    spans = run_threads(
        "ValidatingUnsafeCounter", ValidatingUnsafeCounter, config, thread_safe=False
    )
    lock = run_threads("seed ThreadSafeCounter (Lock)", lock_factory, config, thread_safe=True)
    plain = run_threads("tallies.Counter", tallies.Counter, config, thread_safe=True)
    sharded = run_threads(
        "tallies.ShardedCounter", tallies.ShardedCounter, config, thread_safe=True
    )
    rows = [seed, spans, lock, plain, sharded]
    gil = gil_enabled()
    notes: list[str] = []

    if config.switch_interval is not None:
        notes.append(
            f"The two unsafe counters ran with sys.setswitchinterval({config.switch_interval:g})"
            f" (this interpreter's setting is {default_interval:g} s) so that threads are"
            " asked to switch as often as possible; the setting was restored before the"
            " other counters ran."
        )

    if seed.lost == 0 and gil:
        notes.append(
            "The tutorial's ThreadUnsafeCounter lost no updates in this run: with the GIL,"
            " this CPython switches threads only at calls and backward jumps, and"
            " `self._counter += 1` has neither between its read and its write, so its race"
            " had no point at which to happen here.  It is still not thread-safe: nothing"
            " guarantees that, the tutorial itself reports about 280,000 updates lost, and"
            " a free-threaded build, where threads run at the same time, loses them too."
        )
    elif seed.lost == 0:
        notes.append(
            "The tutorial's ThreadUnsafeCounter happened to lose no updates in this run,"
            " even without the GIL; that was timing luck, not safety: two threads that read"
            " the same value both write value + 1."
        )
    elif gil:
        notes.append(
            f"The tutorial's ThreadUnsafeCounter {_lost_phrase(seed)}: even with the GIL, a"
            " thread switch fell between the read and the write of `self._counter += 1`."
        )
    else:
        notes.append(
            f"The tutorial's ThreadUnsafeCounter {_lost_phrase(seed)}: without the GIL the"
            " threads really run at the same time, and when two of them read the same value"
            " both write value + 1, so one increment vanishes."
        )

    if spans.lost > 0:
        why = (
            "and a call is where even the GIL lets another thread run"
            if gil
            else "and without the GIL the threads run at the same time anyway"
        )
        notes.append(
            "ValidatingUnsafeCounter, the same counter whose increment(n) checks its"
            f" argument (`self._counter += self._checked(n)`), {_lost_phrase(spans)}:"
            f" the call to _checked sits between the read and the write, {why}."
        )
    else:
        notes.append(
            "ValidatingUnsafeCounter (`self._counter += self._checked(n)`) happened to lose"
            " no updates in this run; that was timing luck, not safety: the call between"
            " its read and its write is a point where another thread may run."
        )

    safe = [lock, plain, sharded]
    broken = [row for row in safe if row.lost != 0]
    for row in broken:
        notes.append(
            f"{row.name} {_lost_phrase(row)}. A thread-safe counter must never do that:"
            " this is a bug, please report it."
        )
    fastest = min((plain, sharded), key=lambda row: row.seconds)
    exact = " and ".join(row.name for row in (plain, sharded) if row.lost == 0)
    if lock.lost == 0:
        ratio = lock.seconds / fastest.seconds
        if ratio >= 1.0:
            cost = (
                f"The Lock counter is exact but slow: {lock.ns_per_op:.0f} ns per increment,"
                f" {ratio:.1f}x the {fastest.ns_per_op:.0f} ns of {fastest.name}"
            )
        else:
            cost = (
                f"The Lock counter is exact, and in this run it was faster than tallies:"
                f" {lock.ns_per_op:.0f} ns per increment against {fastest.ns_per_op:.0f} ns"
                f" for {fastest.name}"
            )
        notes.append(cost + (f"; {exact} counted exactly." if exact else "."))
    elif exact:
        notes.append(f"{exact} counted exactly.")
    if tallies.IMPLEMENTATION != "c":
        notes.append(
            "This run used tallies' pure-Python fallback, which takes a lock per update;"
            " build the C core for its speed."
        )
    return Section(f"One counter shared by {config.threads} threads", rows, notes)


def _part_rows(found: Sequence[Mapping[str, Any]], switch_interval: float) -> list[Row]:
    """The rows of a part's ``run()`` (name, expected, final, lost, seconds, safe)."""
    return [
        Row(
            name=r["name"],
            expected=r["expected"],
            final=r["final"],
            lost=r["lost"],
            seconds=r["seconds"],
            ns_per_op=r["seconds"] * 1e9 / r["expected"],
            thread_safe=r["safe"],
            switch_interval=switch_interval,
        )
        for r in found
    ]


def keyed_section(config: DemoConfig) -> Section:
    """Events by key: the same threads count event kinds (see demo_keyed)."""
    from . import demo_keyed

    interval = config.switch_interval or sys.getswitchinterval()
    found, notes = demo_keyed.run(config.threads, config.increments, interval)
    rows = _part_rows(found, interval)
    title = f"Events by key: {config.threads} threads count 5 event kinds"
    return Section(title, rows, notes)


def processes_section(config: DemoConfig) -> Section | None:
    """The same work done by processes into one shm:// counter, with a progress bar."""
    if not config.processes:
        return None
    from . import demo_processes

    total = config.threads * config.increments
    found, notes = demo_processes.run(config.processes, total)
    rows = _part_rows(found, sys.getswitchinterval())
    title = f"The same {total:,} increments by {config.processes} processes"
    return Section(title, rows, notes)


SECTIONS: list[Callable[[DemoConfig], Section | None]] = [
    counters_section,
    keyed_section,
    processes_section,
]
"""The demo's parts, in order.  Append a function to add one."""


# ---------------------------------------------------------------- output


def _table(rows: Sequence[Row]) -> list[str]:
    header = ("name", "expected", "final", "lost", "seconds", "ns/op")
    cells = [
        (
            row.name,
            f"{row.expected:,}",
            f"{row.final:,}",
            f"{row.lost:,}" + (f" ({_pct(row)})" if row.lost else ""),
            f"{row.seconds:.3f}",
            f"{row.ns_per_op:.0f}",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

    def fmt(line: Sequence[str]) -> str:
        first = line[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True))
        return "  " + "  ".join([first, *rest])

    return [fmt(header), *(fmt(line) for line in cells)]


def render(config: DemoConfig, sections: Sequence[Section]) -> str:
    lines = [
        "tallies demo: the tutorial's experiment,"
        f" {config.threads} threads x {config.increments:,} increments each on one counter",
        f"interpreter: {interpreter_description()}",
        f"tallies implementation: {implementation_description()}",
    ]
    for section in sections:
        lines += ["", section.title, *_table(section.rows), ""]
        for note in section.notes:
            lines += textwrap.wrap(note, width=92, initial_indent="- ", subsequent_indent="  ")
    return "\n".join(lines)


def to_json(sections: Sequence[Section]) -> list[dict[str, Any]]:
    return [asdict(row) for section in sections for row in section.rows]


def main(config: DemoConfig, *, as_json: bool = False) -> int:
    sections = []
    for make in SECTIONS:
        section = make(config)
        if section is None:
            continue
        for row in section.rows:
            row.section = section.title
        sections.append(section)
    if as_json:
        print(json.dumps(to_json(sections), indent=2))
    else:
        print(render(config, sections))
    return 0
