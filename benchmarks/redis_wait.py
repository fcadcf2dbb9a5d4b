"""``tallies bench --stores``, part ``redis-wait``: what ``wait=1`` costs a ``redis://`` flush.

    python -m benchmarks.redis_wait [--quick] [--json]     (this part alone)

It starts a master and one replica (``servers.RedisServer``: no persistence,
loopback, the binary from ``TALLIES_REDIS_SERVER`` or the PATH), opens one
store with ``wait=0`` and one with ``wait=1``, and in every round dirties 100
counters and 10 keys of a keyed counter in each and times one ``flush()`` of
each (``harness.interleave``: the order rotates per round).  Rows: each
store's median flush, and wait=1 against wait=0 as the median of the
per-round ratios.  The counts are checked against Redis at the end.

Then a second pair with append-only files on both (``appendfsync always``)
times raw commands on one connection: ``INCRBY`` alone, followed by
``WAIT 1``, and where the server has ``WAITAOF`` (Redis 7.2+, Valkey) by
``WAITAOF 0 1`` (the replica's fsync) and ``WAITAOF 1 1``: what the store
would pay for the stronger promise it does not make (``README.md``, "What is
promised").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tallies

from .harness import Row, emit, interleave, median, per_round
from .servers import REDIS_SERVER, RedisServer

__all__ = ["rows", "why_not"]

PART = "redis-wait"
COUNTERS = 100


def why_not() -> str | None:
    """Why this run cannot measure, or None."""
    if REDIS_SERVER is None:
        return "not measured: redis-server not installed"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "not measured: redis-py not installed (benchmarks/requirements.txt)"
    return None


def _pair(directory: Path, *, aof: bool) -> tuple[RedisServer, RedisServer]:
    """A master and one replica in sync (with ``aof``: both fsync every write)."""
    import redis

    master = RedisServer(directory / "master", aof=aof).start()
    replica = RedisServer(
        directory / "replica", aof=aof, extra=("--replicaof", "127.0.0.1", str(master.port))
    ).start()
    client = redis.Redis(port=replica.port)
    deadline = time.monotonic() + 30
    while client.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not sync")
        time.sleep(0.02)
    client.close()
    return master, replica


def _flushes(port: int, rounds: int) -> list[Row]:
    stores = {
        w: tallies.open(f"redis://127.0.0.1:{port}/0?prefix=bw{w}:&flush=3600&wait={w}")
        for w in (0, 1)
    }
    made: dict[int, int] = {0: 0, 1: 0}

    def case(w: int) -> Callable[[], float]:
        s = stores[w]
        counters = [s.counter(f"c{i}") for i in range(COUNTERS)]
        kc = s.keyed("k")

        def flush() -> float:
            for c in counters:
                c.increment()
            for i in range(10):
                kc.increment(f"x{i}")
            made[w] += 1
            t0 = time.perf_counter()
            s.flush()
            return (time.perf_counter() - t0) * 1000

        return flush

    try:
        for w in (0, 1):
            case(w)()  # the scripts loaded, the connections open
        ms = interleave({"wait=0": case(0), "wait=1": case(1)}, rounds)
        for w, s in stores.items():
            if s.counter("c0").value() != made[w]:
                raise RuntimeError(f"wait={w}: counted {s.counter('c0').value()} of {made[w]}")
    finally:
        for s in stores.values():
            s.close()
    what = f"flush() of {COUNTERS} counters + 10 keys, one replica"
    zero = Row(PART, f"{what}, wait=0", median(ms["wait=0"]), "ms")
    one = Row(PART, f"{what}, wait=1", median(ms["wait=1"]), "ms")
    cost = Row(PART, "  wait=1 vs wait=0", unit="x")
    cost.ratios, cost.of = per_round(ms["wait=1"], ms["wait=0"]), "wait=0"
    cost.value = cost.ratio
    zero.data, one.data = {"ms": ms["wait=0"]}, {"ms": ms["wait=1"]}
    return [zero, one, cost]


def _has_waitaof(client: Any) -> bool:
    import redis

    try:
        client.execute_command("WAITAOF", 0, 0, 0)
    except redis.ResponseError:  # unknown command (Redis < 7.2)
        return False
    return True


def _raw(port: int, rounds: int) -> list[Row]:
    import redis

    client = redis.Redis(port=port, socket_timeout=10)
    cases: dict[str, tuple[Any, ...]] = {"INCRBY": (), "INCRBY + WAIT 1": ("WAIT", 1, 2000)}
    if _has_waitaof(client):
        cases["INCRBY + WAITAOF 0 1"] = ("WAITAOF", 0, 1, 2000)
        cases["INCRBY + WAITAOF 1 1"] = ("WAITAOF", 1, 1, 2000)
    unconfirmed = dict.fromkeys(cases, 0)

    def case(name: str) -> Callable[[], float]:
        def run() -> float:
            pipe: Any = client.pipeline(transaction=False)
            pipe.incrby("raw", 1)
            if cases[name]:
                pipe.execute_command(*cases[name])
            t0 = time.perf_counter()
            replies = pipe.execute()
            took = (time.perf_counter() - t0) * 1000
            if cases[name]:
                got = replies[1] if cases[name][0] == "WAIT" else replies[1][1]
                unconfirmed[name] += int(got) < 1
            return took

        return run

    try:
        ms = interleave({name: case(name) for name in cases}, rounds)
    finally:
        client.close()
    out = []
    for name, values in ms.items():
        row = Row(PART, f"{name} (fsync always on both)", median(values), "ms")
        row.data = {"ms": values}
        if unconfirmed[name]:
            row.detail = f"{unconfirmed[name]} of {len(values)} timed out unconfirmed"
        out.append(row)
    return out


def rows(quick: bool) -> list[Row]:
    """This part's rows, or one saying why none."""
    why = why_not()
    if why is not None:
        return [Row(PART, "wait=1 against wait=0 (every row)", detail=why)]
    import redis

    with tempfile.TemporaryDirectory(prefix="tallies-bench-wait-") as d:
        master, replica = _pair(Path(d) / "memory", aof=False)
        try:
            info = redis.Redis(port=master.port).info("server")
            out = _flushes(master.port, 9 if quick else 61)
        finally:
            replica.stop()
            master.stop()
        master, replica = _pair(Path(d) / "aof", aof=True)
        try:
            out += _raw(master.port, 3 if quick else 9)
        finally:
            replica.stop()
            master.stop()
    server = f"Valkey {info['valkey_version']}" if "valkey_version" in info else None
    server = server or f"Redis {info.get('redis_version', '?')}"
    for row in out:
        row.detail = "; ".join(filter(None, (row.detail, server)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    emit("python -m benchmarks.redis_wait", rows(args.quick), as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
