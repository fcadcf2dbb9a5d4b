"""``memory://``: in-process counters (the core's ``Counter`` and ``KeyedCounter``).

``memory://`` opens a private store; ``memory://NAME`` opens the store called
NAME that everything in this process shares (until ``destroy("memory://NAME")``).
Writes are immediate, so ``flush()`` does nothing; counters keep working after
``close()`` (they are plain in-process objects), the store refuses new calls.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from .base import Snapshot, Store, StoreNotFoundError, StoreURL, check_name

__all__ = ["STORE", "MemoryStore"]


class _Counts:
    """The named counters of one memory store (shared by its handles)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[str, Any] = {}
        self.keyed: dict[str, Any] = {}
        self.rates: dict[str, Any] = {}  # RateCounter / KeyedRateCounter by name
        self.order: list[str] = []


_named: dict[str, _Counts] = {}
_named_lock = threading.Lock()


class MemoryStore(Store):
    """Counters that live in this process (``tallies.Counter`` objects)."""

    scheme: ClassVar[str] = "memory"

    def __init__(self, url: StoreURL, counts: _Counts) -> None:
        super().__init__(url)
        self._counts = counts

    @classmethod
    def open_url(cls, url: StoreURL, *, create: bool = True) -> MemoryStore:
        url.reject_unknown(frozenset())
        if not url.target:
            if not create:
                raise StoreNotFoundError(f"{url.shown!r}: a private memory store never exists yet")
            return cls(url, _Counts())
        name = check_name(url.target, "memory store name")
        with _named_lock:
            counts = _named.get(name)
            if counts is None:
                if not create:
                    raise StoreNotFoundError(f"{url.shown!r}: no memory store called {name!r}")
                counts = _named[name] = _Counts()
        return cls(url, counts)

    @classmethod
    def destroy_url(cls, url: StoreURL) -> bool:
        with _named_lock:
            return _named.pop(url.target, None) is not None

    def _get(self, name: str, keyed: bool) -> Any:
        self._check_open()
        check_name(name)
        c = self._counts
        mine, other = (c.keyed, c.counters) if keyed else (c.counters, c.keyed)
        obj = mine.get(name)
        if obj is not None:
            return obj
        with c.lock:
            obj = mine.get(name)
            if obj is None:
                if name in other or name in c.rates:
                    kind = _kind(c, name)
                    raise ValueError(f"{name!r} is {kind} in this store")
                if keyed:
                    from tallies import KeyedCounter

                    obj = KeyedCounter()
                else:
                    from tallies import Counter

                    obj = Counter()
                mine[name] = obj
                c.order.append(name)
        return obj

    def counter(self, name: str) -> Any:
        """The ``tallies.Counter`` called ``name``."""
        return self._get(name, keyed=False)

    def keyed(self, name: str) -> Any:
        """The ``tallies.KeyedCounter`` called ``name``."""
        return self._get(name, keyed=True)

    def rate(self, name: str, window: float = 60.0, resolution: float = 1.0) -> Any:
        """The ``tallies.RateCounter`` called ``name`` (window and resolution are
        fixed by the first call; a later call must ask for the same or neither)."""
        return self._get_rate(name, False, window, resolution)

    def keyed_rate(self, name: str, window: float = 60.0, resolution: float = 1.0) -> Any:
        """The ``tallies.KeyedRateCounter`` called ``name``."""
        return self._get_rate(name, True, window, resolution)

    def _get_rate(self, name: str, keyed: bool, window: float, resolution: float) -> Any:
        from tallies import KeyedRateCounter, RateCounter

        self._check_open()
        check_name(name)
        cls = KeyedRateCounter if keyed else RateCounter
        c = self._counts
        with c.lock:
            obj = c.rates.get(name)
            if obj is None:
                if name in c.counters or name in c.keyed:
                    raise ValueError(f"{name!r} is {_kind(c, name)} in this store")
                obj = c.rates[name] = cls(window, resolution)
                c.order.append(name)
                return obj
        if not isinstance(obj, cls):
            raise ValueError(f"{name!r} is {_kind(c, name)} in this store")
        probe = cls(window, resolution)  # the same argument checks and messages
        if (probe.window, probe.resolution) != (obj.window, obj.resolution):
            raise ValueError(
                f"{name!r} is a rate with window={obj.window!r}, resolution={obj.resolution!r} "
                f"in this store, not window={probe.window!r}, resolution={probe.resolution!r}"
            )
        return obj

    def names(self) -> list[str]:
        self._check_open()
        with self._counts.lock:
            return list(self._counts.order)

    def snapshot(self) -> Snapshot:
        self._check_open()
        with self._counts.lock:
            counters = dict(self._counts.counters)
            keyed = dict(self._counts.keyed)
            rates = dict(self._counts.rates)
        snap: Snapshot = {
            "counters": {n: int(c.value()) for n, c in counters.items()},
            "keyed": {
                n: {str(k): int(v) for k, v in kc.snapshot().items()} for n, kc in keyed.items()
            },
        }
        if rates:
            from ._rates import snapshot_rates

            snapshot_rates(snap, rates)
        return snap


def _kind(c: _Counts, name: str) -> str:
    if name in c.counters:
        return "a counter"
    if name in c.keyed:
        return "a keyed counter"
    return "a keyed rate" if hasattr(c.rates[name], "most_common") else "a rate"


STORE = MemoryStore
