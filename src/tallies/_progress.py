"""``tallies.progress``: one progress bar for work counted by many threads or processes.

    with tallies.progress(counter, total=1_000_000, desc="tasks"):
        with ProcessPoolExecutor() as pool:
            pool.map(work, chunks)      # workers increment an shm:// counter

A background thread polls ``counter.value()`` about ten times a second and
draws the bar on stderr; the threads and processes that increment the counter
pay nothing for it (no queue, no callback, no lock).  It works with any object
that has ``value()`` (``Counter``, ``ShardedCounter``, a store's counter in any
process), and with an object that has no ``value()`` but a ``total()`` (a
``RateCounter``: its all-time total).

On a terminal the bar is redrawn in place: description, percentage, bar,
``done/total``, elapsed time, ETA and rate (over the last few seconds).
Without a terminal (a pipe, a log file) it writes a plain line at most every
``plain_interval`` seconds (default 5).  On exit, normal or not, it draws the
final state once more, with the counter's exact value and the average rate.
Only the standard library is used.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Progress", "progress"]


def _reader(counter: object) -> Callable[[], int]:
    value = getattr(counter, "value", None)
    if callable(value):
        return lambda: int(value())
    total = getattr(counter, "total", None)
    if callable(total):
        return lambda: int(total())
    raise TypeError(
        f"progress() needs an object with value() (or total()), not {type(counter).__name__!r}"
    )


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _rate(per_second: float) -> str:
    if per_second >= 100:
        return f"{per_second:,.0f}/s"
    return f"{per_second:.2f}/s"


class Progress:
    """The running bar; :func:`progress` makes one.  A context manager."""

    def __init__(
        self,
        counter: object,
        total: int | None = None,
        desc: str = "",
        *,
        file: TextIO | None = None,
        interval: float = 0.1,
        plain_interval: float = 5.0,
    ) -> None:
        self._read = _reader(counter)
        if total is not None:
            if isinstance(total, bool) or not isinstance(total, int):
                raise TypeError(f"total must be an int or None, not {type(total).__name__!r}")
            if total < 0:
                raise ValueError(f"total must not be negative, not {total}")
        for what, value in (("interval", interval), ("plain_interval", plain_interval)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
        if not interval <= threading.TIMEOUT_MAX:  # the polling thread waits that long
            raise ValueError(
                f"interval must be a positive number of seconds <= {threading.TIMEOUT_MAX:g}, "
                f"not {interval!r}"
            )
        self.total = total
        self.desc = str(desc)
        self.file = file
        self.interval = float(interval)
        self.plain_interval = float(plain_interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0
        self._samples: deque[tuple[float, int]] = deque()
        self._last_plain = 0.0
        self._width = 0
        self._broken = False
        self.last: int = 0
        """The last value read."""

    # -- drawing ---------------------------------------------------------------

    def _stream(self) -> TextIO | None:
        return self.file if self.file is not None else sys.stderr

    def _tty(self, stream: TextIO) -> bool:
        try:
            return stream.isatty()
        except (ValueError, OSError):
            return False

    def _columns(self, stream: TextIO) -> int:
        try:
            return os.get_terminal_size(stream.fileno()).columns
        except (ValueError, OSError, AttributeError):
            return 80

    def line(self, value: int, now: float, *, final: bool = False, width: int = 80) -> str:
        """The text of the bar for ``value`` at time ``now`` (``width`` columns)."""
        elapsed = max(now - self._start, 0.0)
        if final or len(self._samples) < 2:
            rate = value / elapsed if elapsed > 0 else 0.0
        else:
            t0, v0 = self._samples[0]
            rate = (value - v0) / (now - t0) if now > t0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        if self.total is None:
            return f"{head}{value:,} [{_duration(elapsed)}, {_rate(rate)}]"
        frac = value / self.total if self.total else 1.0
        left = self.total - value
        if left <= 0:
            eta = "00:00"
        elif rate > 0:
            eta = _duration(left / rate)
        else:
            eta = "?"
        tail = f" {value:,}/{self.total:,} [{_duration(elapsed)}<{eta}, {_rate(rate)}]"
        pct = f"{100 * frac:3.0f}%"
        room = width - len(head) - len(pct) - len(tail) - 3
        if room < 10:
            return f"{head}{pct}{tail}"
        filled = min(room, max(0, int(room * frac)))
        return f"{head}{pct} |{'#' * filled}{'.' * (room - filled)}|{tail}"

    def _draw(self, *, final: bool = False) -> None:
        if self._broken:
            return
        stream = self._stream()
        if stream is None:
            return
        try:
            value = self._read()
        except Exception:
            return  # a store closed under us: keep the last state
        now = time.monotonic()
        self.last = value
        self._samples.append((now, value))
        while len(self._samples) > 2 and now - self._samples[0][0] > 5.0:
            self._samples.popleft()
        try:
            if self._tty(stream):
                text = self.line(value, now, final=final, width=self._columns(stream) - 1)
                pad = " " * max(0, self._width - len(text))
                self._width = len(text)
                stream.write("\r" + text + pad + ("\n" if final else ""))
                stream.flush()
            elif final or now - self._last_plain >= self.plain_interval:
                self._last_plain = now
                stream.write(self.line(value, now, final=final) + "\n")
                stream.flush()
        except (OSError, ValueError):
            self._broken = True  # the terminal went away: stop drawing, keep counting

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    # -- life cycle ------------------------------------------------------------

    def start(self) -> Progress:
        if self._thread is not None:
            raise RuntimeError("this progress bar was already started")
        self._start = time.monotonic()
        self._last_plain = self._start
        self._samples.clear()
        self._draw()
        self._thread = threading.Thread(target=self._run, name="tallies.progress", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop polling and draw the final state (once)."""
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._draw(final=True)

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tallies.Progress {self.desc!r} {self.last}/{self.total}>"


def progress(
    counter: Any,
    total: int | None = None,
    desc: str = "",
    *,
    file: TextIO | None = None,
    interval: float = 0.1,
    plain_interval: float = 5.0,
) -> Progress:
    """A progress bar that follows ``counter.value()``; use it as a context manager.

    ``total`` is the value at which the work is done (None: no percentage or
    ETA); ``file`` defaults to ``sys.stderr``; ``interval`` is the polling
    period (at most ``threading.TIMEOUT_MAX`` seconds; a longer one, ``inf``
    included, is a ValueError here); ``plain_interval`` the least time between
    two lines when ``file`` is not a terminal.
    """
    return Progress(
        counter, total, desc, file=file, interval=interval, plain_interval=plain_interval
    )
