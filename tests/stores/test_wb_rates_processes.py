"""Rates on write-behind stores across processes: 4 writer processes count
into one rate (and one keyed rate) at driven wall-clock times; every bucket
the store reports equals the sum of the writers' ledgers for that bucket."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _postgres_support import PostgresServer, unique_schema
from _redis_support import RedisCluster, RedisServer, unique_prefix

import tallies

WRITER = Path(__file__).resolve().parent / "_rate_writer.py"
RES = 1_000_000_000


def _run(url: str) -> None:
    now_ns = (time.time_ns() // RES) * RES  # a bucket's first nanosecond
    procs = [
        subprocess.Popen(
            [sys.executable, str(WRITER), url, str(seed), "400", str(now_ns)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in range(4)
    ]
    plain: dict[int, int] = {}
    keyed: dict[str, dict[int, int]] = {}
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
        led = json.loads(out)
        for slot, n in led["plain"].items():
            plain[int(slot)] = plain.get(int(slot), 0) + n
        for key, m in led["keyed"].items():
            for slot, n in m.items():
                d = keyed.setdefault(key, {})
                d[int(slot)] = d.get(int(slot), 0) + n
    cur = now_ns // RES
    with tallies.open(url) as s:
        r = s.rate("r", 30, 1)
        kr = s.keyed_rate("k", 30, 1)
        r.clock = kr.clock = lambda: now_ns
        assert r.total() == sum(plain.values())
        prev = 0
        for k in range(1, 31):  # count(k) - count(k - 1) is bucket cur - k + 1
            c = r.count(k)
            assert c - prev == plain.get(cur - k + 1, 0), f"bucket {cur - k + 1}"
            prev = c
        prev_k = {key: 0 for key in keyed}
        for k in range(1, 31):
            snap = kr.snapshot(k)
            for key in keyed:
                assert snap.get(key, 0) - prev_k[key] == keyed[key].get(cur - k + 1, 0)
                prev_k[key] = snap.get(key, 0)
        assert kr.snapshot() == {key: sum(m.values()) for key, m in keyed.items()}


def test_sqlite(tmp_path: Path) -> None:
    _run(f"sqlite:///{tmp_path}/rates.db?flush=0.05")


def test_postgres(postgres_server: PostgresServer) -> None:
    _run(postgres_server.url(schema=unique_schema("rp"), flush="0.05"))


def test_redis(redis_server: RedisServer) -> None:
    _run(redis_server.url(unique_prefix("rp"), flush="0.05"))


@pytest.mark.parametrize("flush", ["0.05"])
def test_redis_cluster(redis_cluster: RedisCluster, flush: str) -> None:
    _run(redis_cluster.url(unique_prefix("rp"), flush=flush))
