"""What ``wait=1`` costs a ``redis://`` flush, against ``wait=0``, with one local replica.

    python benchmarks/redis_wait.py [--rounds 40] [--counters 100] [--json FILE]

Standalone (the shared harness in ``benchmarks/`` will absorb it): starts a
master and one replica (``redis-server`` from ``TALLIES_REDIS_SERVER`` or the
PATH; no persistence, the replica on the same host over loopback), opens one
store with ``wait=0`` and one with ``wait=1``, and in every round dirties
``--counters`` counters and 10 keys of a keyed counter in each and times one
``flush()`` of each, in an order that alternates per round.  It reports the
median and spread of each, and the ratio wait=1 / wait=0 taken per round
(the machine is shared: only ratios inside one run mean anything).

Then a second pair with append-only files on both (``appendfsync always``)
measures raw commands on one connection: ``INCRBY`` alone, followed by
``WAIT 1``, and where the server has ``WAITAOF`` (Redis 7.2+, Valkey) by
``WAITAOF 0 1`` (the replica's fsync) and ``WAITAOF 1 1``: what the store
would pay for the stronger promise it does not make (``README.md``, "What
is promised").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tallies

SERVER = os.environ.get("TALLIES_REDIS_SERVER") or shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, directory: Path, *args: str) -> None:
        assert SERVER is not None
        directory.mkdir(parents=True)
        self.port = free_port()
        argv = [SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory)]
        argv += ["--save", "", "--logfile", str(directory / "log"), *args]
        argv += ["--repl-diskless-sync-delay", "0"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        self.client = self._connect()

    def _connect(self) -> Any:
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                c = redis.Redis(port=self.port, socket_timeout=10)
                c.ping()
                return c
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def version(self) -> str:
        info = self.client.info("server")
        name = "valkey" if "valkey_version" in info else "redis"
        return f"{name} {info.get('valkey_version') or info['redis_version']}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def replicate(master: Server, directory: Path, *args: str) -> Server:
    replica = Server(directory, "--replicaof", "127.0.0.1", str(master.port), *args)
    deadline = time.monotonic() + 30
    while replica.client.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not sync")
        time.sleep(0.05)
    return replica


def spread(xs: list[float]) -> str:
    xs = sorted(xs)
    p10, p90 = xs[len(xs) // 10], xs[len(xs) * 9 // 10]
    return f"median {statistics.median(xs):.3f}  (p10 {p10:.3f}, p90 {p90:.3f})"


def flush_rounds(port: int, rounds: int, counters: int) -> dict[str, Any]:
    stores = {
        w: tallies.open(f"redis://127.0.0.1:{port}/0?prefix=bw{w}:&flush=3600&wait={w}")
        for w in (0, 1)
    }
    times: dict[int, list[float]] = {0: [], 1: []}
    for r in range(rounds + 3):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for w in order:
            s = stores[w]
            for i in range(counters):
                s.counter(f"c{i}").increment(r + 1)
            kc = s.keyed("k")
            for i in range(10):
                kc.increment(f"x{i}")
            t0 = time.perf_counter()
            s.flush()
            if r >= 3:  # the first rounds load the scripts and open connections
                times[w].append((time.perf_counter() - t0) * 1000)
    for s in stores.values():
        assert s.counter("c0").value() == sum(range(1, rounds + 4)), "the counts are wrong"
        s.close()
    ratios = [b / a for a, b in zip(times[0], times[1], strict=True)]
    return {"ms": times, "ratio": ratios}


def has_waitaof(client: Any) -> bool:
    import redis

    try:
        client.execute_command("WAITAOF", 0, 0, 0)
    except redis.ResponseError:  # unknown command (Redis < 7.2)
        return False
    return True


def raw_rounds(
    client: Any, rounds: int, aof: bool
) -> tuple[dict[str, list[float]], dict[str, int]]:
    cases: dict[str, list[Any]] = {"INCRBY": [], "INCRBY + WAIT 1": []}
    if aof:
        cases["INCRBY + WAITAOF 0 1"] = ["WAITAOF", 0, 1, 2000]
        cases["INCRBY + WAITAOF 1 1"] = ["WAITAOF", 1, 1, 2000]
    cases["INCRBY + WAIT 1"] = ["WAIT", 1, 2000]
    out: dict[str, list[float]] = {k: [] for k in cases}
    short: dict[str, int] = dict.fromkeys(cases, 0)  # replies with no replica confirming
    names = list(cases)
    for r in range(rounds + 3):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            pipe = client.pipeline(transaction=False)
            pipe.incrby("raw", 1)
            if cases[name]:
                pipe.execute_command(*cases[name])
            t0 = time.perf_counter()
            replies = pipe.execute()
            if r >= 3:
                out[name].append((time.perf_counter() - t0) * 1000)
            if cases[name]:
                got = replies[1] if cases[name][0] == "WAIT" else replies[1][1]
                short[name] += int(got) < 1
    return out, short


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--counters", type=int, default=100)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if SERVER is None:
        print("not measured: redis-server not installed (or TALLIES_REDIS_SERVER)")
        return 0
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        master = Server(Path(tmp) / "m")
        replica = replicate(master, Path(tmp) / "r")
        try:
            report["server"] = master.version()
            print(f"{report['date']}  {report['machine']}  Python {report['python']}")
            print(f"{report['server']}: master + 1 replica on 127.0.0.1, no persistence")
            res = flush_rounds(master.port, args.rounds, args.counters)
            report["flush"] = res
            what = f"flush() of {args.counters} counters + 10 keys"
            print(f"{what}, wait=0: {spread(res['ms'][0])} ms")
            print(f"{what}, wait=1: {spread(res['ms'][1])} ms")
            print(f"wait=1 / wait=0, per round: {spread(res['ratio'])}")
            aof = has_waitaof(master.client)
        finally:
            replica.stop()
            master.stop()
        master = Server(Path(tmp) / "m2", "--appendonly", "yes", "--appendfsync", "always")
        replica = replicate(
            master, Path(tmp) / "r2", "--appendonly", "yes", "--appendfsync", "always"
        )
        try:
            label = "append-only files, fsync always" if aof else "WAITAOF not available"
            print(f"raw commands on one connection ({label}):")
            raw, short = raw_rounds(master.client, args.rounds * 2, aof)
            report["raw"] = raw
            report["raw_unconfirmed"] = short
            for name, xs in raw.items():
                miss = f"  ({short[name]} timed out)" if short[name] else ""
                print(f"  {name:22} {spread(xs)} ms{miss}")
        finally:
            replica.stop()
            master.stop()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
