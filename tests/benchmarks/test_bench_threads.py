"""``tallies bench --threads``: its shape and its exactness checks (speed is never asserted)."""

from __future__ import annotations

import json

from _bench_support import bench

from benchmarks import threads


def test_bench_threads_quick_json_has_every_form_and_a_verdict_per_target() -> None:
    report = json.loads(bench("--threads", "--quick", "--json").stdout)
    rows = report["rows"]
    assert [r["name"] for r in rows] == [f.name for f in threads.FORMS]
    gil = report["python"]["gil_enabled"]
    for row in rows:
        data = row["data"]
        assert data["threads"] >= 2 and data["rounds"] == 1
        assert len(row["ratios"]) == len(data["one_thread_ns"]) == 1
        assert row["ratios"][0] > 0
        assert data["overlap"] is None or data["overlap"] > 0
        if row["target"] == "":
            assert row["verdict"] == "" and "overlap_verdict" not in data
        elif gil:
            assert row["verdict"] == data["overlap_verdict"] == "inconclusive"
            assert row["reason"] == "the GIL is enabled: threads take turns"
        else:
            # one quick round cannot make the 3 rounds a verdict needs
            assert row["verdict"] == "inconclusive"
            assert row["reason"].endswith("rounds had the CPUs, 3 needed")
            assert data["overlap_verdict"] in {"met", "missed", "inconclusive"}
        assert len(data["floor_ratios"]) == 1 and data["floor_ratios"][0] > 0


def test_bench_threads_rows_name_every_form_and_the_load() -> None:
    rows = threads.run(n=4_000, rounds=2, threads=2)
    assert [r.name for r in rows] == [f.name for f in threads.FORMS]
    assert all(len(r.ratios) == 2 for r in rows)
    assert all(len(r.data["load_average_before"]) == 3 for r in rows)


def test_a_form_that_loses_counts_fails_the_run() -> None:
    lossy = threads.Form("lossy", lambda: (lambda i, n: lambda: None, lambda: 0))
    try:
        threads._one_run(lossy, 2, 10)
    except AssertionError as exc:
        assert "counted 0, expected 2000" in str(exc)
    else:
        raise AssertionError("a run that counted nothing passed")


def test_overlap_counts_only_chunks_during_which_every_thread_ran() -> None:
    """Thread 0 ran in chunks [0,10] and [10,20] (CPU = wall), then was descheduled in
    [20,40] (CPU 5 of 20); thread 1 ran in [5,30].  Only thread 0's [10,20] and nothing
    of thread 1's single chunk [5,30] (thread 0 was off the CPU part of it) count."""
    t0 = [(0, 0), (10, 10), (20, 20), (40, 25)]
    t1 = [(5, 0), (30, 25)]
    assert threads._overlap([t0, t1]) == (10, 1)
    assert threads._overlap([t0]) == (20, 2)


def test_the_verdict_counts_only_rounds_in_which_the_paired_floor_scaled() -> None:
    """Rounds whose nothing-shared loop did not reach 0.9 * T are reported but do not
    decide; with fewer than 3 deciding rounds the verdict is inconclusive."""
    res = threads.Result("form", 1.7, 1000)
    res.ratios = [1.9, 1.1, 1.8, 1.2, 2.0]
    res.floor_ratios = [1.95, 1.15, 1.85, 1.79, 1.81]
    assert res.counted(2) == [1.9, 1.8, 2.0]
    assert res.median == 1.8
    assert res.counted(4) == []


def test_a_target_asks_the_same_share_of_perfect_scaling_at_every_count() -> None:
    assert threads.target_at(1.7, 2) == 1.7
    assert threads.target_at(1.7, 8) == 6.8
    assert threads.target_at(None, 16) is None


def test_a_list_of_counts_runs_each_and_ends_with_the_curve() -> None:
    out = bench("--threads", "1,3", "--quick").stdout
    assert "1 thread against 1 threads" in out and "1 thread against 3 threads" in out
    assert "load average before / after" in out and "Every count was exact" in out
    curve = out[out.index("Scaling curve") :]
    header = next(line for line in curve.splitlines() if line.strip().startswith("form"))
    assert "1 threads" in header and "3 threads" in header
    for form in threads.FORMS:
        assert form.name in curve


def test_of_floor_is_the_median_of_the_per_round_shares() -> None:
    res = threads.Result("form", None, 1000)
    res.ratios = [1.0, 1.8, 3.0]
    res.floor_ratios = [2.0, 2.0, 2.0]
    assert res.of_floor == 0.9
