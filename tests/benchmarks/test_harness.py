"""benchmarks/harness.py: the method every benchmark shares, as a specification.

Ratios are taken round by round (never as the ratio of two minima), cases run
interleaved in a rotating order, every call is counted, verdicts use one
vocabulary, and the JSON report carries the facts
of the run and every round's ratios."""

from __future__ import annotations

import datetime
import os
from typing import Any

import pytest

from benchmarks.harness import (
    INCONCLUSIVE,
    MET,
    MISSED,
    Row,
    Target,
    Verdict,
    exact,
    format_rows,
    format_targets,
    interleave,
    per_call,
    per_round,
    report_json,
    spawn_workers,
)


def test_a_ratio_is_taken_in_each_round_then_summarised_by_the_median() -> None:
    """The machine slows down after round 1: each round's ratio still compares like
    with like, where the ratio of the two minima would mix the two states."""
    ours = [10.0, 22.0, 21.0]
    theirs = [8.0, 20.0, 20.0]
    ratios = per_round(ours, theirs)
    assert ratios == [1.25, 1.1, 1.05]
    row = Row("p", "ours", ratios=ratios)
    assert row.ratio == 1.1
    assert min(ours) / min(theirs) == 1.25  # what the old method reported
    assert per_round([1.0, 2.0], [0.0, 1.0]) == [2.0]  # a round that measured nothing


def test_cases_run_interleaved_in_a_rotating_order_and_once_means_the_first_round() -> None:
    seen: list[str] = []

    def case(name: str) -> Any:
        return lambda: seen.append(name) or float(len(seen))

    out = interleave({"a": case("a"), "b": case("b"), "c": case("c")}, 3, once=["c"])
    assert seen == ["a", "b", "c", "b", "a", "a", "b"]
    assert out == {"a": [1.0, 5.0, 6.0], "b": [2.0, 4.0, 7.0], "c": [3.0]}


def test_a_repeated_case_keeps_its_fastest_timing_of_the_round() -> None:
    """Back-to-back timings in one round see the same machine; the slowest ones were
    interrupted (here: a timing of 9 among 3s)."""
    timings = iter([3.0, 9.0, 4.0, 5.0, 5.5, 9.0])
    out = interleave({"a": lambda: next(timings)}, 2, repeat=3)
    assert out == {"a": [3.0, 5.0]}


class Counting:
    def __init__(self) -> None:
        self.n = 0

    def increment(self) -> None:
        self.n += 1


def test_per_call_gives_every_round_and_counts_every_call() -> None:
    one, two = Counting(), Counting()
    timed = per_call(
        {
            "one": ("c.increment()", {"c": one}),
            "two": ("c.increment(); c.increment()", {"c": two}),
            "broken": ("c.missing()", {"c": one}),
        },
        rounds=4,
        unroll=8,
        loops=50,
        calls={"two": 2},
    )
    assert set(timed.ns) == {"one", "two"}
    assert timed.errors == {
        "broken": "AttributeError: 'Counting' object has no attribute 'missing'"
    }
    assert all(len(v) == 4 and all(x >= 0 for x in v) for v in timed.ns.values())
    # warm-up (2 x 100 loops) and 4 rounds of 50 loops (5 timings of 10), 8 statements a loop
    assert timed.calls == {"one": (200 + 4 * 50) * 8, "two": (200 + 4 * 50) * 8}
    assert one.n == timed.calls["one"] and two.n == 2 * timed.calls["two"]


def test_one_verdict_vocabulary_with_the_reason() -> None:
    target = Target("<=", 1.3, of="floor")
    assert str(target) == "<= 1.3x floor"
    assert target.judge(1.3) == Verdict(MET)
    assert target.judge(1.31) == Verdict(MISSED)
    assert target.judge(None, "cereggii not installed") == Verdict(
        INCONCLUSIVE, "cereggii not installed"
    )
    assert str(Target(">=", 1000, of="redis://")) == ">= 1,000x redis://"
    assert str(Target("<=", 10, unit="ms")) == "<= 10 ms"
    assert Target("<", 1.0).judge(1.0).word == MISSED
    assert exact(5, 5) == Verdict(MET)
    assert str(exact(4, 5)) == "missed (counted 4 of 5)"


def _words(line: str) -> str:
    """A table line with its columns' padding squeezed to single spaces."""
    return " ".join(line.split())


def test_a_row_shows_its_median_ratio_spread_target_and_verdict() -> None:
    row = Row("part", "tallies.Counter", 18.6, "ns", [1.2, 1.3, 1.25], "floor")
    row.judge(Target("<=", 1.3, of="floor"), row.ratio)
    lines = format_rows([row]).splitlines()
    assert lines[0] == "part"
    assert _words(lines[1]) == (
        "tallies.Counter 18.6 ns 1.25x floor [1.20-1.30x, 3 rounds] [<= 1.3x floor: met]"
    )
    summary = format_targets([row]).splitlines()
    assert summary[0] == "Targets (checked against this run)"
    assert _words(summary[1]) == (
        "met part: tallies.Counter 1.25x floor [1.20-1.30x, 3 rounds]; target <= 1.3x floor"
    )
    missing = Row("part", "peer", detail="not installed (peer)")
    assert _words(format_rows([missing]).splitlines()[1]) == "peer - (not installed (peer))"


def test_the_json_report_has_the_facts_of_the_run_and_every_round() -> None:
    row = Row("part", "ours", 2.0, "ns", [1.0, 2.0, 4.0], "floor")
    report = report_json("tallies bench", [row], quick=True)
    assert report["command"] == "tallies bench" and report["quick"] is True
    when = datetime.datetime.fromisoformat(report["date"])
    assert when.tzinfo is not None
    assert report["machine"]["cpus"] == os.cpu_count()
    assert report["python"]["version"] and report["commit"]
    (out,) = report["rows"]
    assert out["ratios"] == [1.0, 2.0, 4.0]
    assert (out["ratio"], out["ratio_min"], out["ratio_max"]) == (2.0, 1.0, 4.0)


def _worker(value: int, barrier: Any, out: Any) -> None:
    barrier.wait()
    out.put(value * 2)


def _dies(value: int, barrier: Any, out: Any) -> None:
    os._exit(3)


def test_workers_start_together_and_a_dead_worker_fails_the_run() -> None:
    assert spawn_workers(_worker, (21,), 3, method="fork") == [42, 42, 42]
    with pytest.raises(RuntimeError, match=r"a benchmark worker failed \(exit codes \[3"):
        spawn_workers(_dies, (0,), 2, method="fork", timeout=30)
