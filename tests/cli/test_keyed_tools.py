"""Smoke tests of the KeyedCounter demo and of the demo's thread timer (their shape
and their exactness checks; speed is never asserted)."""

from __future__ import annotations

import threading
import time

import pytest

from tallies.cli import _timing
from tallies.cli import demo_keyed as _demo_keyed


def test_demo_rows_are_real_and_safe_patterns_exact() -> None:
    rows, sentences = _demo_keyed.run(threads=4, events=2_000)
    assert [r["name"] for r in rows] == [name for name, _, _ in _demo_keyed.PATTERNS]
    for r in rows:
        assert set(r) >= {"name", "expected", "final", "lost", "seconds"}
        per_thread = _demo_keyed._events_for(r["name"], 2_000)
        assert r["expected"] == 4 * per_thread and r["lost"] == r["expected"] - r["final"]
        if r["safe"]:
            assert r["lost"] == 0, r
    assert 1 <= len(sentences) <= 5
    report = _demo_keyed.format_report(rows, sentences)
    assert "KeyedCounter" in report


def test_rows_slow_without_the_gil_count_fewer_events_and_say_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the GIL the dict.get rows count a tenth of the events, and a sentence says
    which rows, how many events and why; with the GIL every row counts them all."""
    monkeypatch.setattr(_demo_keyed, "_gil_enabled", lambda: False)
    rows, sentences = _demo_keyed.run(threads=3, events=1_000)
    slow = {r["name"]: r["expected"] for r in rows if r["name"] in _demo_keyed.SLOW_WITHOUT_GIL}
    assert slow and set(slow.values()) == {300}
    assert all(r["expected"] == 3_000 for r in rows if r["name"] not in slow)
    (said,) = [s for s in sentences if "instead of" in s]
    assert "100 events per thread instead of 1,000" in said and "dict.get" in said
    monkeypatch.setattr(_demo_keyed, "_gil_enabled", lambda: True)
    rows, sentences = _demo_keyed.run(threads=3, events=1_000)
    assert all(r["expected"] == 3_000 for r in rows)
    assert not [s for s in sentences if "instead of" in s]


def test_timed_threads_is_measured_by_the_workers_from_a_common_start() -> None:
    """The time covers every worker's work (each sleeps 50 ms after the common start) and
    not their setup (a 200 ms sleep before it); the main thread reads no clock."""
    started: list[float] = []

    def make(i: int) -> object:
        time.sleep(0.2)  # setup: not timed

        def work() -> None:
            started.append(time.perf_counter())
            time.sleep(0.05)

        return work

    seconds = _timing.timed_threads(4, make)  # type: ignore[arg-type]
    assert len(started) == 4
    assert 0.05 <= seconds < 0.2 + max(started) - min(started)


def test_timed_threads_reraises_a_worker_failure_and_leaves_no_thread() -> None:
    before = threading.active_count()

    def make(i: int) -> object:
        if i == 2:
            raise ValueError("setup failed")
        return lambda: None

    with pytest.raises(ValueError, match="setup failed"):
        _timing.timed_threads(3, make)  # type: ignore[arg-type]

    def boom() -> None:
        raise RuntimeError("work failed")

    with pytest.raises(RuntimeError, match="work failed"):
        _timing.timed_threads(2, lambda i: boom)
    assert threading.active_count() == before
