"""The per-cell key-removal protocol (src/tallies/_c/_keyed_cells.h), stressed
from pthreads under ThreadSanitizer: tests/c/stress_keyed_cells.c.

KeyedCounter no longer uses it (its own table, _ktable.h, has its protocol
and its stress in test_keyed_protocol.py); KeyedRateCounter's rings do
(_c/rate.c).  The header is plain C11: this runs the protocol with real
concurrent threads, independent of any interpreter.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

from _tsan import HEADER_DIR as HEADERS
from _tsan import ROOT, compile_c, compiler, require_tsan, run

STRESS = ROOT / "tests" / "c" / "stress_keyed_cells.c"


def _build(include: pathlib.Path, out: pathlib.Path) -> None:
    require_tsan()
    compiler()
    compile_c(STRESS, out, ["-O1", "-fsanitize=thread"], include=include)


def _run(exe: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return run(exe, tsan_options="halt_on_error=1 exitcode=66")


def test_removal_protocol_balances_under_tsan(tmp_path: pathlib.Path) -> None:
    exe = tmp_path / "stress_keyed_cells"
    _build(HEADERS, exe)
    res = _run(exe)
    assert "ThreadSanitizer" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stdout + res.stderr
    assert "balanced" in res.stdout


def test_the_stress_catches_a_broken_removal_protocol(tmp_path: pathlib.Path) -> None:
    """A mutant whose writers ignore CLOSED must be caught (the stress is not
    vacuous).  Real threads, so a run may by chance miss it: up to 3 runs."""
    mutant = tmp_path / "mutant"
    mutant.mkdir()
    shutil.copy(HEADERS / "_cells.h", mutant / "_cells.h")
    src = (HEADERS / "_keyed_cells.h").read_text()
    needle = "if (TL_UNLIKELY(s & TLK_CLOSED)) {"
    assert needle in src
    (mutant / "_keyed_cells.h").write_text(src.replace(needle, "if (0 && (s & TLK_CLOSED)) {"))
    exe = tmp_path / "stress_mutant"
    _build(mutant, exe)
    outcomes = [_run(exe) for _ in range(3)]
    assert any(r.returncode != 0 for r in outcomes), [r.stdout for r in outcomes]
    assert any("LOST OR DOUBLE-COUNTED" in r.stdout for r in outcomes)
