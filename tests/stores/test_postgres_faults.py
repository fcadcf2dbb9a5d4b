"""postgresql:// from real processes and under faults, on a real server:
4 processes x 3 threads of mixed operations read back with plain SQL; 16
writer processes flushing the same 1,000 keys at once (exact, no deadlock,
flush latency reported); the server stopped with ``pg_ctl stop -m
immediate`` under load and started again; a reply lost after the commit; a
connection killed with ``pg_terminate_backend``; a read-only user; a table
dropped while open.  Each time: nothing lost, nothing counted twice, and a
clear error where there is one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from _postgres_support import (
    PASSWORD,
    PostgresServer,
    ReplyDropper,
    postgres_server_cm,
    unique_schema,
    wait_for,
)
from _support import a_fresh_writer_admits_what_is_left

import tallies
from tallies.stores.base import CorruptStoreError, FlushError, StoreUnavailableError

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


def test_processes_and_threads_read_back_with_plain_sql(postgres_server: PostgresServer) -> None:
    schema = unique_schema()
    url = postgres_server.url(schema=schema, flush="0.05")
    n, rounds, threads = 4, 5000, 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, str(w), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(n)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    counters = dict(postgres_server.sql(f"SELECT name, value FROM {schema}.counters"))
    keyed = {k: v for _, k, v in postgres_server.sql(f"SELECT * FROM {schema}.keyed")}
    assert counters.pop("total") == n * threads * rounds * 3
    assert counters.pop("down") == -n * threads * sum(i % 3 for i in range(rounds))
    assert keyed.pop("all", 0) == 0
    assert keyed == {f"t{t}": n * rounds for t in range(threads)}
    for w in range(n):
        assert counters.pop(f"w{w}") + results[w]["taken"] == threads * rounds
    assert counters == {}


CONVOY_WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    import tallies

    url, go, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    keys = int(sys.argv[4])
    names = [f"k{i:04d}" for i in range(keys)]
    store = tallies.open(url)
    kc = store.keyed("hot")
    print("ready", flush=True)
    while not os.path.exists(go):  # every writer is connected: start together
        time.sleep(0.005)
    start = float(open(go).read())
    while time.time() < start:
        time.sleep(0.001)
    lat, periods, nxt = [], 0, time.monotonic()
    while time.time() < start + seconds:
        for k in names:
            kc.increment(k)
        t = time.perf_counter()
        store.flush()  # raises on any error: a deadlock would fail the test
        lat.append(time.perf_counter() - t)
        periods += 1
        nxt += 0.1
        time.sleep(max(0.0, nxt - time.monotonic()))
    store.close()
    print(json.dumps({"lat": lat, "periods": periods}))
    """
)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def run_convoy(
    server: PostgresServer, writers: int, seconds: float, keys: int, tmp: Path
) -> dict[str, Any]:
    """``writers`` processes each add 1 to the same ``keys`` keys every
    100 ms and flush; returns the flush latencies and checks every count."""
    schema = unique_schema("convoy")
    url = server.url(schema=schema, flush="3600")
    with tallies.open(url) as store:  # the schema and the keys exist before the clock starts
        kc = store.keyed("hot")
        for i in range(keys):
            kc.increment(f"k{i:04d}", 0)
    go = tmp / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONVOY_WRITER, url, str(go), str(seconds), str(keys)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(writers)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
    (tmp / "go.tmp").write_text(str(time.time() + 0.5))
    (tmp / "go.tmp").rename(go)
    lat: list[float] = []
    periods = 0
    for p in procs:
        out, err = p.communicate(timeout=seconds + 300)
        assert p.returncode == 0, err
        r = json.loads(out.strip().splitlines()[-1])
        assert r["periods"] >= 1, "every writer flushed"
        lat += r["lat"]
        periods += r["periods"]
    values = server.sql(f"SELECT key, value FROM {schema}.keyed WHERE name = 'hot'")
    assert len(values) == keys
    assert {v for _, v in values} == {periods}, "every key counted once per writer period"
    return {
        "p50_ms": _pct(lat, 50) * 1000,
        "p99_ms": _pct(lat, 99) * 1000,
        "flushes": periods,
    }


def test_16_writers_flush_the_same_1000_keys_exactly(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """The convoy load, shortened for CI (``TALLIES_CONVOY_SECONDS=30`` runs
    the issue's 30 s; ``benchmarks/postgres_store.py`` measures it against
    the alternatives).  No deadlock (a flush that failed would fail its
    process), every count exact; the latencies are reported, not asserted:
    on a shared 2-vCPU machine they measure the machine's load."""
    seconds = float(os.environ.get("TALLIES_CONVOY_SECONDS", "3"))
    r = run_convoy(postgres_server, writers=16, seconds=seconds, keys=1000, tmp=tmp_path)
    print(
        f"\n16 writers x 1,000 hot keys every 100 ms for {seconds:g} s: {r['flushes']} flushes, "
        f"flush latency p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
    )


LOAD_WRITER = textwrap.dedent(
    """
    import json, sys, time
    import tallies
    from tallies.stores.base import FlushError

    url, stop_file, log = sys.argv[1], sys.argv[2], sys.argv[3]
    store = tallies.open(url)
    c = store.counter("n")
    kc = store.keyed("k")
    r = store.rate("r", 3600, 60)
    done = 0  # increments made, all of them eventually flushed
    with open(log, "w") as out:
        while True:
            import os
            if os.path.exists(stop_file):
                break
            for _ in range(50):
                c.increment()
                kc.increment("a", 2)
                r.increment(3)
            done += 50
            try:
                store.flush()
            except FlushError:
                pass  # kept: the next flush sends it again, once
            else:
                out.write(f"{done}\\n")  # acknowledged: everything up to done is committed
                out.flush()
            time.sleep(0.005)
    store.close()
    print(json.dumps({"done": done}))
    """
)


def test_server_stopped_immediately_under_load_then_started_again(tmp_path: Path) -> None:
    with postgres_server_cm() as server:
        schema = unique_schema()
        url = server.url(schema=schema, flush="3600", timeout="2")
        tallies.open(url).close()
        stop = tmp_path / "stop"
        logs = [tmp_path / f"log{i}" for i in range(4)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", LOAD_WRITER, url, str(stop), str(log)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for log in logs
        ]

        def acked() -> int:
            total = 0
            for log in logs:
                lines = log.read_text().split() if log.exists() else []
                total += int(lines[-1]) if lines else 0
            return total

        wait_for(lambda: all(log.exists() and log.read_text() for log in logs), 60, "flushes")
        time.sleep(1.0)
        server.stop("immediate")  # every server process killed at once, no checkpoint
        acknowledged = acked()  # every flush acknowledged before the crash
        time.sleep(1.0)  # the writers' flushes fail meanwhile: deltas kept
        server.start()  # crash recovery replays the WAL
        ((n,),) = server.sql(f"SELECT coalesce(sum(value), 0) FROM {schema}.counters")
        assert n >= acknowledged, "an acknowledged flush was lost"
        ((t,),) = server.sql(f"SELECT coalesce(sum(total), 0) FROM {schema}.rate_totals")
        assert t >= 3 * acknowledged, "an acknowledged flush of the rate was lost"
        time.sleep(1.0)
        stop.write_text("")
        done = 0
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            done += json.loads(out.strip().splitlines()[-1])["done"]
        assert server.sql(f"SELECT value FROM {schema}.counters") == [(done,)]
        assert server.sql(f"SELECT value FROM {schema}.keyed") == [(2 * done,)]
        assert server.sql(f"SELECT total FROM {schema}.rate_totals") == [(3 * done,)]
        assert server.sql(f"SELECT sum(value) FROM {schema}.rate_buckets") == [(3 * done,)]


def test_a_lost_reply_is_applied_once(postgres_server: PostgresServer) -> None:
    """The proxy swallows the reply to the flush's statement (a flush is one
    autocommit statement: that reply is the commit's): it committed, the
    client hears nothing, times out and drops the connection; the backend
    sends the same batch again under the same sequence number on a new
    connection, and the writers table answers "applied already"."""
    proxy = ReplyDropper(postgres_server.port)
    schema = unique_schema()
    url = postgres_server.url(schema=schema, flush="3600", timeout="0.5", port=proxy.port)
    try:
        with tallies.open(url) as store:
            c = store.counter("lostreply")
            kc = store.keyed("by")
            c.increment(5)
            kc.increment("k", 0)
            store.flush()  # the names are registered: the next flush is one statement
            seq = store.pending()["seq"]
            c.increment(10)
            kc.increment("k", 3)
            proxy.arm(b"lostreply")  # a parameter of the next flush's statement
            store.flush()  # no reply; retried once, same seq: applied already
            assert proxy.dropped.is_set()
            assert store.pending()["seq"] == seq + 1 and store.pending()["in_flight"] is None
            assert postgres_server.sql(f"SELECT value FROM {schema}.counters") == [(15,)]
            assert postgres_server.sql(f"SELECT value FROM {schema}.keyed") == [(3,)]
            assert postgres_server.sql(f"SELECT seq FROM {schema}.writers") == [(seq + 1,)]
            assert c.value() == 15
            c.increment()
        assert postgres_server.sql(f"SELECT value FROM {schema}.counters") == [(16,)]
    finally:
        proxy.close()


def test_a_lost_commit_reply_then_no_connection(postgres_server: PostgresServer) -> None:
    """A flush that registers a new name is a transaction: the reply to its
    COMMIT is swallowed, and the retry cannot connect.  The flush fails
    (FlushError: the retry cannot connect; no password shown), the batch stays in flight, reads
    meanwhile count it once (it did commit), and the next flush settles it."""
    proxy = ReplyDropper(postgres_server.port)
    schema = unique_schema()
    url = postgres_server.url(schema=schema, flush="3600", timeout="0.5", port=proxy.port)
    try:
        with tallies.open(url) as store:
            c = store.counter("n")
            c.increment(5)
            store.flush()
            c.increment(10)
            store.keyed("new").increment("k", 2)  # a new name: BEGIN ... COMMIT
            proxy.arm(b"COMMIT")
            proxy.refuse.set()
            with pytest.raises(FlushError, match="cannot connect to PostgreSQL") as info:
                store.flush()
            assert proxy.dropped.is_set()
            assert "***@127.0.0.1" in str(info.value) and PASSWORD not in str(info.value)
            assert store.pending()["in_flight"] is not None
            assert postgres_server.sql(f"SELECT value FROM {schema}.counters") == [(15,)]
            proxy.refuse.clear()
            assert c.value() == 15  # committed, in flight: counted once
            assert store.keyed("new").value("k") == 2
            store.flush()  # the same batch again: applied already
            assert store.pending()["in_flight"] is None
            assert postgres_server.sql(f"SELECT value FROM {schema}.counters") == [(15,)]
            assert postgres_server.sql(f"SELECT value FROM {schema}.keyed") == [(2,)]
    finally:
        proxy.close()


def test_a_lost_commit_reply_of_a_flush_with_rates_is_applied_once(
    postgres_server: PostgresServer,
) -> None:
    """A flush carrying rate buckets is a transaction with the writer's seq:
    the reply to its COMMIT is swallowed, the retry on a new connection is
    told "applied already", and every bucket and total counts once."""
    proxy = ReplyDropper(postgres_server.port)
    schema = unique_schema()
    url = postgres_server.url(schema=schema, flush="3600", timeout="0.5", port=proxy.port)
    try:
        with tallies.open(url) as store:
            r = store.rate("r", 60, 1)
            kr = store.keyed_rate("kr", 60, 1)
            r.clock = kr.clock = lambda: 9_000 * 10**9
            r.increment(5)
            kr.increment("a", 2)
            store.flush()
            seq = store.pending()["seq"]
            r.increment(10)
            kr.increment("a", 3)
            proxy.arm(b"COMMIT")
            store.flush()  # no reply; retried once, same seq: applied already
            assert proxy.dropped.is_set()
            assert store.pending()["seq"] == seq + 1 and store.pending()["in_flight"] is None
            assert postgres_server.sql(f"SELECT total FROM {schema}.rate_totals") == [(15,)]
            assert postgres_server.sql(
                f"SELECT name, slot, key, value FROM {schema}.rate_buckets ORDER BY name"
            ) == [("kr", 9000, "a", 5), ("r", 9000, "", 15)]
            assert (r.total(), r.count(), kr.count("a")) == (15, 15, 5)
    finally:
        proxy.close()


def test_a_lost_reply_to_a_limiter_never_over_admits(postgres_server: PostgresServer) -> None:
    """The COMMIT of a lease's transaction is swallowed: the hit fails, the
    units it reserved stay counted (refusals, never over-admission)."""
    proxy = ReplyDropper(postgres_server.port)
    schema = unique_schema()
    url = postgres_server.url(schema=schema, timeout="0.5", port=proxy.port)
    try:
        with tallies.open(url) as store:
            lim = store.limiter("lost", 20, 60)
            assert lim.hit("k")
            while lim._peek("k")[1]:  # spend the first lease
                assert lim.hit("k")
            proxy.arm(b"COMMIT")
            with pytest.raises(StoreUnavailableError):
                lim.hit("k")  # reserved; the reply is lost
            assert proxy.dropped.is_set()
        a_fresh_writer_admits_what_is_left(postgres_server.url(schema=schema), "lost", 20)
    finally:
        proxy.close()


def test_a_connection_killed_by_pg_terminate_backend(postgres_server: PostgresServer) -> None:
    schema = unique_schema()
    url = postgres_server.url(schema=schema, flush="3600")
    with tallies.open(url) as store:
        c = store.counter("n")
        r = store.rate("r", 60, 1)
        c.increment(3)
        r.increment(3)
        store.flush()
        c.increment(4)
        r.increment(4)
        killed = postgres_server.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'tallies' AND pid <> pg_backend_pid()"
        )
        assert killed and all(ok for (ok,) in killed)
        store.flush()  # the dead connection fails; the flush reconnects and sends it once
        assert c.value() == 7 and r.total() == 7
        postgres_server.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'tallies' AND pid <> pg_backend_pid()"
        )
        assert c.value() == 7 and r.total() == 7  # a read reconnects too
        assert postgres_server.sql(f"SELECT value FROM {schema}.counters") == [(7,)]
        assert postgres_server.sql(f"SELECT total FROM {schema}.rate_totals") == [(7,)]


def test_a_read_only_user_gets_a_clear_error_and_loses_nothing(
    postgres_server: PostgresServer,
) -> None:
    schema = unique_schema()
    role = f"ro_{schema}"
    tallies.open(postgres_server.url(schema=schema)).close()  # created by the owner
    postgres_server.sql(f"CREATE ROLE {role} LOGIN PASSWORD 'ro-pw'")
    postgres_server.sql(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    postgres_server.sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    url = postgres_server.url(schema=schema, user=role, password="ro-pw", flush="3600")
    with tallies.open(url) as store:
        c = store.counter("n")
        c.increment(5)
        assert c.value() == 5  # reads work
        with pytest.raises(FlushError, match="may not write") as info:
            store.flush()
        assert "permission denied" in str(info.value.__cause__)
        assert store.pending()["in_flight"] is not None  # kept
        c.increment(1)
        postgres_server.sql(f"GRANT INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO {role}")
        store.flush()
        assert c.value() == 6
    assert postgres_server.sql(f"SELECT value FROM {schema}.counters") == [(6,)]
    # a schema the user may not create
    with pytest.raises(StoreUnavailableError, match="cannot create the tallies schema"):
        tallies.open(postgres_server.url(schema=unique_schema(), user=role, password="ro-pw"))


def test_a_dropped_table_is_a_clear_error(postgres_server: PostgresServer) -> None:
    schema = unique_schema()
    url = postgres_server.url(schema=schema, flush="3600")
    store = tallies.open(url)
    try:
        c = store.counter("n")
        c.increment(2)
        store.flush()
        postgres_server.sql(f"DROP TABLE {schema}.counter_stripes CASCADE")
        c.increment(1)
        with pytest.raises(FlushError) as info:
            store.flush()
        assert isinstance(info.value.__cause__, CorruptStoreError)
        assert "dropped" in str(info.value.__cause__)
        assert store.pending()["in_flight"] is not None  # the delta is kept
        with pytest.raises(FlushError, match="missing table"):
            store.flush()  # the next attempt reconnects: the schema check says what is wrong
        with pytest.raises(CorruptStoreError):
            c.value()
        with pytest.raises(CorruptStoreError, match="counter_stripes"):
            tallies.open(url.replace("flush=3600", "flush=3599"))
        # a schema dropped whole is created again (as a removed sqlite file
        # is): the kept delta lands there
        postgres_server.sql(f"DROP SCHEMA {schema} CASCADE")
        store.flush()
        assert postgres_server.sql(f"SELECT value FROM {schema}.counters") == [(1,)]
    finally:
        store.close()
