"""What KeyedCounter does on free-threaded builds so that it scales, and what
that promises (src/tallies/_c/_ktable.h "hot keys" and TKT_CIX; keyed.c and
_shared.h for the reference count):

- On 3.13t a KeyedCounter that threads update at once becomes immortal (its
  header is then written by nobody); one used by a single thread, or handed from
  thread to thread now and then, stays an ordinary object and is freed.
- A key whose count two threads update at the same instant inflates into hot
  cells; every count stays exact through reads, sets, removals, resizes, drains
  and clears, and the int64 range is still enforced to the unit.

Hot cells and immortality need threads that really run at once: on a GIL build
no compare-and-swap ever fails and nothing here can happen, which the tests that
need it say when they skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import threading
from typing import Any

import pytest
from _ft_stress import GIL_OFF, Deadline

from tallies.keyed import IMPLEMENTATION, KeyedCounter

#: Under ThreadSanitizer every byte the program touches has shadow bytes that stay
#: resident, so RSS says nothing about what is kept; _shared_bytes() still does.
UNDER_TSAN = "--with-thread-sanitizer" in (sysconfig.get_config_var("CONFIG_ARGS") or "")

pytestmark = pytest.mark.skipif(IMPLEMENTATION != "c", reason="the C core's table only")

if IMPLEMENTATION == "c":
    from tallies import _tallies as _core
else:  # pragma: no cover - skipped above
    _core = None

IMMORTAL = 2**32 - 1  # sys.getrefcount of an immortal object on 3.13t
INT64_MAX = 2**63 - 1
needs_parallel_threads = pytest.mark.skipif(
    not GIL_OFF, reason="needs threads that run at once (a free-threaded build, GIL off)"
)


def hammer(kc: Any, keys: list[Any], n: int = 20_000) -> int:
    """Thread i increments keys[i] n times, all threads released together;
    returns the total added."""
    barrier = threading.Barrier(len(keys))

    def work(key: Any) -> None:
        barrier.wait()
        inc = kc.increment
        for _ in range(n):
            inc(key)

    threads = [threading.Thread(target=work, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n * len(keys)


def inflate(kc: Any, key: Any, seconds: float = 20.0) -> int:
    """Two threads increment ``key`` together until it has hot cells (or time is
    up); returns how many increments were made."""
    deadline = Deadline(seconds)
    made = 0
    while _core._hot_keys(kc) == 0 and not deadline.expired():
        made += hammer(kc, [key, key])
    return made


def contend(kc: Any, keys: list[Any], seconds: float = 20.0) -> int:
    """Threads count ``keys`` (one each) together until ``kc`` is immortal (or time
    is up: threads started by the OS one after the other may never overlap);
    returns how many increments were made."""
    deadline = Deadline(seconds)
    made = hammer(kc, keys)
    while sys.getrefcount(kc) != IMMORTAL and not deadline.expired():
        made += hammer(kc, keys)
    return made


def test_a_fresh_keyed_counter_is_counted_and_freed() -> None:
    kc = KeyedCounter()
    base = sys.getrefcount(kc)
    alias = kc
    assert sys.getrefcount(kc) == base + 1
    del alias
    assert sys.getrefcount(kc) == base < 100


def test_threads_counting_distinct_keys_make_it_immortal_on_313t_only() -> None:
    before = _core._keyed_shared_remaining()
    kc = KeyedCounter()
    made = contend(kc, ["a", "b"], seconds=20.0 if GIL_OFF else 0.0)
    assert kc == KeyedCounter(a=made // 2, b=made // 2)
    if _core.SHARES_CONTENDED and GIL_OFF:
        # Two threads that really alternate change the updating thread far more
        # than the 64 times that count as "updated at once".
        assert sys.getrefcount(kc) == IMMORTAL, "two threads never overlapped in 20 s"
        assert _core._keyed_shared_remaining() == before - 1
        kc.increment("a", 5)
        assert kc["a"] == made // 2 + 5
    else:
        assert sys.getrefcount(kc) < 100
        assert _core._keyed_shared_remaining() == before


def test_a_counter_handed_between_threads_now_and_then_stays_ordinary() -> None:
    """Fewer than 64 changes of the updating thread: an ordinary object, freed."""
    kc = KeyedCounter()
    for i in range(20):
        t = threading.Thread(target=lambda i=i: [kc.increment(i % 3) for _ in range(1_000)])
        t.start()
        t.join()
    assert kc == KeyedCounter({0: 7_000, 1: 7_000, 2: 6_000})
    assert sys.getrefcount(kc) < 100


def test_a_keyed_counter_subclass_is_never_made_immortal() -> None:
    class Tagged(KeyedCounter):  # type: ignore[misc, valid-type]
        pass

    kc = Tagged()
    kc.tag = "x"  # type: ignore[attr-defined]
    made = hammer(kc, ["a", "b"])
    assert kc["a"] + kc["b"] == made
    assert sys.getrefcount(kc) < 100


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


def test_many_keyed_counters_created_and_dropped_do_not_pile_up() -> None:
    """Prepared KeyedCounters are freed when their count reaches zero (each one is
    a few hundred bytes with its table: 200,000 leaked would be tens of MB)."""
    out = _child(
        """
        import resource
        from tallies import KeyedCounter
        def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(10_000):
            KeyedCounter().increment("k")
        before = rss()
        for i in range(200_000):
            kc = KeyedCounter()
            kc.increment(i)
            alias = kc
            del alias
        print(rss() - before)
        """
    )
    assert int(out) < 16_000, f"max RSS grew by {int(out)} KiB"


@needs_parallel_threads
def test_the_budget_bounds_how_many_keyed_counters_become_immortal() -> None:
    """TALLIES_SHARED_MAX=1: of three KeyedCounters updated at once, one becomes
    immortal, two stay ordinary (and exact); 0 turns it off."""
    if not _core.SHARES_CONTENDED:
        pytest.skip("this build never makes counters immortal (SHARES_CONTENDED == 0)")
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"""
        import sys
        sys.path[:0] = [{here!r}, {os.path.dirname(here)!r}]
        from test_ft_keyed_scaling import contend
        from tallies import KeyedCounter
        from tallies import _tallies as _core
        kcs = [KeyedCounter() for _ in range(3)]
        # the first becomes immortal; the other two get 2 s each of contention
        made = [contend(kc, ["x", "y"], seconds=2.0) for kc in kcs]
        assert [kc.total() for kc in kcs] == made
        print(sum(sys.getrefcount(kc) == {IMMORTAL} for kc in kcs), _core._keyed_shared_remaining())
    """
    assert _child(code, TALLIES_SHARED_MAX="1").split() == ["1", "0"]
    assert _child(code, TALLIES_SHARED_MAX="0").split() == ["0", "0"]


def test_no_hot_cells_without_parallel_threads() -> None:
    kc = KeyedCounter()
    made = hammer(kc, ["hot", "hot"], n=5_000)
    assert kc["hot"] == made
    if not GIL_OFF:
        assert _core._hot_keys(kc) == 0  # a GIL: no CAS can fail
    with pytest.raises(TypeError):
        _core._hot_keys({})


@needs_parallel_threads
def test_a_hot_key_stays_exact_through_every_operation() -> None:
    kc = KeyedCounter(cold=3)
    made = inflate(kc, "hot")
    assert _core._hot_keys(kc) == 1, "two threads without a GIL never collided in 20 s"
    assert kc["hot"] == made and kc["cold"] == 3
    assert kc.total() == made + 3
    assert dict(kc.items()) == {"cold": 3, "hot": made}
    hot_size = sys.getsizeof(kc)

    # A set folds the cells into the count; the key stays hot.
    kc["hot"] = 10
    assert kc["hot"] == 10 and _core._hot_keys(kc) == 1
    made = hammer(kc, ["hot", "hot"])
    assert kc["hot"] == 10 + made
    kc.decrement("hot", 10 + made)
    assert kc["hot"] == 0

    # Reset takes the count (word and cells) exactly.
    hammer(kc, ["hot", "hot"], n=1_000)
    assert kc.reset("hot") == 2_000 and kc["hot"] == 0

    # A drain takes everything exactly once.
    hammer(kc, ["hot", "hot"], n=1_000)
    assert kc._drain() == [("cold", 3), ("hot", 2_000)]
    assert kc["hot"] == 0 and kc["cold"] == 0

    # Removing the key frees its cells; counting it again starts from 0.
    hammer(kc, ["hot", "hot"], n=1_000)
    assert kc.pop("hot") == 2_000 and "hot" not in kc
    assert _core._hot_keys(kc) == 0
    assert sys.getsizeof(kc) < hot_size
    kc.increment("hot")
    assert kc["hot"] == 1


@needs_parallel_threads
def test_a_resize_folds_hot_cells_exactly() -> None:
    kc = KeyedCounter()
    made = inflate(kc, "hot")
    assert _core._hot_keys(kc) == 1
    for i in range(5_000):  # many resizes: each folds the cells into the new table
        kc.increment(i)
    assert _core._hot_keys(kc) == 0
    assert kc["hot"] == made and len(kc) == 5_001 and kc.total() == made + 5_000


@needs_parallel_threads
def test_a_hot_key_still_refuses_to_leave_int64() -> None:
    """Adds beyond what a hot cell may hold fold into the word, checked to the
    unit: the count reaches INT64_MAX exactly and one more is refused."""
    kc = KeyedCounter()
    made = inflate(kc, "hot")
    assert _core._hot_keys(kc) == 1
    step = 2**60
    target = INT64_MAX - made
    while target >= step:
        kc.increment("hot", step)
        target -= step
    kc.increment("hot", target)
    assert kc["hot"] == INT64_MAX
    # Beyond 2**62 the key has no hot cells any more (a sum could not be held).
    assert _core._hot_keys(kc) == 0
    with pytest.raises(OverflowError, match="stays at 9223372036854775807"):
        kc.increment("hot")
    assert kc["hot"] == INT64_MAX
    # Contention on a count that large keeps it one cell: every increment is
    # refused, in both threads, and the count does not move.
    refused = [0, 0]
    barrier = threading.Barrier(2)

    def at_the_top(i: int) -> None:
        barrier.wait()
        for _ in range(1_000):
            try:
                kc.increment("hot")
            except OverflowError:
                refused[i] += 1

    threads = [threading.Thread(target=at_the_top, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert refused == [1_000, 1_000] and kc["hot"] == INT64_MAX
    assert _core._hot_keys(kc) == 0
    # Back in range, it inflates again at the next contention.
    kc["hot"] = 0
    made = inflate(kc, "hot")
    assert kc["hot"] == made and _core._hot_keys(kc) == 1
    kc.decrement("hot", made)
    kc.decrement("hot", 2**63 - 1)
    kc.decrement("hot", 1)
    assert kc["hot"] == -(2**63)
    with pytest.raises(OverflowError):
        kc.decrement("hot")
    assert kc["hot"] == -(2**63)


FILL_AND_DROP = """
    import os, sys, threading
    from tallies import KeyedCounter
    from tallies import _tallies as _core
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGESIZE")
    def fill(kc, keys, barrier):
        for j in range(0, len(keys), 25):  # the threads take turns: the updating
            barrier.wait()                 # thread changes at least twice a round
            for k in keys[j:j + 25]:
                kc.increment(k)
    KeyedCounter().increment("warm-up")
    before, left = rss(), _core._keyed_shared_remaining()
    for i in range(200):
        kc, keys, barrier = KeyedCounter(), [f"k{i}-{j}" for j in range(5000)], threading.Barrier(2)
        threads = [threading.Thread(target=fill, args=(kc, keys[t::2], barrier)) for t in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert kc.total() == 5000
        del kc, keys, threads
    kept, budget = getattr(_core, "_keyed_shared_bytes", lambda: (-1, -1))()
    print(left - _core._keyed_shared_remaining(), kept, budget, rss() - before)
"""


def test_what_immortal_keyed_counters_keep_is_bounded() -> None:
    """Issue 27: an immortal KeyedCounter is never freed, and keeps its table and
    keys: 400 counters of 5,000 keys, filled by two threads and dropped, kept
    214 MiB (TALLIES_SHARED_MAX bounds how many, not how large).  Now one
    becomes immortal only while the tables of those already immortal hold at
    most TALLIES_SHARED_KEYED_BYTES (keyed.c, _shared.h): 200 such counters
    with a 4 MiB budget keep about 4 MiB of tables plus their keys, and a
    budget of 0 keeps none."""
    if not _core.SHARES_CONTENDED:
        pytest.skip("this build never makes counters immortal (SHARES_CONTENDED == 0)")
    made, kept, budget, grown = map(
        int, _child(FILL_AND_DROP, TALLIES_SHARED_KEYED_BYTES=str(4 << 20)).split()
    )
    assert 0 < made < 200, made  # some became immortal, far from all
    assert UNDER_TSAN or grown < 32 << 20, f"RSS grew by {grown / 2**20:.1f} MiB ({made} immortal)"
    assert budget == 4 << 20
    # What the last one admitted grew by after its check is the only excess.
    assert kept <= budget + (1 << 20), (made, kept)
    made, kept, budget, grown = map(
        int, _child(FILL_AND_DROP, TALLIES_SHARED_KEYED_BYTES="0").split()
    )
    assert (made, kept) == (0, 0)
    assert UNDER_TSAN or grown < 16 << 20, f"RSS grew by {grown / 2**20:.1f} MiB"
