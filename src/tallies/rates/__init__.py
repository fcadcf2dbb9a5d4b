"""Rates: events in the last N seconds, exact per bucket, at counter speed.

    >>> from tallies import RateCounter
    >>> r = RateCounter(window=60.0, resolution=1.0)
    >>> r.increment()
    >>> r.count()
    1

``RateCounter`` and ``KeyedRateCounter`` are C (``_c/rate.c`` over the ring in
``_c/_ring.h``, whose header comment is the design) or the pure-Python
fallback ``tallies._pure.rate`` (same algorithm under a lock), as
``tallies._impl`` decides.  ``most_common`` is written once (in
``tallies._common``) and installed on whichever ``KeyedRateCounter`` is used.
"""

from __future__ import annotations

from .._common import most_common
from .._impl import IMPLEMENTATION, KeyedRateCounter, RateCounter

__all__ = ["IMPLEMENTATION", "KeyedRateCounter", "RateCounter"]

if IMPLEMENTATION == "c":
    KeyedRateCounter.most_common = most_common
