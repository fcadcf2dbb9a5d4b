"""Small edges a user meets: a progress interval too long to wait, a pipe that closes."""

from __future__ import annotations

import io
import shlex
import subprocess
import threading

import pytest
from _look_support import env, tallies_cmd

import tallies


@pytest.mark.parametrize("interval", [float("inf"), 1e300, threading.TIMEOUT_MAX * 2])
def test_a_progress_interval_too_long_to_wait_is_refused_at_the_call(interval: float) -> None:
    """Before: accepted, and the polling thread died with "timeout value is too
    large" printed as a thread traceback."""
    before = threading.active_count()
    with pytest.raises(ValueError, match=r"interval must be a positive number of seconds <= "):
        tallies.progress(tallies.Counter(), interval=interval, file=io.StringIO())
    assert threading.active_count() == before


def test_a_long_but_waitable_interval_works() -> None:
    out = io.StringIO()
    c = tallies.Counter()
    with tallies.progress(c, 3, interval=threading.TIMEOUT_MAX, file=out):
        c.increment(3)
    assert "3/3" in out.getvalue()


def test_watch_into_a_pipe_that_closes_ends_quietly(shm_url: str) -> None:
    """``tallies watch --plain URL | head -3``: the reader went away, a normal end
    (before: "the terminal went away" on stderr, exit status 2)."""
    url = shm_url.partition("?")[0]
    with tallies.open(shm_url) as s:
        for i in range(20):
            s.counter(f"c{i}").increment(i)
        watch = shlex.join(tallies_cmd("watch", "--plain", "--interval", "0.1", url))
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", watch + " | head -3"],
            env=env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 3 and url in proc.stdout
