"""A contended ShardedCounter stops being reference counted on free-threaded 3.13
(src/tallies/_c/_shared.h): what that promises, and its bound.

- Created, a ShardedCounter is an ordinary object: counted, freed when the last
  reference goes (a million of them created and dropped do not pile up).
- The first time two threads update it at the same moment (its inflation into
  striped cells), it becomes immortal: ``counter.increment()`` from many threads
  then writes no reference count, and it is never freed.
- At most TALLIES_SHARED_MAX (default 1024) counters per process become immortal;
  after that, contended counters stay ordinary (exact, freed, not scaling).
- Every other build (any GIL build, 3.14+) never does any of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from types import ModuleType
from typing import Any

import pytest
from _ft_stress import GIL_OFF, Deadline

IMMORTAL = 2**32 - 1  # what sys.getrefcount reports for an immortal object on 3.13t


def contend_until_inflated(counter: Any, seconds: float = 20.0) -> int:
    """Two threads increment ``counter`` together until it inflates (or time is up);
    returns how many increments were made."""
    deadline = Deadline(seconds)
    done = [0, 0]
    while not counter.inflated and not deadline.expired():
        barrier = threading.Barrier(2)

        def work(i: int, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            inc = counter.increment
            for _ in range(20_000):
                inc()
            done[i] += 20_000

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return sum(done)


def test_a_fresh_sharded_counter_is_counted_and_freed(core: ModuleType) -> None:
    c = core.ShardedCounter()
    base = sys.getrefcount(c)
    alias = c
    assert sys.getrefcount(c) == base + 1
    del alias
    assert sys.getrefcount(c) == base < 100


def test_contention_makes_it_immortal_on_313t_only(core: ModuleType) -> None:
    before = core._shared_remaining()
    c = core.ShardedCounter(7)
    n = contend_until_inflated(c)
    assert c.value() == 7 + n
    if core.SHARES_CONTENDED and GIL_OFF:
        assert c.inflated, "two threads without a GIL never collided in 20 s"
        assert sys.getrefcount(c) == IMMORTAL
        assert core._shared_remaining() == before - 1
        c.increment(3)
        assert c.value() == 10 + n and c.reset() == 10 + n and c.value() == 0
    else:
        # A GIL build (the C methods run under the GIL: no CAS ever fails, no
        # inflation) or a build without the feature: an ordinary object.
        assert core.SHARES_CONTENDED == 0 or not GIL_OFF
        assert sys.getrefcount(c) < 100


def test_a_counter_subclass_with_a_dict_is_never_made_immortal(core: ModuleType) -> None:
    class Tagged(core.ShardedCounter):  # type: ignore[name-defined,misc]
        pass

    c = Tagged()
    c.tag = "x"
    contend_until_inflated(c, seconds=5.0)
    assert sys.getrefcount(c) < 100


def _child(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_million_counters_created_and_dropped_do_not_pile_up(core: ModuleType) -> None:
    """Prepared (unowned, merged) counters are freed when their count reaches zero:
    a million of them, 56 bytes each, would add 56 MB if they leaked."""
    out = _child(
        """
        import resource
        from tallies._tallies import ShardedCounter
        def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(10_000):
            ShardedCounter(1).increment()
        before = rss()
        for i in range(1_000_000):
            c = ShardedCounter(i)
            c.increment()
            d = c
            del d
        print(rss() - before)
        """
    )
    assert int(out) < 16_000, f"max RSS grew by {int(out)} KiB"


@pytest.mark.skipif(not GIL_OFF, reason="needs threads that run at once (no GIL) to contend")
def test_the_budget_bounds_how_many_become_immortal(core: ModuleType) -> None:
    """TALLIES_SHARED_MAX=2: of four contended counters, two become immortal and two
    stay ordinary (and exact); TALLIES_SHARED_MAX=0 turns the feature off."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"""
        import sys, threading
        sys.path[:0] = [{here!r}, {os.path.dirname(here)!r}]
        from test_ft_shared_refcount import contend_until_inflated
        from tallies import _tallies as _core
        counters = [_core.ShardedCounter() for _ in range(4)]
        made = [contend_until_inflated(c) for c in counters]
        assert all(c.inflated for c in counters)
        assert [c.value() for c in counters] == made
        print(sum(sys.getrefcount(c) == {IMMORTAL} for c in counters), _core._shared_remaining())
    """
    if not core.SHARES_CONTENDED:
        pytest.skip("this build never makes counters immortal (SHARES_CONTENDED == 0)")
    assert _child(code, TALLIES_SHARED_MAX="2").split() == ["2", "0"]
    assert _child(code, TALLIES_SHARED_MAX="0").split() == ["0", "0"]
