"""redis:// under faults, on real servers: a reply lost after the script ran,
redis-server SIGKILLed and restarted on its append-only file, Redis stopped
for seconds under load.  Each time: nothing lost, nothing counted twice."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest
from _redis_support import LostReplyProxy, RedisServer, unique_prefix

import tallies
from tallies.stores.base import FlushError, StoreUnavailableError


def test_a_lost_reply_is_counted_once(redis_server: RedisServer) -> None:
    proxy = LostReplyProxy(redis_server.port)
    prefix = unique_prefix()
    url = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&flush=60&timeout=0.5"
    r = redis_server.client()
    try:
        with tallies.open(url) as store:
            c = store.counter("hits")
            kc = store.keyed("by")
            c.increment(5)
            kc.increment("a", 3)
            store.flush()  # loads the script: the next EVALSHA runs for sure
            c.increment(10)
            kc.increment("a", 4)
            kc.increment("b", 1)
            proxy.arm()
            try:
                store.flush()  # the reply is dropped: redis-py or the next flush retries
            except FlushError:
                store.flush()
            assert proxy.dropped == 1
            assert c.value() == 15
            assert r.get(f"{prefix}{{hits}}") == b"15"
            assert r.hgetall(f"{prefix}{{by}}") == {b"a": b"7", b"b": b"1"}
            c.increment(1)
        assert r.get(f"{prefix}{{hits}}") == b"16"
    finally:
        proxy.close()
        r.close()


def test_a_lost_reply_then_a_failed_retry_is_still_counted_once(
    redis_server: RedisServer,
) -> None:
    """The reply is lost and Redis then refuses connections: the flush fails,
    the batch stays in flight; reads meanwhile are exact (the script ran: the
    in-flight batch is not counted twice); the next flush settles it."""
    proxy = LostReplyProxy(redis_server.port)
    prefix = unique_prefix()
    url = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&flush=60&timeout=0.5"
    r = redis_server.client()
    try:
        store = tallies.open(url)
        be = store._wb._be()
        c = store.counter("n")
        kc = store.keyed("k")
        c.increment(2)
        store.flush()
        c.increment(40)
        kc.increment("x", 9)
        proxy.arm()
        # one try only: the lost reply surfaces as a failed flush
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        be._client.set_retry(Retry(NoBackoff(), 0))
        with pytest.raises(FlushError):
            store.flush()
        assert proxy.dropped == 1
        assert r.get(f"{prefix}{{n}}") == b"42"  # it did run
        assert store.pending()["in_flight"] is not None
        assert c.value() == 42  # not 82: the read sees the batch applied
        assert kc.value("x") == 9
        assert store.snapshot()["counters"]["n"] == 42
        store.flush()  # the same batch again: "dup"
        assert store.pending()["in_flight"] is None
        assert r.get(f"{prefix}{{n}}") == b"42"
        assert r.hgetall(f"{prefix}{{k}}") == {b"x": b"9"}
        store.close()
    finally:
        proxy.close()
        r.close()


def _load(store: Any, stop: threading.Event, done: list[int], errors: list[BaseException]) -> None:
    c = store.counter("load")
    kc = store.keyed("load_k")
    n = 0
    try:
        while not stop.is_set() and n < 2_000_000:
            for _ in range(500):
                c.increment()
                kc.increment(f"k{n % 7}")
                n += 1
            time.sleep(0.001)
    except BaseException as exc:  # pragma: no cover - reported by the test
        errors.append(exc)
    done.append(n)


def test_redis_stopped_under_load_then_back(aof_server: RedisServer) -> None:
    prefix = unique_prefix()
    url = aof_server.url(prefix, flush="0.2", timeout="0.5")
    store = tallies.open(url)
    stop = threading.Event()
    done: list[int] = []
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_load, args=(store, stop, done, errors)) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert aof_server.proc is not None
    aof_server.proc.send_signal(signal.SIGSTOP)  # hangs: no answer at all
    try:
        with pytest.raises(FlushError) as info:
            store.flush()  # raises after timeout=0.5, the deltas stay
        assert isinstance(info.value.__cause__, StoreUnavailableError)
        assert "Timeout" in str(info.value.__cause__)
    finally:
        # the request may still sit in Redis' socket buffer and run now: the
        # batch stays in flight until a later flush learns that ("dup")
        aof_server.proc.send_signal(signal.SIGCONT)
    aof_server.stop()  # clean shutdown: what was applied is on disk
    try:
        with pytest.raises(FlushError) as info:
            store.flush()
        assert isinstance(info.value.__cause__, StoreUnavailableError)
        counted_before = store.counter("load")._pending()
        time.sleep(3)  # several seconds down, increments go on
        assert not errors
        assert store.counter("load")._pending() > counted_before
        # memory: one delta per name and key, however many increments
        info_pending = store.pending()
        assert (
            not info_pending["held"]["keyed"] or len(info_pending["held"]["keyed"]["load_k"]) <= 7
        )
    finally:
        aof_server.start()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    total = sum(done)
    store.flush()
    r = aof_server.client()
    assert int(r.get(f"{prefix}{{load}}")) == total
    by_key = {k.decode(): int(v) for k, v in r.hgetall(f"{prefix}{{load_k}}").items()}
    assert sum(by_key.values()) == total and len(by_key) == 7
    store.close()
    r.close()


def test_redis_sigkilled_and_restarted_on_its_aof(aof_server: RedisServer) -> None:
    """Every flush that returned is there, once; nothing doubled; nothing lost."""
    prefix = unique_prefix()
    url = aof_server.url(prefix, flush="3600", timeout="0.5")
    store = tallies.open(url)
    c = store.counter("jobs")
    kc = store.keyed("jobs_by")
    acknowledged: list[int] = []
    incremented = 0
    failures = 0
    killed = False
    for round_ in range(60):
        for _ in range(1000):
            c.increment()
            kc.increment(f"q{incremented % 5}")
            incremented += 1
        before_flush = incremented
        try:
            store.flush()
            acknowledged.append(before_flush)
        except FlushError:
            failures += 1
        if round_ == 20:
            aof_server.kill()
            killed = True
        if round_ == 30:
            aof_server.start()
            r = aof_server.client()
            # after the restart, before anything new is flushed: every
            # acknowledged flush is there, and nothing more than was counted
            assert acknowledged[-1] <= int(r.get(f"{prefix}{{jobs}}")) <= incremented
            r.close()
    assert killed and failures >= 5
    store.flush()
    r = aof_server.client()
    assert int(r.get(f"{prefix}{{jobs}}")) == incremented
    by_q = {k.decode(): int(v) for k, v in r.hgetall(f"{prefix}{{jobs_by}}").items()}
    assert by_q == {f"q{i}": incremented // 5 for i in range(5)}
    assert c.value() == incremented
    store.close()
    r.close()
