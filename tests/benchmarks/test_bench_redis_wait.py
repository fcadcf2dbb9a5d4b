"""``tallies bench --stores``, part ``redis-wait``: a quick run on a master and
a replica it starts itself has every row (its counts are checked inside), and
without redis-server its one row says so."""

from __future__ import annotations

import pytest
from _redis_support import need_redis

from benchmarks import redis_wait, stores


def test_without_redis_server_its_one_row_says_not_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_wait, "REDIS_SERVER", None)
    (row,) = redis_wait.rows(quick=True)
    assert row.value is None
    assert row.detail == "not measured: redis-server not installed"


def test_quick_run_measures_wait_1_beside_wait_0() -> None:
    need_redis()
    rows = redis_wait.rows(quick=True)
    names = [r.name for r in rows]
    assert names[:3] == [
        "flush() of 100 counters + 10 keys, one replica, wait=0",
        "flush() of 100 counters + 10 keys, one replica, wait=1",
        "  wait=1 vs wait=0",
    ]
    raw = names[3:]
    assert raw[:2] == ["INCRBY (fsync always on both)", "INCRBY + WAIT 1 (fsync always on both)"]
    assert raw[2:] in ([], [f"INCRBY + WAITAOF {n} 1 (fsync always on both)" for n in (0, 1)])
    assert all(r.value is not None and r.value > 0 for r in rows)
    assert len(rows[2].ratios) == 9  # one ratio per round
    assert all(("Redis " in r.detail) or ("Valkey " in r.detail) for r in rows)
    assert "redis-wait" in [p.name for p in stores.PARTS]
