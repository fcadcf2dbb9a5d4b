"""``tallies demo``'s process part: processes into one shm:// counter, with a progress bar."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
from _look_support import env, tallies_cmd

SAFE = "tallies shm:// counter, 3 processes"
UNSAFE = "multiprocessing.Value(lock=False), v.value += 1"


def demo(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = env()
    environ.update(extra or {})
    return subprocess.run(
        tallies_cmd("demo", "--threads", "3", "--increments", "20000", *args),
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("extra", [{}, {"TALLIES_PURE": "1"}], ids=["default", "pure"])
def test_processes_end_exact_and_the_unsafe_value_adds_up(extra: dict[str, str]) -> None:
    done = demo("--processes", "3", "--json", extra=extra)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    part = {r["name"]: r for r in rows if r["section"].startswith("The same 60,000 increments")}
    assert set(part) == {SAFE, UNSAFE}
    assert part[SAFE]["final"] == part[SAFE]["expected"] == 60_000
    assert part[SAFE]["lost"] == 0 and part[SAFE]["thread_safe"]
    unsafe = part[UNSAFE]
    assert unsafe["expected"] == 60_000 and 0 <= unsafe["lost"] <= 60_000
    assert unsafe["final"] == 60_000 - unsafe["lost"]
    # the bar went to stderr; without a terminal its last line is the exact final state
    bar = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"3 processes, one shm:// counter: 100% .*60,000/60,000 \[.*\]", bar)


def test_text_output_has_the_part_and_processes_0_skips_it() -> None:
    done = demo("--processes", "2")
    assert done.returncode == 0, done.stderr
    assert "The same 60,000 increments by 2 processes" in done.stdout
    assert "ended at exactly 60,000" in done.stdout.replace("\n  ", " ")
    skipped = demo("--processes", "0", "--json")
    assert skipped.returncode == 0, skipped.stderr
    assert not any("processes" in r["section"] for r in json.loads(skipped.stdout))
    assert skipped.stderr == ""


def test_a_negative_process_count_is_a_usage_error() -> None:
    done = demo("--processes", "-1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "expected 0 or a positive integer" in done.stderr
