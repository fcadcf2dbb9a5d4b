"""``redis://``: counts shared by many machines in Redis or Redis Cluster, exactly once.

URLs::

    redis://[user:password@]host[:port][/db]?prefix=tallies:&flush=1.0&timeout=5
    rediss://...              the same over TLS (ssl_ca_certs=, ssl_certfile=,
                              ssl_keyfile=, ssl_cert_reqs= pass to redis-py)
    redis+cluster://host:port one node of a Redis Cluster (rediss+cluster:// too)

Parameters: ``prefix`` (default ``tallies:``; no ``{`` or ``}``), ``flush``
(seconds between background flushes, default 1.0, at least 0.001; 0 = every
update flushes before it returns), ``timeout`` (seconds per Redis call,
default 5; a flush that Redis does not answer raises after it),
``batch`` (fields per script call, default 200, at most 2,000: one call
blocks Redis for about half a millisecond), ``writer_ttl`` (seconds the per-writer bookkeeping
outlives a writer's last flush, default 86400), ``wait`` (replicas that must
have a batch before a flush counts it as applied, default 0: Redis' ``WAIT``
after each flush and reset, at most half of ``timeout``; a batch that not
enough replicas confirmed stays in flight and is sent again with the same
numbers, so a failover to a replica that has it loses nothing acknowledged).

Increments touch only local cells (``RedisStore`` is a
:class:`~tallies.stores.writebehind.WriteBehindStore`); a flush sends them as
Lua script calls that apply each part of a batch exactly once
(:mod:`tallies.stores._redis_lua` has the key layout, ``lua/*.lua`` the
scripts, :mod:`tallies.stores._redis_backend` the client side).  Needs
redis-py: ``pip install tallies[redis]``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

from ._params import Param
from ._protocol import Backend
from .base import StoreError, StoreNotFoundError, StoreURL, import_backend
from .writebehind import WriteBehindStore

__all__ = ["STORE", "RedisMissingError", "RedisStore"]


class RedisMissingError(StoreError, ImportError):
    """redis:// needs redis-py, which is not installed."""


_backend_module = partial(
    import_backend,
    "redis",
    "_redis_backend",
    RedisMissingError,
    "redis:// stores need redis-py, which is not installed: pip install tallies[redis]",
)


class RedisStore(WriteBehindStore):
    """Counters in Redis, written behind: ``tallies.open("redis://host:6379/0")``."""

    scheme: ClassVar[str] = "redis"

    @classmethod
    def params(cls) -> tuple[Param, ...]:
        params: tuple[Param, ...] = _backend_module().PARAMS
        return params

    @classmethod
    def backend_options(cls, url: StoreURL, values: dict[str, Any]) -> Any:
        return _backend_module().redis_options(url, values)

    @classmethod
    def connect(cls, url: StoreURL, options: Any, create: bool, first: bool) -> Backend:
        backend: Any = _backend_module().RedisBackend(options, url.raw)
        b: Backend = backend
        if not first:
            return b  # after fork: connects on first use
        try:
            backend.ping()
            if not create and not backend.exists():
                raise StoreNotFoundError(
                    f"{url.shown!r}: no keys under the prefix {options.prefix!r}"
                )
        except BaseException:
            backend.close()
            raise
        return b

    @classmethod
    def destroy_url(cls, url: StoreURL) -> bool:
        mod = _backend_module()
        options = mod.parse_redis_url(url)
        backend = mod.RedisBackend(options, url.raw)
        try:
            return bool(backend.delete_all())
        finally:
            backend.close()


STORE = RedisStore
