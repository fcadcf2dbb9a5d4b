"""A chain of C BufferedCounters is freed without one C frame per link (issue 27).

A BufferedCounter holds its owner, which may be any object, another
BufferedCounter included; freeing the head of a chain must not recurse once
per link (the C core frees them through CPython's trashcan).  Dropped in a
subprocess, on a thread with a 2 MiB stack (see tests/keyed/test_keyed_lifetime.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tallies

ROOT = Path(tallies.__file__).resolve().parents[1]

DROP = """
import threading
from tallies._tallies import BufferedCounter
head = [BufferedCounter(None, "c")]
for _ in range(200_000):
    head[0] = BufferedCounter(head[0], "c")
threading.stack_size(2 * 1024 * 1024)
t = threading.Thread(target=head.clear)
t.start(); t.join()
print("freed")
"""


def test_a_chain_of_buffered_counters_is_freed() -> None:
    if tallies.counter.IMPLEMENTATION != "c":
        pytest.skip("the C core is not in use here (TALLIES_PURE=1 or not built)")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", DROP],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=path),
        timeout=300,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "freed"
