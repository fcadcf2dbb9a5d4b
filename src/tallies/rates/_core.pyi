"""Types of tallies.rates._core, the C core under ``tallies.RateCounter`` and
``tallies.KeyedRateCounter`` (see ``_c/_ring.h`` for the design)."""

from collections.abc import Callable, Hashable
from typing import Any, SupportsIndex

FREE_THREADED_BUILD: int
"""1 when this extension was compiled for a free-threaded (no-GIL) CPython."""
MAX_BUCKETS: int
"""The most buckets one ring may have (window / resolution)."""
COARSE_GRANULARITY_NS: int
"""clock_getres(CLOCK_MONOTONIC_COARSE) in ns, or -1 when there is none."""

class RateCounter:
    """Events in the last ``window`` seconds, in buckets of ``resolution`` seconds."""

    def __init__(
        self,
        window: float = 60.0,
        resolution: float = 1.0,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None: ...
    def increment(self, n: SupportsIndex = 1) -> None:
        """Count ``n`` events now (one clock read and one checked add)."""
    def decrement(self, n: SupportsIndex = 1) -> None:
        """Count ``-n`` events now."""
    def count(self, window: float | None = None) -> int:
        """Events in the current bucket and the buckets fully inside the last
        ``window`` seconds (default and maximum: the configured window)."""
    def per_second(self, window: float | None = None) -> float:
        """``count(window) / window``."""
    def total(self) -> int:
        """Events since creation or the last reset()."""
    def reset(self) -> int:
        """Take the total and empty every bucket; each event is in exactly one
        reset() result or in a later total()."""
    @property
    def window(self) -> float: ...
    @property
    def resolution(self) -> float: ...
    @property
    def buckets(self) -> int: ...
    @property
    def clock(self) -> Callable[[], float] | None: ...

class KeyedRateCounter:
    """A RateCounter per key; keys whose buckets have all expired are swept."""

    def __init__(
        self,
        window: float = 60.0,
        resolution: float = 1.0,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None: ...
    def increment(self, key: Hashable, n: SupportsIndex = 1) -> None: ...
    def decrement(self, key: Hashable, n: SupportsIndex = 1) -> None: ...
    def count(self, key: Hashable, window: float | None = None) -> int: ...
    def per_second(self, key: Hashable, window: float | None = None) -> float: ...
    def snapshot(self, window: float | None = None) -> dict[Any, int]: ...
    def most_common(
        self, n: SupportsIndex | None = None, window: float | None = None
    ) -> list[tuple[Any, int]]: ...
    def sweep(self) -> int: ...
    def clear(self) -> None: ...
    def _keys(self) -> list[Any]: ...
    def __len__(self) -> int: ...
    @property
    def window(self) -> float: ...
    @property
    def resolution(self) -> float: ...
    @property
    def buckets(self) -> int: ...
    @property
    def clock(self) -> Callable[[], float] | None: ...
