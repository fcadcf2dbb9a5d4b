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

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADER_DIR = ROOT / "src" / "tallies" / "_c"
STRESS_C = ROOT / "tests" / "c" / "stress_ring.c"
SECTIONS = ["one_window", "rotate", "reset"]
CFLAGS = ["-std=gnu11", "-g", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{HEADER_DIR}"]
TSAN = ["-O1", "-fsanitize=thread"]

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux", reason="the stress harness uses Linux pthreads"
)


def compiler() -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (gcc or cc) on PATH")
    return cc


def build(out: Path, flags: list[str]) -> Path:
    proc = subprocess.run(
        [compiler(), *CFLAGS, *flags, str(STRESS_C), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0 and "-fsanitize=thread" in flags and "tsan" in proc.stderr:
        pytest.skip(f"the ThreadSanitizer runtime is not installed: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return out


def run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(binary), *args]
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=0 exitcode=66 history_size=4")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if "unexpected memory mapping" in proc.stderr and shutil.which("setarch"):
        cmd = ["setarch", platform.machine(), "-R", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return proc


def test_ring_under_tsan(tmp_path: Path) -> None:
    proc = run(build(tmp_path / "ring_tsan", TSAN), "8", "20000")
    out = proc.stdout + proc.stderr
    assert "WARNING: ThreadSanitizer" not in out, out
    assert proc.returncode == 0, out
    for section in SECTIONS:
        assert any(line.startswith(f"ok {section}") for line in proc.stdout.splitlines()), out
    assert "PASSED failures=0" in proc.stdout


def test_ring_at_o2_with_more_iterations(tmp_path: Path) -> None:
    proc = run(build(tmp_path / "ring_o2", ["-O2"]), "16", "200000")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED failures=0" in proc.stdout


def test_mutant_plain_boundary_store_is_reported(tmp_path: Path) -> None:
    binary = build(tmp_path / "ring_plain", [*TSAN, "-DTLR_MUTANT_PLAIN_BOUNDARY"])
    proc = run(binary, "8", "20000")
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr, proc.stdout + proc.stderr
    assert proc.returncode == 66


def test_mutant_serial_add_loses_increments(tmp_path: Path) -> None:
    """Lost updates need a preemption between a load and a store: up to three runs."""
    binary = build(tmp_path / "ring_serial", [*TSAN, "-DMUTANT_SERIAL"])
    outputs = []
    for _ in range(3):
        proc = run(binary, "8", "100000")
        if proc.returncode == 1 and "FAIL one_window" in proc.stdout:
            return
        outputs.append(proc.stdout + proc.stderr)
    pytest.fail("the serial add never lost an increment:\n" + "\n".join(outputs))
