"""The limiter's promise on redis:// under load and faults, checked against a
ledger of every hit()'s answer and time and of every lease call (see
``_ledger.py``): 4 writer processes x 4 threads on one limiter key; never more
than the limit admitted in any interval of ``per`` seconds, and every refusal
explained by the units reserved (used or leased) when Redis decided it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _ledger import Ledger
from _redis_support import LostReplyProxy, RedisCluster, RedisServer, unique_prefix
from _support import a_fresh_writer_admits_what_is_left

import tallies
from tallies.stores import StoreUnavailableError

LEDGER = Path(__file__).resolve().parent / "_ledger.py"
LIMIT, PER, RES = 40, 1.0, 0.05
BUCKETS = round(PER / RES)


def start_writers(
    url: str, tmp: Path, n: int = 4, seconds: float = 5.0
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    out = []
    for i in range(n):
        log = tmp / f"writer{i}.jsonl"
        argv = [
            sys.executable,
            str(LEDGER),
            url,
            str(log),
            "4",
            str(seconds),
            str(LIMIT),
            str(PER),
            str(RES),
        ]
        out.append((subprocess.Popen(argv, stderr=subprocess.PIPE), log))
    return out


def wait_started(writers: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    """Until every writer has logged a hit (they import and connect first)."""
    deadline = time.monotonic() + 60
    while not all(log.exists() and log.stat().st_size for _, log in writers):
        assert time.monotonic() < deadline, "the writers did not start"
        time.sleep(0.01)


def join(writers: list[tuple[subprocess.Popen[bytes], Path]], timeout: float = 120) -> Ledger:
    for p, _ in writers:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        assert p.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
    return Ledger.read([log for _, log in writers if log.exists()])


def kill_one_holding_a_lease(writers: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    """SIGKILL the first writer once its ledger shows a lease with units to
    spare (5 s at most: then it is killed anyway)."""
    victim, vlog = writers[0]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if vlog.exists() and any(c.get("granted", 0) > 1 for c in Ledger.read([vlog]).calls):
            break
        time.sleep(0.005)  # another process's log: nothing to wait on but the file
    victim.send_signal(signal.SIGKILL)


def check(led: Ledger, seconds: float) -> None:
    worst, at = led.worst_window(PER)
    bad = led.unexplained_refusals(LIMIT, BUCKETS)
    print(
        f"\nadmitted {led.admitted}, refused {led.refused}, errors {led.errors}, "
        f"lease calls {len(led.calls)}, most admitted in {PER} s: {worst} (limit {LIMIT})"
    )
    assert worst <= LIMIT, f"over-admission: {worst} hits in {PER} s from {at}"
    assert not bad, f"{len(bad)} refusal(s) unexplained, e.g. {bad[:2]}"
    # and it admits: about LIMIT per window of PER + RES over the run
    assert led.admitted >= LIMIT * (seconds - 1) / (PER + RES) * 0.6


def test_four_processes_by_four_threads_on_one_server(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(unique_prefix("lim"))
    check(join(start_writers(url, tmp_path)), 5.0)


def test_four_processes_by_four_threads_on_the_cluster(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    url = redis_cluster.url(unique_prefix("lim"))
    check(join(start_writers(url, tmp_path)), 5.0)


def test_a_writer_killed_while_holding_a_lease(redis_server: RedisServer, tmp_path: Path) -> None:
    url = redis_server.url(unique_prefix("lim"))
    writers = start_writers(url, tmp_path, seconds=6.0)
    kill_one_holding_a_lease(writers)
    killed_at = time.time()
    led = join(writers)
    check(led, 6.0)
    # what it held: its last grant's units minus the hits it admitted after that
    mine = Ledger.read([writers[0][1]])  # the victim's ledger
    grants = [c for c in mine.calls if c.get("granted")]
    assert grants, "the victim never held a lease"
    last = grants[-1]
    used_after = sum(1 for t0, _, ok in mine.hits if ok and t0 >= last["sent"])
    held = max(0, last["granted"] - used_after)
    print(
        f"killed at {killed_at:.3f} holding up to {held} unused unit(s) of slot {last['slot']}: "
        f"refused for at most {PER + RES} s"
    )


def test_redis_restarted_under_load(aof_server: RedisServer, tmp_path: Path) -> None:
    url = aof_server.url(unique_prefix("lim"), timeout="0.5")
    writers = start_writers(url, tmp_path, seconds=7.0)
    wait_started(writers)
    time.sleep(1.0)
    aof_server.stop()  # appendfsync always: every grant acknowledged is on disk
    time.sleep(1.0)
    aof_server.start()
    led = join(writers)
    assert led.errors > 0, "the restart was not seen by any hit"
    check(led, 4.0)


def test_a_lost_reply_never_over_admits(redis_server: RedisServer) -> None:
    proxy = LostReplyProxy(redis_server.port)
    prefix = unique_prefix("lim")
    url = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&timeout=0.5"
    try:
        with tallies.open(url) as store:
            lim = store.limiter("lost", 20, 60)
            assert lim.hit("k")  # loads the script: the next EVALSHA runs for sure
            while lim._peek("k")[1]:  # spend the first lease
                assert lim.hit("k")
            proxy.arm()
            with pytest.raises(StoreUnavailableError):
                lim.hit("k")  # reserved in Redis; the reply is lost
            assert proxy.dropped == 1
        a_fresh_writer_admits_what_is_left(redis_server.url(prefix), "lost", 20)
    finally:
        proxy.close()
