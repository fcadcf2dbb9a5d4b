"""redis:// from real processes: 4 processes x 3 threads with mixed operations,
fork with pending deltas, the flush at exit, a writer SIGKILLed after its
flush() returned; then the same exactness on a 3-master Redis Cluster."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from _redis_support import RedisCluster, RedisServer, unique_prefix

import tallies

WORKER = textwrap.dedent(
    """
    import json, sys, threading
    import tallies

    url, wid, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = tallies.open(url)
    taken = []
    lock = threading.Lock()

    def work(tid):
        c = store.counter("total")
        down = store.counter("down")
        kc = store.keyed("by_thread")
        mine = store.counter(f"w{wid}")
        for i in range(rounds):
            c.increment()
            c += 2
            down.decrement(i % 3)
            kc.increment(f"t{tid}", 1)
            kc.increment("all")
            kc.decrement("all", 1)
            mine.increment()
            if i % 997 == 0:
                store.flush()
            if i % 1499 == 0:
                assert c.value() >= 0 and kc.value(f"t{tid}") >= 0
            if tid == 0 and i % 2003 == 1000:
                v = mine.reset()
                with lock:
                    taken.append(v)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"taken": sum(taken)}))
    # no close(): the flush at exit sends the rest
    """
)


def _run_workers(url: str, n: int, rounds: int) -> list[dict[str, Any]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, str(w), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(n)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _check_totals(
    get: Any, hgetall: Any, prefix: str, n: int, rounds: int, results: list[dict[str, Any]]
) -> None:
    threads = 3
    assert int(get(f"{prefix}{{total}}")) == n * threads * rounds * 3
    assert int(get(f"{prefix}{{down}}")) == -n * threads * sum(i % 3 for i in range(rounds))
    by = {k.decode(): int(v) for k, v in hgetall(f"{prefix}{{by_thread}}").items()}
    assert by.pop("all", 0) == 0  # +1 -1 in one batch: nothing to send, often
    assert by == {f"t{t}": n * rounds for t in range(threads)}
    for w in range(n):
        left = int(get(f"{prefix}{{w{w}}}") or 0)
        assert left + results[w]["taken"] == threads * rounds


def test_processes_and_threads_exact_in_plain_redis(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    url = redis_server.url(prefix, flush="0.05")
    n, rounds = 4, 6000
    results = _run_workers(url, n, rounds)
    r = redis_server.client()
    _check_totals(r.get, r.hgetall, prefix, n, rounds, results)
    r.close()


def test_processes_exact_on_a_cluster_and_spread_over_nodes(redis_cluster: RedisCluster) -> None:
    prefix = unique_prefix()
    url = redis_cluster.url(prefix, flush="0.05")
    n, rounds = 4, 3000
    results = _run_workers(url, n, rounds)
    rc = redis_cluster.client()
    try:
        _check_totals(rc.get, rc.hgetall, prefix, n, rounds, results)
        with tallies.open(url) as store:
            for i in range(40):
                store.counter(f"spread{i}").increment(i)
            store.flush()
            # every script call's keys lie in one slot (the cluster would refuse CROSSSLOT)
            from tallies.stores.writebehind import Batch

            be = store._wb._be()
            calls = be.plan("w", Batch(1, {f"n{i}": 1 for i in range(50)}, {"k": {"a": 1, "b": 2}}))
            assert len({rc.keyslot(c.keys[0]) for c in calls}) == 51
            for call in calls:
                assert len({rc.keyslot(k) for k in call.keys}) == 1
            snap = store.snapshot()
            assert snap["counters"]["total"] == n * 3 * rounds * 3
        nodes_with_keys = 0
        for node in rc.get_primaries():
            client = rc.get_redis_connection(node)
            if any(True for _ in client.scan_iter(match=f"{prefix}{{spread*", count=1000)):
                nodes_with_keys += 1
        assert nodes_with_keys >= 2
        assert tallies.destroy(url) is True
        for node in rc.get_primaries():
            client = rc.get_redis_connection(node)
            assert not any(True for _ in client.scan_iter(match=f"{prefix}*", count=1000))
    finally:
        rc.close()


def _child_counts(url: str, q: Any) -> None:
    store = tallies.open(url)
    store.counter("forked").increment(7)
    q.put(store.counter("forked").value())
    # returns without flush or close: multiprocessing's exit path flushes


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_with_pending_deltas(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    url = redis_server.url(prefix, flush="3600")
    store = tallies.open(url)
    c = store.counter("forked")
    c.increment(5)  # pending in the parent at fork time
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_counts, args=(url, q))
    p.start()
    child_saw = q.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0
    assert child_saw == 7  # the parent's pending 5 is not the child's
    r = redis_server.client()
    assert r.get(f"{prefix}{{forked}}") == b"7"  # flushed by the child's exit
    store.flush()
    assert r.get(f"{prefix}{{forked}}") == b"12"
    pid = os.fork()
    if pid == 0:  # a raw fork: the inherited counter object keeps working
        try:
            c.increment(100)
            store.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    c.increment(1)
    store.close()
    assert r.get(f"{prefix}{{forked}}") == b"113"
    r.close()


EXITER = textwrap.dedent(
    """
    import sys, tallies
    store = tallies.open(sys.argv[1])
    store.counter("at_exit").increment(int(sys.argv[2]))
    store.keyed("at_exit_k").increment("a", 3)
    """
)

KILLED = textwrap.dedent(
    """
    import sys, time, tallies
    store = tallies.open(sys.argv[1])
    c = store.counter("killed")
    c.increment(1000)
    store.flush()
    c.increment(5)          # pending: lost with the process, never half-applied
    print("flushed", flush=True)
    time.sleep(60)
    """
)


def test_exit_flush_and_a_writer_killed_after_flush(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    url = redis_server.url(prefix, flush="3600")
    subprocess.run([sys.executable, "-c", EXITER, url, "41"], check=True, timeout=60)
    r = redis_server.client()
    assert r.get(f"{prefix}{{at_exit}}") == b"41"
    assert r.hgetall(f"{prefix}{{at_exit_k}}") == {b"a": b"3"}
    p = subprocess.Popen([sys.executable, "-c", KILLED, url], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "flushed"
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    assert r.get(f"{prefix}{{killed}}") == b"1000"
    # its bookkeeping expires; it is one key per writer
    wkeys = r.keys(f"{prefix}~w*")
    assert len(wkeys) == 2 and all(r.pttl(k) > 0 for k in wkeys)
    r.close()
