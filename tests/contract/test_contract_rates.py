"""The contract, rates: ``store.rate()`` and ``store.keyed_rate()`` behave as
``tallies.RateCounter`` / ``KeyedRateCounter`` on every store, shared as widely
as the store is (write-behind stores: wall-clock buckets, flushed exactly once,
read-your-writes).  Every test runs on every store of ``_contract.STORES``."""

from __future__ import annotations

import pickle

import pytest
from _contract import another_writer, facts

import tallies


def test_a_rate_counts_and_reads_its_own_writes(store_url: str) -> None:
    with tallies.open(store_url) as s:
        r = s.rate("requests", 60, 1)
        assert s.rate("requests", 60, 1) is r
        r.increment()
        r.increment(4)
        r.decrement()
        assert r.count() == 4 and r.total() == 4
        assert r.per_second() == pytest.approx(4 / 60)
        assert r.count(1.0) == 4  # the current bucket is always counted
        s.flush()
        r.increment(2)
        assert r.count() == 6 and r.total() == 6
        assert (r.window, r.resolution, r.buckets) == (60.0, 1.0, 60)
        snap = s.snapshot()
        assert snap["rates"]["requests"]["count"] == 6
        assert snap["rates"]["requests"]["total"] == 6
        assert "requests" in s.names()


def test_reset_takes_the_total_and_empties_every_bucket(store_url: str) -> None:
    with tallies.open(store_url) as s:
        r = s.rate("jobs", 10, 1)
        r.increment(7)
        s.flush()
        r.increment(2)
        assert r.reset() == 9
        assert r.count() == 0 and r.total() == 0
        r.increment()
        assert r.count() == 1 and r.total() == 1


def test_a_keyed_rate_counts_each_key(store_url: str) -> None:
    with tallies.open(store_url) as s:
        kr = s.keyed_rate("status", 30, 1)
        kr.increment("200", 5)
        kr.increment("404")
        s.flush()
        kr.increment("200")
        kr.increment("500", 2)
        kr.decrement("500", 2)
        assert kr.count("200") == 6 and kr.count("404") == 1 and kr.count("nope") == 0
        assert kr.snapshot() == {"200": 6, "404": 1}
        assert kr.most_common(1) == [("200", 6)]
        assert kr.per_second("404") == pytest.approx(1 / 30)
        assert s.snapshot()["keyed_rates"]["status"]["counts"] == {"200": 6, "404": 1}


def test_window_and_resolution_are_fixed_by_the_first_use(store_url: str) -> None:
    with tallies.open(store_url) as s:
        s.rate("r", 10, 0.5)
        with pytest.raises(ValueError, match=r"window=10\.0, resolution=0\.5"):
            s.rate("r", 20, 0.5)
        with pytest.raises(ValueError, match="is a rate"):
            s.keyed_rate("r", 10, 0.5)
        with pytest.raises(ValueError, match="is a rate"):
            s.counter("r")
        s.counter("c")
        with pytest.raises(ValueError, match="is a counter"):
            s.rate("c")


@pytest.mark.parametrize(
    ("window", "resolution", "error"),
    [(0, 1, ValueError), (10, 20, ValueError), (-1, 1, ValueError), ("10", 1, TypeError)],
)
def test_bad_windows_are_refused_and_create_nothing(
    store_url: str, window: object, resolution: object, error: type[Exception]
) -> None:
    with tallies.open(store_url) as s:
        with pytest.raises(error):
            s.rate("bad", window, resolution)  # type: ignore[arg-type]
        assert "bad" not in s.names()
        s.rate("bad", 10, 1)  # the name is still free


def test_bad_updates_change_nothing(store_url: str) -> None:
    with tallies.open(store_url) as s:
        r = s.rate("r", 10, 1)
        kr = s.keyed_rate("k", 10, 1)
        r.increment(3)
        kr.increment("a", 3)
        for call, error in [
            (lambda: r.increment(1.5), TypeError),
            (lambda: r.increment("1"), TypeError),
            (lambda: r.increment(2**63), OverflowError),
            (lambda: kr.increment(404), TypeError),
            (lambda: kr.increment("", 1), ValueError),
            (lambda: kr.increment("a", 2.0), TypeError),
        ]:
            with pytest.raises(error):
                call()
        assert r.count() == 3 and kr.snapshot() == {"a": 3}


def test_another_writer_sees_the_flushed_events(store_url: str) -> None:
    if not facts(store_url).shared:
        pytest.skip("memory:// is one process's store: no other writer shares it")
    with tallies.open(store_url) as a, tallies.open(another_writer(store_url)) as b:
        ra, rb = a.rate("shared", 60, 1), b.rate("shared", 60, 1)
        ka, kb = a.keyed_rate("ks", 60, 1), b.keyed_rate("ks", 60, 1)
        ra.increment(3)
        rb.increment(4)
        ka.increment("x")
        kb.increment("x", 2)
        a.flush()
        b.flush()
        assert ra.count() == rb.count() == 7
        assert ra.total() == rb.total() == 7
        assert ka.snapshot() == kb.snapshot() == {"x": 3}


def test_rates_pickle_to_the_same_rate(store_url: str) -> None:
    if not facts(store_url).shared:
        pytest.skip("memory:// rates are plain RateCounters: a pickle is a copy")
    with tallies.open(store_url) as s:
        r = s.rate("p", 60, 1)
        r.increment(2)
        again = pickle.loads(pickle.dumps(r))
        again.increment()
        assert r.count() == 3 and again.count() == 3
