"""In-process counters: ``Counter`` (one atomic cell) and ``ShardedCounter``.

The C extension ``tallies.counter._core`` (built from ``tallies/_c/counter.c``
over the cell engine ``_c/_cells.h``) is used when it was built; otherwise, or
when the environment sets ``TALLIES_PURE=1``, the pure-Python fallback
``tallies._pure`` with the same behaviour.  ``IMPLEMENTATION`` says which.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

__all__ = ["IMPLEMENTATION", "Counter", "ShardedCounter"]

IMPLEMENTATION: str

if TYPE_CHECKING:
    from ._core import Counter, ShardedCounter
elif os.environ.get("TALLIES_PURE") == "1":
    from .._pure import Counter, ShardedCounter

    IMPLEMENTATION = "python"
else:
    try:
        from ._core import Counter, ShardedCounter

        IMPLEMENTATION = "c"
    except ImportError:
        from .._pure import Counter, ShardedCounter

        IMPLEMENTATION = "python"
