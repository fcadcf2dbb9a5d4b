"""RateCounter and KeyedRateCounter (issue 10), a part of ``tallies bench``.

* Single thread: each statement 50 times a loop over locals
  (``harness.per_call``), ratios per round.  ``count()`` is timed in its worst
  case: one event in the newest of 60 buckets, so the read scans all 60 marks.
* 1,000,000 events in a 60 s window: ns per event (one thread) and the bytes
  the structure holds afterwards (tracemalloc: allocated while counting, still
  alive), for tallies.RateCounter, a deque of timestamps behind a Lock (the
  usual hand-made rolling counter, memory O(events)), and ``limits`` (memory
  storage) ``MovingWindowRateLimiter.hit`` and
  ``SlidingWindowCounterRateLimiter.hit`` with a limit of 1,000,000 per
  minute.  The ``limits`` strategies are slow enough that they run for a
  bounded time (``peer_seconds``); their row says how many events that was,
  and its bytes are those held after that many (with bytes per event, to
  extrapolate an O(events) structure).
"""

from __future__ import annotations

import collections
import gc
import importlib
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from tallies import Counter, KeyedCounter, KeyedRateCounter, RateCounter

from .harness import LIST_FLOOR, Row, Target, per_call, per_call_rows, sharing

__all__ = ["measure", "run"]

UNROLL = 50
EVENTS = 1_000_000
INC_RATIO = 1.6
COUNT_NS = 1000.0
PART_CALLS = "rates: 1 thread, ns per op"
STATEMENTS = {
    "Counter.increment()": "c.increment()",
    "RateCounter.increment()": "r.increment()",
    "KeyedCounter.increment(key)": "kc.increment(k)",
    "KeyedRateCounter.increment(key)": "kr.increment(k)",
    "RateCounter.count(), 60 buckets": "one.count()",
}
"""The per-call rows, each a statement over the locals ``c``, ``r``, ``kc``, ``kr``,
``k`` and ``one`` (``count()`` of one event in the newest of 60 buckets)."""
PART_WINDOW = f"rates: {EVENTS:,} events in a 60 s window"


def _single_thread(rounds: int, iterations: int) -> list[Row]:
    key = "GET /index.html"
    kc = KeyedCounter({key: 1000})
    kr = KeyedRateCounter(60.0, 1.0)
    kr.increment(key)
    one = RateCounter(60.0, 1.0)  # count(): one event in the newest of 60 buckets
    one.increment()
    env = {"c": Counter(), "r": RateCounter(60.0, 1.0), "kc": kc, "kr": kr, "k": key, "one": one}
    timed = per_call(sharing(env, STATEMENTS), rounds=rounds, unroll=UNROLL, loops=iterations)
    # A rate's increment is held to the plain counter's it is built on.
    against = {
        "RateCounter.increment()": "Counter.increment()",
        "KeyedRateCounter.increment(key)": "KeyedCounter.increment(key)",
    }
    rows = per_call_rows(PART_CALLS, timed, LIST_FLOOR, against)
    for name, of in against.items():
        rows[name].judge(Target("<=", INC_RATIO, of=of), rows[name].ratio)
    count = rows["RateCounter.count(), 60 buckets"]
    count.judge(Target("<=", COUNT_NS, unit="ns"), count.value)
    return list(rows.values())


class _DequeRate:
    """The hand-made rolling counter: timestamps in a deque behind a Lock."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.events: collections.deque[float] = collections.deque()
        self.lock = threading.Lock()

    def hit(self) -> None:
        now = time.monotonic()
        with self.lock:
            self.events.append(now)
            edge = now - self.window
            while self.events[0] <= edge:
                self.events.popleft()

    def count(self) -> int:
        with self.lock:
            return len(self.events)


def _drive(hit: Callable[[], Any], events: int, budget: float) -> tuple[int, float]:
    """Call hit() up to ``events`` times or until ``budget`` seconds; (done, seconds)."""
    done = 0
    t0 = time.perf_counter()
    deadline = t0 + budget
    while done < events:
        for _ in range(1000):
            hit()
        done += 1000
        if time.perf_counter() > deadline:
            break
    return done, time.perf_counter() - t0


def _measure(
    name: str, make: Callable[[], tuple[Any, Callable[[], Any]]], events: int, budget: float
) -> Row:
    """ns per event (a plain run), then the bytes held after as many events on a
    fresh structure (a second run under tracemalloc, which slows everything)."""
    gc.collect()
    keep, hit = make()
    done, seconds = _drive(hit, events, budget)
    del keep, hit
    gc.collect()
    tracemalloc.start()
    try:
        keep, hit = make()
        _drive(hit, done, float("inf"))
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del keep, hit
    row = Row(PART_WINDOW, name, seconds / done * 1e9, "ns", detail=f"{held:,} B held")
    row.data = {"bytes": held, "bytes_per_event": held / done, "events_measured": done}
    if done < EVENTS:
        why = " (time bound)" if done < events else ""
        row.detail += (
            f"; measured over {done:,} events{why}: bytes held then, {held / done:.1f} B per event"
        )
    return row


def _window_rows(peer_seconds: float, events: int) -> list[Row]:
    def tallies_rate() -> tuple[Any, Callable[[], Any]]:
        r = RateCounter(60.0, 1.0)
        return r, r.increment

    def deque_rate() -> tuple[Any, Callable[[], Any]]:
        d = _DequeRate(60.0)
        return d, d.hit

    rows = [
        _measure("tallies.RateCounter.increment()", tallies_rate, events, 600.0),
        _measure("deque of timestamps + Lock", deque_rate, events, 600.0),
    ]
    try:  # an optional peer, untyped: imported by name so mypy passes without it
        parse: Any = importlib.import_module("limits").parse
        storage: Any = importlib.import_module("limits.storage")
        strategies: Any = importlib.import_module("limits.strategies")
    except ImportError:
        rows.append(
            Row(PART_WINDOW, "limits", detail="not installed (benchmarks/requirements.txt)")
        )
        return rows
    item = parse(f"{EVENTS}/minute")
    for label, strategy in (
        ("limits MovingWindowRateLimiter.hit", strategies.MovingWindowRateLimiter),
        ("limits SlidingWindowCounterRateLimiter.hit", strategies.SlidingWindowCounterRateLimiter),
    ):

        def make(strategy: Any = strategy) -> tuple[Any, Callable[[], Any]]:
            limiter = strategy(storage.MemoryStorage())
            return limiter, lambda: limiter.hit(item, "k")

        rows.append(_measure(label + " (memory storage)", make, events, peer_seconds))
    return rows


def run(quick: bool) -> list[Row]:
    """The part of ``tallies bench``: a full run, or a short one of the same shape."""
    if quick:
        return measure(rounds=7, iterations=400, peer_seconds=0.5, events=50_000)
    return measure()


def measure(
    *, rounds: int = 15, iterations: int = 4000, peer_seconds: float = 10.0, events: int = EVENTS
) -> list[Row]:
    return _single_thread(rounds, iterations) + _window_rows(peer_seconds, events)
