"""Shared helpers for the shm:// tests: one segment directory per test session.

The directory is created under /dev/shm (where real segments live) the first
time this module is imported and is exported as TALLIES_SHM_DIR, so every
child process (fork, spawn, forkserver, ``python -c``) inherits it.  Only the
process that created it removes it at exit.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

import tallies

if "TALLIES_SHM_DIR" not in os.environ:
    _base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    SHM_DIR = tempfile.mkdtemp(prefix="tallies-test-", dir=_base)
    os.environ["TALLIES_SHM_DIR"] = SHM_DIR
    _creator = os.getpid()

    @atexit.register
    def _cleanup() -> None:
        if os.getpid() == _creator:
            shutil.rmtree(SHM_DIR, ignore_errors=True)
else:
    SHM_DIR = os.environ["TALLIES_SHM_DIR"]

# Where the tallies under test was imported from (the source tree or an
# installed copy): child processes must import the very same build.
SRC = os.path.dirname(os.path.dirname(os.path.abspath(tallies.__file__)))


def new_url(params: str = "") -> str:
    return f"shm://t{secrets.token_hex(6)}{params}"


@pytest.fixture
def shm_url() -> Iterator[str]:
    """A fresh segment URL (small capacities), destroyed after the test."""
    url = new_url("?names=64&keys=256&slabs=16")
    yield url
    tallies.destroy(url.partition("?")[0])


def run_python(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` as an unrelated process (same segment directory)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = SRC + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
