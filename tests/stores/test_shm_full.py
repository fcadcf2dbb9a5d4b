"""A full shm:// segment changes nothing: a process that cannot write registers nothing.

With ``?slabs=1`` held by one process, a forked child cannot get a writer
slab.  Before, its ``counter("a")`` registered the name and only the first
``increment()`` raised CapacityError, so each failed attempt used up a name (a
key, a rate's bucket units) for good: ``names()`` listed them and the owner's
next ``counter("d")`` failed with "all 4 names are taken".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from _shm_support import new_url

import tallies
from tallies.stores import CapacityError


def _in_child(fn: Callable[[], None], refused: bool = True) -> int:
    """Run fn() in a forked child: 0 if it raised CapacityError about writer slabs
    (``refused``) or returned (not ``refused``)."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            fn()
            code = 1 if refused else 0
        except CapacityError as exc:
            code = 0 if refused and "writer slabs belong to live processes" in str(exc) else 2
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_process_without_a_slab_registers_no_name_key_or_ring() -> None:
    url = new_url("?slabs=1&names=4&keys=4&buckets=200")
    try:
        with tallies.open(url) as s:
            s.counter("owner").increment()  # this process holds the only slab
            k, kr = s.keyed("k"), s.keyed_rate("kr", 60, 1)
            k.increment("x")
            path = Path(s.path)  # type: ignore[attr-defined]
            before = path.read_bytes()
            info = s.info()
            attempts: list[Callable[[], None]] = [
                lambda: s.counter("a").increment(),
                lambda: s.keyed("b").increment("y"),
                lambda: s.rate("c", 60, 1).increment(),
                lambda: k.increment("new"),
                lambda: kr.increment("new"),
            ]
            for attempt in attempts:
                assert _in_child(attempt) == 0
                # not one byte changed: no name, no key, no ring units taken
                assert path.read_bytes() == before
            assert s.names() == ["k", "kr", "owner"]  # sorted (docs/contract.md)
            assert (s.info()["names"], s.info()["keys"]) == (info["names"], info["keys"])
            # the owner still has every name, key and bucket unit it had
            s.counter("d").increment()  # the 4th name of 4
            k.increment("y")
            k.increment("z")
            kr.increment("y")  # the 4th key of 4, and its ring: 62 more units (124 of 200)
            assert s.names() == ["d", "k", "kr", "owner"]
            assert s.info()["keys"] == 4 and kr.snapshot() == {"y": 1}
    finally:
        tallies.destroy(url.partition("?")[0])


def test_readers_without_a_slab_still_read_existing_names() -> None:
    """Only new names and keys need a slab: a child that cannot write reads everything."""
    url = new_url("?slabs=1&names=4&keys=4")
    try:
        with tallies.open(url) as s:
            s.counter("a").increment(3)
            s.keyed("k").increment("x", 2)

            def read() -> None:
                assert s.counter("a").value() == 3
                assert s.keyed("k").value("x") == 2 and s.keyed("k").value("nope") == 0
                assert s.snapshot()["counters"] == {"a": 3}

            assert _in_child(read, refused=False) == 0
    finally:
        tallies.destroy(url.partition("?")[0])


@pytest.mark.parametrize("kind", ["counter", "keyed"])
def test_the_owner_is_not_blocked_by_failed_children(kind: str) -> None:
    """The issue's sequence: three failed children, then the owner's 4th name."""
    url = new_url("?slabs=1&names=4")
    try:
        with tallies.open(url) as s:
            s.counter("owner").increment()
            for name in "abc":
                make = s.counter if kind == "counter" else s.keyed
                assert _in_child(lambda name=name, make=make: make(name)) == 0  # type: ignore[misc]
            assert s.names() == ["owner"]
            s.counter("d").increment()
            assert s.names() == ["d", "owner"]
    finally:
        tallies.destroy(url.partition("?")[0])
