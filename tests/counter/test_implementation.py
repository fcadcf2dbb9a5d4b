"""Which implementation ``import tallies`` picks, checked in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _support import REQUIRE_C, core_import_error

import tallies

SRC = str(Path(tallies.__file__).resolve().parents[1])
PROBE = (
    "import tallies, tallies._pure as p; "
    "print(tallies.IMPLEMENTATION, tallies.Counter is p.Counter, "
    "tallies.ShardedCounter is p.ShardedCounter)"
)


def probe(**env_changes: str | None) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_tallies_pure_forces_the_fallback() -> None:
    assert probe(TALLIES_PURE="1") == "python True True"


def test_the_c_core_is_used_when_present() -> None:
    exc = core_import_error()
    if exc is not None and not REQUIRE_C:
        pytest.skip(f"the C core tallies._tallies is not importable: {exc!r}")
    # With TALLIES_REQUIRE_C=1 a missing C core is a failure here, not a skip.
    assert probe(TALLIES_PURE=None, TALLIES_REQUIRE_C="1") == "c False False"
    assert probe(TALLIES_PURE="0") == "c False False"


def test_this_process_agrees_with_its_environment() -> None:
    if os.environ.get("TALLIES_PURE") == "1" or core_import_error() is not None:
        assert tallies.IMPLEMENTATION == "python"
    else:
        assert tallies.IMPLEMENTATION == "c"
        import tallies._tallies as core

        assert tallies.Counter is core.Counter
        assert tallies.ShardedCounter is core.ShardedCounter
