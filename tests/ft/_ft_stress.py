"""What the free-threading stress tests share: threads released together, bounded
work, and the knobs that make a run longer (TALLIES_FT_ROUNDS) or shorter.

On a free-threaded build (3.13t, GIL off) the threads of these tests really run
at the same time on different cores; on a GIL build the same tests run with the
switch interval at 1 microsecond, which interleaves them as finely as that
interpreter allows.  Every test keeps exact ledgers; none measures speed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from _support import FREE_THREADED

T = TypeVar("T")

#: Threads per test: two per core on this project's 2-core machine, so that threads
#: both run in parallel and get preempted in the middle of an update.
THREADS = int(os.environ.get("TALLIES_FT_THREADS", "4"))
#: How many times each stress runs (fresh objects each round).  scripts/ft-tsan and
#: a long soak raise or lower it.
ROUNDS = int(os.environ.get("TALLIES_FT_ROUNDS", "3"))
#: Operations per thread per round; scaled down under ThreadSanitizer (10-20x slower).
SCALE = float(os.environ.get("TALLIES_FT_SCALE", "1"))
#: A round stops early at this many seconds (the ledgers stay exact: each thread
#: records exactly what it did), so a loaded machine cannot make a test run away.
ROUND_SECONDS = float(os.environ.get("TALLIES_FT_ROUND_SECONDS", "4"))

GIL_OFF = FREE_THREADED and not getattr(sys, "_is_gil_enabled", lambda: True)()


def ops(n: int) -> int:
    return max(10, int(n * SCALE))


@contextmanager
def interleaving() -> Iterator[None]:
    """With a GIL, switch threads as often as the interpreter can; without, nothing to do."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


class Deadline:
    """``expired()`` is cheap enough to call every few hundred operations."""

    def __init__(self, seconds: float = ROUND_SECONDS) -> None:
        self.end = time.monotonic() + seconds

    def expired(self) -> bool:
        return time.monotonic() >= self.end


def together(n: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(0..n-1)`` in ``n`` threads released by one barrier; returns their
    results in order and re-raises the first failure of any of them."""
    barrier = threading.Barrier(n)
    results: list[T | None] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # a thread's failure must fail the test
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    with interleaving():
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]
