"""shm:// rates: one rate counted by real processes, SIGKILL, resets racing writers, capacity."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _rates_support import RateModel
from _shm_support import SRC, new_url, run_python
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tallies
from tallies.stores.base import CapacityError

# The fork start method is what these tests exercise (and it is fast); spawn is
# exercised by the counters' process tests.
CTX = mp.get_context("fork")


@pytest.fixture
def rate_url() -> Iterator[str]:
    url = new_url("?names=16&keys=64&slabs=8&buckets=1024")
    yield url
    tallies.destroy(url.partition("?")[0])


def _count(url: str, n: int) -> None:
    with tallies.open(url) as s:
        r = s.rate("requests", window=60.0, resolution=1.0)
        k = s.keyed_rate("status", window=60.0, resolution=1.0)
        for i in range(n):
            r.increment()
            k.increment("200" if i % 4 else "500")


def test_processes_share_one_rate(rate_url: str) -> None:
    procs = [CTX.Process(target=_count, args=(rate_url, 3000)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with tallies.open(rate_url) as s:
        r = s.rate("requests", 60, 1)
        assert r.total() == 12_000
        assert r.count() == 12_000
        assert r.per_second() == 200.0
        k = s.keyed_rate("status", 60, 1)
        assert k.snapshot() == {"200": 9000, "500": 3000}
        assert k.most_common(1) == [("200", 9000)]
        snap = s.snapshot()
        assert snap["rates"]["requests"]["count"] == 12_000
        assert snap["keyed_rates"]["status"]["counts"] == {"200": 9000, "500": 3000}


def test_unrelated_process_and_show(rate_url: str) -> None:
    code = (
        "import tallies\n"
        f"with tallies.open({rate_url!r}) as s:\n"
        "    s.rate('requests', 30, 0.5).increment(41)\n"
        "    s.keyed_rate('paths', 30, 0.5).increment('/a', 2)\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run(
        [sys.executable, "-m", "tallies", "show", rate_url.partition("?")[0]],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "41 / 30 s" in out.stdout and "1.367" in out.stdout
    assert "/a" in out.stdout and "2 / 30 s" in out.stdout
    with tallies.open(rate_url) as s:
        assert s.rate("requests", 30, 0.5).count() == 41
        with pytest.raises(ValueError, match=r"'requests' is a rate with window=30\.0"):
            s.rate("requests", 60, 1)
        with pytest.raises(ValueError, match="'requests' is a rate in shm://"):
            s.counter("requests")
        with pytest.raises(ValueError, match="'paths' is a keyed rate in shm://"):
            s.rate("paths", 30, 0.5)


def _count_then_die(url: str, n: int, slabs: mp.SimpleQueue[list[int]] | None = None) -> None:
    with tallies.open(url) as s:
        r = s.rate("requests", 60, 1)
        for _ in range(n):
            r.increment()
        if slabs is not None:  # the slab this writer claimed: (index, its pid)
            slabs.put(next([d["slab"], d["pid"]] for d in s.info()["slabs"] if d["mine"]))
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_writer_still_counts_and_its_slab_is_reused() -> None:
    """A segment with ONE writer slab: three writers in turn, each SIGKILLed
    after counting, each claims that same slab (the dead one's counts are
    folded out first), and so does the reader's first write at the end."""
    url = new_url("?names=16&keys=64&slabs=1&buckets=1024")
    try:
        slabs: mp.SimpleQueue[list[int]] = CTX.SimpleQueue()
        pids = []
        for _ in range(3):
            p = CTX.Process(target=_count_then_die, args=(url, 1000, slabs))
            p.start()
            p.join(60)
            assert p.exitcode == -signal.SIGKILL
            pids.append(p.pid)
        assert [slabs.get() for _ in range(3)] == [[0, pid] for pid in pids]
        with tallies.open(url) as s:
            r = s.rate("requests", 60, 1)
            assert r.total() == 3000 and r.count() == 3000
            r.increment(5)  # claims the slab the last dead writer held
            assert [(d["slab"], d["pid"], d["mine"]) for d in s.info()["slabs"]] == [
                (0, os.getpid(), True)
            ]
            assert r.total() == 3005 and r.count() == 3005
    finally:
        tallies.destroy(url.partition("?")[0])


def _hammer(url: str, stop: Any, done: Any) -> None:
    """Increment until told to stop; report how many increments returned."""
    n = 0
    with tallies.open(url) as s:
        r = s.rate("requests", 60, 1)
        while not stop.is_set():
            for _ in range(100):
                r.increment()
            n += 100
    done.put(n)


def test_resets_racing_writers_lose_nothing(rate_url: str) -> None:
    """Two processes increment while this one resets over and over; it goes
    on until 20 resets took a part of the count while both writers were
    still writing (asserted: the race happened).  Every increment is in
    exactly one reset's result or in the final total."""
    with tallies.open(rate_url) as s:
        r = s.rate("requests", 60, 1)
        stop, done = CTX.Event(), CTX.SimpleQueue()
        procs = [CTX.Process(target=_hammer, args=(rate_url, stop, done)) for _ in range(2)]
        for p in procs:
            p.start()
        taken = 0
        raced = 0  # resets that took something while both writers were alive
        deadline = time.monotonic() + 60
        try:
            while raced < 20 and time.monotonic() < deadline:
                got = r.reset()
                taken += got
                raced += bool(got) and all(p.is_alive() for p in procs)
                c, t = r.count(), r.total()
                assert 0 <= c <= t + 10_000_000  # a count read before the total
        finally:
            stop.set()
        counted = done.get() + done.get()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert raced >= 20
        assert taken + r.total() == counted
        assert r.count() == r.total()  # everything since the last reset is in the window


def test_bucket_capacity_is_fixed_and_refusal_changes_nothing() -> None:
    url = new_url("?names=8&keys=8&slabs=2&buckets=130")
    try:
        with tallies.open(url) as s:
            s.rate("a", 60, 1)  # 62 units
            s.rate("b", 60, 1)  # 124
            with pytest.raises(CapacityError, match="needs 62 bucket units and 6 of 130 are left"):
                s.rate("c", 60, 1)
            assert s.names() == ["a", "b"]
            k = s.keyed_rate("k", 4, 1)  # keys take 6 units each
            k.increment("x")
            with pytest.raises(CapacityError, match="larger \\?buckets="):
                k.increment("y")
            assert k.snapshot() == {"x": 1} and k.keys() == ["x"]
    finally:
        tallies.destroy(url.partition("?")[0])


def test_a_writer_that_died_mid_mark_is_repaired(rate_url: str) -> None:
    """Readers read around a seq left odd (they never wait for a writer); the
    slab's next owner finishes it before its own first mark."""
    with tallies.open(rate_url) as s:
        r = s.rate("requests", 60, 1)
        clock = _DrivenNs(10**12)
        r._ring.now = clock
        r.increment(7)
        seg = s._seg  # type: ignore[attr-defined]
        off = seg.L.ring_off(5, r._ring.unit)  # a slab nobody owns
        seg.c.store(off, 1)  # seq left odd, as by a process killed inside a mark
        assert r.count() == 7 and r.total() == 7
        assert seg.c.load(off) == 1  # nobody waited for it, nobody touched it
        mine = seg.L.ring_off(seg.c.bound_slab(), r._ring.unit)
        seg.c.store(mine, seg.c.load(mine) + 1)  # as if our slab's dead former owner left it odd
        clock.ns += 2 * 10**9  # a new bucket: our next increment writes a mark
        r.increment()
        assert seg.c.load(mine) % 2 == 0
        assert r.count() == 8 and r.total() == 8


def test_bad_input_changes_nothing(rate_url: str) -> None:
    with tallies.open(rate_url) as s:
        r = s.rate("requests", 60, 1)
        r.increment(2)
        with pytest.raises(TypeError, match=r"increment\(\) expects an integer, not 'float'"):
            r.increment(1.5)
        with pytest.raises(ValueError, match=r"count\(\) window must be a number of seconds"):
            r.count(61)
        with pytest.raises(ValueError, match=r"RateCounter\(\) resolution must be"):
            s.rate("bad", 1, 2)
        with pytest.raises(TypeError, match="key must be a str"):
            s.keyed_rate("k").increment(5)  # type: ignore[arg-type]
        r.increment(2**63 - 3)
        with pytest.raises(OverflowError, match="outside the signed 64-bit range; nothing"):
            r.increment(2)
        assert r.total() == 2**63 - 1 and "bad" not in s.names()


class _DrivenNs:
    """A nanosecond clock the test moves (installed on the rate's ring)."""

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("inc"), st.integers(0, 5)),
            st.tuples(st.just("fwd"), st.integers(0, 3000)),  # ms
            st.tuples(st.just("count"), st.integers(1, 10)),  # seconds
            st.tuples(st.just("reset"), st.just(0)),
        ),
        max_size=40,
    )
)
def test_shm_rate_matches_the_model(ops: list[tuple[str, int]]) -> None:
    """The shm:// ring (marks per slab, the reset's bucket and bases) against the
    same exact model as the in-process RateCounter, with a driven clock."""
    url = new_url("?names=4&keys=4&slabs=2&buckets=64")
    try:
        with tallies.open(url) as s:
            r = s.rate("r", window=10.0, resolution=0.5)
            clock = _DrivenNs(10**12)
            r._ring.now = clock
            model = RateModel(10.0, 0.5)
            for op, arg in ops:
                t = clock.ns / 1e9
                if op == "inc":
                    r.increment(arg)
                    model.add(t, arg)
                elif op == "fwd":
                    clock.ns += arg * 1_000_000
                elif op == "reset":
                    assert r.reset() == model.reset(t)
                else:
                    assert r.count(float(arg)) == model.count(t, float(arg))
                assert r.total() == model.total
    finally:
        tallies.destroy(url.partition("?")[0])
