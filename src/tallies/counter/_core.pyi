"""Types of the C core.  ``tallies.Counter`` and ``tallies.ShardedCounter``."""

from typing import SupportsIndex

FREE_THREADED_BUILD: int
"""1 when this extension was compiled for a free-threaded (no-GIL) CPython."""
CPU_SLOTS: int
"""How many striped cells a ShardedCounter allocates when it inflates."""
SHARES_CONTENDED: int
"""1 on free-threaded 3.13: a contended ShardedCounter stops being refcounted (_c/_shared.h)."""
CPYTHON_INTERNALS: str
"""The CPython internals compiled in, comma-separated ("" for none): _c/_internals.h."""

def _shared_remaining() -> int:
    """How many more contended ShardedCounters may become immortal (0 where not 3.13t)."""

class Counter:
    """An exact signed 64-bit counter that many threads may update at once.

    Every method is atomic: no update is ever lost, under the GIL or without
    it.  Values stay in [-2**63, 2**63 - 1]: an update that would leave that
    range raises OverflowError and changes nothing.  Amounts may be any object
    with ``__index__``; anything else raises TypeError and changes nothing.
    An update is a release and ``value()`` an acquire: a thread that sees a
    count also sees what the counting threads did before they counted.
    """

    def __init__(self, initial: SupportsIndex = 0) -> None: ...
    def increment(self, n: SupportsIndex = 1) -> None:
        """Add ``n`` (default 1)."""
    def decrement(self, n: SupportsIndex = 1) -> None:
        """Subtract ``n`` (default 1)."""
    def add(self, n: SupportsIndex) -> int:
        """Add ``n`` and return the value it produced (fetch-and-add)."""
    def value(self) -> int:
        """The current value."""
    def reset(self) -> int:
        """Set the value to 0 and return the value it replaced, in one atomic step:
        an increment lands either in the returned value or after the reset."""
    def set(self, v: SupportsIndex) -> None:
        """Set the value to ``v``."""
    def compare_and_set(self, expected: SupportsIndex, new: SupportsIndex) -> bool:
        """Set the value to ``new`` only if it is ``expected``; True if it was set."""
    def wait_until(self, target: SupportsIndex, timeout: float | None = None) -> bool:
        """Block until ``value() >= target``; return False if ``timeout`` seconds
        pass first.  Costs the updating threads nothing while nobody waits."""
    def __iadd__(self, n: SupportsIndex) -> Counter:
        """``c += n``: an atomic ``increment(n)``."""
    def __isub__(self, n: SupportsIndex) -> Counter:
        """``c -= n``: an atomic ``decrement(n)``."""
    def __int__(self) -> int: ...

class ShardedCounter:
    """A contention-adaptive striped counter (the design of Java's LongAdder).

    It starts as one cell.  The first update that finds another thread
    updating at the same instant allocates padded per-CPU cells, and updates
    spread over them from then on.  Under a GIL that never happens, and the
    counter costs what a ``Counter`` costs.

    ``value()`` sums the cells one by one: it is **not a snapshot** while other
    threads update (an update during the sum may or may not be in it); it is
    exact once they stop.  ``reset()`` exchanges every cell with 0, so each
    update is counted in exactly one ``reset()`` result or in a later
    ``value()``.  Each cell is checked against the int64 range on its own.
    """

    def __init__(self, initial: SupportsIndex = 0) -> None: ...
    def increment(self, n: SupportsIndex = 1) -> None:
        """Add ``n`` (default 1)."""
    def decrement(self, n: SupportsIndex = 1) -> None:
        """Subtract ``n`` (default 1)."""
    def value(self) -> int:
        """The sum of the cells (not a snapshot while others update)."""
    def reset(self) -> int:
        """Zero every cell and return the sum of what was taken."""
    @property
    def inflated(self) -> bool:
        """True once contention made the counter allocate its striped cells."""
    def __iadd__(self, n: SupportsIndex) -> ShardedCounter: ...
    def __isub__(self, n: SupportsIndex) -> ShardedCounter: ...
    def __int__(self) -> int: ...
