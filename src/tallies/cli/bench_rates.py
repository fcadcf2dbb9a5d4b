"""Benchmarks of RateCounter and KeyedRateCounter (issue 10): ratios in one run.

``run()`` returns rows (dicts: name, ns / bytes, ratio, target, verdict);
``format_rows(rows)`` renders them; ``python -m tallies.cli.bench_rates`` does
both.  Benchmarks, not tests: the machine and its load decide the numbers.

* Single thread: each statement unrolled 50 times in a generated loop over
  locals; the empty loop's cost subtracted; candidates interleaved over rounds,
  each keeping its minimum.  ``count()`` is timed in its worst case: one event
  in the newest of 60 buckets, so the read scans all 60 marks.
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

from ..counter import Counter
from ..keyed import KeyedCounter
from ..rates import IMPLEMENTATION, KeyedRateCounter, RateCounter

__all__ = ["format_rows", "main", "run"]

Row = dict[str, Any]
UNROLL = 50
EVENTS = 1_000_000

INC_RATIO = 1.6
COUNT_NS = 1000.0


def _loop(stmt: str, names: list[str]) -> Callable[..., None]:
    body = "".join(f"        {stmt}\n" for _ in range(UNROLL)) if stmt else "        pass\n"
    src = f"def _loop(_n, {', '.join(names)}):\n    for _ in range(_n):\n{body}"
    ns: dict[str, Any] = {}
    exec(src, ns)  # a generated benchmark loop, not user input
    fn: Callable[..., None] = ns["_loop"]
    return fn


def _single_thread(rounds: int, iterations: int) -> dict[str, float]:
    key = "GET /index.html"
    kc = KeyedCounter({key: 1000})
    kr = KeyedRateCounter(60.0, 1.0)
    kr.increment(key)
    one = RateCounter(60.0, 1.0)  # count(): one event in the newest of 60 buckets
    one.increment()
    env = {"c": Counter(), "r": RateCounter(60.0, 1.0), "kc": kc, "kr": kr, "k": key}
    env.update({"l": [], "one": one})
    names = list(env)
    cases = {
        "floor: l.clear()": "l.clear()",
        "Counter.increment()": "c.increment()",
        "RateCounter.increment()": "r.increment()",
        "KeyedCounter.increment(key)": "kc.increment(k)",
        "KeyedRateCounter.increment(key)": "kr.increment(k)",
        "RateCounter.count(), 60 buckets": "one.count()",
    }
    empty = _loop("", names)
    loops = {name: _loop(stmt, names) for name, stmt in cases.items()}
    best = dict.fromkeys(cases, float("inf"))
    best_empty = float("inf")
    args = [env[n] for n in names]
    for _ in range(rounds):
        t0 = time.perf_counter()
        empty(iterations, *args)
        best_empty = min(best_empty, time.perf_counter() - t0)
        for name, fn in loops.items():
            t0 = time.perf_counter()
            fn(iterations, *args)
            best[name] = min(best[name], time.perf_counter() - t0)
    ops = iterations * UNROLL
    return {name: max(t - best_empty, 0.0) / ops * 1e9 for name, t in best.items()}


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
    row: Row = {
        "name": f"{EVENTS:,} events in a 60 s window: {name}",
        "ns": round(seconds / done * 1e9, 1),
        "bytes": held,
        "bytes_per_event": round(held / done, 1),
        "events_measured": done,
        "target": "",
        "verdict": "",
    }
    if done < EVENTS:
        why = " (time bound)" if done < events else ""
        row["note"] = (
            f"measured over {done:,} events{why}: bytes held then, {held / done:.1f} B per event"
        )
    return row


def _window_rows(peer_seconds: float, events: int) -> list[Row]:
    rows: list[Row] = []

    def tallies_rate() -> tuple[Any, Callable[[], Any]]:
        r = RateCounter(60.0, 1.0)
        return r, r.increment

    def deque_rate() -> tuple[Any, Callable[[], Any]]:
        d = _DequeRate(60.0)
        return d, d.hit

    rows.append(_measure("tallies.RateCounter.increment()", tallies_rate, events, 600.0))
    rows.append(_measure("deque of timestamps + Lock", deque_rate, events, 600.0))
    try:  # an optional peer, untyped: imported by name so mypy passes without it
        parse: Any = importlib.import_module("limits").parse
        storage: Any = importlib.import_module("limits.storage")
        strategies: Any = importlib.import_module("limits.strategies")
    except ImportError:
        rows.append(
            {
                "name": "limits: not installed (pip install tallies[bench])",
                "target": "",
                "verdict": "",
            }
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


def run(
    *, rounds: int = 15, iterations: int = 4000, peer_seconds: float = 10.0, events: int = EVENTS
) -> list[Row]:
    st = _single_thread(rounds, iterations)
    floor = st["floor: l.clear()"]
    rows: list[Row] = []
    for name, ns in st.items():
        row: Row = {
            "name": f"rates: 1 thread, ns per op: {name}",
            "ns": round(ns, 1),
            "ratio": round(ns / floor, 2),
            "target": "",
            "verdict": "",
        }
        if name == "RateCounter.increment()":
            r = ns / st["Counter.increment()"]
            row["target"] = f"<= {INC_RATIO}x Counter.increment() (measured {r:.2f}x)"
            row["verdict"] = "met" if r <= INC_RATIO else "missed"
        elif name == "KeyedRateCounter.increment(key)":
            r = ns / st["KeyedCounter.increment(key)"]
            row["target"] = f"<= {INC_RATIO}x KeyedCounter.increment(key) (measured {r:.2f}x)"
            row["verdict"] = "met" if r <= INC_RATIO else "missed"
        elif name.startswith("RateCounter.count()"):
            row["target"] = f"<= {COUNT_NS:g} ns"
            row["verdict"] = "met" if ns <= COUNT_NS else "missed"
        rows.append(row)
    rows += _window_rows(peer_seconds, events)
    rows.append({"name": f"implementation: {IMPLEMENTATION}", "target": "", "verdict": ""})
    return rows


def format_rows(rows: list[Row]) -> str:
    lines = []
    for r in rows:
        value = f"{r['ns']:9.1f} ns" if "ns" in r else " " * 12
        if "bytes" in r:
            extra = f"  {r['bytes']:>13,} B"
        elif "ratio" in r:
            extra = f"  {r['ratio']:12.2f}x"
        else:
            extra = " " * 16
        tail = f"  [{r['target']}: {r['verdict']}]" if r.get("target") else ""
        note = f"  ({r['note']})" if r.get("note") else ""
        lines.append(f"{value}{extra}  {r['name']}{tail}{note}")
    return "\n".join(lines)


def main() -> None:
    print(format_rows(run()))


if __name__ == "__main__":
    main()
