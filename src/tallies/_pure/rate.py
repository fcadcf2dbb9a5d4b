"""The pure-Python fallback of ``tallies.rates``: the C core's ring, behind a lock.

Same algorithm as ``_c/_ring.h`` (one running total plus a mark per bucket;
read that header's comment), same settings and bucketing (``_Spec``, shared
with ``shm://`` rates in ``tallies._common``), same error messages.  Every
operation takes the counter's lock, so it is exact on every interpreter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, ClassVar, SupportsIndex

from .._common import (
    COARSE_GRANULARITY_NS,
    INT64_MAX,
    INT64_MIN,
    MAX_BUCKETS,
    NONE,
    _RateSettings,
    _Spec,
    most_common,
    to_int64,
)

__all__ = [
    "COARSE_GRANULARITY_NS",
    "FREE_THREADED_BUILD",
    "MAX_BUCKETS",
    "KeyedRateCounter",
    "RateCounter",
]

FREE_THREADED_BUILD = 0


class _Ring:
    """total, latest and marks: see _c/_ring.h.  The owner's lock guards it."""

    __slots__ = ("latest", "marks", "total")

    def __init__(self, nb: int) -> None:
        self.total = 0
        self.latest = NONE
        self.marks: list[tuple[int, int]] = [(NONE, 0)] * nb

    def add(self, slot: int, n: int) -> bool:
        """Count n (may be negative) in bucket max(slot, latest); False on overflow."""
        new = self.total + n
        if not INT64_MIN <= new <= INT64_MAX:
            return False
        if slot > self.latest:
            self.marks[slot % len(self.marks)] = (slot, self.total)
            self.latest = slot
        self.total = new
        return True

    def count(self, j_min: int) -> int:
        latest = self.latest
        if latest == NONE or latest < j_min:
            return 0
        nb = len(self.marks)
        for j in range(max(j_min, latest - nb + 1), latest + 1):
            s, v = self.marks[j % nb]
            if s == j:
                return self.total - v
        return 0  # pragma: no cover - the latest slot always has its mark

    def reset(self, slot: int) -> int:
        old = self.total
        nb = len(self.marks)
        slot = max(slot, self.latest)
        self.marks = [(NONE, 0)] * nb
        if slot != NONE:
            self.marks[slot % nb] = (slot, 0)
        self.latest = slot
        self.total = 0
        return old


class _Rate(_RateSettings):
    """What both rate counters of the fallback share besides their settings."""

    __slots__ = ("_sp",)
    _NAME: ClassVar[str]  # the class's name in error messages

    def __init__(
        self,
        window: float = 60.0,
        resolution: float = 1.0,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._sp = _Spec(self._NAME, window, resolution, clock)
        self._start()

    def _start(self) -> None:
        """Set up the state of the subclass, after its settings."""
        raise NotImplementedError

    @property
    def clock(self) -> Callable[[], float] | None:
        return self._sp.clock


class RateCounter(_Rate):
    """Events in the last ``window`` seconds, in buckets of ``resolution`` seconds."""

    __slots__ = ("_lock", "_ring")
    __module__ = "tallies._pure"
    _NAME = "RateCounter"

    def _start(self) -> None:
        self._ring = _Ring(self._sp.nb)
        self._lock = threading.Lock()

    def _add(self, n: int, sub: bool, op: str) -> None:
        now = self._sp.now()
        with self._lock:
            if self._ring.add(now[1], -n if sub else n):
                return
            current = self._ring.total
        raise OverflowError(
            f"{op}({n}) would move the rate's total outside the signed 64-bit "
            f"range; it stays at {current}"
        )

    def increment(self, n: SupportsIndex = 1) -> None:
        self._add(to_int64(n, "increment"), False, "increment")

    def decrement(self, n: SupportsIndex = 1) -> None:
        self._add(to_int64(n, "decrement"), True, "decrement")

    def _count(self, window: object, fname: str) -> tuple[int, float]:
        w, w_ns = self._sp.width(window, fname)
        now = self._sp.now()
        with self._lock:
            return self._ring.count(self._sp.first_slot(now, w_ns, self._ring.latest)), w

    def count(self, window: float | None = None) -> int:
        return self._count(window, "count")[0]

    def per_second(self, window: float | None = None) -> float:
        c, w = self._count(window, "per_second")
        return c / w

    def total(self) -> int:
        return self._ring.total

    def reset(self) -> int:
        now = self._sp.now()
        with self._lock:
            return self._ring.reset(now[1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._sp.repr_args()}, total={self._ring.total})"


class KeyedRateCounter(_Rate):
    """A RateCounter per key; keys whose buckets all expired are swept away."""

    __slots__ = ("_lock", "_next_sweep", "_rings")
    __module__ = "tallies._pure"
    _NAME = "KeyedRateCounter"

    def _start(self) -> None:
        self._rings: dict[Hashable, _Ring] = {}
        self._lock = threading.RLock()  # a key's __eq__ may call back in
        self._next_sweep = INT64_MIN

    def _sweep_locked(self, now: tuple[int, int]) -> int:
        oldest = now[1] - self._sp.nb + 1
        dead = [(k, r) for k, r in self._rings.items() if r.latest == NONE or r.latest < oldest]
        for k, r in dead:
            before = r.total
            del self._rings[k]  # may run k's __eq__, which may count k again
            if r.total != before:  # counted while being removed: count it again, now
                fresh = self._rings.setdefault(k, _Ring(self._sp.nb))
                fresh.add(now[1], r.total - before)
        return len(dead)

    def _add(self, key: Hashable, n: int, sub: bool, op: str) -> None:
        now = self._sp.now()
        with self._lock:
            ring = self._rings.get(key)
            fresh = ring is None
            if ring is None:
                ring = _Ring(self._sp.nb)
            if not ring.add(now[1], -n if sub else n):
                current = ring.total
            else:
                if fresh:
                    self._rings.setdefault(key, ring)
                clock_now = now[0] if self._sp.clock is None else now[1]
                if clock_now >= self._next_sweep:
                    step = self._sp.window_ns if self._sp.clock is None else self._sp.nb
                    self._next_sweep = clock_now + step
                    self._sweep_locked(now)
                return
        raise OverflowError(
            f"{op}({n}) would move the total of {key!r} outside the signed 64-bit "
            f"range; it stays at {current}"
        )

    def increment(self, key: Hashable, n: SupportsIndex = 1) -> None:
        hash(key)
        self._add(key, to_int64(n, "increment"), False, "increment")

    def decrement(self, key: Hashable, n: SupportsIndex = 1) -> None:
        hash(key)
        self._add(key, to_int64(n, "decrement"), True, "decrement")

    def _count(self, key: Hashable, window: object, fname: str) -> tuple[int, float]:
        w, w_ns = self._sp.width(window, fname)
        with self._lock:
            ring = self._rings.get(key)
        if ring is None:
            return 0, w
        now = self._sp.now()
        with self._lock:
            return ring.count(self._sp.first_slot(now, w_ns, ring.latest)), w

    def count(self, key: Hashable, window: float | None = None) -> int:
        return self._count(key, window, "count")[0]

    def per_second(self, key: Hashable, window: float | None = None) -> float:
        c, w = self._count(key, window, "per_second")
        return c / w

    def snapshot(self, window: float | None = None) -> dict[Any, int]:
        _, w_ns = self._sp.width(window, "snapshot")
        now = self._sp.now()
        out: dict[Any, int] = {}
        with self._lock:
            self._sweep_locked(now)
            for k, ring in self._rings.items():
                c = ring.count(self._sp.first_slot(now, w_ns, ring.latest))
                if c:
                    out[k] = c
        return out

    most_common = most_common

    def sweep(self) -> int:
        now = self._sp.now()
        with self._lock:
            return self._sweep_locked(now)

    def clear(self) -> None:
        with self._lock:
            self._rings.clear()

    def _keys(self) -> list[Any]:
        with self._lock:
            return list(self._rings)

    def __len__(self) -> int:
        now = self._sp.now()
        with self._lock:
            self._sweep_locked(now)
            return len(self._rings)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._sp.repr_args()}, keys={len(self._rings)})"
