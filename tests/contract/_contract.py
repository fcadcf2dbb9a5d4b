"""The store contract suite: ONE list of stores, and what the contract lets differ.

Every test of ``tests/contract`` takes the ``store_url`` fixture (see
``conftest.py``), which is parametrised over :data:`STORES`: a new scheme
gets the whole suite by adding one line here, a function that returns a
fresh URL of that scheme (it may use fixtures through ``request``).  The
behaviour every test checks is written in ``docs/contract.md``; the few
things the contract lets a store decide are :class:`Facts`, derived from the
URL in :func:`facts` and documented in the same page.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from _postgres_support import unique_schema
from _redis_support import unique_prefix
from _shm_support import new_url as new_shm_url

import tallies
from tallies.stores import parse_url


def _sqlite(request: pytest.FixtureRequest, flush: str) -> str:
    tmp = request.getfixturevalue("tmp_path")
    return f"sqlite:///{tmp}/contract-{secrets.token_hex(4)}.db?flush={flush}"


def _postgres(request: pytest.FixtureRequest, flush: str) -> str:
    server = request.getfixturevalue("postgres_server")
    return str(server.url(schema=unique_schema("c"), flush=flush))


STORES: dict[str, Callable[[pytest.FixtureRequest], str]] = {
    "memory": lambda rq: f"memory://contract-{secrets.token_hex(6)}",
    "shm": lambda rq: new_shm_url("?names=64&keys=512&slabs=16"),
    "sqlite": lambda rq: _sqlite(rq, "3600"),
    "sqlite-write-through": lambda rq: _sqlite(rq, "0"),
    "redis": lambda rq: rq.getfixturevalue("redis_server").url(unique_prefix("c"), flush="3600"),
    "redis-write-through": lambda rq: rq.getfixturevalue("redis_server").url(
        unique_prefix("c"), flush="0"
    ),
    "redis+cluster": lambda rq: rq.getfixturevalue("redis_cluster").url(
        unique_prefix("c"), flush="3600"
    ),
    "postgresql": lambda rq: _postgres(rq, "3600"),
    "postgresql-write-through": lambda rq: _postgres(rq, "0"),
}
"""Every store scheme the contract suite runs on (id -> a fresh URL)."""


@dataclass(frozen=True)
class Facts:
    """What docs/contract.md lets a store decide (everything else is one rule)."""

    shared: bool  # other processes open the same counts (shm, sqlite, redis)
    write_behind: bool  # sqlite, redis: updates go to this process's pending deltas
    buffered: bool  # write-behind with flush > 0: int64 is checked at the flush
    counters_outlive_close: bool  # memory, shm: counters are in-process objects / mapped memory
    key_max_bytes: int  # 1024; shm:// holds 224
    whole_counter_api: bool  # memory: the in-process Counter / KeyedCounter themselves
    empty_keyed_shared: bool  # other processes see a keyed counter before its first key


def facts(url: str) -> Facts:
    u = parse_url(url)
    scheme = "redis" if u.scheme.startswith("redis") else u.scheme
    write_behind = scheme in ("sqlite", "redis", "postgresql", "postgres")
    return Facts(
        shared=scheme != "memory",
        write_behind=write_behind,
        buffered=write_behind and float(u.params.get("flush", "1")) > 0,
        counters_outlive_close=not write_behind,
        key_max_bytes=224 if scheme == "shm" else 1024,
        whole_counter_api=scheme == "memory",
        empty_keyed_shared=scheme != "redis",
    )


def another_writer(url: str) -> str:
    """The same counts, opened as another store in this process (another
    writer, as another process would be): the same backing store under
    other parameters.  memory:// and shm:// have one store per name."""
    scheme = parse_url(url).scheme
    if scheme in ("sqlite", "postgresql", "postgres") or scheme.startswith("redis"):
        return url + "&timeout=4.5"
    return url


def destroy(url: str) -> None:
    """Remove what a test made (each URL is fresh)."""
    tallies.destroy(url)
