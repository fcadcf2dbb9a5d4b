"""``tallies bench --stores``, part ``redis``: the rows and targets (a quick run
on a redis-server it starts itself), and what it says without redis-server."""

from __future__ import annotations

import pytest
from _redis_support import need_redis

from benchmarks import redis_store, stores


def test_without_redis_server_its_one_row_says_not_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_store.shutil, "which", lambda name: None)
    (row,) = redis_store.rows(quick=True)
    assert row.value is None and row.verdict == ""
    assert row.detail == "not measured: redis-server not installed"


def test_quick_run_measures_every_row_and_checks_every_target() -> None:
    need_redis()
    rows = redis_store.rows(quick=True)
    assert [r.part for r in rows] == ["redis"] * 8
    assert all(r.value is not None and r.value > 0 for r in rows)
    assert all(r.verdict in {"met", "missed"} for r in rows)  # every row has a target
    exact = [r for r in rows if r.target == "exact"]
    assert len(exact) == 1 and exact[0].verdict == "met"
    assert exact[0].detail == "totals 80,000"
    increment = rows[0]
    assert increment.name == "increment() on redis:// vs Counter.increment()"
    assert len(increment.ratios) == 5  # one ratio per round
    assert "redis" in [p.name for p in stores.PARTS]
