"""The `tallies bench --processes` code runs and its counts are exact.

This checks no speed (benchmarks do that, never tests): only that every
measured configuration counted exactly what its workers did, and that each
comparison is a ratio taken per round.
"""

from __future__ import annotations

import importlib.util
import json

from _bench_support import bench

from benchmarks import processes


def test_every_configuration_counts_exactly_and_every_ratio_is_per_round() -> None:
    rows = processes.run(n=2000, rounds=2, peers=True, op_ns=200_000)
    by_name = {r.name: r for r in rows}
    total = by_name["shm:// total"]
    assert total.value == 2 * 5 * 2000 and total.verdict == "met"
    value = by_name["multiprocessing.Value + lock: tallies faster by"]
    assert "total 8,000 (met)" in value.detail  # 2 rounds x 2 processes x 2,000
    prometheus = by_name["prometheus_client multiprocess: tallies faster by"]
    if importlib.util.find_spec("prometheus_client") is not None:
        assert "total 8,000 (met)" in prometheus.detail
    else:
        assert prometheus.detail == "not installed: skipped"
    for name in (
        "process 1 of 2, shm://",
        "scaling: the slower of the 2 vs a lone process",
        "machine baseline: 2 processes of a loop that shares nothing",
        "multiprocessing.Value + lock: tallies faster by",
    ):
        assert len(by_name[name].ratios) == 2 and all(x > 0 for x in by_name[name].ratios)
    single = by_name["shm:// increment() vs in-process Counter.increment()"]
    assert len(single.ratios) == 31 and single.verdict in {"met", "missed"}


def test_quick_json_report_counts_exactly() -> None:
    report = json.loads(bench("--processes", "--quick", "--json").stdout)
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["shm:// total"]["verdict"] == "met"
    assert rows["shm:// increment() vs in-process Counter.increment()"]["value"] > 0
    assert rows["lone process, shm://"]["value"] > 0
