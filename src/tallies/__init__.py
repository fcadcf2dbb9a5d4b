"""tallies: exact, C-fast counters for concurrent Python.

    >>> from tallies import Counter
    >>> c = Counter()
    >>> c.increment()
    >>> c.value()
    1

The C core (``tallies._core``) is used when it was built; otherwise, or when
the environment sets ``TALLIES_PURE=1``, the pure-Python fallback
(``tallies._pure``) with the same behaviour.  ``IMPLEMENTATION`` says which.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .keyed import KeyedCounter  # picks its core the same way: tallies.keyed.IMPLEMENTATION

__all__ = ["IMPLEMENTATION", "Counter", "KeyedCounter", "ShardedCounter", "__version__"]
__version__ = "0.1.0"

IMPLEMENTATION: str

if TYPE_CHECKING:
    from ._core import Counter, ShardedCounter
elif os.environ.get("TALLIES_PURE") == "1":
    from ._pure import Counter, ShardedCounter

    IMPLEMENTATION = "python"
else:
    try:
        from ._core import Counter, ShardedCounter

        IMPLEMENTATION = "c"
    except ImportError:
        from ._pure import Counter, ShardedCounter

        IMPLEMENTATION = "python"
