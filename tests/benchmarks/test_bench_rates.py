"""The rates part of `tallies bench` runs, checks its own results and names its targets."""

from __future__ import annotations

import importlib.util

from benchmarks import rates
from benchmarks.harness import format_rows


def test_bench_rates_quick() -> None:
    rows = rates.measure(rounds=2, iterations=100, peer_seconds=0.2, events=20_000)
    by_name = {r.name: r for r in rows}
    targets = [r for r in rows if r.target]
    assert {r.name for r in targets} == {
        "RateCounter.increment()",
        "KeyedRateCounter.increment(key)",
        "RateCounter.count(), 60 buckets",
    }
    assert all(r.verdict in {"met", "missed"} for r in targets)
    # a rate's increment is held to the counter it is built on, round by round
    assert by_name["RateCounter.increment()"].of == "Counter.increment()"
    assert len(by_name["RateCounter.increment()"].ratios) == 2
    window = [r for r in rows if r.part == rates.PART_WINDOW]
    names = " ".join(r.name for r in window)
    assert "tallies.RateCounter" in names and "deque" in names
    limits_installed = importlib.util.find_spec("limits") is not None
    if limits_installed:
        assert "MovingWindowRateLimiter" in names and "SlidingWindowCounterRateLimiter" in names
    else:  # a peer that is not installed is reported as such, never given a number
        (absent,) = [r for r in window if r.name == "limits"]
        assert absent.value is None and absent.detail.startswith("not installed")
    for r in window:
        if r.name == "limits" and not limits_installed:
            continue
        assert r.value is not None and r.value > 0
        assert r.data["bytes"] > 0 and r.data["events_measured"] > 0
    ours = by_name["tallies.RateCounter.increment()"]
    deque = by_name["deque of timestamps + Lock"]
    assert ours.data["bytes"] < deque.data["bytes"]  # O(buckets) against O(events)
    text = format_rows(rows)
    assert "met" in text or "missed" in text
