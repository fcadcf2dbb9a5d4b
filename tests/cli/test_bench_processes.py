"""The `tallies bench --processes` code runs and its counts are exact.

This checks no speed (benchmarks do that, never tests): only that every
measured configuration counted exactly what its workers did.
"""

from __future__ import annotations

from tallies.cli.bench_processes import bench_processes, format_report


def test_bench_processes_runs_and_counts_exactly() -> None:
    r = bench_processes(n=2000, rounds=1, peers=True, op_loops=2000)
    assert r["shm_total"] == r["shm_expected"] == 5 * 2000
    assert r["value_total"] == 2 * 2000
    if r.get("prometheus_s") is not None:
        assert r["prometheus_total"] == 2 * 2000
    report = format_report(r)
    assert "2 processes x 2,000 increments" in report
    assert "one increment(): shm://" in report
    assert f"shm:// total {5 * 2000:,} of {5 * 2000:,} expected  ok" in report
