"""``memory://``: in-process counters (the core's ``Counter`` and ``KeyedCounter``).

``memory://`` opens a private store; ``memory://NAME`` opens the store called
NAME that everything in this process shares (until ``destroy("memory://NAME")``).
Writes are immediate, so ``flush()`` does nothing; counters keep working after
``close()`` (they are plain in-process objects), the store refuses new calls.

A keyed counter here is a :class:`MemoryKeyedCounter`: a ``tallies.KeyedCounter``
(the whole ``collections.Counter`` API) that takes the keys every store takes
(``base.check_key``: str, 1 to 1024 UTF-8 bytes, no NUL), so that a program
moves between stores unchanged and a snapshot never merges two keys (404 and
"404") into one.  The check is a Python method in front of the C increment:
an update of a key already there costs a Python call and a lookup more than
``tallies.KeyedCounter``'s (which takes any hashable key at C speed): 2.2 to
3.1x its time in three runs here (2026-12-06, the busy 2-vCPU machine), as a
``sqlite://`` keyed counter's update costs.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar, SupportsIndex

from ..counter import Counter
from ..keyed import KeyedCounter
from ..rates import KeyedRateCounter, RateCounter
from .base import (
    Snapshot,
    Store,
    StoreNotFoundError,
    StoreURL,
    check_key,
    check_name,
    counter_name,
    rate_mismatch,
)

__all__ = ["STORE", "MemoryKeyedCounter", "MemoryStore"]


class MemoryKeyedCounter(KeyedCounter):
    """``memory://``'s keyed counter: a ``tallies.KeyedCounter`` whose keys are
    checked by the rule every store shares (every way a key gets in).  The
    results of ``+``, ``-``, ``|``, ``&`` and ``copy()`` are plain
    ``KeyedCounter`` objects."""

    __slots__ = ()

    # A key already in the counter passed the check on its way in (every way
    # in checks), so a plain str found there needs no second check.
    def increment(self, key: Hashable, /, n: SupportsIndex = 1) -> None:
        if type(key) is not str or key not in self:
            key = check_key(key)
        KeyedCounter.increment(self, key, n)

    def decrement(self, key: Hashable, /, n: SupportsIndex = 1) -> None:
        if type(key) is not str or key not in self:
            key = check_key(key)
        KeyedCounter.decrement(self, key, n)

    def value(self, key: Hashable, /) -> int:
        v: int = KeyedCounter.value(self, check_key(key))
        return v

    def __getitem__(self, key: Hashable) -> int:
        v: int = KeyedCounter.__getitem__(self, check_key(key))
        return v

    def reset(self, key: Hashable = None) -> Any:
        """``reset(key)`` or ``reset()`` (also ``reset(None)``, as in every store)."""
        if key is None:
            return KeyedCounter.reset(self)
        return KeyedCounter.reset(self, check_key(key))

    def __setitem__(self, key: Hashable, value: SupportsIndex) -> None:
        KeyedCounter.__setitem__(self, check_key(key), value)

    def setdefault(self, key: Hashable, default: SupportsIndex = 0) -> int:
        v: int = KeyedCounter.setdefault(self, check_key(key), default)
        return v

    def _checked_keys(self, iterable: Any, kwds: Mapping[str, Any]) -> Any:
        """Every key checked before the first is counted (a mapping's too)."""
        for k in kwds:
            check_key(k)
        if iterable is None:
            return None
        if isinstance(iterable, Mapping):
            for k in iterable:
                check_key(k)
            return iterable
        keys = list(iterable)
        for k in keys:
            check_key(k)
        return keys

    def update(self, iterable: Any = None, /, **kwds: SupportsIndex) -> None:
        KeyedCounter.update(self, self._checked_keys(iterable, kwds), **kwds)

    def subtract(self, iterable: Any = None, /, **kwds: SupportsIndex) -> None:
        KeyedCounter.subtract(self, self._checked_keys(iterable, kwds), **kwds)

    def _result(self, pairs: Any) -> Any:
        result = KeyedCounter()
        result._set_many(pairs)
        return result

    def copy(self) -> Any:
        return KeyedCounter(self._dict())

    __copy__ = copy


def _keyed_rate_class() -> Any:
    """``memory://``'s keyed rate: a ``tallies.KeyedRateCounter`` whose keys are
    checked by the rule every store shares (made once, on first use)."""
    global _KeyedRate
    if _KeyedRate is None:

        class MemoryKeyedRate(KeyedRateCounter):
            """A ``tallies.KeyedRateCounter`` taking the keys every store takes."""

            __slots__ = ()

            def increment(self, key: Hashable, n: SupportsIndex = 1) -> None:
                KeyedRateCounter.increment(self, check_key(key), n)

            def decrement(self, key: Hashable, n: SupportsIndex = 1) -> None:
                KeyedRateCounter.decrement(self, check_key(key), n)

            def count(self, key: Hashable, window: float | None = None) -> int:
                v: int = KeyedRateCounter.count(self, check_key(key), window)
                return v

            def per_second(self, key: Hashable, window: float | None = None) -> float:
                v: float = KeyedRateCounter.per_second(self, check_key(key), window)
                return v

        _KeyedRate = MemoryKeyedRate
    return _KeyedRate


_KeyedRate: Any = None


class _Counts:
    """The named counters of one memory store (shared by its handles)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[str, Any] = {}
        self.keyed: dict[str, Any] = {}
        self.rates: dict[str, Any] = {}  # RateCounter / KeyedRateCounter by name
        self.order: list[str] = []
        self.limiters: dict[str, Any] = {}  # LocalLimiter by name (not counts: not in names())
        self.windows: dict[str, Any] = {}  # FixedWindows by name (tallies.limits)


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
        counter_name(name)
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
                obj = MemoryKeyedCounter() if keyed else Counter()
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
        self._check_open()
        counter_name(name)
        cls = _keyed_rate_class() if keyed else RateCounter
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
            raise rate_mismatch(name, obj, probe, "this store")
        return obj

    LIMITER_RESOLUTION_NS = 1_000

    def limiter(self, name: str, limit: int, per: float, *, resolution: float | None = None) -> Any:
        """The limiter called ``name`` in this process (exact, one lock; see
        ``tallies.stores._limiter``).  Slots follow the monotonic clock; the
        finest is 1 us."""
        from ._limiter import LocalLimiter, limit_spec, make_local

        self._check_open()
        spec = limit_spec(name, limit, per, resolution, self.LIMITER_RESOLUTION_NS, "memory://")
        c = self._counts
        with c.lock:
            lim = c.limiters.get(spec.name)
            if lim is None:
                lim = c.limiters[spec.name] = make_local(spec)
        if lim.spec != spec:
            raise ValueError(f"{spec.name!r} is {lim!r} in this store, not {LocalLimiter(spec)!r}")
        return lim

    def _fixed_windows(self, name: str) -> Any:
        from ._limiter import FixedWindows

        self._check_open()
        c = self._counts
        with c.lock:
            w = c.windows.get(name)
            if w is None:
                w = c.windows[name] = FixedWindows()
            return w

    def names(self) -> list[str]:
        """Every name, sorted."""
        self._check_open()
        with self._counts.lock:
            return sorted(self._counts.order)

    def snapshot(self) -> Snapshot:
        self._check_open()
        with self._counts.lock:
            counters = dict(self._counts.counters)
            keyed = dict(self._counts.keyed)
            rates = dict(self._counts.rates)
        snap: Snapshot = {
            "counters": {n: int(counters[n].value()) for n in sorted(counters)},
            "keyed": {
                n: {k: int(v) for k, v in keyed[n].snapshot().items()} for n in sorted(keyed)
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
