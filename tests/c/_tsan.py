"""What the ThreadSanitizer stresses in tests/c share: a compiler, a TSan probe, a runner.

A missing compiler or TSan runtime skips these tests on a developer's machine,
but fails them when ``TALLIES_REQUIRE_C=1`` (CI and ``./run-tests`` set it):
CI never passes with its race detectors silently switched off.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from _support import unavailable as _unavailable

ROOT = Path(__file__).resolve().parents[2]
HEADER_DIR = ROOT / "src" / "tallies" / "_c"
CFLAGS = ["-std=gnu11", "-g", "-Wall", "-Wextra", "-Werror", "-pthread"]
TSAN = ["-O1", "-fsanitize=thread"]
TSAN_WARNING = "WARNING: ThreadSanitizer"


def unavailable(reason: str) -> None:
    """Skip, or fail when TALLIES_REQUIRE_C=1 says the C checks must run."""
    _unavailable(reason, by="TALLIES_REQUIRE_C=1 (the C checks)")


def compiler() -> str:
    if platform.system() != "Linux":
        unavailable("the stress harnesses use Linux pthreads")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        unavailable("no C compiler (gcc or cc) on PATH")
    assert cc is not None
    return cc


@functools.cache
def _tsan_probe() -> str | None:
    """None when -fsanitize=thread links here; else the compiler's complaint."""
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "probe.c"
        probe.write_text("#include <pthread.h>\nint main(void) { return 0; }\n")
        proc = subprocess.run(
            [compiler(), "-fsanitize=thread", "-pthread", str(probe), "-o", str(Path(d) / "p")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    return None if proc.returncode == 0 else proc.stderr.strip()


def require_tsan() -> None:
    """Only a missing sanitizer runtime (Debian: libgcc-12-dev's libtsan) may
    skip, and only outside CI; any other build failure fails the harness."""
    err = _tsan_probe()
    if err is None:
        return
    if "libtsan" in err or "-ltsan" in err:
        unavailable(f"the ThreadSanitizer runtime is not installed: {err}")
    pytest.fail(f"cannot build with -fsanitize=thread:\n{err}")


def compile_c(source: Path, out: Path, flags: list[str], include: Path = HEADER_DIR) -> None:
    """Build ``source``; its headers come from ``include`` (a mutant's folder, say),
    then from the real ones (the headers a mutant does not change: _platform.h)."""
    proc = subprocess.run(
        [
            compiler(),
            *CFLAGS,
            f"-I{include}",
            f"-I{HEADER_DIR}",
            *flags,
            str(source),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"compiling {source.name} {flags} failed:\n{proc.stderr}"


def run(binary: Path, *args: str, tsan_options: str) -> subprocess.CompletedProcess[str]:
    """Run a test binary; retry once without ASLR if TSan cannot map its shadow memory."""
    cmd = [str(binary), *args]
    env = dict(os.environ, TSAN_OPTIONS=tsan_options)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if "unexpected memory mapping" in proc.stderr and shutil.which("setarch"):
        # Kernels with large mmap randomisation defeat older TSan runtimes.
        cmd = ["setarch", platform.machine(), "-R", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return proc
