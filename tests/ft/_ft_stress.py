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
import time

from _support import FREE_THREADED
from _threads import interleaving, run_threads

__all__ = [
    "GIL_OFF",
    "ROUNDS",
    "ROUND_SECONDS",
    "THREADS",
    "Deadline",
    "interleaving",
    "ops",
    "together",
]

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


class Deadline:
    """``expired()`` is cheap enough to call every few hundred operations."""

    def __init__(self, seconds: float = ROUND_SECONDS) -> None:
        self.end = time.monotonic() + seconds

    def expired(self) -> bool:
        return time.monotonic() >= self.end


together = run_threads  # the shared helper, under the name these tests use
