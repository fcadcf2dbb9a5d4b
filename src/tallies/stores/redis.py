"""``redis://``: counts shared by many machines in Redis or Redis Cluster, exactly once.

URLs::

    redis://[user:password@]host[:port][/db]?prefix=tallies:&flush=1.0&timeout=5
    rediss://...              the same over TLS (ssl_ca_certs=, ssl_certfile=,
                              ssl_keyfile=, ssl_cert_reqs= pass to redis-py)
    redis+cluster://host:port one node of a Redis Cluster (rediss+cluster:// too)

Parameters: ``prefix`` (default ``tallies:``; no ``{`` or ``}``), ``flush``
(seconds between background flushes, default 1.0; 0 = every update flushes
before it returns), ``timeout`` (seconds per Redis call, default 5),
``batch`` (fields per script call, default 200, at most 2,000: one call
blocks Redis for about half a millisecond), ``writer_ttl`` (seconds the per-writer bookkeeping
outlives a writer's last flush, default 86400), ``wait`` (replicas that must
have a batch before a flush counts it as applied, default 0: Redis' ``WAIT``
after each flush and reset, at most half of ``timeout``; a batch that not
enough replicas confirmed stays in flight and is sent again with the same
numbers, so a failover to a replica that has it loses nothing acknowledged).

Increments touch only local cells (the write-behind machinery of
:mod:`tallies.stores.writebehind`); a flush sends them as Lua script calls
that apply each part of a batch exactly once (:mod:`tallies.stores._redis_lua`
has the key layout and the scripts, :mod:`tallies.stores._redis_backend` the
client side).  Needs redis-py: ``pip install tallies[redis]``.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from .base import Snapshot, Store, StoreError, StoreNotFoundError, StoreURL, check_name

__all__ = ["STORE", "RedisMissingError", "RedisStore"]

#: Parameters the write-behind reads (the backend reads its own).
_WB_PARAMS = frozenset({"flush"})


class RedisMissingError(StoreError, ImportError):
    """redis:// needs redis-py, which is not installed."""


def _backend_module() -> Any:
    try:
        importlib.import_module("redis")
    except ImportError as exc:
        raise RedisMissingError(
            "redis:// stores need redis-py, which is not installed: pip install tallies[redis]"
        ) from exc
    return importlib.import_module("tallies.stores._redis_backend")


def _interval(url: StoreURL) -> float:
    raw = url.params.get("flush", "1.0")
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{url.shown!r}: flush={raw!r} is not a number of seconds") from None
    if not 0 <= v <= 86400:
        raise ValueError(f"{url.shown!r}: flush={raw!r} is outside [0, 86400] seconds")
    return v


def _check_redis_name(name: str) -> str:
    """A store name that also works as a Redis Cluster hash tag: ``{name}``
    must not be ``{}...``, whose tag Redis ignores (the keys of one script
    would then spread over several slots)."""
    check_name(name)
    if name.startswith("}"):
        raise ValueError(f"redis:// names must not start with '}}' (a hash tag): {name!r}")
    return name


class RedisStore(Store):
    """Counters in Redis, written behind: ``tallies.open("redis://host:6379/0")``."""

    scheme: ClassVar[str] = "redis"

    def __init__(self, url: StoreURL, wb: Any, backend: Any) -> None:
        super().__init__(url)
        self._wb = wb
        self._backend = backend

    @classmethod
    def _options(cls, url: StoreURL) -> tuple[Any, Any]:
        mod = _backend_module()
        url.reject_unknown(mod.URL_PARAMS | _WB_PARAMS)
        return mod, mod.parse_redis_url(url)

    @classmethod
    def open_url(cls, url: StoreURL, *, create: bool = True) -> RedisStore:
        mod, options = cls._options(url)
        interval = _interval(url)
        backend = mod.RedisBackend(options, url.raw)
        try:
            backend.ping()
            if not create and not backend.exists():
                raise StoreNotFoundError(
                    f"{url.shown!r}: no keys under the prefix {options.prefix!r}"
                )
        except BaseException:
            backend.close()
            raise
        from .writebehind import WriteBehind

        wb = WriteBehind(
            backend,
            lambda: mod.RedisBackend(options, url.raw),
            interval=interval,
            url=url.raw,
        )
        return cls(url, wb, backend)

    @classmethod
    def destroy_url(cls, url: StoreURL) -> bool:
        mod, options = cls._options(url)
        _interval(url)
        backend = mod.RedisBackend(options, url.raw)
        try:
            return bool(backend.delete_all())
        finally:
            backend.close()

    def counter(self, name: str) -> Any:
        """The counter called ``name``: a Redis integer at ``PREFIX{name}``."""
        self._check_open()
        return self._wb.counter(_check_redis_name(name))

    def keyed(self, name: str) -> Any:
        """The keyed counter called ``name``: a Redis hash at ``PREFIX{name}``."""
        self._check_open()
        return self._wb.keyed(_check_redis_name(name))

    def names(self) -> list[str]:
        """Every name in Redis under the prefix (sorted), then this process's new ones."""
        self._check_open()
        return list(self._wb.names())

    def snapshot(self) -> Snapshot:
        self._check_open()
        snap: Snapshot = self._wb.snapshot()
        return snap

    def flush(self) -> None:
        """Send every pending delta now; :class:`FlushError` if Redis does not answer."""
        if self._closed:
            return
        self._wb.flush()

    def pending(self) -> dict[str, Any]:
        """This process's deltas not yet acknowledged by Redis (for tests and tools)."""
        info: dict[str, Any] = self._wb.pending()
        return info

    @property
    def writer_id(self) -> str:
        return str(self._wb.writer_id)

    def close(self) -> None:
        """Flush and stop; if the final flush fails, raise (deltas stay queued)."""
        if self._closed:
            return
        self._wb.close()
        self._closed = True

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<RedisStore {self._url.shown!r} {state}>"


STORE = RedisStore
