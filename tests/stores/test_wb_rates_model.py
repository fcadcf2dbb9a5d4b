"""Write-behind rates against a model, with a driven wall clock: two writers
of one store (another store object on the same file / keyspace: another
process as far as the store can tell), increments, decrements, flushes,
resets, and reads of every window width.  The model: an event is counted by
a writer's reads once it is flushed or while it is that writer's own
pending event; a reset takes every flushed event and the resetting writer's
pending ones (another writer's pending events land after it)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from _redis_support import RedisServer, unique_prefix
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import tallies
from tallies.stores import FlushError
from tallies.stores import sqlite as sqlite_store

RES = 1_000_000_000
WINDOW = 5  # buckets


class RateModel(RuleBasedStateMachine):
    url = ""

    @initialize()
    def open(self) -> None:
        self.stores = [tallies.open(self.url), tallies.open(self.url + "&timeout=4.5")]
        self.now = (time.time_ns() // RES) * RES
        self.rates = [s.rate("r", WINDOW, 1) for s in self.stores]
        self.krates = [s.keyed_rate("k", WINDOW, 1) for s in self.stores]
        for r in self.rates + self.krates:
            r.clock = lambda: self.now
        # events: [slot, n, key or None, writer, flushed]
        self.events: list[list[object]] = []

    def teardown(self) -> None:
        for s in getattr(self, "stores", []):
            s.close()
        if self.url:
            tallies.destroy(self.url)

    @rule(dt=st.integers(0, 5 * RES // 2))
    def advance(self, dt: int) -> None:
        self.now += dt

    @rule(w=st.integers(0, 1), n=st.integers(-3, 5).filter(bool))
    def count(self, w: int, n: int) -> None:
        if n > 0:
            self.rates[w].increment(n)
        else:
            self.rates[w].decrement(-n)
        self.events.append([self.now // RES, n, None, w, False])

    @rule(w=st.integers(0, 1), key=st.sampled_from("ab"), n=st.integers(1, 4))
    def count_key(self, w: int, key: str, n: int) -> None:
        self.krates[w].increment(key, n)
        self.events.append([self.now // RES, n, key, w, False])

    @rule(w=st.integers(0, 1))
    def flush(self, w: int) -> None:
        self.stores[w].flush()
        for e in self.events:
            if e[3] == w:
                e[4] = True

    @rule(w=st.integers(0, 1))
    def reset(self, w: int) -> None:
        expected = sum(e[1] for e in self._seen(w) if e[2] is None)  # type: ignore[misc]
        assert self.rates[w].reset() == expected
        self.events = [e for e in self.events if e[2] is not None or not (e[4] or e[3] == w)]

    def _seen(self, w: int) -> Iterator[list[object]]:
        return (e for e in self.events if e[4] or e[3] == w)

    @invariant()
    def reads_match(self) -> None:
        if not hasattr(self, "stores"):
            return
        cur = self.now // RES
        for w in (0, 1):
            seen = list(self._seen(w))
            assert self.rates[w].total() == sum(e[1] for e in seen if e[2] is None)  # type: ignore[misc]
            for width in (1, 2, WINDOW):
                lo = max(min((self.now - width * RES) // RES + 1, cur), cur - WINDOW + 1)
                inside = [e for e in seen if lo <= e[0] <= cur]  # type: ignore[operator]
                assert self.rates[w].count(width) == sum(e[1] for e in inside if e[2] is None)  # type: ignore[misc]
                want = {}
                for e in inside:
                    if e[2] is not None:
                        want[e[2]] = want.get(e[2], 0) + e[1]  # type: ignore[call-overload, operator]
                assert self.krates[w].snapshot(width) == {k: v for k, v in want.items() if v}


SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def test_sqlite_rates_follow_the_model(tmp_path: pytest.TempPathFactory) -> None:
    class M(RateModel):
        n = 0

        @initialize()
        def open(self) -> None:
            M.n += 1
            self.url = f"sqlite:///{tmp_path}/m{M.n}.db?flush=3600"
            super().open()

        @rule(w=st.integers(0, 1))
        def flush_with_a_lost_reply(self, w: int) -> None:
            """The commit happens, the writer hears an error: the batch stays
            in flight, and reads count it once (the next flush settles it)."""
            self.stores[w].flush()  # settles a batch in flight: the failure is the new one's
            key = "TALLIES_SQLITE_FAILafter-commit"
            os.environ["TALLIES_SQLITE_FAIL"] = f"after-commit:{sqlite_store._hits[key] + 1}"
            try:
                self.stores[w].flush()
                lost = False
            except FlushError:
                lost = True
            finally:
                del os.environ["TALLIES_SQLITE_FAIL"]
            for e in self.events:
                if e[3] == w:
                    e[4] = True
            if lost:
                self.reads_match()  # while it is in flight

    M.TestCase.settings = SETTINGS
    M.TestCase().runTest()


def test_redis_rates_follow_the_model(redis_server: RedisServer) -> None:
    class M(RateModel):
        @initialize()
        def open(self) -> None:
            self.url = redis_server.url(unique_prefix("rm"), flush="3600")
            super().open()

    M.TestCase.settings = SETTINGS
    M.TestCase().runTest()


@pytest.mark.parametrize("scheme", ["sqlite", "redis"])
def test_an_event_older_than_the_window_stays_out_of_it_after_a_new_bucket(
    scheme: str, tmp_path: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> None:
    """Found by the model: a pending event, then a clock more than a window
    later and a new event.  The old event is in the total, never in a window
    (it was reported in the bucket just before the new one)."""
    if scheme == "sqlite":
        url = f"sqlite:///{tmp_path}/old.db?flush=3600"
    else:
        url = request.getfixturevalue("redis_server").url(unique_prefix("old"), flush="3600")
    store = tallies.open(url)
    try:
        for gap in (WINDOW, WINDOW + 1, 3 * WINDOW):
            r = store.rate(f"r{gap}", WINDOW, 1)
            now = [(time.time_ns() // RES) * RES]  # the driven clock
            r.clock = lambda now=now: now[0]
            r.increment()
            now[0] += gap * RES
            assert [r.count(w) for w in (1, 2, WINDOW)] == [0, 0, 0]
            r.increment()
            assert [r.count(w) for w in (1, 2, WINDOW)] == [1, 1, 1], gap
            assert r.total() == 2
            store.flush()
            assert [r.count(w) for w in (1, 2, WINDOW)] == [1, 1, 1], gap
            assert r.total() == 2
    finally:
        store.close()
        tallies.destroy(url)
