"""The C sources compile cleanly against every CPython's headers we can find.

No free-threaded CPython can be installed on this project's machine, so the
Py_GIL_DISABLED code paths cannot run here.  What can be checked is that they
compile, without a warning, against the headers of CPython 3.13+ with
Py_GIL_DISABLED defined (the headers then declare PyMutex, the free-threaded
object layout, and so on): a syntax-and-types check of the free-threaded build,
not a run of it.  Every other interpreter found (3.10+) compiles the normal path.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tallies" / "_c"
C_FILES = sorted(SRC.glob("*.c"))
CC = shutil.which("gcc") or shutil.which("cc")


def _include_dir(python: str) -> str | None:
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    inc = out.stdout.strip()
    return inc if out.returncode == 0 and os.path.exists(os.path.join(inc, "Python.h")) else None


def _interpreters() -> dict[str, str]:
    """version -> include dir, for this interpreter and any other 3.10+ found."""
    found: dict[str, str] = {}
    here = sysconfig.get_paths()["include"]
    if os.path.exists(os.path.join(here, "Python.h")):
        found[f"{sys.version_info[0]}.{sys.version_info[1]}"] = here
    candidates = glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3"))
    candidates += [p for v in range(10, 20) if (p := shutil.which(f"python3.{v}") or "")]
    for python in candidates:
        ver = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        if ver and tuple(map(int, ver.split("."))) >= (3, 10) and ver not in found:
            inc = _include_dir(python)
            if inc:
                found[ver] = inc
    return found


INTERPRETERS = _interpreters()


def _compile(c_file: Path, include: str, *defines: str) -> subprocess.CompletedProcess[str]:
    assert CC is not None
    cmd = [CC, "-std=c11", "-fsyntax-only", "-Wall", "-Wextra", "-Werror"]
    cmd += [f"-D{d}" for d in defines] + [f"-I{include}", f"-I{SRC}", str(c_file)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CC is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("c_file", C_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("version", sorted(INTERPRETERS))
def test_compiles_without_warnings(version: str, c_file: Path) -> None:
    result = _compile(c_file, INTERPRETERS[version])
    assert result.returncode == 0, result.stderr


FT_CAPABLE = sorted(v for v in INTERPRETERS if tuple(map(int, v.split("."))) >= (3, 13))


@pytest.mark.skipif(CC is None, reason="no C compiler on this machine")
@pytest.mark.skipif(
    not FT_CAPABLE,
    reason="no CPython 3.13+ headers on this machine, so the free-threaded "
    "(Py_GIL_DISABLED) code path cannot even be compile-checked here",
)
@pytest.mark.parametrize("c_file", C_FILES, ids=lambda p: p.name)
def test_free_threaded_path_compiles(c_file: Path) -> None:
    result = _compile(c_file, INTERPRETERS[FT_CAPABLE[-1]], "Py_GIL_DISABLED=1")
    assert result.returncode == 0, result.stderr
