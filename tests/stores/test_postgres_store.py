"""postgresql:// on a real PostgreSQL server (127.0.0.1, a free port): the API,
the schema other programs read with plain SQL, URLs, errors, the schema's
creation and refusal, the exact path at the int64 edge, and the command line
tools (show, serve, watch) on it."""

from __future__ import annotations

import json
import multiprocessing
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from _postgres_support import PASSWORD, PASSWORD_IN_URL, PostgresServer, unique_schema

import tallies
from tallies.stores.base import (
    CorruptStoreError,
    CountOverflowError,
    KindClashError,
    StoreNotFoundError,
    StoreUnavailableError,
    StoreURL,
)

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


@pytest.fixture
def schema() -> str:
    return unique_schema()


@pytest.fixture
def url(postgres_server: PostgresServer, schema: str) -> str:
    return postgres_server.url(schema=schema, flush="60")


def rows(server: PostgresServer, query: str, *args: Any) -> list[tuple[Any, ...]]:
    return server.sql(query, *args)


def test_counts_are_plain_rows_that_sql_reads(
    postgres_server: PostgresServer, url: str, schema: str
) -> None:
    with tallies.open(url) as store:
        c = store.counter("requests")
        kc = store.keyed("status")
        for _ in range(1000):
            c.increment()
        c.decrement(3)
        c += 10
        kc.increment("200", 7)
        kc.increment("404")
        kc.decrement("404", 3)
        kc.increment("héllo ✓")
        # write-behind: the schema exists, the counts are not sent yet
        assert rows(postgres_server, f"SELECT * FROM {schema}.counters") == []
        assert c.value() == 1007 and kc.value("404") == -2  # read-your-writes
        store.flush()
        assert rows(postgres_server, f"SELECT * FROM {schema}.counters") == [("requests", 1007)]
        assert rows(postgres_server, f"SELECT * FROM {schema}.keyed ORDER BY key") == [
            ("status", "200", 7),
            ("status", "404", -2),
            ("status", "héllo ✓", 1),
        ]
        assert rows(postgres_server, f"SELECT * FROM {schema}.names ORDER BY name") == [
            ("requests", "counter"),
            ("status", "keyed"),
        ]
        assert dict(rows(postgres_server, f"SELECT * FROM {schema}.tallies_meta")) == {
            "magic": "tallies",
            "schema": "2",
        }
        ((writer, seq),) = rows(postgres_server, f"SELECT writer_id, seq FROM {schema}.writers")
        assert writer == store.writer_id and seq >= 1
        assert store.snapshot() == {
            "counters": {"requests": 1007},
            "keyed": {"status": {"200": 7, "404": -2, "héllo ✓": 1}},
        }
        assert store.names() == ["requests", "status"]
        assert store.schema == schema


def test_other_programs_see_every_flush_in_the_views(
    postgres_server: PostgresServer, postgres_url_two_writers: tuple[str, str], schema: str
) -> None:
    """Two writers (two stores: distinct writer ids and stripes) on one count:
    the views add the stripes up; the base tables hold each stripe in range."""
    url_a, url_b = postgres_url_two_writers
    with tallies.open(url_a) as a, tallies.open(url_b) as b:
        a.counter("hits").increment(5)
        b.counter("hits").increment(7)
        a.keyed("by").increment("x", 1)
        b.keyed("by").increment("x", 2)
        a.flush()
        b.flush()
        assert a.counter("hits").value() == 12 == b.counter("hits").value()
        assert rows(postgres_server, f"SELECT value FROM {schema}.counters") == [(12,)]
        assert rows(postgres_server, f"SELECT value FROM {schema}.keyed") == [(3,)]
        stripes = rows(postgres_server, f"SELECT count(*) FROM {schema}.counter_stripes")
        assert stripes == [(2,)]  # each writer adds to a stripe of its own


@pytest.fixture
def postgres_url_two_writers(postgres_server: PostgresServer, schema: str) -> tuple[str, str]:
    # different flush intervals: two write-behind engines (writers) in this process
    return (
        postgres_server.url(schema=schema, flush="60"),
        postgres_server.url(schema=schema, flush="61"),
    )


def test_reset_is_a_take(postgres_server: PostgresServer, url: str, schema: str) -> None:
    with tallies.open(url) as store:
        c = store.counter("jobs")
        kc = store.keyed("by")
        c.increment(10)
        kc.increment("a", 3)
        kc.increment("b", 4)
        store.flush()
        c.increment(5)  # pending
        kc.increment("a", 1)
        assert c.reset() == 15 and c.value() == 0
        assert kc.reset("a") == 4 and kc.value("a") == 0 and kc.value("b") == 4
        assert dict(kc.reset()) == {"a": 0, "b": 4}
        assert rows(postgres_server, f"SELECT * FROM {schema}.counters") == [("jobs", 0)]
        # keys stay listed at 0
        assert rows(postgres_server, f"SELECT key, value FROM {schema}.keyed ORDER BY key") == [
            ("a", 0),
            ("b", 0),
        ]
        c.increment(2)
    assert rows(postgres_server, f"SELECT value FROM {schema}.counters") == [(2,)]


def test_a_batch_sent_twice_is_applied_once(url: str) -> None:
    from tallies.stores._protocol import Batch, Query

    with tallies.open(url) as store:
        backend = store._wb._be()  # type: ignore[attr-defined]
        batch = Batch(seq=1, counters={"n": 5}, keyed={"k": {"a": 2}},
                      names={"n": "counter", "k": "keyed"})  # fmt: skip
        backend.apply("w-test", batch)
        backend.apply("w-test", batch)  # a retry after a lost reply: "already applied"
        r = backend.read("w-test", Query(counters=("n",), keyed=("k",)))
        assert (r.seq, r.counters, r.keyed) == (1, {"n": 5}, {"k": {"a": 2}})
        assert backend.fence("w-test", 1) is True  # seq 1 is recorded
        assert backend.fence("w-test", 2) is False  # now recorded: a late copy never applies
        backend.apply("w-test", Batch(seq=2, counters={"n": 100}))
        assert backend.read("w-test", Query(counters=("n",))).counters == {"n": 5}


def test_kinds_clash(url: str, postgres_url_two_writers: tuple[str, str]) -> None:
    url_a, url_b = postgres_url_two_writers
    with tallies.open(url_a) as a, tallies.open(url_b) as b:
        a.counter("x").increment()
        kc = b.keyed("x")  # neither has registered the name yet
        kc.increment("k")
        a.flush()  # a registers it first
        b.counter("other").increment(3)
        with pytest.raises(KindClashError, match="'x'"):
            b.flush()
        assert b.counter("other").value() == 3  # the rest landed
        assert a.counter("x").value() == 1


def test_overflow_is_refused_exactly_and_nothing_is_applied(
    postgres_server: PostgresServer, url: str, schema: str
) -> None:
    with tallies.open(url) as store:
        c = store.counter("big")
        other = store.counter("other")
        c.increment(INT64_MAX)
        store.flush()  # beyond one stripe's range: spread over the stripes, exactly
        assert rows(postgres_server, f"SELECT * FROM {schema}.counters ORDER BY name") == [
            ("big", INT64_MAX),
            ("other", 0),  # a new counter is listed at 0
        ]
        c.increment(1)
        other.increment(4)
        with pytest.raises(CountOverflowError) as info:
            store.flush()
        assert info.value.items == [("big", None)]
        assert c.value() == INT64_MAX + 1  # the held delta still counts locally
        assert rows(postgres_server, f"SELECT * FROM {schema}.counters ORDER BY name") == [
            ("big", INT64_MAX),
            ("other", 4),
        ]
        c.decrement(2)  # brings it back in range: the held delta goes with it
        store.flush()
        assert c.value() == INT64_MAX - 1
        c.decrement(INT64_MAX)
        store.flush()
        c.decrement(INT64_MAX)
        store.flush()
        assert rows(postgres_server, f"SELECT value FROM {schema}.counters WHERE name = 'big'") == [
            (-INT64_MAX - 1,)
        ]
        kc = store.keyed("k")
        kc.increment("a", INT64_MAX)
        store.flush()
        kc.increment("a", 5)
        with pytest.raises(CountOverflowError):
            store.flush()
        kc.decrement("a", 5)
        store.flush()
        assert kc.value("a") == INT64_MAX
    # every stripe row stays in its range: any sum of them is an int64
    bad = rows(
        postgres_server,
        f"SELECT count(*) FROM {schema}.counter_stripes WHERE stripe > 0 AND abs(value) > 2^57",
    )
    assert bad == [(0,)]


def test_schema_created_once_by_16_processes_at_once(
    postgres_server: PostgresServer, schema: str
) -> None:
    url = postgres_server.url(schema=schema, flush="60")
    code = textwrap.dedent(
        """
        import sys, time, tallies
        url, start = sys.argv[1], float(sys.argv[2])
        while time.time() < start:
            time.sleep(0.001)
        with tallies.open(url) as store:
            store.counter("opened").increment()
            store.keyed("by").increment("all")
        """
    )
    import time

    start = str(time.time() + 3)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, start], stderr=subprocess.PIPE, text=True
        )
        for _ in range(16)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert rows(postgres_server, f"SELECT value FROM {schema}.counters") == [(16,)]
    assert rows(postgres_server, f"SELECT value FROM {schema}.keyed") == [(16,)]


def test_a_foreign_or_newer_schema_is_refused_and_nothing_is_written(
    postgres_server: PostgresServer, schema: str
) -> None:
    postgres_server.sql(f"CREATE SCHEMA {schema}")
    postgres_server.sql(f"CREATE TABLE {schema}.counters (name text, n int)")
    url = postgres_server.url(schema=schema)
    with pytest.raises(CorruptStoreError, match="not a tallies schema"):
        tallies.open(url)
    tables = rows(
        postgres_server,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
        schema,
    )
    assert tables == [("counters",)]
    assert PASSWORD not in repr(tables)

    other = unique_schema()
    tallies.open(postgres_server.url(schema=other)).close()
    postgres_server.sql(f"UPDATE {other}.tallies_meta SET value = '3' WHERE key = 'schema'")
    with pytest.raises(CorruptStoreError, match="version 3, newer than this tallies"):
        tallies.open(postgres_server.url(schema=other))


def test_an_empty_schema_made_by_a_dba_is_used(
    postgres_server: PostgresServer, schema: str
) -> None:
    postgres_server.sql(f"CREATE SCHEMA {schema}")
    with tallies.open(postgres_server.url(schema=schema)) as store:
        store.counter("a").increment()
    assert rows(postgres_server, f"SELECT * FROM {schema}.counters") == [("a", 1)]


def test_open_create_false_and_destroy(postgres_server: PostgresServer, url: str) -> None:
    with pytest.raises(StoreNotFoundError, match="no tallies schema"):
        tallies.open(url, create=False)
    with tallies.open(url) as store:
        store.counter("a").increment()
    with tallies.open(url, create=False) as store:
        assert store.counter("a").value() == 1
    assert tallies.destroy(url) is True
    assert tallies.destroy(url) is False
    with pytest.raises(StoreNotFoundError):
        tallies.open(url, create=False)


def test_urls() -> None:
    from tallies.stores._params import parse
    from tallies.stores.postgresql import PARAMS, postgres_options

    def opts(url: str) -> Any:
        u = tallies.stores.parse_url(url)
        return postgres_options(u, parse(u, PARAMS))

    o = opts("postgresql://app:p%40ss%2Fw@db.example.org:6432/counts?schema=app_1&timeout=2.5")
    assert (o.host, o.port, o.dbname, o.user, o.password) == (
        "db.example.org",
        6432,
        "counts",
        "app",
        "p@ss/w",
    )
    assert (o.schema, o.timeout) == ("app_1", 2.5)
    info = o.conninfo()
    assert info["connect_timeout"] == 3 and "statement_timeout=2500" in info["options"]
    o = opts("postgres://h/db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=web")
    assert (o.port, o.user, o.password, o.schema) == (None, None, None, "tallies")
    assert dict(o.extra) == {
        "sslmode": "verify-full",
        "sslrootcert": "/ca.pem",
        "application_name": "web",
    }
    assert opts("postgresql:///db?host=/run/postgresql").host == "/run/postgresql"
    assert opts("postgresql://[::1]:5433/db").host == "::1"
    # the password is not part of what makes two URLs the same store
    assert opts("postgresql://u:a@h/db") == opts("postgresql://u:b@h/db")
    for bad, msg in [
        ("postgresql://h", "no database name"),
        ("postgresql://h/a/b", "no database name"),
        ("postgresql:///db", "no host"),
        ("postgresql://h:99999/db", "Port out of range"),
        ("postgresql://h:0/db", "port 0"),
        ("postgresql://h:x/db", "Port could not be cast"),
        ("postgresql://a,b/db", "one host"),
        ("postgresql://h/db?host=/tmp", "give one"),
        ("postgresql://h/db?schema=a-b", "not a plain SQL name"),
        ("postgresql://h/db?schema=" + "a" * 64, "not a plain SQL name"),
        ("postgresql://h/db?timeout=0", "timeout"),
        ("postgresql://h/db?timeout=abc", "timeout"),
        ("postgresql://h/db?sslmode=maybe", "sslmode"),
        ("postgresql://h/db?flush=-1", "flush"),
        ("postgresql://h/db?nope=1", "unknown parameter"),
    ]:
        with pytest.raises(ValueError, match=msg):
            tallies.open(bad)  # refused before any connection is tried


def test_messages_never_show_the_password(postgres_server: PostgresServer, url: str) -> None:
    assert PASSWORD_IN_URL in url
    for bad in (url + "&nope=1", url + "&timeout=never", url.replace("/postgres?", "/?")):
        with pytest.raises(ValueError) as info:
            tallies.open(bad)
        assert PASSWORD_IN_URL not in str(info.value) and PASSWORD not in str(info.value)
        assert "postgresql://***@127.0.0.1" in str(info.value)
    with tallies.open(url) as store:
        assert PASSWORD_IN_URL not in repr(store) and "***@" in repr(store)
        assert store.url == url  # the real URL, to reopen
    wrong = url.replace(PASSWORD_IN_URL, "wrong")
    with pytest.raises(StoreUnavailableError, match="password authentication failed") as info2:
        tallies.open(wrong)
    assert "wrong" not in str(info2.value)


def test_unreachable_server_is_a_clear_store_error() -> None:
    from _postgres_support import need_postgres
    from _redis_support import free_port

    need_postgres()
    with pytest.raises(StoreUnavailableError, match="cannot connect to PostgreSQL"):
        tallies.open(f"postgresql://u:pw@127.0.0.1:{free_port()}/db?timeout=1")


def test_missing_psycopg_is_a_clear_error() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["psycopg"] = None
        import tallies
        from tallies.stores.postgresql import PostgresMissingError
        try:
            tallies.open("postgresql://u:pw@127.0.0.1:5432/db")
        except PostgresMissingError as exc:
            assert isinstance(exc, tallies.StoreError) and isinstance(exc, ImportError)
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "pip install tallies[postgres]" in out


def test_scheme_aliases(postgres_server: PostgresServer, schema: str) -> None:
    from tallies.stores import schemes

    assert {"postgresql", "postgres"} <= set(schemes())
    assert tallies.stores._store_class(StoreURL("postgres://h/d", "postgres", "h/d")).scheme == (
        "postgresql"
    )
    a = postgres_server.url(schema=schema)
    with tallies.open(a) as s1, tallies.open(a.replace("postgresql://", "postgres://")) as s2:
        assert s1.writer_id == s2.writer_id  # the same store: one writer per process


def _child(url: str) -> None:
    store = tallies.open(url)
    store.counter("forked").increment(3)  # no close: the exit flush sends it


def test_fork_and_exit_flush(postgres_server: PostgresServer, url: str, schema: str) -> None:
    with tallies.open(url) as store:
        c = store.counter("forked")
        c.increment(10)  # pending in the parent when it forks
        ctx = multiprocessing.get_context("fork")
        p = ctx.Process(target=_child, args=(url,))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert c.value() == 13  # the child's 3 landed; the parent's 10 are its own
        c.increment()
    assert rows(postgres_server, f"SELECT value FROM {schema}.counters") == [(14,)]
    # the parent's connection survived the child's exit (not terminated by it)
    assert rows(postgres_server, f"SELECT count(*) FROM {schema}.writers") == [(2,)]


def test_exit_flush_in_a_plain_process(
    postgres_server: PostgresServer, url: str, schema: str
) -> None:
    code = "import sys, tallies; tallies.open(sys.argv[1]).keyed('k').increment('a', 9)"
    subprocess.run([sys.executable, "-c", code, url], check=True, timeout=60)
    assert rows(postgres_server, f"SELECT value FROM {schema}.keyed") == [(9,)]


def _tallies(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tallies", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_tallies_show_serve_and_watch(url: str) -> None:
    import urllib.request

    with tallies.open(url) as store:
        store.counter("requests").increment(12)
        store.keyed("status").increment("200", 10)
    out = _tallies("show", url)
    assert out.returncode == 0, out.stderr
    assert "requests" in out.stdout and "12" in out.stdout and "200" in out.stdout
    assert PASSWORD_IN_URL not in out.stdout + out.stderr
    js = _tallies("show", "--json", url)
    assert json.loads(js.stdout)["counters"] == {"requests": 12}
    missing = _tallies("show", url.replace("schema=", "schema=nope"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "no tallies schema" in missing.stderr and PASSWORD_IN_URL not in missing.stderr

    serve = subprocess.Popen(
        [sys.executable, "-m", "tallies", "serve", url, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        banner = serve.stderr.readline()
        found = re.search(r"http://\S+/metrics", banner)
        assert found, banner
        with urllib.request.urlopen(found.group(0), timeout=30) as reply:
            body = reply.read().decode()
        assert "tallies_requests_total 12.0" in body
        assert PASSWORD_IN_URL not in body + banner
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=30)

    watch = subprocess.Popen(
        [sys.executable, "-m", "tallies", "watch", "--plain", "--interval", "0.2", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        seen = ""
        while "requests" not in seen or "200" not in seen:
            line = watch.stdout.readline()
            assert line, watch.stderr.read() if watch.stderr else ""
            seen += line
        assert "12" in seen and PASSWORD_IN_URL not in seen
    finally:
        watch.send_signal(signal.SIGINT)
        watch.communicate(timeout=30)


def test_write_through(postgres_server: PostgresServer, url: str, schema: str) -> None:
    """flush=0: every update has committed when it returns."""
    with tallies.open(url.replace("flush=60", "flush=0")) as store:
        c = store.counter("now")
        c.increment(4)
        assert rows(postgres_server, f"SELECT value FROM {schema}.counters") == [(4,)]
        store.keyed("k").increment("a", INT64_MAX)
        with pytest.raises(CountOverflowError):
            store.keyed("k").increment("a")  # refused, and not applied
        assert rows(postgres_server, f"SELECT value FROM {schema}.keyed") == [(INT64_MAX,)]


def test_a_big_flush_is_one_transaction_of_chunks(
    postgres_server: PostgresServer, url: str, schema: str
) -> None:
    """More than CHUNK (10,000) deltas: one transaction of statements of
    10,000 rows (each within statement_timeout), applied once; a count at
    the edge among them is refused alone (its stripes locked, exact), the
    other 24,999 are applied."""
    with tallies.open(url) as store:
        kc = store.keyed("many")
        for i in range(25_000):
            kc.increment(f"k{i}", i)
        store.flush()
        ((n, total),) = rows(postgres_server, f"SELECT count(*), sum(value) FROM {schema}.keyed")
        assert (n, total) == (25_000, sum(range(25_000)))
        kc.increment("k7", INT64_MAX - 7)  # k7 = INT64_MAX: spread over its stripes
        store.flush()
        for i in range(25_000):
            kc.increment(f"k{i}", 1)  # k7 overflows, the others do not
        with pytest.raises(CountOverflowError) as info:
            store.flush()
        assert info.value.items == [("many", "k7")]
        ((total,),) = rows(postgres_server, f"SELECT sum(value) FROM {schema}.keyed")
        assert total == sum(range(25_000)) + INT64_MAX - 7 + 24_999
        assert kc.value("k7") == INT64_MAX + 1  # held, still counted here
        kc.decrement("k7", 1)
        store.flush()
        assert rows(postgres_server, f"SELECT value FROM {schema}.keyed WHERE key = 'k7'") == [
            (INT64_MAX,)
        ]


def test_a_big_flush_adds_to_stored_rows_and_inserts_new_ones(
    postgres_server: PostgresServer, url: str, schema: str
) -> None:
    """A flush of more than CHUNK deltas whose counts are partly stored,
    partly new (counters and keys): the stored rows are added to, the new
    ones inserted, every count exact and one row per count and stripe."""
    with tallies.open(url) as store:
        kc = store.keyed("mixed")
        for i in range(0, 30_000, 2):
            kc.increment(f"k{i:05d}", 3)
        for i in range(0, 12_000, 2):
            store.counter(f"c{i:05d}").increment(3)
        store.flush()
        for i in range(30_000):
            kc.increment(f"k{i:05d}", i)
        for i in range(12_000):
            store.counter(f"c{i:05d}").increment(i)
        store.flush()
    got = dict(rows(postgres_server, f"SELECT key, value FROM {schema}.keyed"))
    assert got == {f"k{i:05d}": i + (3 if i % 2 == 0 else 0) for i in range(30_000)}
    got = dict(rows(postgres_server, f"SELECT name, value FROM {schema}.counters"))
    assert got == {f"c{i:05d}": i + (3 if i % 2 == 0 else 0) for i in range(12_000)}
    assert rows(
        postgres_server,
        f"SELECT count(*), count(DISTINCT (key, stripe)) FROM {schema}.keyed_stripes",
    ) == [(30_000, 30_000)]


def test_a_big_flush_of_mostly_stored_rows_adds_to_them_and_inserts_the_rest(
    postgres_server: PostgresServer, url: str, schema: str
) -> None:
    """A flush of more than CHUNK deltas whose counts are mostly stored
    (nine in ten: counters, and keys of two keyed counters) adds to the
    stored rows in one UPDATE and inserts the new ones: every count exact,
    one row per count and stripe, and rows of other names untouched."""
    with tallies.open(url) as store:
        a, b, other = store.keyed("a"), store.keyed("b"), store.keyed("z")
        other.increment("k", 5)
        for i in range(6_000):
            if i % 10:
                a.increment(f"k{i:05d}", 3)
                b.increment(f"k{i:05d}", 3)
                store.counter(f"c{i:05d}").increment(3)
        store.flush()
        for i in range(6_000):
            a.increment(f"k{i:05d}", i)
            b.increment(f"k{i:05d}", -i)
            store.counter(f"c{i:05d}").increment(i)
        store.flush()
    stored = {i: 3 if i % 10 else 0 for i in range(6_000)}
    got = rows(postgres_server, f"SELECT name, key, value FROM {schema}.keyed")
    assert {(n, k): v for n, k, v in got} == {
        **{("a", f"k{i:05d}"): stored[i] + i for i in range(6_000)},
        **{("b", f"k{i:05d}"): stored[i] - i for i in range(6_000)},
        ("z", "k"): 5,
    }
    got = dict(rows(postgres_server, f"SELECT name, value FROM {schema}.counters"))
    assert got == {f"c{i:05d}": stored[i] + i for i in range(6_000)}
    assert rows(
        postgres_server,
        f"SELECT count(*), count(DISTINCT (name, key, stripe)) FROM {schema}.keyed_stripes",
    ) == [(12_001, 12_001)]


def test_a_big_flush_adds_to_stored_rows_in_the_lock_order(
    postgres_server: PostgresServer, url: str, schema: str
) -> None:
    """The UPDATE that adds a big batch to stored rows is planned as a merge
    join of the sorted batch and the table's primary key, so it takes its
    rows in (name, key) order: the order in which every flush, reset and
    exact path locks them (no deadlock with them), whatever the planner
    or the server's settings would otherwise choose (here a session that
    rules merge joins out: a hash join updates in the order of its probe
    side, a nested loop probes the index once per row)."""
    from tallies.stores._postgres_backend import _Statements

    with tallies.open(url) as store:
        kc = store.keyed("k")
        for i in range(20_000):
            kc.increment(f"k{i:05d}")
        store.flush()
    st = _Statements(schema)
    with postgres_server.connect() as conn, conn.transaction():
        conn.execute(f"ANALYZE {schema}.keyed_stripes")
        conn.execute(st.temp_tables)
        conn.execute(
            "INSERT INTO tallies_in_keyed SELECT 'k', 'k' || lpad(i::text, 5, '0'), 1"
            " FROM generate_series(0, 19999) i"
        )
        conn.execute("ANALYZE tallies_in_keyed")
        conn.execute("SET enable_mergejoin = off")
        conn.execute(st.merge_plan)
        plan = "\n".join(
            r[0] for r in conn.execute("EXPLAIN " + st.keyed_in.update, (1, "k", "k")).fetchall()
        )
    assert "Merge Join" in plan and "Hash" not in plan and "Nested Loop" not in plan, plan
    assert "Index Scan using keyed_stripes_pkey" in plan, plan  # the table's rows in key order


def test_a_big_flush_adds_to_a_row_another_writer_inserted_meanwhile(
    postgres_server: PostgresServer, url: str, schema: str
) -> None:
    """A big flush inserts its new rows with a plain INSERT; a row of its
    stripe that another transaction inserts after the flush looked (here:
    committed while the INSERT waits on it) makes that INSERT fail: the
    flush then adds to it (savepoint, ON CONFLICT).  Nothing lost, nothing
    counted twice."""
    with tallies.open(url) as store:
        kc = store.keyed("race")
        kc.increment("k00000")
        store.flush()
        ((stripe,),) = rows(postgres_server, f"SELECT stripe FROM {schema}.keyed_stripes")
        for i in range(12_000):
            kc.increment(f"k{i:05d}")
        flushed: list[BaseException | None] = []

        def flush() -> None:
            try:
                store.flush()
                flushed.append(None)
            except BaseException as exc:  # reported by the assertion below
                flushed.append(exc)

        with postgres_server.connect() as other:
            with other.transaction():
                other.execute(
                    f"INSERT INTO {schema}.keyed_stripes VALUES ('race', 'k11999', %s, 5)",
                    (stripe,),
                )
                t = threading.Thread(target=flush)
                t.start()
                deadline = time.monotonic() + 60
                while not rows(
                    postgres_server,
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'INSERT INTO%keyed_stripes%'",
                ):
                    assert time.monotonic() < deadline, "the flush never waited on the row"
                    time.sleep(0.01)
            t.join(60)
        assert flushed == [None]
        assert kc.value("k11999") == 6
    got = dict(rows(postgres_server, f"SELECT key, value FROM {schema}.keyed"))
    assert got == {f"k{i:05d}": 2 if i == 0 else 6 if i == 11_999 else 1 for i in range(12_000)}
