"""Rates and limiters on postgresql:// (a real server, 127.0.0.1, a free port):
the tables other programs read, the int64 edge of a striped bucket, pruning,
the schema's migration from version 1 (and a user who may not migrate it),
and a limit shared exactly by 4 processes.  The behaviour every store shares
is in tests/contract; the faults (lost replies) in test_postgres_faults.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
from _postgres_support import PostgresServer, unique_schema

import tallies
from tallies.stores.base import CountOverflowError, StoreUnavailableError

INT64_MAX = 2**63 - 1
SEC = 1_000_000_000


@pytest.fixture
def schema() -> str:
    return unique_schema("r")


@pytest.fixture
def url(postgres_server: PostgresServer, schema: str) -> str:
    return postgres_server.url(schema=schema, flush="3600")


def make_version_1(server: PostgresServer, schema: str) -> None:
    """The schema as a tallies of schema version 1 made it, with a counter
    and a keyed counter in it (rows written as that version wrote them)."""
    from tallies.stores._postgres_backend import _v1_sql

    with server.connect() as conn:
        for stmt in _v1_sql(schema):
            conn.execute(stmt)
        conn.execute(f"INSERT INTO {schema}.names VALUES ('a', 'counter'), ('k', 'keyed')")
        conn.execute(f"INSERT INTO {schema}.counter_stripes VALUES ('a', 0, 40), ('a', 7, 1)")
        conn.execute(f"INSERT INTO {schema}.keyed_stripes VALUES ('k', 'x', 3, 5)")
    assert server.sql(f"SELECT value FROM {schema}.tallies_meta WHERE key = 'schema'") == [("1",)]


def test_rates_and_limiters_are_plain_rows_that_sql_reads(
    postgres_server: PostgresServer, url: str, schema: str
) -> None:
    with tallies.open(url) as store:
        r = store.rate("requests", 60, 1)
        kr = store.keyed_rate("status", 60, 1)
        r.clock = kr.clock = lambda: 1_000 * SEC + 5
        r.increment(5)
        kr.increment("200", 3)
        kr.increment("404")
        lim = store.limiter("api", 10, 60)
        assert lim.hit("alice")
        store.flush()
    sql = postgres_server.sql
    assert sql(f"SELECT name, total FROM {schema}.rate_totals") == [("requests", 5)]
    assert sql(f"SELECT name, slot, key, value FROM {schema}.rate_buckets ORDER BY 1, 3") == [
        ("requests", 1000, "", 5),
        ("status", 1000, "200", 3),
        ("status", 1000, "404", 1),
    ]
    assert sql(f"SELECT name, kind, window_ns, res_ns FROM {schema}.rates ORDER BY 1") == [
        ("requests", "rate", 60 * SEC, SEC),
        ("status", "keyed_rate", 60 * SEC, SEC),
    ]
    assert sql(f"SELECT name, lim, per_ns FROM {schema}.limiters") == [("api", 10, 60 * SEC)]
    # the lease was given back on close: the one hit is what stays reserved
    assert sql(f"SELECT key, sum(units) FROM {schema}.limiter_slots GROUP BY key") == [("alice", 1)]
    with tallies.open(url) as store:
        assert store.names() == ["requests", "status"]  # as on every store
        assert store.rate("requests", 60, 1).total() == 5


def test_many_writers_add_to_their_own_stripes_of_a_bucket(
    postgres_server: PostgresServer, schema: str
) -> None:
    """Writers flushing the same bucket update different rows (no convoy):
    each connection adds to the stripe it holds."""
    stores = [
        tallies.open(postgres_server.url(schema=schema, flush="3600", timeout=f"{4 + i}"))
        for i in range(3)
    ]
    try:
        for s in stores:
            r = s.rate("hot", 60, 1)
            r.clock = lambda: 77 * SEC
            r.increment(2)
            s.flush()
        rows = postgres_server.sql(
            f"SELECT stripe, value FROM {schema}.rate_bucket_stripes WHERE slot = 77"
        )
        assert len(rows) == 3 and sum(v for _, v in rows) == 6
        assert len({st for st, _ in rows}) == 3
    finally:
        for s in stores:
            s.close()


def test_a_bucket_at_the_int64_edge_is_exact_and_refused_beyond(
    postgres_server: PostgresServer, url: str, schema: str
) -> None:
    with tallies.open(url) as store:
        r = store.rate("big", 60, 1)
        kr = store.keyed_rate("kbig", 60, 1)
        r.clock = kr.clock = lambda: 500 * SEC
        r.increment(INT64_MAX)  # beyond one stripe's range: spread, exactly
        kr.increment("a", INT64_MAX - 1)
        store.flush()
        assert r.total() == INT64_MAX and r.count() == INT64_MAX
        r.increment(1)
        with pytest.raises(CountOverflowError) as info:
            store.flush()
        assert info.value.items == [("big", None)]
        assert r.total() == INT64_MAX + 1  # held: still counted here
        assert postgres_server.sql(f"SELECT total FROM {schema}.rate_totals") == [(INT64_MAX,)]
        r.decrement(1)
        kr.increment("a", 1)
        store.flush()
        assert kr.count("a") == INT64_MAX
        kr.increment("a", 1)
        with pytest.raises(CountOverflowError) as info:
            store.flush()
        assert info.value.items == [("kbig", "a")]
        kr.decrement("a", 1)
        store.flush()
    with tallies.open(url) as store:
        assert store.rate("big", 60, 1).total() == INT64_MAX
    bad = postgres_server.sql(
        f"SELECT count(*) FROM {schema}.rate_bucket_stripes WHERE stripe > 0 AND abs(value) > 2^57"
    )
    assert bad == [(0,)]


def test_buckets_older_than_two_windows_are_deleted(
    postgres_server: PostgresServer, url: str, schema: str
) -> None:
    with tallies.open(url) as store:
        r = store.rate("r", 10, 1)
        now = [1_000 * SEC]
        r.clock = lambda: now[0]
        for _ in range(5):
            r.increment()
            store.flush()
            now[0] += SEC
        now[0] += 30 * SEC
        r.increment()
        store.flush()
        assert r.total() == 6 and r.count() == 1
    slots = postgres_server.sql(f"SELECT DISTINCT slot FROM {schema}.rate_bucket_stripes")
    assert slots == [(1035,)]


def test_a_version_1_schema_is_migrated_on_open_and_keeps_its_counts(
    postgres_server: PostgresServer, schema: str
) -> None:
    make_version_1(postgres_server, schema)
    with tallies.open(postgres_server.url(schema=schema, flush="3600")) as store:
        assert store.counter("a").value() == 41
        assert store.keyed("k").value("x") == 5
        r = store.rate("r", 60, 1)
        r.increment(3)
        assert store.limiter("l", 2, 60).hit()
        store.counter("a").increment()
        store.flush()
        assert r.total() == 3
        assert store.names() == ["a", "k", "r"]
    sql = postgres_server.sql
    assert sql(f"SELECT value FROM {schema}.tallies_meta WHERE key = 'schema'") == [("2",)]
    assert sql(f"SELECT * FROM {schema}.counters") == [("a", 42)]
    assert sql(f"SELECT total FROM {schema}.rate_totals") == [(3,)]


def test_a_user_who_may_not_migrate_version_1_counts_and_is_told_why_rates_do_not(
    postgres_server: PostgresServer, schema: str
) -> None:
    make_version_1(postgres_server, schema)
    role = f"w_{schema}"
    postgres_server.sql(f"CREATE ROLE {role} LOGIN PASSWORD 'w-pw'")
    postgres_server.sql(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    postgres_server.sql(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO {role}")
    url = postgres_server.url(schema=schema, user=role, password="w-pw", flush="3600")
    with tallies.open(url) as store:
        store.counter("a").increment(2)
        store.flush()
        assert store.counter("a").value() == 43
        with pytest.raises(StoreUnavailableError, match="version 1: rates and limiters need"):
            store.rate("r", 60)
        with pytest.raises(StoreUnavailableError, match="version 1"):
            store.limiter("l", 5, 60)
        assert store.counter("a").value() == 43
    meta = f"SELECT value FROM {schema}.tallies_meta WHERE key = 'schema'"
    assert postgres_server.sql(meta) == [("1",)]
    tallies.open(postgres_server.url(schema=schema)).close()  # its owner: migrated
    assert postgres_server.sql(meta) == [("2",)]


_HITTER = textwrap.dedent(
    """
    import sys, time, tallies
    with tallies.open(sys.argv[1]) as store:
        lim = store.limiter("shared", int(sys.argv[2]), 60)
        admitted = 0
        for _ in range(int(sys.argv[3])):
            admitted += lim.hit("k")
            time.sleep(0.001)
    print(admitted)
    """
)


def test_a_limit_is_shared_exactly_by_four_processes(
    postgres_server: PostgresServer, url: str
) -> None:
    """4 processes x 60 hits on a limit of 100: never more than 100 admitted;
    with every lease given back (on close) the admitted and the remaining
    make exactly 100, and a fresh writer can admit exactly what remains."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HITTER, url, "100", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    admitted = 0
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
        admitted += int(out)
    assert 0 < admitted <= 100
    with tallies.open(url) as store:
        lim = store.limiter("shared", 100, 60)
        assert lim.remaining("k") == 100 - admitted
        more = 0
        while lim.hit("k"):
            more += 1
        assert admitted + more == 100


def _at_once(code: str, n: int, *args: str) -> list[str]:
    """``n`` processes running ``code`` (argv: a start time, then ``args``),
    started together; their outputs."""
    import time

    start = str(time.time() + 3)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, start, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        outs.append(out)
    return outs


def test_a_version_1_schema_opened_by_8_processes_at_once_is_migrated_once(
    postgres_server: PostgresServer, schema: str
) -> None:
    make_version_1(postgres_server, schema)
    code = textwrap.dedent(
        """
        import sys, time, tallies
        start, url = float(sys.argv[1]), sys.argv[2]
        while time.time() < start:
            time.sleep(0.001)
        with tallies.open(url) as store:
            store.counter("a").increment()
            store.rate("r", 60, 1).increment()
        """
    )
    _at_once(code, 8, postgres_server.url(schema=schema, flush="60"))
    sql = postgres_server.sql
    assert sql(f"SELECT value FROM {schema}.tallies_meta WHERE key = 'schema'") == [("2",)]
    assert sql(f"SELECT * FROM {schema}.counters") == [("a", 49)]
    assert sql(f"SELECT total FROM {schema}.rate_totals") == [(8,)]


def test_8_writers_flush_the_same_buckets_exactly(
    postgres_server: PostgresServer, schema: str
) -> None:
    """8 processes add to the same rate bucket and the same 100 keys of a
    keyed rate 20 times, 50 ms apart, and flush each time: no deadlock (a failed
    flush fails its process), every bucket and total exact; the flush
    latency is reported (on a shared 2-vCPU machine it measures the load)."""
    code = textwrap.dedent(
        """
        import json, sys, time, tallies
        start, url = float(sys.argv[1]), sys.argv[2]
        with tallies.open(url) as store:
            r, kr = store.rate("hot", 600, 1), store.keyed_rate("khot", 600, 1)
            r.clock = kr.clock = lambda: 4_000 * 10**9  # one bucket for all
            while time.time() < start:
                time.sleep(0.001)
            lat, periods = [], 0
            for _ in range(20):
                r.increment(3)
                for i in range(100):
                    kr.increment(f"k{i:03d}")
                t = time.perf_counter()
                store.flush()
                lat.append(time.perf_counter() - t)
                periods += 1
                time.sleep(0.05)
        print(json.dumps({"lat": lat, "periods": periods}))
        """
    )
    import json

    tallies.open(postgres_server.url(schema=schema)).close()
    outs = [json.loads(o) for o in _at_once(code, 8, postgres_server.url(schema=schema))]
    periods = sum(o["periods"] for o in outs)
    assert periods == 8 * 20
    lat = sorted(x for o in outs for x in o["lat"])
    sql = postgres_server.sql
    assert sql(f"SELECT slot, value FROM {schema}.rate_buckets WHERE name = 'hot'") == [
        (4000, 3 * periods)
    ]
    assert sql(f"SELECT total FROM {schema}.rate_totals") == [(3 * periods,)]
    keyed = sql(f"SELECT DISTINCT value FROM {schema}.rate_buckets WHERE name = 'khot'")
    assert keyed == [(periods,)]
    print(
        f"\n8 writers x 20 flushes of 1 bucket + 100 keyed buckets: {periods} flushes, "
        f"flush latency p50 {lat[len(lat) // 2] * 1000:.1f} ms, "
        f"p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms"
    )


def test_a_limiter_registered_by_another_writer_at_the_same_moment_is_found(
    postgres_server: PostgresServer, url: str, schema: str
) -> None:
    """Another writer's insert of the same limiter commits while this
    writer's registration waits on it (4 processes opening one limiter at
    once, CI 2026-12-06): the registration finds that row (the statement's
    own snapshot predates it) instead of failing."""
    with tallies.open(url) as store:
        store.limiter("probe", 10, 60)
        (spec,) = postgres_server.sql(
            f"SELECT lim, per_ns, res_ns, buckets FROM {schema}.limiters WHERE name = 'probe'"
        )
        with postgres_server.connect() as other:
            other.execute("BEGIN")
            other.execute(
                f"INSERT INTO {schema}.limiters (name, lim, per_ns, res_ns, buckets)"
                " VALUES ('api', %s, %s, %s, %s)",
                spec,
            )
            commit = threading.Timer(0.5, lambda: other.execute("COMMIT"))
            commit.start()
            try:
                lim = store.limiter("api", 10, 60)  # waits for the other insert
            finally:
                commit.join()
            assert lim.hit("alice")
            assert lim.remaining("alice") == 9
