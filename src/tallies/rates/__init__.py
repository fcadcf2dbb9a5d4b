"""Rates: events in the last N seconds, exact per bucket, at counter speed.

    >>> from tallies import RateCounter
    >>> r = RateCounter(window=60.0, resolution=1.0)
    >>> r.increment()
    >>> r.count()
    1

``RateCounter`` and ``KeyedRateCounter`` come from the C extension
``tallies.rates._core`` (``_c/rate.c`` over the ring in ``_c/_ring.h``, whose
header comment is the design) when it was built, else from the pure-Python
fallback ``tallies._pure.rate`` (same algorithm under a lock);
``TALLIES_PURE=1`` forces the latter.  ``most_common`` is written once (in ``tallies._pure.rate``)
and installed on whichever ``KeyedRateCounter`` is used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .._pure.rate import most_common

__all__ = ["IMPLEMENTATION", "KeyedRateCounter", "RateCounter"]

IMPLEMENTATION: str

if TYPE_CHECKING:
    from .._pure.rate import KeyedRateCounter, RateCounter
else:
    _native = None
    if os.environ.get("TALLIES_PURE") != "1":
        try:
            from . import _core as _native
        except ImportError:
            _native = None
    if _native is None:
        from .._pure.rate import KeyedRateCounter, RateCounter

        IMPLEMENTATION = "python"
    else:
        RateCounter = _native.RateCounter
        KeyedRateCounter = _native.KeyedRateCounter
        KeyedRateCounter.most_common = most_common
        IMPLEMENTATION = "c"
