"""The pure-Python KeyedCore: the same per-key primitives as the C KeyedCounter (``_c/keyed.c``).

Used when the extension is unavailable or ``TALLIES_PURE=1``.  A plain dict
of ints behind one re-entrant lock: every update is exact on every
interpreter, GIL or not; it is just slower.  The lock is re-entrant so that a
key whose ``__eq__`` or ``__hash__`` touches the same counter (which runs
while the lock is held) does not deadlock.  Error messages match the C core.

The class users get over this core (the collections.Counter API of
``tallies.keyed.api`` on top) is ``tallies.keyed.fallback.KeyedCounter``.
"""

from __future__ import annotations

import heapq
import sys
import threading
from collections.abc import Hashable
from operator import itemgetter
from typing import Any, SupportsIndex

from .._common import INT64_MAX, INT64_MIN, to_int64

__all__ = ["FREE_THREADED_BUILD", "KeyedCore"]

FREE_THREADED_BUILD = 0
_MISSING: Any = object()


def _overflow(op: str, n: int, key: object, current: int) -> OverflowError:
    return OverflowError(
        f"{op}({n}) would move the count of {key!r} outside the signed 64-bit range; "
        f"it stays at {current}"
    )


class KeyedCore:
    """The per-key primitives of KeyedCounter over a dict and a lock."""

    __slots__ = ("__weakref__", "_d", "_lock")
    __module__ = "tallies._pure_keyed"  # 0.1.0 pickles name it so
    _own_slots = frozenset({"_d", "_lock"})  # not a subclass's state (pickle, copy)

    _d: dict[Any, int]
    _lock: threading.RLock

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = object.__new__(cls)
        self._d = {}
        self._lock = threading.RLock()
        return self

    def _add(self, key: Hashable, n: int, op: str) -> None:
        with self._lock:
            d = self._d
            old = d.get(key, 0)
            new = old + n
            if not INT64_MIN <= new <= INT64_MAX:
                raise _overflow(op, n if op == "increment" else -n, key, old)
            d[key] = new

    def increment(self, key: Hashable, /, n: SupportsIndex = 1) -> None:
        if type(n) is not int or not INT64_MIN <= n <= INT64_MAX:
            n = to_int64(n, "increment")
        self._add(key, n, "increment")

    def decrement(self, key: Hashable, /, n: SupportsIndex = 1) -> None:
        if type(n) is not int or not INT64_MIN <= n <= INT64_MAX:
            n = to_int64(n, "decrement")
        self._add(key, -n, "decrement")

    def value(self, key: Hashable, /) -> int:
        with self._lock:
            return self._d.get(key, 0)

    def pop(self, key: Hashable, default: Any = _MISSING, /) -> Any:
        with self._lock:
            v = self._d.pop(key, _MISSING)
        if v is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return v

    def discard(self, key: Hashable, /) -> None:
        with self._lock:
            self._d.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def _get(self, key: Hashable, default: Any, /) -> Any:
        with self._lock:
            return self._d.get(key, default)

    def _setdefault(self, key: Hashable, v: SupportsIndex, /) -> int:
        v = to_int64(v, "setdefault")
        with self._lock:
            return self._d.setdefault(key, v)

    def _set(self, key: Hashable, v: SupportsIndex, /) -> None:
        v = to_int64(v, "set")
        with self._lock:
            self._d[key] = v

    def _reset_key(self, key: Hashable, /) -> int:
        with self._lock:
            d = self._d
            old = d.get(key, _MISSING)
            if old is _MISSING:
                return 0
            d[key] = 0
            return int(old)

    def _prune(self, key: Hashable, nonpositive: bool, /) -> bool:
        with self._lock:
            d = self._d
            v = d.get(key, _MISSING)
            if v is _MISSING or not (v == 0 or (nonpositive and v < 0)):
                return False
            del d[key]
            return True

    def _keys(self) -> list[Any]:
        with self._lock:
            return list(self._d)

    def _items(self) -> list[tuple[Any, int]]:
        with self._lock:
            return list(self._d.items())

    def _drain(self) -> list[tuple[Any, int]]:
        with self._lock:
            d = self._d
            items = list(d.items())
            for key, _ in items:
                d[key] = 0
            return items

    def _nonzero(self, take: bool, since: int, /) -> dict[Any, int]:
        with self._lock:
            d = self._d
            items = list(d.items())
            out = {k: v for k, v in items[: max(since, 0)] if v}
            out.update(items[max(since, 0) :])
            if take:
                for key in out:
                    d[key] = 0
            return out

    def _values(self) -> list[int]:
        with self._lock:
            return list(self._d.values())

    def _total(self) -> int:
        return sum(self._values())

    def _most_common(self, n: int | None, /) -> list[tuple[Any, int]]:
        if n is None:
            return sorted(self._items(), key=itemgetter(1), reverse=True)
        return heapq.nlargest(n, self._items(), key=itemgetter(1))

    def _count_iter(self, iterable: Any, sign: int, /) -> None:
        mixin: Any = self  # the KeyedCounterMixin methods of KeyedCounter
        fname = "update" if sign > 0 else "subtract"
        mixin._apply(mixin._pairs(iterable, {}, fname, 1 if sign > 0 else -1))

    def _set_many(self, pairs: Any, /) -> None:
        for key, v in pairs.items() if isinstance(pairs, dict) else pairs:
            self._set(key, v)

    def _iter_keys(self) -> Any:
        return iter(self._keys())

    def _iter_items(self) -> Any:
        return iter(self._items())

    def _iter_values(self) -> Any:
        return iter(self._values())

    def _dict(self) -> dict[Any, int]:
        with self._lock:
            return dict(self._d)

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + sys.getsizeof(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._d
