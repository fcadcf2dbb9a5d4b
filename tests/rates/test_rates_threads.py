"""Rates under real threads: the tutorial's workload, and increments racing rotations."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import ModuleType

import pytest
from _rates_support import Clock
from _threads import interleaving, run_threads


@pytest.fixture
def fast_switching() -> Iterator[None]:
    with interleaving():
        yield


def test_ten_threads_one_window(rates_impl: ModuleType) -> None:
    """10 threads x 100,000 increments within one 60 s window: count() == 1,000,000."""
    rc = rates_impl.RateCounter(60.0, 1.0)

    def task(_: int) -> None:
        inc = rc.increment
        for _ in range(100_000):
            inc()

    run_threads(10, task)
    assert rc.total() == 1_000_000
    assert rc.count() == 1_000_000


def test_increments_racing_rotations(rates_impl: ModuleType, fast_switching: None) -> None:
    """A 1 ms resolution and a driven clock that another thread keeps moving
    (mostly forward, sometimes back): total() stays exact and a count() read
    before total() never exceeds it.  Each writer lets the clock move after
    every 200 increments, so the increments are spread over hundreds of
    clock positions (asserted): the rotations do race them."""
    clock = Clock(0.0)
    rc = rates_impl.RateCounter(0.05, 0.001, clock=clock)
    stop = threading.Event()
    bad: list[tuple[int, int]] = []
    per_thread = 20_000
    writers = 4
    ticks = [0]
    buckets_seen: set[int] = set()  # where the clock was, seen by the writers

    def tick() -> None:
        while not stop.is_set():
            ticks[0] += 1
            clock.t += -0.003 if ticks[0] % 17 == 0 else 0.0007

    def read() -> None:
        while not stop.is_set():
            c = rc.count()
            t = rc.total()
            if c > t or c < 0:
                bad.append((c, t))

    def write(i: int) -> None:
        inc = rc.increment
        for j in range(per_thread):
            inc()
            if j % 200 == 0:  # let the clock move before the next 200 (forces the race)
                buckets_seen.add(int(clock.t / 0.001))
                seen = ticks[0]
                while ticks[0] == seen:
                    time.sleep(0)

    side = [threading.Thread(target=tick), threading.Thread(target=read)]
    for t in side:
        t.start()
    try:
        ticks_before = ticks[0]
        run_threads(writers, write)
        ticks_during = ticks[0] - ticks_before
    finally:
        stop.set()
        for t in side:
            t.join()
    assert rc.total() == writers * per_thread
    assert bad == []
    assert ticks_during >= 100 and len(buckets_seen) >= 50, (ticks_during, len(buckets_seen))
    clock.t += 1.0
    assert rc.count() == 0


def test_keyed_threads_one_window(rates_impl: ModuleType, fast_switching: None) -> None:
    """10 threads x 20,000 increments over 50 keys, sweeps and snapshots racing them."""
    clock = Clock(100.0)
    kr = rates_impl.KeyedRateCounter(10.0, 1.0, clock=clock)
    stop = threading.Event()

    def sweeper() -> None:
        while not stop.is_set():
            kr.sweep()
            kr.snapshot()
            len(kr)

    def write(i: int) -> None:
        inc = kr.increment
        for j in range(20_000):
            inc(f"k{(i * 7 + j) % 50}")

    side = threading.Thread(target=sweeper)
    side.start()
    try:
        run_threads(10, write)
    finally:
        stop.set()
        side.join()
    snap = kr.snapshot()
    assert sum(snap.values()) == 200_000
    assert len(snap) == 50 and set(snap.values()) == {4000}


def test_keyed_expiry_racing_increments(rates_impl: ModuleType, fast_switching: None) -> None:
    """Keys expire and are swept while other threads count them again: every
    increment is in the final window (the clock stops moving before the end).
    In the first round the writers pause now and then until a sweep has
    removed their keys, so sweeps and re-creations interleave (asserted)."""
    clock = Clock(0.0)
    kr = rates_impl.KeyedRateCounter(0.01, 0.001, clock=clock)
    stop = threading.Event()
    moving = threading.Event()
    moving.set()
    first_round = threading.Event()
    step = threading.Lock()

    swept = [0]  # keys removed by sweeps while the first round counted

    def tick() -> None:
        while not stop.is_set():
            with step:
                if moving.is_set():
                    clock.t += 0.004
            n = kr.sweep()
            if first_round.is_set():
                swept[0] += n

    side = threading.Thread(target=tick)
    side.start()
    added = [0] * 4

    def write(i: int) -> None:
        for j in range(5_000):
            kr.increment(f"k{j % 5}")
            added[i] += 1
            if j % 1000 == 999 and first_round.is_set():
                # pause until a sweep removed keys (they expire while every
                # writer pauses here), so the next increments re-create them
                seen, deadline = swept[0], time.monotonic() + 2
                while swept[0] == seen and time.monotonic() < deadline:
                    time.sleep(0.0001)

    try:
        first_round.set()
        run_threads(4, write)
        first_round.clear()
        with step:
            moving.clear()  # time stands still from here on
        before = dict(kr.snapshot())
        run_threads(4, write)
    finally:
        stop.set()
        side.join()
    after = kr.snapshot()
    # with time frozen and a 10-bucket window, the second round all counts
    assert sum(after.values()) - sum(before.values()) == 20_000
    assert sum(added) == 40_000
    assert swept[0] >= 4
