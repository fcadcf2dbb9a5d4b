"""The snapshots under KeyedCounter's binary operations (src/tallies/_c/_ktable.h,
"snapshots: the binary operations"), stressed from pthreads under
ThreadSanitizer: tests/c/stress_keyed_ops.c (its header says what it checks).

Threads keep two keys of ``left`` at 0 or absent while others compute
``left | right``, ``left + right`` and ``left - right`` from frozen copies;
every result must hold right's counts for those keys (issue 27).  A mutant
whose join reads the live map instead of the snapshot must be caught.  With
TALLIES_REQUIRE_C=1 (CI, ./run-tests) a missing compiler or ThreadSanitizer
runtime fails these tests instead of skipping them (tests/c/_tsan.py).
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest
from _tsan import HEADER_DIR as HEADERS
from _tsan import ROOT, compile_c, compiler, require_tsan, run

STRESS = ROOT / "tests" / "c" / "stress_keyed_ops.c"
TSAN_OPTIONS = "halt_on_error=1 exitcode=66"

# The join looks keys up in the operand's live map instead of its snapshot.
LIVE_NEEDLE = "tkt_map *m = o->snap;"
LIVE_MUTANT = "tkt_map *m = o->src;"


def _build(include: pathlib.Path, out: pathlib.Path, tsan: bool) -> None:
    if tsan:
        require_tsan()
    compiler()
    compile_c(STRESS, out, ["-O1", "-fsanitize=thread"] if tsan else ["-O2"], include=include)


def _counts(stdout: str) -> tuple[int, int]:
    """(joins whose left snapshot held x, joins) of a run's summary line."""
    joins = int(stdout.split("joins ")[1].split(",")[0])
    held = int(stdout.split("x in the left snapshot ")[1].split(",")[0])
    return held, joins


@pytest.mark.parametrize("tsan", [True, False], ids=["tsan", "o2"])
def test_joins_read_consistent_snapshots(tmp_path: pathlib.Path, tsan: bool) -> None:
    exe = tmp_path / "stress_keyed_ops"
    _build(HEADERS, exe, tsan)
    res = run(exe, tsan_options=TSAN_OPTIONS)
    assert "ThreadSanitizer" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stdout + res.stderr
    assert "consistent" in res.stdout and "inconsistent 0" in res.stdout
    held, joins = _counts(res.stdout)
    assert 0 < held < joins, res.stdout  # both cases happened: x present and absent


@pytest.mark.parametrize("tsan", [True, False], ids=["tsan", "o2"])
def test_the_stress_catches_a_join_that_reads_the_live_map(
    tmp_path: pathlib.Path, tsan: bool
) -> None:
    """The mutant is no data race (every access is atomic), so the stress's own
    check must catch it, under ThreadSanitizer and at -O2 alike.  Real threads:
    up to 6 runs."""
    mutant = tmp_path / "mutant"
    mutant.mkdir()
    shutil.copy(HEADERS / "_cells.h", mutant / "_cells.h")
    src = (HEADERS / "_ktable.h").read_text()
    assert src.count(LIVE_NEEDLE) == 1
    (mutant / "_ktable.h").write_text(src.replace(LIVE_NEEDLE, LIVE_MUTANT))
    exe = tmp_path / "stress_keyed_ops_mutant"
    _build(mutant, exe, tsan)
    outcomes: list[subprocess.CompletedProcess[str]] = []
    for _ in range(6):
        outcomes.append(run(exe, tsan_options=TSAN_OPTIONS))
        if "INCONSISTENT" in outcomes[-1].stdout:
            break
    assert outcomes[-1].returncode != 0, [r.stdout for r in outcomes]
    assert "INCONSISTENT" in outcomes[-1].stdout, [r.stdout for r in outcomes]
