"""Smoke tests of the KeyedCounter benchmark and demo modules (their shape and
their exactness checks; speed is never asserted)."""

from __future__ import annotations

from tallies.cli import bench_keyed as _bench_keyed
from tallies.cli import demo_keyed as _demo_keyed


def test_demo_rows_are_real_and_safe_patterns_exact() -> None:
    rows, sentences = _demo_keyed.run(threads=4, events=2_000)
    assert [r["name"] for r in rows] == [name for name, _, _ in _demo_keyed.PATTERNS]
    for r in rows:
        assert set(r) >= {"name", "expected", "final", "lost", "seconds"}
        assert r["expected"] == 8_000 and r["lost"] == r["expected"] - r["final"]
        if r["safe"]:
            assert r["lost"] == 0, r
    assert 1 <= len(sentences) <= 4
    report = _demo_keyed.format_report(rows, sentences)
    assert "KeyedCounter" in report


def test_bench_rows_have_the_promised_fields() -> None:
    st = _bench_keyed._per_call(rounds=1, iterations=20)
    assert "floor: l.clear()" in st and "KeyedCounter.increment(key), count >= 1,000" in st
    per_call = _bench_keyed._per_call_rows(st)
    assert all(r["verdict"] in ("meets", "misses") for r in per_call if r["target"])
    bulk = _bench_keyed._bulk(1, 500)
    assert all(r["verdict"] in ("meets", "misses") and r["counter_seconds"] > 0 for r in bulk)
    rows = _bench_keyed._seed_workload(1, threads=2, per_thread=1_000, nkeys=100)
    assert all(r["exact"] for r in rows), rows
    mem = _bench_keyed._memory(500)
    assert all(r["bytes_per_key"] > 0 for r in mem)
    text = _bench_keyed.format_rows(rows + mem)
    assert "KeyedCounter" in text
