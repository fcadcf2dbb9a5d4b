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

__all__ = [
    "IMPLEMENTATION",
    "CapacityError",
    "CorruptSegmentError",
    "Counter",
    "KeyedCounter",
    "ShardedCounter",
    "Store",
    "StoreError",
    "StoreNotFoundError",
    "__version__",
    "destroy",
]
# tallies.open is exported but kept out of __all__: `from tallies import *`
# must not shadow the builtin open().
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

from .keyed import KeyedCounter  # noqa: E402 - picks its core the same way (tallies.keyed)
from .stores import (  # noqa: E402 - after the core, which stores use
    CapacityError,
    CorruptSegmentError,
    Store,
    StoreError,
    StoreNotFoundError,
    destroy,
)
from .stores import open as open  # noqa: E402
