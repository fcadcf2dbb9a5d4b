"""How KeyedCounters, their Counts and their iterators are freed (issue 27).

Freeing a counter drops its keys; a key may be a ``Count`` (which remembers
its counter) or an iterator over another counter, and ``x = kc[x]`` in a loop
makes every Count remember the previous one.  Chains of any length must be
freed without recursing once per link (a segfault from about 400,000 links on
the main thread): the C core frees them through CPython's trashcan, as
CPython's own containers are freed.  Each chain is dropped in a subprocess
(a crash is a failed test, not a dead test run), on a thread with a 2 MiB
stack: without the trashcan 200,000 links overflow it on every build; with
it, CPython 3.13 unwinds at 10,000 nested deallocations, which fits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tallies

ROOT = Path(tallies.__file__).resolve().parents[1]

CHAINS = {
    # Each Count remembers the previous one as its key.
    "counts": """
kc = KeyedCounter(); x = 0
for _ in range(LINKS):
    x = kc[x]
head = [x]; del x, kc
""",
    # Each counter's only key is a Count read from the previous counter.
    "counters": """
prev = KeyedCounter(a=1)
for _ in range(LINKS):
    kc = KeyedCounter(); kc.increment(prev["k"]); prev = kc
head = [prev]; del prev, kc
""",
    # Each counter's only key is an iterator over the previous counter.
    "iterators": """
prev = KeyedCounter(a=1)
for _ in range(LINKS):
    kc = KeyedCounter(); kc.increment(iter(prev)); prev = kc
head = [prev]; del prev, kc
""",
}

DROP = """
import threading
from tallies import KeyedCounter
LINKS = 200_000
{build}
threading.stack_size(2 * 1024 * 1024)
t = threading.Thread(target=head.clear)
t.start(); t.join()
print("freed")
"""


@pytest.mark.parametrize("impl", ["c", "python"])
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_a_long_chain_is_freed_without_deep_recursion(impl: str, chain: str) -> None:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    if impl == "python":
        env["TALLIES_PURE"] = "1"
    elif tallies.keyed.IMPLEMENTATION != "c":
        pytest.skip("the C core is not in use here (TALLIES_PURE=1 or not built)")
    proc = subprocess.run(
        [sys.executable, "-c", DROP.format(build=CHAINS[chain])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "freed"
