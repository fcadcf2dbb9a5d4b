"""``tallies watch URL [--interval S] [--top N]``: a live view of a store.

Every ``interval`` seconds the store is read once (``snapshot()``), so any
scope works and the writers pay nothing.  Shown per counter: its value, its
rate over the last few seconds (from successive snapshots), and a sparkline of
its rate over the last minute; per keyed counter its top N keys the same way;
per rate (``RateCounter``) its count in the window and per second.

With rich installed (``pip install tallies[watch]``) and a capable terminal
(a TTY, not ``TERM=dumb``, at least 60 columns) the view is a rich ``Live``
table redrawn in place; otherwise (no rich, a dumb or narrow terminal, a pipe,
``--plain``) it prints a block of plain lines per refresh.  Ctrl-C and SIGTERM
end it cleanly (rich restores the cursor, the exit status is 0); so does SIGHUP,
the terminal closing (status 2 if the goodbye cannot be written any more), and
a reader that closes the pipe (``tallies watch --plain | head -3``: status 0,
nothing printed).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

from .._export import Series, read_series
from .look import UserError

__all__ = ["History", "Row", "rows", "sparkline", "watch"]

SPARK = "▁▂▃▄▅▆▇█"
MINUTE = 60.0
RATE_SPAN = 5.0  # the "rate" column: per second over the last few seconds


def sparkline(points: list[tuple[float, int]], now: float, width: int = 20) -> str:
    """The rate over the last minute as ``width`` bars (blank where there is no data yet)."""
    if len(points) < 2:
        return " " * width
    step = MINUTE / width
    start = now - MINUTE
    first_t = points[0][0]

    def at(t: float) -> int:
        value = points[0][1]
        for pt, pv in points:
            if pt > t:
                break
            value = pv
        return value

    deltas: list[float | None] = []
    for i in range(width):
        lo, hi = start + i * step, start + (i + 1) * step
        if hi <= first_t:
            deltas.append(None)
            continue
        deltas.append(max(0, at(hi) - at(max(lo, first_t))) / step)
    peak = max((d for d in deltas if d is not None), default=0.0)
    out = []
    for d in deltas:
        if d is None:
            out.append(" ")
        elif peak <= 0:
            out.append(SPARK[0])
        else:
            out.append(SPARK[min(len(SPARK) - 1, int(d / peak * (len(SPARK) - 1) + 0.5))])
    return "".join(out)


class History:
    """The last minute of samples of every series (counter or key)."""

    def __init__(self) -> None:
        self._points: dict[tuple[str, str, str], deque[tuple[float, int]]] = {}

    def add(self, ident: tuple[str, str, str], now: float, value: int) -> deque[tuple[float, int]]:
        points = self._points.setdefault(ident, deque())
        points.append((now, value))
        while len(points) > 2 and now - points[1][0] > MINUTE:
            points.popleft()
        return points

    @staticmethod
    def rate(points: deque[tuple[float, int]], now: float) -> float | None:
        """Per second over the last ``RATE_SPAN`` seconds; None before two samples."""
        if len(points) < 2:
            return None
        base = points[0]
        for pt in reversed(points):
            if now - pt[0] >= RATE_SPAN:
                base = pt
                break
        dt = now - base[0]
        return (points[-1][1] - base[1]) / dt if dt > 0 else None


@dataclass
class Row:
    name: str
    key: str
    value: str
    rate: str
    spark: str


def _clean(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _per_second(rate: float | None) -> str:
    if rate is None:
        return ""
    return f"{rate:+,.1f}/s" if abs(rate) < 1000 else f"{rate:+,.0f}/s"


def rows(series: list[Series], history: History, now: float, top: int) -> Iterator[Row]:
    """The table for one refresh."""
    for s in series:
        name = _clean(s.name)
        if s.kind == "counter":
            points = history.add(("c", s.name, ""), now, s.value)
            yield Row(
                name,
                "",
                f"{s.value:,}",
                _per_second(history.rate(points, now)),
                sparkline(list(points), now),
            )
        elif s.kind == "keyed":
            ranked = sorted(s.keys.items(), key=lambda kv: (-kv[1], kv[0]))
            # every key keeps its history (a key can climb into the top N); top N are shown
            tracks = {key: history.add(("k", s.name, key), now, value) for key, value in ranked}
            if not ranked:
                yield Row(name, "(no keys)", "", "", "")
            for key, value in ranked[:top]:
                points = tracks[key]
                yield Row(
                    name,
                    _clean(key),
                    f"{value:,}",
                    _per_second(history.rate(points, now)),
                    sparkline(list(points), now),
                )
            if len(ranked) > top:
                rest = sum(v for _, v in ranked[top:])
                yield Row(name, f"({len(ranked) - top} more keys)", f"{rest:,}", "", "")
        elif s.kind == "rate":
            yield Row(
                name,
                f"(last {s.window:g} s)",
                f"{s.value:,}",
                f"{s.per_second:,.2f}/s",
                "" if s.total is None else f"total {s.total:,}",
            )
        else:
            ranked = sorted(s.keys.items(), key=lambda kv: (-kv[1], kv[0]))
            for key, value in ranked[:top]:
                per = value / s.window if s.window > 0 else 0.0
                yield Row(
                    name, _clean(key), f"{value:,}", f"{per:,.2f}/s", f"(last {s.window:g} s)"
                )


class _Stop(Exception):
    pass


def _capable(stream: TextIO) -> Any:
    """A rich Console for ``stream`` when rich is installed and the terminal can take it."""
    if os.environ.get("TERM", "") in ("", "dumb", "unknown"):
        return None
    try:
        if not stream.isatty():
            return None
        from rich.console import Console
    except (ImportError, ValueError, OSError):
        return None
    console = Console(file=stream)
    if console.is_dumb_terminal or not console.is_terminal or console.width < 60:
        return None
    return console


def _plain(url: str, table: list[Row], stream: TextIO) -> None:
    stamp = time.strftime("%H:%M:%S")
    lines = [f"{stamp} {url}"]
    if not table:
        lines.append("  (no counters)")
    width = max((len(r.name) + (len(r.key) + 2 if r.key else 0) for r in table), default=0)
    for r in table:
        label = f"{r.name}[{r.key}]" if r.key else r.name
        lines.append(f"  {label:<{width}}  {r.value:>16}  {r.rate:>14}".rstrip())
    stream.write("\n".join(lines) + "\n")
    stream.flush()


def _rich_table(url: str, table: list[Row], interval: float) -> Any:
    from rich.table import Table

    view = Table(
        title=f"tallies watch {url}",
        caption=f"every {interval:g} s; rate over the last {RATE_SPAN:g} s; Ctrl-C exits",
        expand=False,
    )
    view.add_column("name", overflow="fold")
    view.add_column("key", overflow="fold")
    view.add_column("value", justify="right")
    view.add_column("rate", justify="right")
    view.add_column("last minute", no_wrap=True)
    if not table:
        view.add_row("(no counters)", "", "", "", "")
    for r in table:
        view.add_row(r.name, r.key, r.value, r.rate, r.spark)
    return view


def watch(url: str, *, interval: float = 1.0, top: int = 5, plain: bool = False) -> int:
    """Show the store at ``url`` until Ctrl-C (SIGINT), SIGTERM or SIGHUP."""
    from ..stores import open as open_store
    from ..stores import redact_url

    stream = sys.stdout
    if stream is None:
        raise UserError("no terminal: standard output is closed")
    try:
        stream.fileno()
    except (ValueError, OSError):
        raise UserError("no terminal: standard output is closed") from None
    store = open_store(url, create=False)
    shown = redact_url(url)  # never the password: see stores/_redact.py

    state = {"stop": False, "sleeping": False}

    def stop(signum: int, frame: FrameType | None) -> None:
        # Interrupt only the sleep between refreshes; while a refresh is drawn
        # (rich holds its locks) just ask the loop to end after it.
        state["stop"] = True
        if state["sleeping"]:
            raise _Stop

    def pause(started: float) -> None:
        state["sleeping"] = True
        try:
            if not state["stop"]:
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
        finally:
            state["sleeping"] = False

    handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        handlers[sig] = signal.signal(sig, stop)
    history = History()
    console = None if plain else _capable(stream)
    try:
        if console is not None:
            from rich.live import Live

            with Live(console=console, auto_refresh=False, vertical_overflow="ellipsis") as live:
                while not state["stop"]:
                    now = time.monotonic()
                    table = list(rows(read_series(store.snapshot()), history, now, top))
                    live.update(_rich_table(shown, table, interval), refresh=True)
                    pause(now)
        else:
            while not state["stop"]:
                now = time.monotonic()
                table = list(rows(read_series(store.snapshot()), history, now, top))
                _plain(shown, table, stream)
                pause(now)
    except (_Stop, KeyboardInterrupt):
        pass
    except (BrokenPipeError, OSError) as exc:
        if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
            # the reader went away (``tallies watch --plain | head -3``): a normal end
            _quiet_stdout()
        elif exc.errno == errno.EIO:  # the terminal itself went away
            _quiet_stdout()
            raise UserError("the terminal went away") from None
        else:
            raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        store.close()
    return 0


def _quiet_stdout() -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
