"""A sqlite:// file destroyed and created again while a process has it open
(issue 24, 3 and 4): that process reads the new file from then on, and its
exit flush lands its counts there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from _shm_support import SRC

import tallies


def url_of(db: Path, params: str = "?flush=3600") -> str:
    return f"sqlite:///{db}{params}"


def test_reads_follow_a_file_destroyed_and_created_again(tmp_path: Path) -> None:
    """Issue 24, 4: value() and snapshot() kept showing the deleted file's 5
    while the new file held 7, even after flush()."""
    db = tmp_path / "counts.db"
    with tallies.open(url_of(db)) as a:
        c = a.counter("n")
        c.increment(5)
        a.flush()
        assert c.value() == 5
        assert tallies.destroy(url_of(db))
        with tallies.open(url_of(db, "?flush=3600&timeout=4")) as b:  # another writer
            b.counter("n").increment(7)
        assert c.value() == 7
        a.flush()
        assert c.value() == 7
        assert a.snapshot()["counters"] == {"n": 7}


def test_exit_flush_reopens_a_file_destroyed_and_created_again(tmp_path: Path) -> None:
    """Issue 24, 3: the exit flush made one attempt, which fails by design on
    a replaced file, and lost the counts; now it opens the new file and lands
    them."""
    db = tmp_path / "counts.db"
    code = textwrap.dedent(
        f"""
        import tallies
        url = {url_of(db)!r}
        a = tallies.open(url)
        c = a.counter("n")
        c.increment(5)
        a.flush()
        tallies.destroy(url)
        with tallies.open(url + "&timeout=4") as b:  # another writer makes a new file
            b.counter("n").increment(7)
        c.increment(3)  # pending at exit: no flush, no close
        """
    )
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "lost" not in done.stderr
    with tallies.open(url_of(db)) as s:
        assert s.counter("n").value() == 10
