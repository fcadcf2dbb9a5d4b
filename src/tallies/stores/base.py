"""The ``Store`` interface that every scope (``memory://``, ``shm://``, later
``sqlite://`` and ``redis://``) implements, and the errors stores raise.

A store is opened from a URL by :func:`tallies.open` and hands out counters by
name.  The objects it returns have the in-process API (``increment``,
``decrement``, ``value``, ``reset``; keyed counters add ``key`` arguments), so
code written against :class:`tallies.Counter` works against any scope.

Every store has ``flush()`` (a no-op where writes are immediate, as in
``memory://`` and ``shm://``; write-behind scopes push their buffered deltas)
and ``close()``, which flushes first and may be called more than once.
``snapshot()`` returns plain data that every scope can produce::

    {"counters": {"requests": 12}, "keyed": {"status": {"200": 10, "404": 2}}}
"""

from __future__ import annotations

import abc
import collections
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, SupportsIndex, TypedDict, TypeVar

if TYPE_CHECKING:
    from typing_extensions import NotRequired

__all__ = [
    "CapacityError",
    "CorruptSegmentError",
    "CorruptStoreError",
    "CountOverflowError",
    "FlushError",
    "KeyedRateSnapshot",
    "KindClashError",
    "LimitersUnsupportedError",
    "RateSnapshot",
    "RatesUnsupportedError",
    "Snapshot",
    "Store",
    "StoreCounter",
    "StoreError",
    "StoreKeyedCounter",
    "StoreKeyedRate",
    "StoreLimiter",
    "StoreNotFoundError",
    "StoreRate",
    "StoreURL",
    "StoreUnavailableError",
]


class StoreError(Exception):
    """Base class of the errors that only stores raise."""


class CapacityError(StoreError, RuntimeError):
    """The store is full (names, keys or writer slabs); nothing was changed."""


class CorruptSegmentError(StoreError, ValueError):
    """The backing file is truncated, foreign, garbage or of another layout."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """``open(url, create=False)`` found nothing at that URL."""


CorruptStoreError = CorruptSegmentError
"""The general name: a store's file or keyspace is not (or no longer) one of
ours, or of a newer schema.  ``CorruptSegmentError`` is the same class."""


class StoreUnavailableError(StoreError, OSError):
    """The backing store cannot be used now (locked past the timeout, disk full,
    read-only, removed, server down).  Nothing was lost: buffered deltas are
    kept and written by a later flush."""


class FlushError(StoreUnavailableError):
    """A flush (or a reset, or a write-through update) failed; the deltas it
    carried are kept, and the same batch is retried first by the next flush,
    so nothing is lost and nothing is applied twice.  ``__cause__`` is the
    backend's error."""


class CountOverflowError(StoreError, OverflowError):
    """An update would move a stored count outside the signed 64-bit range.

    Raised by ``flush()`` (and by every update of a write-through store):
    ``items`` lists the offending ``(name, key)`` pairs (key None for a
    counter), and the message says exactly what happened to the rest.  From
    ``flush()``: the offending deltas were not applied and are held (still in
    ``value()``, retried by every later flush), every other delta of the
    flush was applied.  From a write-through update: that update was not
    applied at all."""

    def __init__(self, message: str, items: Iterable[tuple[str, str | None]] = ()) -> None:
        super().__init__(message)
        self.items: list[tuple[str, str | None]] = list(items)


class KindClashError(StoreError, ValueError):
    """A name is a counter in the store and a keyed counter here (or the other
    way round): another process registered it first.  ``items`` lists the
    ``(name, None)`` pairs; their deltas were not applied and are set aside
    (``pending()["set_aside"]``), every other delta was applied."""

    def __init__(self, message: str, items: Iterable[tuple[str, str | None]] = ()) -> None:
        super().__init__(message)
        self.items: list[tuple[str, str | None]] = list(items)


class RatesUnsupportedError(StoreError, NotImplementedError):
    """This store (scheme) does not support rates yet; nothing was created."""


class LimitersUnsupportedError(StoreError, NotImplementedError):
    """This store (or its backend) has no limiters; nothing was created."""


class RateSnapshot(TypedDict):
    """One rate in ``snapshot()["rates"]``."""

    window: float
    resolution: float
    count: int
    per_second: float
    total: int


class KeyedRateSnapshot(TypedDict):
    """One keyed rate in ``snapshot()["keyed_rates"]`` (keys at 0 left out)."""

    window: float
    resolution: float
    counts: dict[str, int]


class Snapshot(TypedDict):
    """All counts of a store as plain data."""

    counters: dict[str, int]
    keyed: dict[str, dict[str, int]]
    rates: NotRequired[dict[str, RateSnapshot]]  # only when the store has rates
    keyed_rates: NotRequired[dict[str, KeyedRateSnapshot]]


class StoreCounter(Protocol):
    """What ``store.counter(name)`` returns, in every scope."""

    def increment(self, n: SupportsIndex = 1) -> None: ...
    def decrement(self, n: SupportsIndex = 1) -> None: ...
    def value(self) -> int: ...
    def reset(self) -> int: ...


class StoreKeyedCounter(Protocol):
    """What ``store.keyed(name)`` returns, in every scope (str keys)."""

    def increment(self, key: str, n: SupportsIndex = 1) -> None: ...
    def decrement(self, key: str, n: SupportsIndex = 1) -> None: ...
    def value(self, key: str) -> int: ...
    def __getitem__(self, key: str) -> int: ...
    def snapshot(self) -> collections.Counter[str]: ...
    def keys(self) -> Iterable[str]: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[str]: ...


class StoreRate(Protocol):
    """What ``store.rate(name, ...)`` returns (the ``tallies.RateCounter`` API)."""

    def increment(self, n: SupportsIndex = 1) -> None: ...
    def decrement(self, n: SupportsIndex = 1) -> None: ...
    def count(self, window: float | None = None) -> int: ...
    def per_second(self, window: float | None = None) -> float: ...
    def total(self) -> int: ...
    def reset(self) -> int: ...


class StoreKeyedRate(Protocol):
    """What ``store.keyed_rate(name, ...)`` returns (``tallies.KeyedRateCounter``'s API)."""

    def increment(self, key: str, n: SupportsIndex = 1) -> None: ...
    def decrement(self, key: str, n: SupportsIndex = 1) -> None: ...
    def count(self, key: str, window: float | None = None) -> int: ...
    def per_second(self, key: str, window: float | None = None) -> float: ...
    def snapshot(self, window: float | None = None) -> dict[Any, int]: ...
    def most_common(
        self, n: SupportsIndex | None = None, window: float | None = None
    ) -> list[tuple[Any, int]]: ...


class StoreLimiter(Protocol):
    """What ``store.limiter(name, limit, per)`` returns, in every scope (see
    ``tallies.stores._limiter`` for the promise)."""

    @property
    def name(self) -> str: ...
    @property
    def limit(self) -> int: ...
    @property
    def per(self) -> float: ...
    @property
    def resolution(self) -> float: ...
    def hit(self, key: str | None = None, n: int = 1) -> bool: ...
    def test(self, key: str | None = None, n: int = 1) -> bool: ...
    def remaining(self, key: str | None = None) -> int: ...
    def reset_after(self, key: str | None = None) -> float: ...
    def reset(self, key: str | None = None) -> int: ...


@dataclass(frozen=True)
class StoreURL:
    """A store URL split into ``scheme://target?params``.

    ``target`` is everything between ``://`` and ``?`` (a segment name, a
    path, ``host:port/db``); each scope interprets it.  Parameters are
    unique; a repeated one is an error.
    """

    raw: str
    scheme: str
    target: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def shown(self) -> str:
        """The URL as messages, logs, reprs and exporters show it: without its
        password, token or userinfo (``raw`` keeps them, to reopen the store)."""
        from ._redact import redact_url

        return redact_url(self.raw)

    def reject_unknown(self, allowed: frozenset[str]) -> None:
        unknown = sorted(set(self.params) - allowed)
        if unknown:
            names = ", ".join(sorted(allowed)) or "none"
            raise ValueError(
                f"{self.shown!r}: unknown parameter(s) {', '.join(unknown)} "
                f"for {self.scheme}:// (accepted: {names})"
            )


_S = TypeVar("_S", bound="Store")


class _Closable(Protocol):
    _closed: bool


def close_once(
    owner: _Closable, last: Callable[[], None], release: Callable[[], None] | None = None
) -> None:
    """The close-once idiom: unless ``owner`` is closed already, run ``last``
    (the final flush, the leases given back); ``owner`` is closed even if
    ``last`` raises, and then ``release`` (if any) runs."""
    if owner._closed:
        return
    try:
        last()
    finally:
        owner._closed = True
        if release is not None:
            release()


class Store(abc.ABC):
    """Counters by name, shared as widely as the scope allows.

    Use it as a context manager, or call :meth:`close`.  Counters handed out
    keep working after ``close()`` only as far as the scope documents; the
    store itself refuses new calls once closed.
    """

    scheme: ClassVar[str]
    LIMITER_RESOLUTION_NS: ClassVar[int] = 1_000_000
    """The finest slot a limiter of this store may have (ns)."""

    def __init__(self, url: StoreURL) -> None:
        self._url = url
        self._closed = False

    @classmethod
    @abc.abstractmethod
    def open_url(cls, url: StoreURL, *, create: bool = True) -> Store:
        """Open (or, if ``create``, create) the store that ``url`` names."""

    @classmethod
    @abc.abstractmethod
    def destroy_url(cls, url: StoreURL) -> bool:
        """Remove what ``url`` names; False if there was nothing to remove."""

    @property
    def url(self) -> str:
        return self._url.raw

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        check_open(self._closed, self._url.shown)

    @abc.abstractmethod
    def counter(self, name: str) -> StoreCounter:
        """The counter called ``name`` (the same object for the same name)."""

    @abc.abstractmethod
    def keyed(self, name: str) -> StoreKeyedCounter:
        """The keyed counter called ``name`` (str keys)."""

    def rate(self, name: str, window: float = 60.0, resolution: float = 1.0) -> StoreRate:
        """The rate called ``name``: events in the last ``window`` seconds, in
        buckets of ``resolution`` (fixed when the name is first used)."""
        raise RatesUnsupportedError(
            f"{self._url.shown}: this store ({self.scheme}://) does not support rates yet"
        )

    def keyed_rate(
        self, name: str, window: float = 60.0, resolution: float = 1.0
    ) -> StoreKeyedRate:
        """The keyed rate called ``name`` (str keys)."""
        raise RatesUnsupportedError(
            f"{self._url.shown}: this store ({self.scheme}://) does not support rates yet"
        )

    def limiter(
        self, name: str, limit: int, per: float, *, resolution: float | None = None
    ) -> StoreLimiter:
        """The limiter called ``name``: at most ``limit`` units in any ``per``
        seconds, across everything that shares this store (see
        ``tallies.stores._limiter``: the promise, and how each store keeps
        it).  ``resolution``: the slot width (default ``per / 60``).  The
        same name must be asked for with the same limit, per and resolution."""
        raise LimitersUnsupportedError(
            f"{self._url.shown}: this store ({self.scheme}://) does not support limiters"
        )

    def _fixed_windows(self, name: str) -> Any:
        """Fixed windows that start at their first hit (what the ``limits``
        package calls a fixed window; used by ``tallies.limits``)."""
        raise LimitersUnsupportedError(
            f"{self._url.shown}: this store ({self.scheme}://) does not support limiters"
        )

    @abc.abstractmethod
    def names(self) -> list[str]:
        """Every counter and keyed counter name, in the order they appeared."""

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """Every count as plain dicts of ints (not atomic across names)."""

    def flush(self) -> None:  # noqa: B027 - a no-op by design where writes are immediate
        """Push buffered writes to the backing store (no-op here)."""

    async def aflush(self) -> None:
        """``await store.aflush()``: ``flush()`` in a worker thread (asyncio)."""
        import asyncio

        await asyncio.to_thread(self.flush)

    def close(self) -> None:
        """Flush and release the store; calling it again does nothing."""
        close_once(self, self.flush, self._release)

    def _release(self) -> None:  # noqa: B027 - optional hook
        """Release resources after the final flush (subclass hook)."""

    def __enter__(self: _S) -> _S:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self._url.shown!r} {state}>"


NAME_MAX_BYTES = 224
"""The longest name of a counter (or keyed counter, or rate), in UTF-8 bytes
(what a ``shm://`` name entry holds)."""
KEY_MAX_BYTES = 1024
"""The longest key of a keyed counter, in UTF-8 bytes (``shm://`` holds 224)."""


def check_name(name: object, what: str = "counter name", max_bytes: int = NAME_MAX_BYTES) -> str:
    """A non-empty str of at most ``max_bytes`` UTF-8 bytes, without NUL or
    lone surrogates."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__!r}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in name:
        raise ValueError(f"{what} {name!r} contains a NUL character")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} {name!r} is not valid Unicode (lone surrogate)") from None
    if size > max_bytes:
        raise ValueError(f"{what} is {size} bytes in UTF-8; the limit is {max_bytes}")
    return name


def counter_name(name: object) -> str:
    """The name of a counter, keyed counter or rate, by the rule every store
    shares (docs/contract.md): a str of 1 to 224 UTF-8 bytes, no NUL, no lone
    surrogate, not starting with ``}`` (Redis Cluster would read ``{}...``
    as an empty hash tag).  TypeError for a non-str, ValueError otherwise."""
    check_name(name)
    assert isinstance(name, str)
    if name.startswith("}"):
        raise ValueError(f"counter name {name!r} starts with '}}', which no store accepts")
    return str.__str__(name)


def check_key(key: object) -> str:
    """A keyed counter's key, by the rule every store shares: a str of 1 to
    1024 UTF-8 bytes, no NUL, no lone surrogate (``shm://`` holds at most
    224 bytes).  TypeError for a non-str, ValueError otherwise."""
    if type(key) is not str:
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__!r}")
        key = str.__str__(key)
    return check_name(key, "key", max_bytes=KEY_MAX_BYTES)


def check_open(closed: bool, shown: str) -> None:
    """The one error of a store used after close(): ValueError "the store
    ``shown`` is closed" when ``closed``."""
    if closed:
        raise ValueError(f"the store {shown!r} is closed")


def rate_mismatch(name: str, have: Any, want: Any, where: str) -> ValueError:
    """The error for a rate asked for with other settings than it has
    (``have``, ``want``: objects with ``window`` and ``resolution``)."""
    return ValueError(
        f"{name!r} is a rate with window={have.window!r}, resolution={have.resolution!r} "
        f"in {where}, not window={want.window!r}, resolution={want.resolution!r}"
    )


def schema_version(
    meta: Mapping[str, str], where: str, *, magic: str, newest: int, error: type[StoreError]
) -> int:
    """The schema version of a store's ``tallies_meta`` rows (key -> value),
    checked as every SQL store checks it: ``error`` (a message starting
    with ``where``) for a missing magic, an unreadable version or one newer
    than this tallies writes (``newest``)."""
    if meta.get("magic") != magic:
        raise error(f"{where}: tallies_meta has no magic {magic!r}")
    try:
        version = int(meta.get("schema", ""))
    except ValueError:
        raise error(f"{where}: unreadable schema version") from None
    if version > newest:
        raise error(
            f"{where} has schema version {version}, newer than this tallies "
            f"({newest}); upgrade tallies"
        )
    return version


def import_backend(needs: str, backend: str, missing: type[StoreError], message: str) -> Any:
    """The module ``tallies.stores.<backend>``, imported when a store of its
    scheme opens; ``missing(message)`` if the package ``needs`` (a
    third-party client the core does not depend on) is not installed."""
    try:
        importlib.import_module(needs)
    except ImportError as exc:
        raise missing(message) from exc
    return importlib.import_module(f"tallies.stores.{backend}")


def flush_overflow(where: str, bad: list[tuple[str, str | None]], then: str) -> CountOverflowError:
    """The error of a flush that would move the counts ``bad`` ((name,
    None) or (name, key)) outside int64: ``where`` starts the message,
    ``then`` ends it (what became of the flush)."""
    shown = ", ".join(n if k is None else f"{n}[{k!r}]" for n, k in bad[:5])
    return CountOverflowError(
        f"{where}: adding the pending delta would move {shown}"
        f"{' ...' if len(bad) > 5 else ''} outside the signed 64-bit range; {then}",
        bad,
    )
