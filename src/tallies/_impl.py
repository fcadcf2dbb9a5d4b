"""C or pure, decided here and nowhere else: every core type of tallies comes from this module.

``tallies._tallies`` is the one compiled extension (the C files of ``_c/``;
``_c/_module.h`` says how they make one module).  ``tallies._pure`` is the
pure-Python fallback: the same behaviour and messages, a lock per update.
The extension is used when it was built, unless the environment sets
``TALLIES_PURE=1``; ``IMPLEMENTATION`` (``"c"`` or ``"python"``) says which,
and is ``tallies.IMPLEMENTATION``.  ``counter``, ``keyed``, ``rates`` and the
write-behind stores take their types from here.

``native`` is the extension whatever ``TALLIES_PURE`` says (None when it was
not built): ``shm://`` has no fallback (its counters are atomics in memory
that processes share), so it uses the extension even under ``TALLIES_PURE=1``
and refuses without it.  Where the fallback is in use, the names that only
the C core has (``Count``, ``make_count``, ``BufferedCounter``,
``BufferedKeyedCounter``) are None.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__all__ = [
    "IMPLEMENTATION",
    "NATIVE_MISSING",
    "BufferedCounter",
    "BufferedKeyedCounter",
    "Count",
    "Counter",
    "KeyedCore",
    "KeyedRateCounter",
    "RateCounter",
    "ShardedCounter",
    "make_count",
    "native",
]

NATIVE_MISSING = ""
"""Why the extension could not be imported ("" when it could)."""
try:
    from . import _tallies as native
except ImportError as exc:  # no compiler at install time
    native = None  # type: ignore[assignment]
    NATIVE_MISSING = repr(exc)

IMPLEMENTATION: str = (
    "c" if native is not None and os.environ.get("TALLIES_PURE") != "1" else "python"
)

# The static types: the extension's stub for the counters, the fallback's
# classes (the same API) for the rates.
if TYPE_CHECKING:
    from ._pure.rate import KeyedRateCounter, RateCounter
    from ._tallies import Counter, ShardedCounter

    KeyedCore: Any
    Count: Any
    make_count: Any
    BufferedCounter: Any
    BufferedKeyedCounter: Any
elif IMPLEMENTATION == "c":
    Counter = native.Counter
    ShardedCounter = native.ShardedCounter
    # The C KeyedCounter type: tallies.keyed installs the collections.Counter
    # API on it, and it is the class users get (not a subclass: CPython's
    # fast path for C methods needs the exact type).
    KeyedCore = native.KeyedCounter
    Count = native.Count  # what kc[key] returns (tallies.keyed.api)
    make_count = native._make_count
    RateCounter = native.RateCounter
    KeyedRateCounter = native.KeyedRateCounter
    BufferedCounter = native.BufferedCounter  # a write-behind store's counter
    BufferedKeyedCounter = native.BufferedKeyedCounter  # and its keyed counter's C half
else:
    from ._pure.counter import Counter, ShardedCounter
    from ._pure.keyed import KeyedCore
    from ._pure.rate import KeyedRateCounter, RateCounter

    Count = make_count = BufferedCounter = BufferedKeyedCounter = None
