"""The two counters of the tutorial this project grew from, verbatim.

Source: "Thread-Safe Counter in Python", Super Fast Python (SuperFastPython.com),
the tutorial in shared/seed/thread-safe-counter-tutorial.txt.  The classes below
are copied from its listings unchanged (comments, parentheses and all), so the
demo and the benchmarks measure exactly the code the tutorial teaches.  They are
deliberately left untyped and unformatted; nothing in tallies uses them except
``tallies demo`` and the repository's benchmarks (``benchmarks/counters.py``).
"""

# mypy: disable-error-code="no-untyped-def"
# ruff: noqa: UP039

from threading import Lock

__all__ = ["ThreadSafeCounter", "ThreadUnsafeCounter"]

# fmt: off

# thread unsafe counter class
class ThreadUnsafeCounter():
    # constructor
    def __init__(self):
        # initialize counter
        self._counter = 0

    # increment the counter
    def increment(self):
        self._counter += 1

    # get the counter value
    def value(self):
        return self._counter

# thread safe counter class
class ThreadSafeCounter():
    # constructor
    def __init__(self):
        # initialize counter
        self._counter = 0
        # initialize lock
        self._lock = Lock()

    # increment the counter
    def increment(self):
        with self._lock:
            self._counter += 1

    # get the counter value
    def value(self):
        with self._lock:
            return self._counter

# fmt: on
