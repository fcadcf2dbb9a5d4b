"""The cell engine (src/tallies/_c/_cells.h) hammered by pthreads, under ThreadSanitizer.

``tests/c/stress_cells.c`` checks its own exact results (see its header) and
prints ``ok <section>`` per section.  It is built into a temporary directory:

* with ``-fsanitize=thread -O1``: every section must pass and TSan must report
  nothing;
* with ``-O2`` and no sanitizer, more threads and iterations;
* as negative controls, which show that this harness really fails: a plain
  ``int64_t`` read-modify-write and a spinlock released with a relaxed store
  must make TSan report a data race; ``tl_add_serial`` used from many threads
  must lose updates, which the program's exact check reports.  (TSan does not
  flag that last one: ``tl_add_serial`` uses relaxed *atomic* loads and stores,
  which C11 does not call a data race; the exact check is what catches it.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _tsan import ROOT, TSAN, TSAN_WARNING, require_tsan
from _tsan import compile_c as _compile
from _tsan import run as _run

STRESS_C = ROOT / "tests" / "c" / "stress_cells.c"
SECTIONS = ["sanity", "add", "edge_max", "edge_min", "striped", "caslock", "publish"]


def compile_c(out: Path, flags: list[str]) -> None:
    _compile(STRESS_C, out, flags)


def run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(binary, *args, tsan_options="halt_on_error=0 exitcode=66 history_size=4")


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary directory for the binaries, once TSan is known to work here."""
    require_tsan()
    return tmp_path_factory.mktemp("stress_cells")


def assert_all_sections_pass(proc: subprocess.CompletedProcess[str]) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for section in SECTIONS:
        assert any(line.startswith(f"ok {section}") for line in proc.stdout.splitlines()), out
    assert "FAIL" not in proc.stdout
    assert "PASSED failures=0" in proc.stdout


def test_cell_engine_under_tsan(bin_dir: Path) -> None:
    binary = bin_dir / "stress_tsan"
    compile_c(binary, TSAN)
    proc = run(binary, "12", "20000")
    assert TSAN_WARNING not in proc.stdout + proc.stderr, proc.stderr
    assert_all_sections_pass(proc)
    striped = next(line for line in proc.stdout.splitlines() if line.startswith("ok striped"))
    assert "inflated=1" in striped


def test_cell_engine_at_o2_with_more_iterations(bin_dir: Path) -> None:
    binary = bin_dir / "stress_o2"
    compile_c(binary, ["-O2"])
    proc = run(binary, "16", "400000")
    assert_all_sections_pass(proc)


@pytest.mark.parametrize("variant", ["NEG_PLAIN", "NEG_RELAXED_LOCK"])
def test_negative_control_tsan_reports_the_race(bin_dir: Path, variant: str) -> None:
    binary = bin_dir / variant.lower()
    compile_c(binary, [*TSAN, f"-D{variant}"])
    proc = run(binary, "8", "20000")
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr, proc.stdout + proc.stderr
    assert proc.returncode == 66  # TSAN_OPTIONS exitcode: reports were made


def test_negative_control_serial_updates_are_lost(bin_dir: Path) -> None:
    binary = bin_dir / "neg_serial"
    compile_c(binary, [*TSAN, "-DNEG_SERIAL"])
    proc = run(binary, "8", "200000")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL serial: lost updates" in proc.stdout
