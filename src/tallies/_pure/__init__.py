"""The pure-Python fallback: the same behaviour as the C core, behind a lock.

Used when the C extension was not built, or when ``TALLIES_PURE=1``
(``tallies._impl`` decides).  ``counter`` has ``Counter`` and
``ShardedCounter``, ``keyed`` the per-key core under ``KeyedCounter``,
``rate`` the rate counters; what they share with the C path (the int64 rules,
the rate settings) is in ``tallies._common``.  The classes keep the dotted
names they had in tallies 0.1.0 (``tallies._pure.Counter``), so pickles move
between versions.
"""

from .counter import CPU_SLOTS, FREE_THREADED_BUILD, Counter, ShardedCounter

__all__ = ["CPU_SLOTS", "FREE_THREADED_BUILD", "Counter", "ShardedCounter"]
