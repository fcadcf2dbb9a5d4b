"""``tallies bench --stores``, part ``postgresql``: the rows and targets (a
quick run on a PostgreSQL server it starts itself), and what it says without
the server."""

from __future__ import annotations

import pytest
from _postgres_support import need_postgres

from benchmarks import postgres_store, stores


def test_without_the_server_its_one_row_says_not_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(postgres_store, "pg_bindir", lambda: None)
    (row,) = postgres_store.rows(quick=True)
    assert row.value is None and row.verdict == ""
    assert row.detail == "not measured: the PostgreSQL server is not installed"


def test_quick_run_measures_every_row_and_checks_the_counts() -> None:
    need_postgres()
    rows = postgres_store.rows(quick=True)
    assert [r.part for r in rows] == ["postgresql"] * 6
    assert all(r.value is not None and r.value > 0 for r in rows)
    increment, update, flush, store, control, upsert = rows
    assert increment.name == "increment() on postgresql:// vs Counter.increment()"
    assert len(increment.ratios) == 5  # one ratio per round
    for row in (increment, update, flush, store):
        assert row.verdict in {"met", "missed"}, row  # every row has a target
        assert "counted" not in row.reason, row  # and the counts were exact
    assert control.target == "exact" and control.verdict == "met"
    assert upsert.verdict == ""  # a peer: measured beside, no target
    assert "postgresql" in [p.name for p in stores.PARTS]
