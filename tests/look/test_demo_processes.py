"""``tallies demo``'s process part: processes into one shm:// counter, with a progress bar."""

from __future__ import annotations

import json
import multiprocessing
import re
import subprocess
from types import SimpleNamespace
from typing import Any

import pytest
from _look_support import env, tallies_cmd

from tallies.cli import demo_processes

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
    unsafe = part[UNSAFE]  # its numbers are checked against the test's own counts below
    assert unsafe["expected"] == 60_000 and 0 <= unsafe["final"] <= 60_000
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


class _RecordingContext:
    """A multiprocessing context that keeps every Value it makes."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self.values: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def Value(self, *args: Any, **kwargs: Any) -> Any:
        v = self._ctx.Value(*args, **kwargs)
        self.values.append(v)
        return v


class _CountedValue:
    """Passes ``.value`` through to a Value and counts the writes in a ledger."""

    def __init__(self, value: Any, ledger: list[int]) -> None:
        self._v = value
        self._ledger = ledger

    @property
    def value(self) -> Any:
        return self._v.value

    @value.setter
    def value(self, new: Any) -> None:
        self._v.value = new
        self._ledger[0] += 1


def test_the_unsafe_row_matches_counts_the_demo_does_not_make(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The unlocked Value's row, checked against the test's own counts, not
    against the demo's arithmetic: each worker's writes are counted in a
    ledger of its own (added into a locked Value when it ends), and the test
    reads the unlocked Value itself.  So "expected" is the number of
    increments that were really done, "final" is what the Value really
    holds, and "lost" is their difference: a demo that did fewer increments
    than it says, or misreported the Value, would fail here."""
    ctx = _RecordingContext(multiprocessing.get_context("fork"))
    writes = ctx.Value("q", 0)  # locked: the processes' ledgers are summed here
    worker = demo_processes._unsafe_worker

    def counting_worker(value: Any, n: int, start: Any) -> None:
        ledger = [0]
        worker(_CountedValue(value, ledger), n, start)
        with writes.get_lock():
            writes.value += ledger[0]

    monkeypatch.setattr(demo_processes, "_unsafe_worker", counting_worker)
    recording = SimpleNamespace(get_context=lambda _: ctx)
    monkeypatch.setattr(demo_processes, "multiprocessing", recording)
    rows, _ = demo_processes.run(3, 60_000)
    (row,) = [r for r in rows if r["name"] == UNSAFE]
    unlocked = [v for v in ctx.values if v is not writes]
    assert len(unlocked) == 1
    final = int(unlocked[0].value)
    assert row["expected"] == writes.value == 60_000
    assert row["final"] == final
    assert row["lost"] == writes.value - final
