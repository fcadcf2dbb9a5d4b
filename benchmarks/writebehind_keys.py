"""How a write-behind keyed counter's costs grow with its number of keys (issue 19).

``python -m benchmarks.writebehind_keys [--sizes 1000,10000,100000,1000000]
[--stores sqlite,redis]``: for each store and each N, one keyed counter, N
distinct keys, one process:

* first: the N first increments (each key once), per key;
* inc: an increment of an existing key, per call, against
  ``tallies.KeyedCounter.increment`` on the same keys, interleaved in the same
  run (the ratio is per round, the median of 5 rounds);
* flush: ``store.flush()`` of the N dirty keys; on Redis also the 99th
  percentile and the longest time Redis spent in one script call (``SLOWLOG``);
* read: ``kc[key]`` of one key, the median of 200 reads of random keys, with
  the N keys still in the local buffer (at 0 after the flush);
* snapshot: ``kc.snapshot()`` (every key, stored + pending); on Redis also
  the 99th percentile and the longest time Redis spent in one call of the
  page read (``SLOWLOG``: every page is one script call).

It starts its own ``redis-server`` (``servers.RedisServer``) in a temporary
directory and stops it.  Numbers are for comparing sizes within one run: the
machine this project runs on is a noisy 2-vCPU one.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tallies

__all__ = ["main", "measure"]

SLOW_US = 100  # SLOWLOG threshold (us): the script calls, not what each runs


def _per_call(fn: Callable[[str], Any], keys: list[str]) -> float:
    """Seconds per call of fn over keys (one pass)."""
    t0 = time.perf_counter()
    for k in keys:
        fn(k)
    return (time.perf_counter() - t0) / len(keys)


def _inc_ratio(kc: Any, keys: list[str], rounds: int = 5) -> tuple[float, float, float]:
    """(ns per store increment, ns per KeyedCounter.increment, median ratio)."""
    ref = tallies.KeyedCounter()
    for k in keys:
        ref.increment(k)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(rounds):
        ours.append(_per_call(kc.increment, keys))
        theirs.append(_per_call(ref.increment, keys))
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return statistics.median(ours) * 1e9, statistics.median(theirs) * 1e9, statistics.median(ratios)


def _script_ms(client: Any, command: bytes = b"evalsha") -> tuple[float, float]:
    """(99th percentile, longest) time Redis spent in one ``command`` call
    since the last ``SLOWLOG RESET``, from SLOWLOG: every command of SLOW_US
    or more is logged (the commands a script runs are logged too: at
    threshold 0 a flush's HSET and HINCRBY would push its EVALSHA calls out
    of the log); the percentile is of the calls logged, so it is an upper
    bound."""
    slow = client.slowlog_get(100000)
    times = sorted(
        e["duration"] / 1000.0
        for e in slow
        if bytes(e["command"]).split(b" ", 1)[0].lower() == command
    )
    if not times:
        return float("nan"), float("nan")
    return times[int(0.99 * (len(times) - 1))], times[-1]


def measure(url: str, n: int, client: Any = None) -> dict[str, float]:
    store = tallies.open(url)
    try:
        kc = store.keyed("events")
        keys = [f"user:{i}" for i in range(n)]
        out: dict[str, float] = {"n": n}
        gc.collect()
        out["first_us"] = _per_call(kc.increment, keys) * 1e6
        if client is not None:
            client.slowlog_reset()
        t0 = time.perf_counter()
        store.flush()
        out["flush_s"] = time.perf_counter() - t0
        if client is not None:
            out["script_p99_ms"], out["script_max_ms"] = _script_ms(client)
        inc, ref, ratio = _inc_ratio(kc, keys)
        out["inc_ns"], out["ref_ns"], out["inc_ratio"] = inc, ref, ratio
        store.flush()
        rng = random.Random(n)
        reads = []
        for k in rng.sample(keys, min(200, n)):
            t0 = time.perf_counter()
            v = kc[k]
            reads.append(time.perf_counter() - t0)
            assert v == 6, (k, v)  # the first increment and 5 rounds
        out["read_ms"] = statistics.median(reads) * 1e3
        if client is not None:
            client.slowlog_reset()
        t0 = time.perf_counter()
        snap = kc.snapshot()
        out["snapshot_s"] = time.perf_counter() - t0
        if client is not None:
            # a page is a script call, or a plain HSCAN where hiredis parses
            # the replies (_redis_backend.RedisBackend._scan_hash)
            pages = _script_ms(client)
            if math.isnan(pages[1]):
                pages = _script_ms(client, b"hscan")
            out["snap_p99_ms"], out["snap_max_ms"] = pages
        assert len(snap) == n and sum(snap.values()) == 6 * n
        return out
    finally:
        store.close()
        tallies.destroy(url)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000,1000000")
    p.add_argument("--stores", default="sqlite,redis")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    stores = args.stores.split(",")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    cols = (
        "first_us inc_ns ref_ns inc_ratio flush_s script_p99_ms script_max_ms read_ms"
        " snapshot_s snap_p99_ms snap_max_ms"
    )
    print(f"{'store':7} {'N':>8} " + " ".join(f"{c:>13}" for c in cols.split()))
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if "redis" in stores:
            from .servers import RedisServer

            server = RedisServer(Path(tmp) / "redis").start()
        try:
            for store in stores:
                for n in sizes:
                    client = None
                    if store == "sqlite":
                        url = f"sqlite:///{tmp}/keys-{n}.db?flush=3600"
                    else:
                        assert server is not None
                        client = server.client()
                        client.config_set("slowlog-log-slower-than", SLOW_US)
                        client.config_set("slowlog-max-len", 100000)
                        url = server.url(f"bench-keys-{n}:", flush="3600")
                    r = measure(url, n, client)
                    row = " ".join(f"{r.get(c, float('nan')):13.4g}" for c in cols.split())
                    print(f"{store:7} {n:8d} {row}", flush=True)
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
