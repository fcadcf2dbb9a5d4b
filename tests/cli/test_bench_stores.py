"""``tallies bench --stores``: the quick run has every part and row, reports
met / missed for every target, and its counts are exact (speed itself is
never asserted: figures on a shared machine are noise)."""

from __future__ import annotations

from tallies.cli import bench_stores


def test_quick_run_has_every_part_and_exact_totals() -> None:
    rows = bench_stores.run(quick=True)
    parts = {r.part for r in rows}
    assert parts == {p.name for p in bench_stores.PARTS}
    for r in rows:
        if r.target:
            assert r.met is not None or r.value is None, r
    exact = [r for r in rows if r.target == "exact"]
    assert len([r for r in exact if r.part.startswith("sqlite")]) == 2, exact
    assert all(r.met for r in exact), exact
    text = bench_stores.format_rows(rows)
    assert "target <= 1.5x" in text and ("met" in text or "MISSED" in text)
