"""In-process counters: ``Counter`` (one atomic cell) and ``ShardedCounter``.

C (``_c/counter.c``, over the cell engine ``_c/_cells.h``) or the pure-Python
fallback ``tallies._pure`` with the same behaviour: ``tallies._impl`` decides
(``TALLIES_PURE=1`` forces the fallback), and ``IMPLEMENTATION`` says which.
"""

from __future__ import annotations

from .._impl import IMPLEMENTATION, Counter, ShardedCounter

__all__ = ["IMPLEMENTATION", "Counter", "ShardedCounter"]
