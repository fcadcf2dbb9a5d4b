"""The keyed-counter API every store shares, written once over a few primitives.

``shm://``, ``sqlite://`` and ``redis://`` keyed counters provide
``increment(key, n)``, ``decrement(key, n)``, ``value(key)``, ``snapshot()``
(a ``collections.Counter`` of every listed key, keys at 0 included) and
``reset``; :class:`StoreKeyedMixin` builds the rest of the shared subset of
``collections.Counter``'s API on them (docs/contract.md lists it).
``memory://`` keyed counters are ``tallies.KeyedCounter`` objects, which have
all of it and more.

``kc[key] += n`` works as on ``KeyedCounter``: ``kc[key]`` is a ``Count``
(an int that remembers where it was read), and assigning ``Count + n`` back
applies ``n`` as one increment, so concurrent updates by other threads and
processes survive.  A plain assignment ``kc[key] = v`` is refused (TypeError):
making a count equal to ``v`` cannot be atomic with the other processes'
pending deltas.  Keys are never removed (no ``del``, ``pop``, ``clear``):
``reset`` zeroes them.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, SupportsIndex

from .._common import INT64_MAX, INT64_MIN, to_int64
from ..keyed.api import Count, _make_count
from .base import check_key

__all__ = ["StoreKeyedMixin"]


class StoreKeyedMixin:
    """The shared keyed-counter API over ``increment``, ``decrement``,
    ``value``, ``snapshot`` (see the module docstring)."""

    __slots__ = ()

    if TYPE_CHECKING:  # what the class provides (a C base may: no Python stubs here)

        def increment(self, key: str, n: SupportsIndex = 1) -> None: ...
        def decrement(self, key: str, n: SupportsIndex = 1) -> None: ...
        def value(self, key: str) -> int: ...
        def snapshot(self) -> collections.Counter[str]: ...

    # ---- reading ------------------------------------------------------------------

    def __getitem__(self, key: str) -> int:
        """The count of ``key`` (0 if never counted) as a ``Count``."""
        return _make_count(self, key, self.value(key))  # type: ignore[no-any-return]

    def get(self, key: object, default: Any = None) -> Any:
        """The count of ``key``, or ``default`` when it is not listed."""
        return self.snapshot().get(key, default)  # type: ignore[call-overload]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.snapshot()

    def keys(self) -> list[str]:
        """Every listed key (keys at 0 included)."""
        return list(self.snapshot())

    def values(self) -> list[int]:
        return list(self.snapshot().values())

    def items(self) -> list[tuple[str, int]]:
        return list(self.snapshot().items())

    def most_common(self, n: int | None = None) -> list[tuple[str, int]]:
        """The ``n`` most common keys and counts (all when None), most common first."""
        return self.snapshot().most_common(n)

    def total(self) -> int:
        """The sum of the counts."""
        return sum(self.snapshot().values())

    def __len__(self) -> int:
        return len(self.snapshot())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    # ---- writing ------------------------------------------------------------------

    def __setitem__(self, key: str, value: SupportsIndex) -> None:
        """``kc[key] += n`` / ``kc[key] -= n``: ``n`` applied as one increment."""
        tag = getattr(value, "_tag", None) if type(value) is Count else None
        if tag is not None:
            counter, read_key, read = tag
            if counter is self and (read_key is key or read_key == key):
                delta = int(value) - read
                if delta == 2**63:  # kc[key] -= INT64_MIN
                    self.decrement(key, INT64_MIN)
                else:
                    self.increment(key, delta)
                return
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            # kc[key] += n past the int64 edge (a sum outside int64 is a plain int)
            raise OverflowError(f"{value!r} is outside the signed 64-bit range")
        raise TypeError(
            f"{type(self).__name__} takes no plain assignment (kc[key] = v): setting a "
            "count cannot be atomic with other processes' updates; use kc[key] += n, "
            "increment(key, n) or reset(key)"
        )

    def update(self, iterable: Any = None, /, **kwds: SupportsIndex) -> None:
        """Add counts: from a mapping (key -> amount), from an iterable of
        keys (one each), and from keyword arguments.  Every key and amount is
        checked before the first is added, and an add that fails (a count
        leaving int64) takes back the ones before it: all or nothing, though
        not one atomic step for other processes."""
        self._add_all(iterable, kwds, 1, "update")

    def subtract(self, iterable: Any = None, /, **kwds: SupportsIndex) -> None:
        """Subtract counts, the same forms as :meth:`update`."""
        self._add_all(iterable, kwds, -1, "subtract")

    def _add_all(
        self, iterable: Any, kwds: Mapping[str, SupportsIndex], sign: int, fname: str
    ) -> None:
        pairs: list[tuple[str, int]] = []
        if iterable is not None:
            if isinstance(iterable, Mapping) or hasattr(iterable, "items"):
                items: Iterable[tuple[Any, Any]] = iterable.items()
                for k, v in items:
                    pairs.append((check_key(k), to_int64(v, fname)))
            else:
                for k in iterable:
                    pairs.append((check_key(k), 1))
        for k, v in kwds.items():
            pairs.append((check_key(k), to_int64(v, fname)))
        totals: dict[str, int] = {}
        for k, v in pairs:
            totals[k] = totals.get(k, 0) + v
        for v in totals.values():
            to_int64(v, fname)  # the amounts of one key together (before any add)
        done: list[tuple[str, int]] = []
        try:
            for k, v in totals.items():
                if sign > 0:
                    self.increment(k, v)
                else:
                    self.decrement(k, v)
                done.append((k, v))
        except BaseException:
            for k, v in reversed(done):
                if sign > 0:
                    self.decrement(k, v)
                else:
                    self.increment(k, v)
            raise
