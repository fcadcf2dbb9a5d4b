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

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADER_DIR = ROOT / "src" / "tallies" / "_c"
STRESS_C = ROOT / "tests" / "c" / "stress_cells.c"
SECTIONS = ["sanity", "add", "edge_max", "edge_min", "striped", "caslock", "publish"]
TSAN_WARNING = "WARNING: ThreadSanitizer"
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


def compile_c(out: Path, flags: list[str], source: Path = STRESS_C) -> None:
    proc = subprocess.run(
        [compiler(), *CFLAGS, *flags, str(source), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"compiling {source.name} {flags} failed:\n{proc.stderr}"


def run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a test binary; retry once without ASLR if TSan cannot map its shadow memory."""
    cmd = [str(binary), *args]
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=0 exitcode=66 history_size=4")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if "unexpected memory mapping" in proc.stderr and shutil.which("setarch"):
        # Kernels with large mmap randomisation defeat older TSan runtimes.
        cmd = ["setarch", platform.machine(), "-R", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return proc


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary directory for the binaries, once TSan is known to work here."""
    d = tmp_path_factory.mktemp("stress_cells")
    probe = d / "probe.c"
    probe.write_text("#include <pthread.h>\nint main(void) { return 0; }\n")
    proc = subprocess.run(
        [compiler(), "-fsanitize=thread", "-pthread", str(probe), "-o", str(d / "probe")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        # Only a missing sanitizer runtime (Debian: libtsan2 / libgcc-12-dev) is a
        # reason to skip; anything else is a failure of the harness.
        missing = "libtsan" in proc.stderr or "-ltsan" in proc.stderr
        if missing:
            pytest.skip(f"the ThreadSanitizer runtime is not installed: {proc.stderr.strip()}")
        pytest.fail(f"cannot build with -fsanitize=thread:\n{proc.stderr}")
    return d


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
