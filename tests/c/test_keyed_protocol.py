"""KeyedCounter's table in its free-threaded mode (src/tallies/_c/_ktable.h,
TKT_CONCURRENT 1), stressed from pthreads under ThreadSanitizer:
tests/c/stress_keyed.c (its header says what it checks).

No free-threaded CPython is installable here, so the extension's
Py_GIL_DISABLED code path itself does not run; this runs the same table code
(the header is plain C11, keys are opaque pointers) with real concurrent
threads instead: inserts, increments, removals, prunes, exchanges, clears and
the resizes they cause, all at once.

With TALLIES_REQUIRE_C=1 (CI) a missing compiler or ThreadSanitizer runtime
is a failure, not a skip.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADERS = ROOT / "src" / "tallies" / "_c"
STRESS = ROOT / "tests" / "c" / "stress_keyed.c"
REQUIRED = os.environ.get("TALLIES_REQUIRE_C") == "1"


def _compiler() -> str:
    cc = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    if cc is None:
        if REQUIRED:
            pytest.fail("TALLIES_REQUIRE_C=1 and no C compiler on PATH")
        pytest.skip("no C compiler on PATH")
    return cc


def _build(cc: str, include: pathlib.Path, out: pathlib.Path, tsan: bool = True) -> None:
    cmd = [cc, "-std=gnu11", "-g", "-Wall", "-Wextra", "-Werror", "-pthread"]
    cmd += ["-O1", "-fsanitize=thread"] if tsan else ["-O2"]
    cmd += [f"-I{include}", str(STRESS), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"cannot build the stress (ThreadSanitizer runtime?):\n{res.stderr}"


def _run(exe: pathlib.Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(exe)]
    env = {"TSAN_OPTIONS": "halt_on_error=1 exitcode=66"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=env)
    if "unexpected memory mapping" in res.stderr and shutil.which("setarch"):
        # Kernels with large mmap randomisation defeat older TSan runtimes.
        cmd = ["setarch", os.uname().machine, "-R", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=env)
    return res


def test_table_balances_under_tsan(tmp_path: pathlib.Path) -> None:
    exe = tmp_path / "stress_keyed"
    _build(_compiler(), HEADERS, exe)
    res = _run(exe)
    assert "ThreadSanitizer" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stdout + res.stderr
    assert "balanced" in res.stdout
    retired = int(res.stdout.split("tables retired ")[1].split(",")[0])
    assert retired >= 5, res.stdout  # resizes really happened during the counting


def test_table_balances_at_o2(tmp_path: pathlib.Path) -> None:
    exe = tmp_path / "stress_keyed_o2"
    _build(_compiler(), HEADERS, exe, tsan=False)
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
    _build(_compiler(), mutant, exe)
    outcomes = []
    for _ in range(6):
        outcomes.append(_run(exe))
        if "LOST OR DOUBLE-COUNTED" in outcomes[-1].stdout:
            break
    assert outcomes[-1].returncode != 0, [r.stdout for r in outcomes]
    assert "LOST OR DOUBLE-COUNTED" in outcomes[-1].stdout
