"""``tallies bench --stores``: the quick run has every part and row, reports
met / missed for every target, and its counts are exact (speed itself is
never asserted: figures on a shared machine are noise)."""

from __future__ import annotations

from benchmarks import stores
from benchmarks.harness import format_targets


def test_quick_run_has_every_part_and_exact_totals() -> None:
    rows = stores.run(quick=True)
    parts = {r.part for r in rows}
    assert parts == {p.name for p in stores.PARTS}
    for r in rows:
        if r.target:
            assert r.verdict in {"met", "missed"} or r.value is None, r
    exact = [r for r in rows if r.target == "exact"]
    assert len([r for r in exact if r.part.startswith("sqlite")]) == 2, exact
    assert all(r.verdict == "met" for r in exact), exact
    increment = next(r for r in rows if r.name == "sqlite:// counter increment()")
    assert len(increment.ratios) == 5 and increment.target == "<= 1.5x in-process Counter"
    text = format_targets(rows)
    assert "target <= 1.5x in-process Counter" in text
