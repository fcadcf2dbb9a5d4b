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


def test_table_balances_under_tsan(tmp_path: pathlib.Path) -> None:
    exe = tmp_path / "stress_keyed"
    _build(HEADERS, exe)
    res = _run(exe)
    assert "ThreadSanitizer" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stdout + res.stderr
    assert "balanced" in res.stdout
    retired = int(res.stdout.split("tables retired ")[1].split(",")[0])
    assert retired >= 5, res.stdout  # resizes really happened during the counting


def test_table_balances_at_o2(tmp_path: pathlib.Path) -> None:
    exe = tmp_path / "stress_keyed_o2"
    _build(HEADERS, exe, tsan=False)
    res = _run(exe)
    assert res.returncode == 0 and "balanced" in res.stdout, res.stdout + res.stderr


def test_the_stress_catches_a_broken_protocol(tmp_path: pathlib.Path) -> None:
    """A mutant whose structural changes do not wait for the writers inside
    their regions (so a writer that found its slot before a resize or a
    removal adds into a table whose counts were already moved) must be caught:
    the stress is not vacuous.  Real threads, so one run may by chance miss
    it: up to 6 runs."""
    mutant = tmp_path / "mutant"
    mutant.mkdir()
    shutil.copy(HEADERS / "_cells.h", mutant / "_cells.h")
    src = (HEADERS / "_ktable.h").read_text()
    needle = "while (atomic_load_explicit(&m->stripes[i].n, memory_order_seq_cst) != 0) {"
    assert src.count(needle) == 1
    (mutant / "_ktable.h").write_text(src.replace(needle, "while (0) {"))
    exe = tmp_path / "stress_mutant"
    _build(mutant, exe)
    outcomes = []
    for _ in range(6):
        outcomes.append(_run(exe))
        if "LOST OR DOUBLE-COUNTED" in outcomes[-1].stdout:
            break
    assert outcomes[-1].returncode != 0, [r.stdout for r in outcomes]
    assert "LOST OR DOUBLE-COUNTED" in outcomes[-1].stdout
