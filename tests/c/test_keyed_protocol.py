"""KeyedCounter's table in its free-threaded mode (src/tallies/_c/_ktable.h,
TKT_CONCURRENT 1), stressed from pthreads under ThreadSanitizer:
tests/c/stress_keyed.c (its header says what it checks).

The header is plain C11 (keys are opaque pointers with a hash and an equality
callback): this runs the same table code as the extension's free-threaded
build, with real concurrent threads, independent of any interpreter: inserts,
increments, removals, prunes, exchanges, clears and the resizes they cause,
all at once.  With TALLIES_REQUIRE_C=1 (CI, ./run-tests) a missing compiler
or ThreadSanitizer runtime fails these tests instead of skipping them
(tests/c/_tsan.py).
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest
from _tsan import HEADER_DIR as HEADERS
from _tsan import ROOT, compile_c, compiler, require_tsan, run

STRESS = ROOT / "tests" / "c" / "stress_keyed.c"
TSAN_OPTIONS = "halt_on_error=1 exitcode=66"


def _build(include: pathlib.Path, out: pathlib.Path, tsan: bool = True) -> None:
    if tsan:
        require_tsan()
    compiler()
    compile_c(STRESS, out, ["-O1", "-fsanitize=thread"] if tsan else ["-O2"], include=include)


def _run(exe: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return run(exe, tsan_options=TSAN_OPTIONS)


NOT_HOT = "FAIL no key inflated: the hot-key paths were not exercised"


def _run_until_hot(exe: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """Run the stress; a run whose only failure is that no key went hot (the
    threads did not collide enough, on a loaded machine) is run again, up to
    5 times: the hot-key paths must have been exercised.  Every run must be
    free of TSan reports."""
    for _ in range(5):
        res = _run(exe)
        assert "ThreadSanitizer" not in res.stderr, res.stderr
        if [line for line in res.stdout.splitlines() if line.startswith("FAIL")] != [NOT_HOT]:
            break
    return res


def test_table_balances_under_tsan(tmp_path: pathlib.Path) -> None:
    exe = tmp_path / "stress_keyed"
    _build(HEADERS, exe)
    res = _run_until_hot(exe)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "balanced" in res.stdout
    retired = int(res.stdout.split("tables retired ")[1].split(",")[0])
    assert retired >= 5, res.stdout  # resizes really happened during the counting
    inflated = int(res.stdout.split("hot-key inflations ")[1].split(",")[0])
    assert inflated >= 1, res.stdout  # and keys inflated into hot cells


def test_table_balances_at_o2(tmp_path: pathlib.Path) -> None:
    exe = tmp_path / "stress_keyed_o2"
    _build(HEADERS, exe, tsan=False)
    res = _run_until_hot(exe)
    assert res.returncode == 0 and "balanced" in res.stdout, res.stdout + res.stderr


# Each mutant breaks one rule of _ktable.h's protocol (needle -> replacement).
MUTANTS = {
    # Structural changes do not wait for the writers inside their regions, so a
    # writer that found its slot before a resize or a removal adds into a table
    # whose counts were already moved.
    "close-does-not-wait": (
        "while (atomic_load_explicit(&m->stripes[i].n, memory_order_seq_cst) != 0) {",
        "while (0) {",
    ),
    # A resize copies a hot key's word and forgets its hot cells.
    "resize-forgets-hot-cells": (
        "atomic_init(TKT_COUNT(n, j), tkt_count_at(t, ix)); /* hot cells folded in */",
        "atomic_init(TKT_COUNT(n, j), atomic_load(TKT_COUNT(t, ix)));",
    ),
    # A fold reads a hot key's cells and frees them without closing the map, so
    # adds made to the cells meanwhile are dropped.
    "fold-without-closing": (
        "    tkt_close(m);\n    int64_t total = tkt_count_at(t, pos->ix), new_;",
        "    int64_t total = tkt_count_at(t, pos->ix), new_;",
    ),
}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_the_stress_catches_a_broken_protocol(tmp_path: pathlib.Path, name: str) -> None:
    """A mutant of the table must be caught by the stress's own ledger (built
    at -O2, as the extension is, so that the race really happens; under TSan
    the race detector usually stops it first, which says nothing about the
    ledger): the stress is not vacuous.  Real threads, so one run may by
    chance miss it: up to 6 runs."""
    needle, replacement = MUTANTS[name]
    mutant = tmp_path / "mutant"
    mutant.mkdir()
    shutil.copy(HEADERS / "_cells.h", mutant / "_cells.h")
    src = (HEADERS / "_ktable.h").read_text()
    assert src.count(needle) == 1, name
    (mutant / "_ktable.h").write_text(src.replace(needle, replacement))
    exe = tmp_path / "stress_mutant"
    _build(mutant, exe, tsan=False)
    outcomes = []
    for _ in range(6):
        outcomes.append(_run(exe))
        if "LOST OR DOUBLE-COUNTED" in outcomes[-1].stdout:
            break
    assert outcomes[-1].returncode != 0, [r.stdout for r in outcomes]
    assert "LOST OR DOUBLE-COUNTED" in outcomes[-1].stdout, [r.stdout for r in outcomes]


def test_tsan_reports_the_unwaited_close(tmp_path: pathlib.Path) -> None:
    """The same first mutant under ThreadSanitizer: reported (a race report or
    the ledger, whichever comes first)."""
    needle, replacement = MUTANTS["close-does-not-wait"]
    mutant = tmp_path / "mutant"
    mutant.mkdir()
    shutil.copy(HEADERS / "_cells.h", mutant / "_cells.h")
    (mutant / "_ktable.h").write_text(
        (HEADERS / "_ktable.h").read_text().replace(needle, replacement)
    )
    exe = tmp_path / "stress_mutant_tsan"
    _build(mutant, exe)
    outcomes = []
    for _ in range(6):
        outcomes.append(_run(exe))
        if outcomes[-1].returncode != 0:
            break
    last = outcomes[-1]
    assert last.returncode != 0, [r.stdout for r in outcomes]
    assert "ThreadSanitizer" in last.stderr or "LOST OR DOUBLE-COUNTED" in last.stdout
