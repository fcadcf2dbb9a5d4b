"""``tallies bench --threads``: its shape and its exactness checks (speed is never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tallies.cli import bench_threads


def test_bench_threads_quick_json_has_every_form_and_a_verdict_per_target() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tallies", "bench", "--threads", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["threads"] >= 2 and report["rounds"] == 1
    assert [r["name"] for r in report["rows"]] == [f.name for f in bench_threads.FORMS]
    gil = report["gil_enabled"]
    for row in report["rows"]:
        assert len(row["ratios"]) == len(row["one_thread_ns"]) == 1
        assert row["ratios"][0] > 0 and row["cpu_median"] > 0
        if row["target"] is None:
            assert row["verdict"] == "shown"
        elif gil:
            assert row["verdict"] == "n/a (GIL)"
        else:
            assert row["verdict"] in {"met", "missed"}


def test_bench_threads_text_names_the_interpreter_and_the_load() -> None:
    report = bench_threads.run(n=2_000, rounds=2, threads=2)
    text = bench_threads.format_report(report)
    assert "load average before / after" in text
    assert report["interpreter"] in text
    for form in bench_threads.FORMS:
        assert form.name in text
    assert all(len(r["ratios"]) == 2 for r in report["rows"])


def test_a_form_that_loses_counts_fails_the_run() -> None:
    lossy = bench_threads.Form("lossy", lambda: (lambda i, n: lambda: None, lambda: 0))
    try:
        bench_threads._one_run(lossy, 2, 10)
    except AssertionError as exc:
        assert "counted 0, expected 20" in str(exc)
    else:
        raise AssertionError("a run that counted nothing passed")
