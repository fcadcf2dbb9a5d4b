"""The pure-Python fallback of ``tallies.rates``: the C core's ring, behind a lock.

Same algorithm as ``_c/_ring.h`` (one running total plus a mark per bucket;
read that header's comment), same bucketing, same error messages.  Every
operation takes the counter's lock, so it is exact on every interpreter.
"""

from __future__ import annotations

import math
import operator
import threading
import time
from collections.abc import Callable, Hashable
from operator import itemgetter
from typing import Any, SupportsIndex

from .counter import INT64_MAX, INT64_MIN, to_int64

__all__ = [
    "COARSE_GRANULARITY_NS",
    "MAX_BUCKETS",
    "KeyedRateCounter",
    "RateCounter",
    "most_common",
]

MAX_BUCKETS = 1_000_000
MAX_WINDOW = 1e9
MIN_RESOLUTION = 1e-9
NONE = INT64_MIN  # "no slot"
FREE_THREADED_BUILD = 0

_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", None)
COARSE_GRANULARITY_NS = -1
if _COARSE is not None:
    try:
        _res = time.clock_getres(_COARSE)
        if _res < 1:
            COARSE_GRANULARITY_NS = round(_res * 1e9)
    except OSError:  # pragma: no cover
        _COARSE = None


def _seconds(obj: object, fname: str, what: str) -> float:
    if isinstance(obj, (str, bytes, complex)) or obj is None:
        raise TypeError(f"{fname}() {what} must be a number of seconds, not {type(obj).__name__!r}")
    try:
        return float(obj)  # type: ignore[arg-type]
    except OverflowError:
        return math.inf
    except TypeError:
        if hasattr(type(obj), "__index__"):
            try:
                return float(obj.__index__())  # type: ignore[attr-defined]
            except OverflowError:
                return math.inf
        raise TypeError(
            f"{fname}() {what} must be a number of seconds, not {type(obj).__name__!r}"
        ) from None


def most_common(
    self: Any, n: SupportsIndex | None = None, window: float | None = None
) -> list[tuple[Any, int]]:
    """The ``n`` keys with the most events in the window (all when ``n`` is None),
    highest first; ties keep first-counted order; keys at 0 are left out."""
    k = None
    if n is not None:
        if isinstance(n, bool) or not hasattr(type(n), "__index__"):
            raise TypeError(f"most_common() n must be an integer or None, not {type(n).__name__!r}")
        k = max(operator.index(n), 0)
    items = sorted(self.snapshot(window).items(), key=itemgetter(1), reverse=True)
    return items if k is None else items[:k]


def seconds_ns(seconds: float) -> int:
    """A finite number of seconds in whole nanoseconds, rounded half up, exactly
    (from the float's exact value, as ``_c/rate.c``'s ``seconds_ns`` does)."""
    p, q = seconds.as_integer_ratio()
    return (2 * p * 1_000_000_000 + q) // (2 * q)


class _Spec:
    """The window and resolution, validated and normalised once.

    Both are kept in whole nanoseconds (rounded half up from the float given);
    the ring has ``ceil(window_ns / res_ns)`` buckets, so it always covers the
    whole window; ``.window`` and ``.resolution`` report the rounded values.
    The C core (``parse_spec`` in ``_c/rate.c``) and ``shm://`` (which uses
    this class) apply the same rule, with the same messages.
    """

    __slots__ = ("clk", "clock", "nb", "res_ns", "resolution", "window", "window_ns")

    def __init__(self, fname: str, window: object, resolution: object, clock: object) -> None:
        w = _seconds(window, fname, "window")
        r = _seconds(resolution, fname, "resolution")
        if not 0.0 < w <= MAX_WINDOW:
            raise ValueError(
                f"{fname}() window must be a number of seconds > 0 and <= 1e9, not {w!r}"
            )
        if not MIN_RESOLUTION <= r <= w:
            raise ValueError(
                f"{fname}() resolution must be a number of seconds >= 1e-9 and <= "
                f"the window ({w!r}), not {r!r}"
            )
        if clock is not None and not callable(clock):
            raise TypeError(
                f"{fname}() clock must be a callable returning seconds, or None, "
                f"not {type(clock).__name__!r}"
            )
        self._set(fname, seconds_ns(w), seconds_ns(r))
        self.clock: Callable[[], Any] | None = clock

    @classmethod
    def from_ns(cls, fname: str, window_ns: int, res_ns: int) -> _Spec:
        """The spec of a rate stored as whole nanoseconds (``shm://``'s meta);
        ValueError when they are out of range or need too many buckets."""
        sp = cls.__new__(cls)
        if not (0 < window_ns <= 10**18 and 1 <= res_ns <= window_ns):
            raise ValueError(f"{fname}() window {window_ns} ns, resolution {res_ns} ns")
        sp._set(fname, window_ns, res_ns)
        sp.clock = None
        return sp

    def _set(self, fname: str, window_ns: int, res_ns: int) -> None:
        nb = -(-window_ns // res_ns)
        if nb > MAX_BUCKETS:
            raise ValueError(
                f"{fname}() window / resolution needs {nb} buckets; the limit is {MAX_BUCKETS}"
            )
        self.window_ns = window_ns
        self.res_ns = res_ns
        self.nb = nb
        self.window = window_ns / 10**9  # exactly rounded (int / int)
        self.resolution = res_ns / 10**9
        coarse = _COARSE is not None and 0 < COARSE_GRANULARITY_NS * 10 <= res_ns
        self.clk: int = _COARSE if coarse and _COARSE is not None else time.CLOCK_MONOTONIC

    def width(self, window: object, fname: str) -> tuple[float, int]:
        """(w, w_ns) of a read; None: the configured window."""
        if window is None:
            return self.window, self.window_ns
        w = _seconds(window, fname, "window")
        if not (0.0 < w <= MAX_WINDOW and seconds_ns(w) <= self.window_ns):
            raise ValueError(
                f"{fname}() window must be a number of seconds > 0 and <= {self.window!r}, "
                f"not {w!r}"
            )
        return w, seconds_ns(w)

    def now(self) -> tuple[int, int]:
        """(ns, slot): the clock in whole nanoseconds and its bucket."""
        if self.clock is None:
            ns = time.clock_gettime_ns(self.clk)
            return ns, ns // self.res_ns
        v = self.clock()
        if isinstance(v, (str, bytes)) or v is None:
            raise TypeError(f"clock() must return a number of seconds, not {type(v).__name__!r}")
        try:
            t = float(v)
        except TypeError:
            raise TypeError(
                f"clock() must return a number of seconds, not {type(v).__name__!r}"
            ) from None
        except OverflowError:
            t = math.inf
        if math.isfinite(t) and abs(t) <= 4e18:
            ns = seconds_ns(t)
            slot = ns // self.res_ns
            if abs(slot) < 4e18:
                return ns, slot
        raise ValueError(
            f"clock() returned {t!r}; expected a finite number of seconds within 4e18 buckets of 0"
        )

    def first_slot(self, now: tuple[int, int], w_ns: int, latest: int) -> int:
        """The oldest bucket a read of w_ns counts: the current one and every
        bucket fully inside (now - w, now], at most ``nb`` of them."""
        ns, cur = now
        j = (ns - w_ns) // self.res_ns + 1
        if latest != NONE and cur < latest:
            j += latest - cur
            cur = latest
        return max(min(j, cur), cur - self.nb + 1)

    def repr_args(self) -> str:
        return f"window={self.window!r}, resolution={self.resolution!r}"


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


class RateCounter:
    """Events in the last ``window`` seconds, in buckets of ``resolution`` seconds."""

    __slots__ = ("_lock", "_ring", "_sp")
    __module__ = "tallies._pure"

    def __init__(
        self,
        window: float = 60.0,
        resolution: float = 1.0,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._sp = _Spec("RateCounter", window, resolution, clock)
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

    @property
    def window(self) -> float:
        return self._sp.window

    @property
    def resolution(self) -> float:
        return self._sp.resolution

    @property
    def buckets(self) -> int:
        return self._sp.nb

    @property
    def clock(self) -> Callable[[], float] | None:
        return self._sp.clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._sp.repr_args()}, total={self._ring.total})"


class KeyedRateCounter:
    """A RateCounter per key; keys whose buckets all expired are swept away."""

    __slots__ = ("_lock", "_next_sweep", "_rings", "_sp")
    __module__ = "tallies._pure"

    def __init__(
        self,
        window: float = 60.0,
        resolution: float = 1.0,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._sp = _Spec("KeyedRateCounter", window, resolution, clock)
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

    @property
    def window(self) -> float:
        return self._sp.window

    @property
    def resolution(self) -> float:
        return self._sp.resolution

    @property
    def buckets(self) -> int:
        return self._sp.nb

    @property
    def clock(self) -> Callable[[], float] | None:
        return self._sp.clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._sp.repr_args()}, keys={len(self._rings)})"
