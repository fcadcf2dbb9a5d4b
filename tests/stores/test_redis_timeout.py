"""``flush()`` raises FlushError after ``timeout`` when Redis does not answer
(issue 28, 4: under ``CLIENT PAUSE`` it took twice the timeout, because a
call that timed out was sent again)."""

from __future__ import annotations

import time

import pytest
from _redis_support import RedisServer, unique_prefix

import tallies


@pytest.mark.parametrize("timeout", [0.5, 1.0])
def test_flush_is_bounded_by_timeout(redis_server: RedisServer, timeout: float) -> None:
    url = redis_server.url(unique_prefix("to"), flush="3600", timeout=str(timeout))
    r = redis_server.client()
    with tallies.open(url) as store:
        c = store.counter("n")
        c.increment(3)
        store.flush()
        c.increment(4)
        r.execute_command("CLIENT", "PAUSE", str(int(timeout * 1000 * 4)), "ALL")
        try:
            start = time.monotonic()
            with pytest.raises(tallies.FlushError):
                store.flush()
            took = time.monotonic() - start
        finally:
            r.execute_command("CLIENT", "UNPAUSE")
        assert timeout * 0.9 <= took < timeout * 1.6, took
        store.flush()  # applied once, after all
        assert c.value() == 7
    assert int(r.get(url.split("prefix=")[1].split("&")[0] + "{n}")) == 7
    tallies.destroy(url)
