"""Limiters: ``store.limiter(name, limit, per)``, on every store.

The promise
===========
A limiter never admits more than ``limit`` units in any interval of ``per``
seconds, across every thread, process and machine that shares the store,
and refuses as little as that allows at its granularity.  Precisely:

* Time is cut into slots of ``resolution`` seconds (default ``per / 60``,
  never finer than the store's own resolution); a hit is counted in the slot
  it was admitted in.  With ``B = ceil(per / resolution)``, ``hit(key, n)``
  admits iff the units counted in the current slot and the ``B`` slots
  before it, plus ``n``, stay within ``limit``.  Any interval of ``per``
  seconds lies inside ``B + 1`` consecutive slots, so it never holds more
  than ``limit`` admitted units.  A unit stops counting between ``per`` and
  ``per + resolution`` seconds after its hit: that much is refused beyond an
  exact moving window, and nothing else.
* ``hit(key=None, n=1) -> bool`` admits and counts ``n``, or refuses and
  counts nothing; ``test`` says what ``hit`` would answer now, counting
  nothing; ``remaining(key)`` is how many units would be admitted now;
  ``reset_after(key)`` the seconds until the oldest counted unit stops
  counting (0.0 when none counts); ``reset(key)`` forgets a key's units.
* A key's slots expire with its window: per-user and per-IP limiters do not
  grow without bound.

How each store decides
======================
``memory://`` and ``shm://``: the decision is local and atomic: one
admission window per key (``memory://``: this process; ``shm://``: one
shared cell per key in the segment that every process on the machine maps,
not one per process, since a sum of per-process parts cannot be checked
and added atomically).  Slots follow the machine's monotonic clock.

Write-behind stores (``sqlite://``, ``redis://``, ``postgresql://``, any
later one): leases.  A writer asks the backend, in one atomic call (a Lua
script on Redis: one round trip; a ``BEGIN IMMEDIATE`` transaction on
SQLite; on PostgreSQL a short transaction under an advisory lock on the
limiter's key; the two SQL stores share :func:`acquire`), to reserve units in
the backend's current slot: the backend grants them only while the window
stays within ``limit`` (at most half of what is left, so that writers share
what remains; the grant grows, doubling, while a writer uses its leases up),
and counts them as used at once.  The writer then admits hits from its lease
locally, with no I/O, until the lease is spent or its slot ends; the next
call gives the unused rest back in the same call.  Slots follow the
*backend's* clock (Redis ``TIME``; on SQLite the machine's wall clock, which
every process on that machine shares; PostgreSQL's ``clock_timestamp()``),
and a lease ends locally before its slot ends by the backend's clock (its
deadline is measured from the moment the request was sent), so writers'
clock skew does not matter.

A writer that dies holding a lease keeps its unused units counted until
their slot leaves the window: at most ``per + resolution`` seconds during
which up to that lease's size is refused that could have been admitted.  A
call whose reply is lost is treated the same way (its units, if it reserved
any, stay counted; nothing is retried that could count twice).  So faults
cost refusals, never over-admission.  A Redis that loses writes (a restart
without ``appendfsync always``, a failover to a replica that lagged) forgets
what it lost, as it would for any limiter kept in Redis.
"""

from __future__ import annotations

import math
import operator
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .._common import INT64_MAX
from ._protocol import Grant, LimitSpec
from .base import StoreError, check_key, close_once, counter_name

__all__ = [
    "MAX_BUCKETS",
    "FixedWindows",
    "LeaseLimiter",
    "LimitBackend",
    "LocalLimiter",
    "PyLeaseLimiter",
    "check_hits",
    "limit_spec",
    "limiter_key",
    "make_local",
]

MAX_BUCKETS = 1000
"""The most slots a limiter's window may have (``per / resolution``)."""
MAX_WANT = 4096
"""The largest lease a writer asks for."""
NS = 1_000_000_000


def _seconds(obj: object, what: str) -> float:
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        if obj is not None and hasattr(type(obj), "__float__") and not isinstance(obj, str):
            obj = float(obj)  # type: ignore[arg-type]
        else:
            raise TypeError(
                f"limiter() {what} must be a number of seconds, not {type(obj).__name__!r}"
            )
    v = float(obj)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"limiter() {what} must be a finite number of seconds > 0, not {obj!r}")
    return v


def _integer(value: object, what: str) -> int:
    """``value`` as an int: anything without ``__index__``, and a bool, is a
    TypeError "``what`` must be an integer"."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{what} must be an integer, not {type(value).__name__!r}")
    return operator.index(value)  # type: ignore[arg-type]


def limit_spec(
    name: object, limit: object, per: object, resolution: object, min_res_ns: int, where: str
) -> LimitSpec:
    """Validate ``store.limiter()``'s arguments (nothing is created before)."""
    name = counter_name(name)
    lim = _integer(limit, "limiter() limit")
    if lim <= 0:
        raise ValueError(f"limiter() limit must be > 0, not {lim}")
    if lim > INT64_MAX:
        raise OverflowError(f"limiter() limit {lim} is above the signed 64-bit range")
    per_s = _seconds(per, "per")
    if per_s > 1e9:
        raise ValueError(f"limiter() per must be at most 1e9 seconds, not {per!r}")
    per_ns = round(per_s * NS)
    min_s = min_res_ns / NS
    if per_ns < min_res_ns:
        raise ValueError(f"limiter() per={per!r} is finer than {where}'s resolution ({min_s:g} s)")
    if resolution is None:
        res_ns = max(min_res_ns, -(-per_ns // 60))
    else:
        res_s = _seconds(resolution, "resolution")
        res_ns = round(res_s * NS)
        if res_ns < min_res_ns:
            raise ValueError(
                f"limiter() resolution={resolution!r} is finer than {where}'s resolution "
                f"({min_s:g} s)"
            )
        if res_ns > per_ns:
            raise ValueError(f"limiter() resolution={resolution!r} is longer than per={per!r}")
    res_ns = -(-res_ns // 1000) * 1000  # whole microseconds (what Redis' TIME gives)
    buckets = -(-per_ns // res_ns)
    if buckets > MAX_BUCKETS:
        raise ValueError(
            f"limiter() per / resolution is {buckets} slots; the most is {MAX_BUCKETS} "
            "(choose a coarser resolution)"
        )
    return LimitSpec(name, lim, per_ns, res_ns, buckets)


def check_hits(n: object, fname: str = "hit") -> int:
    """``n`` of hit()/test(): an int >= 1 (a bool is refused)."""
    v = _integer(n, f"{fname}() n")
    if v <= 0:
        raise ValueError(f"{fname}() n must be >= 1, not {v}")
    if v > INT64_MAX:
        raise OverflowError(f"{fname}() n={v} is above the signed 64-bit range")
    return v


def limiter_key(key: object) -> str:
    """None (the limiter's one global key, stored as "") or a key by the
    rule every store shares (``base.check_key``)."""
    if key is None:
        return ""
    return check_key(key)


class _Spec:
    """The public attributes every limiter has."""

    spec: LimitSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def limit(self) -> int:
        return self.spec.limit

    @property
    def per(self) -> float:
        return self.spec.per_ns / NS

    @property
    def resolution(self) -> float:
        return self.spec.res_ns / NS

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, limit={self.limit}, per={self.per!r}, "
            f"resolution={self.resolution!r})"
        )


# ---- in one process: the exact window ------------------------------------------


class _Window:
    """One key's slots: ``counts[slot % (B + 1)]`` for slots ``latest - B .. latest``."""

    __slots__ = ("counts", "latest", "total")

    def __init__(self, size: int, slot: int) -> None:
        self.counts = [0] * size
        self.latest = slot
        self.total = 0


class LocalLimiter(_Spec):
    """The exact limiter of one process (``memory://``): a window per key,
    decided under one lock.  ``clock`` returns nanoseconds (monotonic; an
    attribute so that tests can drive it)."""

    def __init__(self, spec: LimitSpec) -> None:
        self.spec = spec
        self._size = spec.buckets + 1
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._next_sweep = 0
        self.clock: Callable[[], int] = time.monotonic_ns

    def _advance(self, key: str, create: bool) -> tuple[_Window | None, int]:
        """The key's window moved to now (caller holds the lock)."""
        s = self.clock() // self.spec.res_ns
        if s >= self._next_sweep:
            self._sweep(s)
        w = self._windows.get(key)
        if w is None:
            if create:
                w = self._windows[key] = _Window(self._size, s)
            return w, s
        gap = s - w.latest
        if gap > 0:
            size = self._size
            counts = w.counts
            if gap >= size:
                for i in range(size):
                    counts[i] = 0
                w.total = 0
            else:
                for j in range(w.latest + 1, s + 1):
                    i = j % size
                    w.total -= counts[i]
                    counts[i] = 0
            w.latest = s
        return w, s

    def _sweep(self, s: int) -> None:
        """Forget keys whose every slot left the window."""
        oldest = s - self.spec.buckets
        dead = [k for k, w in self._windows.items() if w.latest < oldest]
        for k in dead:
            del self._windows[k]
        self._next_sweep = s + self._size

    def hit(self, key: str | None = None, n: int = 1) -> bool:
        """Admit and count ``n`` units for ``key``, or refuse and count nothing."""
        k = limiter_key(key)
        v = check_hits(n)
        with self._lock:
            if v > self.spec.limit:
                return False
            w, s = self._advance(k, True)
            assert w is not None
            if w.total + v > self.spec.limit:
                return False
            w.counts[s % self._size] += v
            w.total += v
            return True

    def test(self, key: str | None = None, n: int = 1) -> bool:
        """Whether ``hit(key, n)`` would admit now (counts nothing)."""
        k = limiter_key(key)
        v = check_hits(n, "test")
        return self._remaining(k) >= v

    def remaining(self, key: str | None = None) -> int:
        """How many units would be admitted now."""
        return self._remaining(limiter_key(key))

    def _remaining(self, k: str) -> int:
        with self._lock:
            w, _ = self._advance(k, False)
            return self.spec.limit - (w.total if w is not None else 0)

    def reset_after(self, key: str | None = None) -> float:
        """Seconds until the oldest counted unit stops counting (0.0: none counts)."""
        k = limiter_key(key)
        with self._lock:
            w, s = self._advance(k, False)
            now = self.clock()
            if w is None or w.total == 0:
                return 0.0
            size = self._size
            for j in range(s - self.spec.buckets, s + 1):
                if w.counts[j % size]:
                    return max(0.0, ((j + size) * self.spec.res_ns - now) / NS)
            return 0.0  # pragma: no cover - total > 0 means a slot holds units

    def reset(self, key: str | None = None) -> int:
        """Forget ``key``'s counted units; return how many there were."""
        k = limiter_key(key)
        with self._lock:
            w, _ = self._advance(k, False)
            self._windows.pop(k, None)
            return w.total if w is not None else 0

    def __len__(self) -> int:
        """Keys with units in the window."""
        with self._lock:
            s = self.clock() // self.spec.res_ns
            self._sweep(s)
            return len(self._windows)


# ---- fixed windows (limits' FixedWindowRateLimiter) -----------------------------


class FixedWindows:
    """Windows that start at their first hit and last ``expiry`` seconds: the
    ``incr``/``get``/``get_expiry`` semantics of the ``limits`` package, in
    one process.  Times are wall-clock seconds (what ``limits`` reports)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cells: dict[str, list[float]] = {}  # key -> [count, expires_at]
        self.clock: Callable[[], float] = time.time

    def incr(self, key: str, expiry: float, amount: int) -> tuple[int, float]:
        k = limiter_key(key)
        with self._lock:
            now = self.clock()
            c = self._cells.get(k)
            if c is None or c[1] <= now:
                self._expire(now)
                c = self._cells[k] = [0, now + expiry]
            c[0] += amount
            return int(c[0]), c[1]

    def get(self, key: str) -> tuple[int, float]:
        k = limiter_key(key)
        with self._lock:
            now = self.clock()
            c = self._cells.get(k)
            if c is None or c[1] <= now:
                return 0, now
            return int(c[0]), c[1]

    def clear(self, key: str) -> None:
        with self._lock:
            self._cells.pop(limiter_key(key), None)

    def _expire(self, now: float) -> None:
        if len(self._cells) > 64:
            for k in [k for k, c in self._cells.items() if c[1] <= now]:
                del self._cells[k]


# ---- write-behind stores: leases --------------------------------------------------


class LimitBackend(Protocol):
    """What a write-behind backend implements for limiters (each call atomic
    on the backend; see the module docstring)."""

    def register_limiter(self, spec: LimitSpec) -> LimitSpec:
        """Record ``spec`` under its name unless one is recorded; return the
        recorded one."""

    def limit_acquire(
        self, spec: LimitSpec, key: str, need: int, want: int, give_back: tuple[int, int] | None
    ) -> Grant:
        """Atomically: give back ``give_back = (slot, units)`` (units of an
        earlier grant in that slot that were not used); then, with ``used``
        the units in slots ``now - buckets ..`` (later slots included), grant
        ``g`` units in the current slot, ``g = 0`` if ``used + need >
        limit``, else ``min(want, max(need, (limit - used) // 2))``."""

    def limit_read(self, spec: LimitSpec, key: str) -> Grant:
        """The window now (``granted`` 0)."""

    def limit_reset(self, spec: LimitSpec, key: str) -> int:
        """Forget ``key``'s units; return how many there were."""

    def window_incr(self, name: str, key: str, expiry_ms: int, amount: int) -> tuple[int, float]:
        """A fixed window (see :class:`FixedWindows`): add ``amount``; return
        (count, expires at, Unix seconds)."""

    def window_get(self, name: str, key: str) -> tuple[int, float]:
        """(count, expires at), (0, now) when none."""

    def window_clear(self, name: str, key: str) -> None:
        """Forget a fixed window."""


@dataclass(frozen=True)
class SlotSQL:
    """A backend's statements on its table of limiter slots (positional
    parameters, SQLite's ``?`` or psycopg's ``%s``)."""

    give_back: str  # (units, name, key, slot): subtract, not below 0
    prune: str  # (name, key, lo): delete the slots before lo
    window: str  # (name, key, lo) -> (units in slots lo.., oldest slot holding units)
    add: str  # (name, key, slot, units, expires_ns): add, creating the slot


class SqlSlots:
    """One key's slots, in the caller's transaction (SQLite and PostgreSQL)."""

    def __init__(self, conn: Any, sql: SlotSQL, name: str, key: str) -> None:
        self.conn, self.sql, self.name, self.key = conn, sql, name, key

    def give_back(self, slot: int, units: int) -> None:
        self.conn.execute(self.sql.give_back, (units, self.name, self.key, slot))

    def prune(self, lo: int) -> None:
        self.conn.execute(self.sql.prune, (self.name, self.key, lo))

    def window(self, lo: int) -> tuple[int, int | None]:
        row = self.conn.execute(self.sql.window, (self.name, self.key, lo)).fetchone()
        return int(row[0]), (int(row[1]) if row[1] is not None else None)

    def add(self, slot: int, units: int, expires_ns: int) -> None:
        self.conn.execute(self.sql.add, (self.name, self.key, slot, units, expires_ns))


def acquire(
    spec: LimitSpec,
    now_ns: int,
    need: int,
    want: int,
    give_back: tuple[int, int] | None,
    table: SqlSlots,
) -> Grant:
    """:meth:`LimitBackend.limit_acquire` over a table of slots, the caller
    holding the key's lock (an SQLite write transaction, a PostgreSQL
    advisory lock) and ``now_ns`` read from the backend's clock."""
    s = now_ns // spec.res_ns
    lo = s - spec.buckets
    if give_back is not None and give_back[0] >= lo and give_back[1] > 0:
        table.give_back(*give_back)
    table.prune(lo)
    used, oldest = table.window(lo)
    g = 0
    if need > 0 and used + need <= spec.limit:
        g = min(max(want, need), max(need, (spec.limit - used) // 2))
        table.add(s, g, (s + spec.buckets + 1) * spec.res_ns)
        used += g
        oldest = s if oldest is None else min(oldest, s)
    return Grant(g, used, s, now_ns, oldest)


class _LeaseMethods(_Spec):
    """A write-behind store's limiter: local decisions from leases (see the
    module docstring).  Written once, for the C type (``LeaseLimiter`` of
    the extension, whose ``hit`` decides from a lease in C and calls
    ``_hit_slow`` for anything else) and for :class:`PyLeaseLimiter` (the
    pure fallback).  Both keep the leases behind ``_take`` / ``_swap`` /
    ``_set`` / ``_peek`` / ``_pop`` / ``_entries``: one atomic step each.
    ``backend`` is a callable returning the store's current backend."""

    _take: Callable[[str, int], bool]
    _swap: Callable[[str], tuple[int, int, int, int]]
    _set: Callable[[str, int, int, int, int], None]
    _peek: Callable[[str], tuple[int, int, int]]
    _pop: Callable[[str], None]
    _entries: Callable[[], list[tuple[str, int, int, int]]]
    _now: Callable[[], int]

    def __init__(self, spec: LimitSpec, backend: Callable[[], Any], shown: str) -> None:
        self.spec = spec
        self._backend = backend
        self._shown = shown
        self._io = threading.Lock()  # one backend call at a time
        self._swept = 0
        self._closed = False
        # tests: called with (sent, None, key, need, want, give_back, None) before
        # every backend acquire, and with (sent, replied, ..., grant or the
        # exception) after it (wall-clock seconds)
        self.trace: Callable[..., None] | None = None
        _lease_limiters.add(self)

    def _unavailable(self, what: str, exc: BaseException) -> StoreError:
        if isinstance(exc, StoreError):
            return exc
        from .base import StoreUnavailableError

        err = StoreUnavailableError(f"{self._shown}: limiter {self.name!r}: {what}: {exc}")
        err.__cause__ = exc
        return err

    def _hit_slow(self, key: str | None = None, n: int = 1) -> bool:
        """hit() when no lease covers it: check the arguments, then ask the
        store.  Raises StoreUnavailableError when the store cannot be
        reached (nothing counted; a lost reply may have reserved units,
        which then cost refusals, never over-admission)."""
        k = limiter_key(key)
        v = check_hits(n)
        if self._take(k, v):
            return True
        if v > self.spec.limit:
            return False
        return self._acquire(k, v)

    def _acquire(self, k: str, v: int) -> bool:
        with self._io:
            if self._closed:
                raise ValueError(f"limiter {self.name!r}: its store {self._shown!r} is closed")
            if self._take(k, v):  # another thread brought a lease meanwhile
                return True
            slot, left, deadline, want = self._swap(k)
            # from here the old lease is given back (or lost with the reply)
            give = (slot, left) if left > 0 else None
            if self._now() < deadline:  # spent within its slot: ask for more
                want = min(MAX_WANT, want * 2)
            elif left > 0:  # its slot ended with units left: ask for less
                want = max(1, want // 2)
            sent = self._now()
            sent_wall = time.time()
            if self.trace is not None:
                self.trace(sent_wall, None, k, v, max(v, want), give, None)
            try:
                g: Grant = self._backend().limit_acquire(self.spec, k, v, max(v, want), give)
            except Exception as exc:
                if self.trace is not None:
                    self.trace(sent_wall, time.time(), k, v, max(v, want), give, exc)
                raise self._unavailable("hit", exc) from exc
            if self.trace is not None:
                self.trace(sent_wall, time.time(), k, v, max(v, want), give, g)
            if g.granted < v:
                self._pop(k)
                return False
            deadline = sent + (g.slot + 1) * self.spec.res_ns - g.now_ns
            self._set(k, g.slot, g.granted - v, deadline, want)
            entries = self._entries()
            if len(entries) > self._swept + 256:
                self._sweep(entries, g.slot)
            return True

    def _sweep(self, entries: list[tuple[str, int, int, int]], slot: int) -> None:
        """Drop ended leases whose units no longer count (keys come and go,
        per user, per IP: the table must not grow)."""
        now = self._now()
        oldest = slot - self.spec.buckets
        for k, lslot, left, deadline in entries:
            if k and now >= deadline and (left == 0 or lslot < oldest):
                self._pop(k)
        self._swept = len(self._entries())

    def _read(self, k: str) -> tuple[Grant, int]:
        """The backend's window and this writer's unused lease units in it."""
        with self._io:
            try:
                g: Grant = self._backend().limit_read(self.spec, k)
            except Exception as exc:
                raise self._unavailable("read", exc) from exc
            _, left, deadline = self._peek(k)
            return g, left if self._now() < deadline else 0

    def test(self, key: str | None = None, n: int = 1) -> bool:
        """Whether ``hit(key, n)`` would admit now (counts nothing)."""
        k = limiter_key(key)
        v = check_hits(n, "test")
        _, left, deadline = self._peek(k)
        if left >= v and self._now() < deadline:
            return True
        if v > self.spec.limit:
            return False
        return self._remaining(k) >= v

    def remaining(self, key: str | None = None) -> int:
        """How many units would be admitted now: what the window has left,
        plus this writer's unused lease (others' unused leases are counted
        as used until they are given back)."""
        return self._remaining(limiter_key(key))

    def _remaining(self, k: str) -> int:
        g, mine = self._read(k)
        return max(0, min(self.spec.limit, self.spec.limit - g.used + mine))

    def reset_after(self, key: str | None = None) -> float:
        """Seconds until the oldest counted unit stops counting (0.0: none counts)."""
        g, _ = self._read(limiter_key(key))
        if g.oldest is None or g.used == 0:
            return 0.0
        end = (g.oldest + self.spec.buckets + 1) * self.spec.res_ns
        return max(0.0, (end - g.now_ns) / NS)

    def reset(self, key: str | None = None) -> int:
        """Forget ``key``'s counted units (every writer's); return how many."""
        k = limiter_key(key)
        with self._io:
            self._swap(k)
            self._pop(k)
            try:
                return int(self._backend().limit_reset(self.spec, k))
            except Exception as exc:
                raise self._unavailable("reset", exc) from exc

    def give_back(self) -> None:
        """Give every unused lease back (close(), best effort: never retried)."""
        with self._io:
            taken = []
            for k, _, _, _ in self._entries():
                slot, left, _, _ = self._swap(k)
                self._pop(k)
                if left:
                    taken.append((k, slot, left))
            for k, slot, left in taken:
                try:
                    self._backend().limit_acquire(self.spec, k, 0, 0, (slot, left))
                except Exception:  # the units stay counted: refusals only
                    return

    def close(self) -> None:
        """Give the leases back; hit() raises ValueError from then on."""
        close_once(self, self.give_back)

    def _after_fork_in_child(self) -> None:
        # The parent's leases are the parent's: using them here would admit
        # their units twice.
        self._io = threading.Lock()
        for k, _, _, _ in self._entries():
            self._swap(k)
            self._pop(k)


class PyLeaseLimiter(_LeaseMethods):
    """The pure-Python LeaseLimiter (the C one decides hits from a lease in
    C): the leases in a dict under a lock."""

    def __init__(self, spec: LimitSpec, backend: Callable[[], Any], shown: str) -> None:
        self._state = threading.Lock()
        self._leases: dict[str, list[int]] = {}  # key -> [slot, left, deadline, want]
        super().__init__(spec, backend, shown)

    def hit(self, key: str | None = None, n: int = 1) -> bool:
        """Admit and count ``n`` units for ``key``, or refuse and count nothing."""
        return self._hit_slow(key, n)

    _now = staticmethod(time.monotonic_ns)

    def _take(self, k: str, v: int) -> bool:
        with self._state:
            lz = self._leases.get(k)
            if lz is not None and lz[1] >= v and time.monotonic_ns() < lz[2]:
                lz[1] -= v
                return True
            return False

    def _swap(self, k: str) -> tuple[int, int, int, int]:
        with self._state:
            lz = self._leases.get(k)
            if lz is None:
                return 0, 0, 0, 1
            out = (lz[0], lz[1], lz[2], lz[3])
            lz[1] = lz[2] = 0
            return out

    def _set(self, k: str, slot: int, left: int, deadline: int, want: int) -> None:
        with self._state:
            self._leases[k] = [slot, left, deadline, want]

    def _peek(self, k: str) -> tuple[int, int, int]:
        with self._state:
            lz = self._leases.get(k, [0, 0, 0, 1])
            return lz[0], lz[1], lz[2]

    def _pop(self, k: str) -> None:
        with self._state:
            self._leases.pop(k, None)

    def _entries(self) -> list[tuple[str, int, int, int]]:
        with self._state:
            return [(k, lz[0], lz[1], lz[2]) for k, lz in self._leases.items()]

    def _after_fork_in_child(self) -> None:
        self._state = threading.Lock()
        super()._after_fork_in_child()


_lease_limiters: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for lim in list(_lease_limiters):
        lim._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---- C or pure ---------------------------------------------------------------------


def _native() -> Any:
    """The extension when the C core is in use, else None."""
    try:
        from .._impl import IMPLEMENTATION, native  # type: ignore[import-not-found, unused-ignore]
    except ImportError:  # a tallies without the one extension: pure paths
        return None
    return native if IMPLEMENTATION == "c" and native is not None else None


def _window_test(self: Any, key: str | None = None, n: int = 1) -> bool:
    """Whether ``hit(key, n)`` would admit now (counts nothing)."""
    limiter_key(key)
    v = check_hits(n, "test")
    return bool(self.spec.limit - self._window(key)[0] >= v)


def _window_remaining(self: Any, key: str | None = None) -> int:
    """How many units would be admitted now."""
    limiter_key(key)
    return int(self.spec.limit - self._window(key)[0])


def _window_reset_after(self: Any, key: str | None = None) -> float:
    """Seconds until the oldest counted unit stops counting (0.0: none counts)."""
    limiter_key(key)
    total, oldest, now = self._window(key)
    if not total or oldest is None:
        return 0.0
    end: int = (oldest + self.spec.buckets + 1) * self.spec.res_ns
    return max(0.0, float(end - now) / NS)


def _window_reset(self: Any, key: str | None = None) -> int:
    """Forget ``key``'s counted units; return how many there were."""
    limiter_key(key)
    return int(self._reset(key))


def _install() -> tuple[Any, Any, Any]:
    """The C types with their Python methods (None without the extension)."""
    native = _native()
    if native is None:
        return None, None, None
    spec_props = {a: _Spec.__dict__[a] for a in ("name", "limit", "per", "resolution")}
    for t in (native.Limiter, native.ShmLimiter):
        for attr, value in spec_props.items():
            setattr(t, attr, value)
        t.__repr__ = _Spec.__repr__
        t.test = _window_test
        t.remaining = _window_remaining
        t.reset_after = _window_reset_after
        t.reset = _window_reset
    native.Limiter.__len__ = lambda self: self._len()
    lease = native.LeaseLimiter
    for attr, value in _LeaseMethods.__dict__.items():
        if not attr.startswith("__") or attr in ("__init__", "__repr__"):
            setattr(lease, attr, value)
    for attr, value in _Spec.__dict__.items():
        if attr in spec_props or attr == "__repr__":
            setattr(lease, attr, value)
    return native.Limiter, native.ShmLimiter, lease


CLimiter, ShmLimiter, CLeaseLimiter = _install()


def make_local(spec: LimitSpec) -> Any:
    """memory://'s limiter: the C one when the extension is used."""
    if CLimiter is not None:
        return CLimiter(spec, check_key)
    return LocalLimiter(spec)


def LeaseLimiter(spec: LimitSpec, backend: Callable[[], Any], shown: str) -> Any:
    """A write-behind store's limiter: the C one when the extension is used."""
    cls = CLeaseLimiter if CLeaseLimiter is not None else PyLeaseLimiter
    return cls(spec, backend, shown)


class BackendWindows:
    """:class:`FixedWindows` kept by a write-behind store's backend (one
    atomic call each: Redis ``INCRBY`` + ``PEXPIRE`` in a script, an SQLite
    transaction)."""

    def __init__(self, backend: Callable[[], Any], name: str, shown: str) -> None:
        self._backend = backend
        self._name = name
        self._shown = shown

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        try:
            return fn(self._backend())
        except StoreError:
            raise
        except Exception as exc:
            from .base import StoreUnavailableError

            raise StoreUnavailableError(f"{self._shown}: window {what}: {exc}") from exc

    def incr(self, key: str, expiry: float, amount: int) -> tuple[int, float]:
        k = limiter_key(key)
        ms = max(1, math.ceil(expiry * 1000))
        out: tuple[int, float] = self._call(
            "incr", lambda be: be.window_incr(self._name, k, ms, amount)
        )
        return out

    def get(self, key: str) -> tuple[int, float]:
        k = limiter_key(key)
        out: tuple[int, float] = self._call("get", lambda be: be.window_get(self._name, k))
        return out

    def clear(self, key: str) -> None:
        k = limiter_key(key)
        self._call("clear", lambda be: be.window_clear(self._name, k))
