"""``tallies bench --redis``: the rows and targets it prints (a quick run on a
redis-server it starts itself), and what it says without redis-server."""

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
    out = subprocess.run(
        [sys.executable, "-m", "tallies", "bench", "--redis", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0].startswith("redis:// (a redis-server started for this run")
    rows = lines[1:]
    assert len(rows) == 6
    for row in rows[:4] + rows[5:]:
        assert row.rstrip().endswith(("met", "**missed**"))
    assert "total 80,000 (exact)" in rows[4]
