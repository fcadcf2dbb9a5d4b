"""tallies: exact, C-fast counters for concurrent Python.

    >>> from tallies import Counter
    >>> c = Counter()
    >>> c.increment()
    >>> c.value()
    1

The C core (the extension ``tallies._tallies``) is used when it was built;
otherwise, or when the environment sets ``TALLIES_PURE=1``, the pure-Python
fallback (``tallies._pure``) with the same behaviour.  ``IMPLEMENTATION``
says which (``tallies._impl`` decides, once, for every type), ``BUILD`` says
more (free-threaded or not, the CPython internals compiled in, why the
fallback runs); a fallback nobody chose warns (``tallies._build``).
The package is laid out by scope: ``counter``, ``keyed``, ``stores``; the
``tallies`` command lives apart in ``tallies.cli``.
"""

from __future__ import annotations

__all__ = [
    "BUILD",
    "IMPLEMENTATION",
    "Build",
    "CapacityError",
    "CorruptSegmentError",
    "CorruptStoreError",
    "CountOverflowError",
    "Counter",
    "FlushError",
    "KeyedCounter",
    "KeyedRateCounter",
    "KindClashError",
    "RateCounter",
    "ShardedCounter",
    "Store",
    "StoreError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "__version__",
    "aopen",
    "destroy",
    "progress",
]
# tallies.open is exported but kept out of __all__: `from tallies import *`
# must not shadow the builtin open().
__version__ = "0.2.0.dev0"  # the only place the version is written (pyproject.toml reads it)

from ._build import Build as Build
from ._build import detect as _detect
from ._build import warn_if_fallback as _warn_if_fallback
from ._progress import Progress as Progress  # stdlib only: the bar for tallies.progress()
from ._progress import progress
from .counter import IMPLEMENTATION, Counter, ShardedCounter
from .keyed import KeyedCounter  # picks its core the same way (tallies.keyed)
from .rates import KeyedRateCounter, RateCounter  # likewise (tallies.rates)
from .stores import (  # after the core, which stores use
    CapacityError,
    CorruptSegmentError,
    CorruptStoreError,
    CountOverflowError,
    FlushError,
    KindClashError,
    Store,
    StoreError,
    StoreNotFoundError,
    StoreUnavailableError,
    aopen,
    destroy,
)
from .stores import open as open

BUILD: Build = _detect(IMPLEMENTATION)
"""Which build of tallies runs: the implementation, free-threaded or not, the
CPython internals its C core was compiled to use, why the fallback runs (see
Platforms and Python versions)."""
_warn_if_fallback(BUILD)
