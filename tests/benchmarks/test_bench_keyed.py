"""The KeyedCounter part of ``tallies bench``: its rows, targets and exactness
checks (speed is never asserted)."""

from __future__ import annotations

from benchmarks import keyed
from benchmarks.harness import format_rows


def test_every_row_has_its_fields_and_every_count_is_exact() -> None:
    calls = keyed._per_call(rounds=2, iterations=20)
    names = [r.name for r in calls]
    assert "floor: l.clear()" in names
    assert "KeyedCounter.increment(key), count >= 1,000" in names
    judged = [r for r in calls if r.target]
    assert len(judged) == 4 and all(r.verdict in ("met", "missed") for r in judged)
    assert all(len(r.ratios) == 2 for r in judged)  # a ratio per round
    bulk = keyed._bulk(2, 500)
    assert all(r.verdict in ("met", "missed") for r in bulk)
    assert all(len(r.data["counter_seconds"]) == 2 for r in bulk)
    rows = keyed._seed_workload(2, threads=2, per_thread=1_000, nkeys=100)
    assert all(r.data["exact"] for r in rows), rows
    assert all(r.reason != "WRONG RESULT" for r in rows)
    mem = keyed._memory(500)
    assert all(r.value is not None and r.value > 0 for r in mem)
    text = format_rows(rows + mem)
    assert "KeyedCounter" in text
