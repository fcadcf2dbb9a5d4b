"""The pure-Python fallback: the same behaviour as the C core, under a lock.

Used when the extension is unavailable or ``TALLIES_PURE=1``.  Every update
takes the counter's lock, so it is exact on every interpreter (GIL or not);
it is just slower.  Error messages match the C core word for word.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any, SupportsIndex

from .._common import INT64_MAX, INT64_MIN, instance_state, to_int64

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["CPU_SLOTS", "FREE_THREADED_BUILD", "Counter", "ShardedCounter"]

FREE_THREADED_BUILD = 0
CPU_SLOTS = 1


def _overflow(op: str, n: int, current: int) -> OverflowError:
    return OverflowError(
        f"{op}({n}) would move the counter outside the signed 64-bit range; it stays at {current}"
    )


_OWN_SLOTS = frozenset({"_lock", "_value", "_waiting", "_cond"})


def _reduce(obj: object, value: int) -> tuple[Any, ...]:
    """(type, (value,)) plus a subclass instance's state, like the C core."""
    state = instance_state(obj, _OWN_SLOTS)
    if state is not None:
        return (type(obj), (value,), state)
    return (type(obj), (value,))


class _LockedInt:
    """What both counters share: one int, updated under one lock.

    The locked regions make no Python calls on the common path (a call is
    where CPython may switch threads, and a thread switched out while holding
    the lock makes every other thread queue behind it).
    """

    __slots__ = ("__weakref__", "_lock", "_value", "_waiting")
    _kind = "Counter"  # the constructor's name in error messages, as in the C core
    _cond: threading.Condition  # set by Counter, used only while _waiting > 0

    def __init__(self, initial: SupportsIndex = 0) -> None:
        self._value = to_int64(initial, self._kind)
        self._lock = threading.Lock()
        self._waiting = 0  # threads in wait_until(): updates notify only then

    def _overflow(self, op: str, n: int, current: int) -> OverflowError:
        return _overflow(op, n, current)

    def _update(self, n: int, sub: bool, op: str) -> int:
        with self._lock:
            current = self._value
            new = current - n if sub else current + n
            if INT64_MIN <= new <= INT64_MAX:
                self._value = new
                if self._waiting:
                    self._cond.notify_all()
                return new
        raise self._overflow(op, n, current)

    def increment(self, n: SupportsIndex = 1) -> None:
        self._update(to_int64(n, "increment"), False, "increment")

    def decrement(self, n: SupportsIndex = 1) -> None:
        self._update(to_int64(n, "decrement"), True, "decrement")

    def value(self) -> int:
        return self._value

    def reset(self) -> int:
        with self._lock:
            old, self._value = self._value, 0
            if self._waiting:
                self._cond.notify_all()
            return old

    def __iadd__(self, n: SupportsIndex) -> Self:
        self._update(to_int64(n, "+="), False, "+=")
        return self

    def __isub__(self, n: SupportsIndex) -> Self:
        self._update(to_int64(n, "-="), True, "-=")
        return self

    def __int__(self) -> int:
        return self._value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._value})"

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce(self, self._value)


class Counter(_LockedInt):
    """An exact signed 64-bit counter that many threads may update.

    Counters compare and hash by identity, as threading primitives do (a
    shared cell other threads change at any moment); compare values with
    ``a.value() == b.value()``.
    """

    __slots__ = ("_cond",)
    __module__ = "tallies._pure"

    def __init__(self, initial: SupportsIndex = 0) -> None:
        super().__init__(initial)
        self._cond = threading.Condition(self._lock)

    def _changed(self) -> None:
        if self._waiting:
            self._cond.notify_all()

    def add(self, n: SupportsIndex) -> int:
        return self._update(to_int64(n, "add"), False, "add")

    def set(self, v: SupportsIndex) -> None:
        new = to_int64(v, "set")
        with self._lock:
            self._value = new
            self._changed()

    def compare_and_set(self, expected: SupportsIndex, new: SupportsIndex) -> bool:
        e = to_int64(expected, "compare_and_set")
        d = to_int64(new, "compare_and_set")
        with self._lock:
            if self._value != e:
                return False
            self._value = d
            self._changed()
            return True

    def wait_until(self, target: SupportsIndex, timeout: float | None = None) -> bool:
        t = to_int64(target, "wait_until")
        if timeout is not None:
            if not isinstance(timeout, (int, float)) and not hasattr(type(timeout), "__float__"):
                raise TypeError(
                    f"wait_until() timeout must be a number or None, not {type(timeout).__name__!r}"
                )
            try:
                seconds = float(timeout)
            except OverflowError:  # an int too large for a float: forever
                seconds = math.inf
            if not seconds >= 0.0:  # also NaN
                raise ValueError("wait_until() timeout must be a non-negative number")
            timeout = None if seconds > threading.TIMEOUT_MAX else seconds
        with self._cond:
            self._waiting += 1
            try:
                return self._cond.wait_for(lambda: self._value >= t, timeout)
            finally:
                self._waiting -= 1


class ShardedCounter(_LockedInt):
    """The striped counter's API over one locked int (striping needs the C core).

    Counters compare and hash by identity, as threading primitives do; compare
    values with ``a.value() == b.value()``.
    """

    __slots__ = ()
    __module__ = "tallies._pure"
    _kind = "ShardedCounter"

    @property
    def inflated(self) -> bool:
        return False

    def _overflow(self, op: str, n: int, current: int) -> OverflowError:
        return OverflowError(
            f"{op}({n}) would move a stripe of the counter outside the "
            "signed 64-bit range; nothing was changed"
        )
