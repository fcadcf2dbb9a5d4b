"""The pure-Python fallback: the same behaviour as the C core, behind a lock.

Used when the C extensions were not built, or when ``TALLIES_PURE=1``.
``counter`` has ``Counter`` and ``ShardedCounter`` (and the int64 argument
rules every fallback shares); ``keyed`` has the per-key core under
``KeyedCounter``.  The classes keep the dotted names they had in tallies 0.1.0
(``tallies._pure.Counter``), so pickles move between versions.
"""

from .counter import INT64_MAX, INT64_MIN, Counter, ShardedCounter, to_int64

__all__ = ["INT64_MAX", "INT64_MIN", "Counter", "ShardedCounter", "to_int64"]
