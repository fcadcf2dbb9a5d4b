"""A store that cannot be opened is a StoreError with one line of explanation,
and the command line says so in one line with status 2 (issue 24, 9)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _redis_support import RedisServer
from _shm_support import SRC

import tallies


def _tallies(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "tallies", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_redis_database_out_of_range_is_a_store_error(redis_server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/99"
    with pytest.raises(tallies.StoreUnavailableError, match="DB index is out of range"):
        tallies.open(url)
    for command in ("show", "serve", "watch"):
        extra = ["--port", "0"] if command == "serve" else ["--plain"] if command == "watch" else []
        done = _tallies(command, url, *extra)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.startswith(f"tallies {command}: "), done.stderr
        assert "DB index is out of range" in done.stderr
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_show_exits_2_on_a_user_error_like_serve_and_watch(tmp_path: object) -> None:
    done = _tallies("show", "nosuch://x")
    assert done.returncode == 2
    assert done.stderr.startswith("tallies show: ") and "unknown store scheme" in done.stderr
