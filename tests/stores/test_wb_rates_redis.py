"""redis:// rates under a lost reply: the flush's batch stays in flight, reads
count each event once while it is (the read script reads the writer record
with the buckets and subtracts the applied parts), and the next flush settles
it without applying it twice."""

from __future__ import annotations

import contextlib

from _redis_support import LostReplyProxy, RedisServer, unique_prefix

import tallies
from tallies.stores import FlushError


def test_a_lost_reply_counts_rate_events_once(redis_server: RedisServer) -> None:
    proxy = LostReplyProxy(redis_server.port)
    prefix = unique_prefix("rl")
    url = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&flush=3600&timeout=0.5"
    try:
        with tallies.open(url) as s:
            r = s.rate("r", 60, 1)
            kr = s.keyed_rate("k", 60, 1)
            c = s.counter("c")
            r.increment(5)
            kr.increment("a", 2)
            s.flush()  # loads the script: the next EVALSHA runs for sure
            r.increment(7)
            kr.increment("a", 3)
            kr.increment("b")
            c.increment()
            proxy.arm()
            with contextlib.suppress(FlushError):
                s.flush()
            assert proxy.dropped == 1
            assert r.count() == 12 and r.total() == 12
            assert kr.snapshot() == {"a": 5, "b": 1}
            s.flush()  # settles the batch in flight: applied once
            assert r.count() == 12 and r.total() == 12
            assert kr.snapshot() == {"a": 5, "b": 1}
        with tallies.open(redis_server.url(prefix)) as other:
            assert other.rate("r", 60, 1).count() == 12
            assert other.keyed_rate("k", 60, 1).snapshot() == {"a": 5, "b": 1}
    finally:
        proxy.close()
