"""``tallies bench --stores``, part ``redis``: the rows and targets (a quick run
on a redis-server it starts itself), and what it says without redis-server."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _redis_support import need_redis

from tallies.cli import bench_redis


def test_without_redis_server_every_row_says_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_redis.shutil, "which", lambda name: None)
    report = bench_redis.bench_redis(quick=True)
    assert report == {"status": "not measured: redis-server not installed"}
    text = bench_redis.format_report(report)
    assert "not measured: redis-server not installed" in text


def test_quick_run_measures_every_row_and_checks_every_target() -> None:
    need_redis()
    rows = bench_redis.store_rows(quick=True)
    assert [r.part for r in rows] == ["redis"] * 8
    assert all(r.value is not None and r.value > 0 for r in rows)
    assert all(r.met is not None for r in rows)  # every row has a target, met or not
    exact = [r for r in rows if r.target == "exact"]
    assert len(exact) == 1 and exact[0].met and exact[0].detail == "total 80,000"
    without = subprocess.run(
        [
            sys.executable,
            "-c",
            "from tallies.cli.bench_stores import PARTS; print([p.name for p in PARTS])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "'redis'" in without
