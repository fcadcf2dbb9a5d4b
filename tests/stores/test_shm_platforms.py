"""shm:// on a system without fcntl (Windows) refuses with a clear error.

Windows cannot run here, so the test takes fcntl away from a fresh interpreter
(``sys.modules["fcntl"] = None`` makes importing it fail, as it does there)
and opens an ``shm://`` URL: the error must say why and what to use instead,
and the rest of tallies must still import and count.
"""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
sys.modules["fcntl"] = None  # as on Windows: no such module
import tallies
c = tallies.Counter()
c.increment()
assert c.value() == 1
with tallies.open("memory://") as m:
    m.counter("n").increment()
try:
    tallies.open("shm://tallies-no-fcntl")
except ImportError as exc:
    print(exc)
else:
    raise SystemExit("shm:// opened without fcntl")
"""


def test_shm_without_fcntl_says_what_it_needs_and_what_to_use() -> None:
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        "shm:// needs a POSIX system (fcntl record locks on a memory-mapped file); "
        "on Windows use memory://, sqlite:// or redis://"
    )
