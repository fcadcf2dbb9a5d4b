"""The rate ring (src/tallies/_c/_ring.h) hammered by pthreads, under ThreadSanitizer.

``tests/c/stress_ring.c`` checks its own exact results (see its header): many
writers at one instant, writers racing a ticking (and sometimes backward or
jumping) clock with a reader checking ``0 <= count <= total`` on every read,
and writers racing resets (what resets took plus the final total equals what
was added).  Built with ``-fsanitize=thread`` TSan must report nothing; two
mutants show the harness catches breakage: a rotation that publishes its new
bucket boundary with a plain store (TSan must report the race with the
writers' hot-path loads) and the GIL-only serial add used from threads (the
exact checks must fail).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _tsan import ROOT, TSAN, TSAN_WARNING, require_tsan
from _tsan import compile_c as _compile
from _tsan import run as _run

STRESS_C = ROOT / "tests" / "c" / "stress_ring.c"
SECTIONS = ["one_window", "rotate", "reset"]


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tsan()
    return tmp_path_factory.mktemp("stress_ring")


def build(out: Path, flags: list[str]) -> Path:
    _compile(STRESS_C, out, flags)
    return out


def run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(binary, *args, tsan_options="halt_on_error=0 exitcode=66 history_size=4")


def test_ring_under_tsan(bin_dir: Path) -> None:
    proc = run(build(bin_dir / "ring_tsan", TSAN), "8", "20000")
    out = proc.stdout + proc.stderr
    assert TSAN_WARNING not in out, out
    assert proc.returncode == 0, out
    for section in SECTIONS:
        assert any(line.startswith(f"ok {section}") for line in proc.stdout.splitlines()), out
    assert "PASSED failures=0" in proc.stdout


def test_ring_at_o2_with_more_iterations(bin_dir: Path) -> None:
    proc = run(build(bin_dir / "ring_o2", ["-O2"]), "16", "200000")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED failures=0" in proc.stdout


def test_mutant_plain_boundary_store_is_reported(bin_dir: Path) -> None:
    binary = build(bin_dir / "ring_plain", [*TSAN, "-DTLR_MUTANT_PLAIN_BOUNDARY"])
    proc = run(binary, "8", "20000")
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr, proc.stdout + proc.stderr
    assert proc.returncode == 66


def test_mutant_serial_add_loses_increments(bin_dir: Path) -> None:
    """Lost updates need a preemption between a load and a store: up to three runs."""
    binary = build(bin_dir / "ring_serial", [*TSAN, "-DMUTANT_SERIAL"])
    outputs = []
    for _ in range(3):
        proc = run(binary, "8", "100000")
        if proc.returncode == 1 and "FAIL one_window" in proc.stdout:
            return
        outputs.append(proc.stdout + proc.stderr)
    pytest.fail("the serial add never lost an increment:\n" + "\n".join(outputs))
