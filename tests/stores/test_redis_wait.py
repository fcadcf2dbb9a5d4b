"""``wait=N``: a flush counts a batch as applied only once N replicas have it.

Real servers: a master with one replica on loopback (the replica stopped with
SIGSTOP when it must not acknowledge), and a Redis Cluster of one master and
one replica where ``CLUSTER FAILOVER TAKEOVER`` promotes the replica after
the master is killed.  What is checked: a flush that returned is on the
replica; a flush the replicas did not confirm raises, keeps its batch in
flight and is sent again with the same numbers (applied once, never twice),
including when its first try's reply was lost and the retry runs on a new
connection; resets the same; bad values are refused.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _redis_support import (
    LostReplyProxy,
    RedisServer,
    ReplicatedCluster,
    info,
    need_redis,
    redis_cli,
    start_replica,
    unique_prefix,
    wait_in_sync,
)

import tallies
from tallies.stores.base import FlushError


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master (append-only file) and one replica, on their own ports."""
    need_redis()
    master = RedisServer(tmp_path / "master", aof=True).start()
    replica = start_replica(master, tmp_path / "replica")
    yield master, replica
    for s in (replica, master):
        if s.proc is not None and s.proc.poll() is None:
            os.kill(s.proc.pid, signal.SIGCONT)
        s.stop()


class Stopped:
    """SIGSTOP a server for a ``with`` block: it holds its connections open
    and answers nothing (a replica that stops acknowledging)."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def __enter__(self) -> None:
        assert self.server.proc is not None
        os.kill(self.server.proc.pid, signal.SIGSTOP)

    def __exit__(self, *exc: object) -> None:
        assert self.server.proc is not None
        os.kill(self.server.proc.pid, signal.SIGCONT)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "wait='-1' is outside [0, 100]"),
        ("101", "wait='101' is outside [0, 100]"),
        ("1.5", "wait='1.5' is not a whole number of replicas"),
        ("one", "wait='one' is not a number"),
    ],
)
def test_bad_wait_values_are_refused(redis_server: RedisServer, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tallies.open(redis_server.url(unique_prefix(), wait=value))


def test_a_flush_that_returned_is_on_the_replica(pair: tuple[RedisServer, RedisServer]) -> None:
    master, replica = pair
    prefix = unique_prefix()
    store = tallies.open(master.url(prefix, flush="3600", wait="1"))
    rc = replica.client()
    for i in range(1, 51):
        store.counter("n").increment(i)
        store.keyed("k").increment(f"x{i % 5}", i)
        store.flush()
        # read from the replica at once: WAIT returned, so it has the batch
        assert int(rc.get(f"{prefix}{{n}}")) == i * (i + 1) // 2
    assert sum(int(v) for v in rc.hgetall(f"{prefix}{{k}}").values()) == 50 * 51 // 2
    store.close()


def test_no_replica_confirms_then_the_same_batch_applies_once(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = pair
    prefix = unique_prefix()
    store = tallies.open(master.url(prefix, flush="3600", wait="1", timeout="3"))
    mc = master.client()
    store.counter("n").increment(5)
    with Stopped(replica):
        t0 = time.monotonic()
        with pytest.raises(FlushError, match=r"WAIT 1: 0 of 1 replica\(s\) acknowledged it"):
            store.flush()
        assert 1.45 < time.monotonic() - t0 < 4.5  # WAIT waits half of timeout
        assert store.pending()["in_flight"] == "batch 1 (1 delta(s))"
        assert mc.get(f"{prefix}{{n}}") == b"5"  # applied on the master, not acknowledged
        assert store.counter("n").value() == 5  # read-your-writes counts it once
        store.counter("n").increment(2)
        with pytest.raises(FlushError, match="WAIT 1"):
            store.flush()  # the retry answers dup, and still no replica confirms
        assert mc.get(f"{prefix}{{n}}") == b"5"
    wait_in_sync(master, [replica])  # back and caught up (slow to resume under load)
    store.flush()  # the replica is back: batch 1 confirmed, then batch 2
    assert mc.get(f"{prefix}{{n}}") == b"7"
    assert store.pending()["in_flight"] is None
    assert replica.client().get(f"{prefix}{{n}}") == b"7"
    store.close()


def test_a_retry_on_a_new_connection_waits_for_the_first_write(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    """The first try's reply is lost (its connection is dropped), the replica
    is stopped; the retry's script answers dup, which writes nothing, on a
    new connection.  ``WAIT`` there must still wait for the first try's
    write.  Redis 8.0 and Valkey 9.1 count for ``WAIT`` only the connection's
    own writes: without the store's PEXPIRE first, they count the stopped
    replica at once and the batch is acknowledged while only the master has
    it (checked: this test fails then).  Redis 7.0 moves a connection's
    ``WAIT`` offset on any command, so there the dup alone would do."""
    master, replica = pair
    proxy = LostReplyProxy(master.port)
    prefix = unique_prefix()
    url = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&flush=3600&wait=1&timeout=3"
    store = tallies.open(url)
    try:
        store.counter("n").increment(9)
        with Stopped(replica):
            proxy.arm()
            with pytest.raises(FlushError):
                store.flush()  # the reply to the script is lost
            assert proxy.dropped == 1
            assert master.client().get(f"{prefix}{{n}}") == b"9"
            with pytest.raises(FlushError, match=r"WAIT 1: 0 of 1"):
                store.flush()
        wait_in_sync(master, [replica])  # back and caught up (slow to resume under load)
        store.flush()
        assert master.client().get(f"{prefix}{{n}}") == b"9"
        assert replica.client().get(f"{prefix}{{n}}") == b"9"
    finally:
        store.close()
        proxy.close()


def test_a_reset_waits_for_the_replica_too(pair: tuple[RedisServer, RedisServer]) -> None:
    master, replica = pair
    prefix = unique_prefix()
    store = tallies.open(master.url(prefix, flush="3600", wait="1", timeout="3"))
    c = store.counter("n")
    c.increment(10)
    store.flush()
    c.increment(1)
    with Stopped(replica):
        with pytest.raises(FlushError, match="reset of 'n' failed"):
            c.reset()
        assert master.client().get(f"{prefix}{{n}}") == b"0"  # it happened on the master
    wait_in_sync(master, [replica])  # back and caught up (slow to resume under load)
    store.flush()  # settles it: the reset happened, its pending delta went with it
    assert c.value() == 0
    assert replica.client().get(f"{prefix}{{n}}") == b"0"
    c.increment(3)
    assert c.reset() == 3
    store.close()


def test_wait_for_more_replicas_than_there_are(pair: tuple[RedisServer, RedisServer]) -> None:
    master, _ = pair
    prefix = unique_prefix()
    store = tallies.open(master.url(prefix, flush="3600", wait="2", timeout="2"))
    store.counter("n").increment()
    with pytest.raises(FlushError, match=r"WAIT 2: 1 of 2 replica\(s\)"):
        store.flush()
    third = start_replica(master, master.dir.parent / "second")
    try:
        store.flush()
        assert third.client().get(f"{prefix}{{n}}") == b"1"
        assert master.client().get(f"{prefix}{{n}}") == b"1"
        store.close()
    finally:
        third.stop()


def test_wait_on_a_cluster_through_a_failover(tmp_path: Path) -> None:
    """Flushes with wait=1 on a one-master cluster; the master is killed and
    its replica takes over (CLUSTER FAILOVER TAKEOVER); the store follows
    it, and every flushed count is there once."""
    need_redis()
    cluster = ReplicatedCluster(tmp_path / "cluster", replicas=1).start()
    try:
        prefix = unique_prefix()
        store = tallies.open(cluster.url(prefix, flush="3600", wait="1", timeout="2"))
        for i in range(20):
            store.counter(f"c{i % 4}").increment(i)
            store.keyed("k").increment(f"x{i}")
        store.flush()
        old, new = cluster.nodes
        old.kill()
        assert "OK" in redis_cli(new.port, "cluster", "failover", "takeover")
        deadline = time.monotonic() + 30
        while info(new.port).get("role") != "master":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client = new.client()
        assert sum(int(client.get(f"{prefix}{{c{j}}}")) for j in range(4)) == sum(range(20))
        assert len(client.hgetall(f"{prefix}{{k}}")) == 20
        # the old master comes back as a replica; flushes confirm again
        old.start()
        cluster.wait_ok(cluster.nodes)
        store.counter("c0").increment(100)
        deadline = time.monotonic() + 30
        while True:
            try:
                store.flush()
                break
            except FlushError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert int(client.get(f"{prefix}{{c0}}")) == sum(range(0, 20, 4)) + 100
        on_replica = old.client()
        on_replica.execute_command("READONLY")  # a cluster replica answers MOVED otherwise
        assert int(on_replica.get(f"{prefix}{{c0}}")) == sum(range(0, 20, 4)) + 100
        store.close()
    finally:
        cluster.stop()


def test_wait_zero_is_what_it_was(pair: tuple[RedisServer, RedisServer]) -> None:
    """The default: a flush returns once the master has the batch, replicas or not."""
    master, replica = pair
    prefix = unique_prefix()
    store = tallies.open(master.url(prefix, flush="3600", timeout="3"))
    with Stopped(replica):
        store.counter("n").increment(4)
        t0 = time.monotonic()
        store.flush()
        assert time.monotonic() - t0 < 1.0  # wait=1 would take 1.5 s here
    wait_in_sync(master, [replica])
    store.close()
