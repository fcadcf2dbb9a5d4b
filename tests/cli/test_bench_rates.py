"""The rates part of `tallies bench` runs, checks its own results and names its targets."""

from __future__ import annotations

import importlib.util

from tallies.cli.bench_rates import format_rows, run


def test_bench_rates_quick() -> None:
    rows = run(rounds=2, iterations=100, peer_seconds=0.2, events=20_000)
    by_name = {r["name"]: r for r in rows}
    targets = [r for r in rows if r.get("target")]
    assert {r["name"] for r in targets} == {
        "rates: 1 thread, ns per op: RateCounter.increment()",
        "rates: 1 thread, ns per op: KeyedRateCounter.increment(key)",
        "rates: 1 thread, ns per op: RateCounter.count(), 60 buckets",
    }
    assert all(r["verdict"] in {"met", "missed"} for r in targets)
    window = [r for r in rows if "events in a 60 s window" in r["name"]]
    names = " ".join(r["name"] for r in window)
    assert "tallies.RateCounter" in names and "deque" in names
    if importlib.util.find_spec("limits") is not None:
        assert "MovingWindowRateLimiter" in names and "SlidingWindowCounterRateLimiter" in names
    for r in window:
        assert r["ns"] > 0 and r["bytes"] > 0 and r["events_measured"] > 0
    ours = by_name["1,000,000 events in a 60 s window: tallies.RateCounter.increment()"]
    deque = by_name["1,000,000 events in a 60 s window: deque of timestamps + Lock"]
    assert ours["bytes"] < deque["bytes"]  # O(buckets) against O(events)
    text = format_rows(rows)
    assert "met" in text or "missed" in text
