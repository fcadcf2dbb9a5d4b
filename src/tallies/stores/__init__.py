"""Stores by URL: ``tallies.open("shm://app")``, one module per scheme.

The scheme picks a module, ``tallies.stores.<scheme>``, imported on first use;
it defines ``STORE``, a :class:`~tallies.stores.base.Store` subclass.  A new
scope is therefore one new file here and no change elsewhere.  Stores defined
outside tallies can be added with :func:`register`.

``open(url)`` returns a store (also a context manager); ``destroy(url)``
removes what the URL names (a shared-memory segment, a named memory store).
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

from . import base
from ._redact import redact_url
from .base import *  # noqa: F403  (base.__all__: the Store interface, its types and errors)
from .base import Store, StoreURL

__all__ = ["aopen", "destroy", "open", "parse_url", "redact_url", "register", "schemes"]
__all__ += base.__all__

BUILTIN_SCHEMES: tuple[str, ...] = ("memory", "shm", "sqlite")
# Schemes served by another scheme's module: redis:// over TLS and on a Cluster,
# postgres:// (libpq's other spelling).
_MODULE_OF = {
    "rediss": "redis",
    "redis+cluster": "redis",
    "rediss+cluster": "redis",
    "postgres": "postgresql",
}
BUILTIN_SCHEMES += ("redis", "postgresql", *_MODULE_OF)
_registry: dict[str, type[Store]] = {}
_SCHEME = re.compile(r"[a-z][a-z0-9]*\Z")


def register(scheme: str, store_class: type[Store]) -> None:
    """Make ``scheme://...`` URLs open ``store_class``."""
    if not _SCHEME.match(scheme):
        raise ValueError(f"invalid scheme {scheme!r}: lowercase letters and digits")
    if not (isinstance(store_class, type) and issubclass(store_class, Store)):
        raise TypeError("register() expects a Store subclass")
    _registry[scheme] = store_class


def schemes() -> list[str]:
    """The schemes known now (built-in ones plus registered ones)."""
    return sorted(set(BUILTIN_SCHEMES) | set(_registry))


def parse_url(url: str) -> StoreURL:
    """Split ``scheme://target?k=v&...``; a clear ValueError if it is not one
    (the URL shown without its secrets: see ``_redact.py``)."""
    if not isinstance(url, str):
        raise TypeError(f"a store URL must be a str, not {type(url).__name__!r}")
    shown = redact_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ValueError(f"{shown!r} is not a store URL (expected scheme://..., e.g. shm://app)")
    scheme = scheme.lower()
    if "#" in rest:
        raise ValueError(f"{shown!r}: store URLs have no #fragment")
    target, _, query = rest.partition("?")
    params: dict[str, str] = {}
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError(f"{shown!r}: malformed query {shown.partition('?')[2]!r}") from None
        for k, v in pairs:
            if k in params:
                raise ValueError(f"{shown!r}: parameter {k!r} given twice")
            params[k] = v
    return StoreURL(raw=url, scheme=scheme, target=target, params=params)


def _store_class(url: StoreURL) -> type[Store]:
    cls = _registry.get(url.scheme)
    if cls is not None:
        return cls
    if url.scheme not in BUILTIN_SCHEMES:
        raise ValueError(
            f"{url.shown!r}: unknown store scheme {url.scheme!r} "
            f"(known: {', '.join(s + '://' for s in schemes())})"
        )
    module = importlib.import_module(f"{__name__}.{_MODULE_OF.get(url.scheme, url.scheme)}")
    cls = module.STORE
    if not (isinstance(cls, type) and issubclass(cls, Store)):
        raise TypeError(f"{module.__name__}.STORE is not a Store subclass")
    _registry[url.scheme] = cls
    return cls


def open(url: str, *, create: bool = True) -> Store:
    """Open the store that ``url`` names.

    ``memory://`` (a private in-process store) or ``memory://NAME`` (shared by
    everything in this process that opens the same name); ``shm://NAME``
    (shared memory, shared by every process on this machine that opens it;
    capacity at creation: ``?names=1024&keys=8192&slabs=64&buckets=4096``,
    buckets being rate ring units).  With
    ``create=False`` a store that does not exist yet raises
    :class:`StoreNotFoundError` instead of being created.
    ``redis://host:6379/0?prefix=app:`` (also ``rediss://`` and
    ``redis+cluster://``): Redis, shared by every machine, written behind
    (see :mod:`tallies.stores.redis`).
    ``postgresql://user:password@host:5432/dbname?schema=tallies`` (also
    ``postgres://``): PostgreSQL, written behind (see
    :mod:`tallies.stores.postgresql`).
    """
    parsed = parse_url(url)
    return _store_class(parsed).open_url(parsed, create=create)


def destroy(url: str) -> bool:
    """Remove what ``url`` names; False if there was nothing to remove.

    For ``shm://NAME`` this unlinks the segment file: processes that still
    have it open keep counting in the old memory, and the next ``open()``
    creates a new, empty segment.
    """
    parsed = parse_url(url)
    return _store_class(parsed).destroy_url(parsed)


@contextlib.asynccontextmanager
async def aopen(url: str, *, create: bool = True) -> AsyncIterator[Store]:
    """``async with tallies.aopen(url) as store:``, for asyncio programs.

    Opening and the final ``close()`` (which flushes) run in a worker thread,
    so the event loop is never blocked and the last flush happens before the
    loop closes (``atexit`` cannot await).  Updates stay plain calls; use
    ``await store.aflush()`` to flush from a coroutine.
    """
    import asyncio

    store = await asyncio.to_thread(open, url, create=create)
    try:
        yield store
    finally:
        await asyncio.to_thread(store.close)
