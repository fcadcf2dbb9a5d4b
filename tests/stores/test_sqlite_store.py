"""sqlite:// in one process: URLs, schema, persistence, reads, resets,
overflow, corrupt and foreign files, and every failure a flush can meet
(locked, lost reply, removed file, read-only, disk full), each keeping the
deltas and then succeeding exactly once.  Real files throughout."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _shm_support import SRC, run_python
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tallies
from tallies.stores import sqlite as sqlite_mod
from tallies.stores._protocol import Query
from tallies.stores.base import (
    CorruptSegmentError,
    CountOverflowError,
    FlushError,
    StoreNotFoundError,
)
from tallies.stores.sqlite import SCHEMA_VERSION

INT64_MAX = 2**63 - 1


@pytest.fixture(autouse=True)
def _fresh_fault_points() -> None:
    sqlite_mod._hits.clear()


def url_of(path: Path, params: str = "") -> str:
    return f"sqlite:///{path}{params}"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "counts.db"


@pytest.fixture
def url(db: Path) -> Iterator[str]:
    yield url_of(db, "?flush=3600")
    tallies.destroy(url_of(db))


def raw(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def nz(d: Any) -> dict[Any, int]:
    """The non-zero entries (negative counts kept, unlike Counter's unary +)."""
    return {k: v for k, v in dict(d).items() if v}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- URLs, schema, persistence ---------------------------------------------------


def test_relative_and_absolute_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with tallies.open("sqlite:///rel.db") as s:
        s.counter("a").increment(2)
    assert (tmp_path / "rel.db").exists()
    with tallies.open(f"sqlite:///{tmp_path}/rel.db") as s:  # four slashes: absolute
        assert s.counter("a").value() == 2
    assert tallies.destroy("sqlite:///rel.db") is True
    assert not list(tmp_path.glob("rel.db*"))
    assert tallies.destroy("sqlite:///rel.db") is False


@pytest.mark.parametrize(
    "bad",
    [
        "sqlite://rel.db",
        "sqlite:///:memory:",
        "sqlite:///x.db?flush=-1",
        "sqlite:///x.db?flush=abc",
        "sqlite:///x.db?timeout=nan",
        "sqlite:///x.db?synchronous=OFF",
        "sqlite:///x.db?bogus=1",
    ],
)
def test_bad_urls(bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError):
        tallies.open(bad)
    assert not list(tmp_path.iterdir())


def test_create_false(db: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        tallies.open(url_of(db), create=False)
    assert not db.exists()


def test_schema_is_readable_without_tallies(db: Path, url: str) -> None:
    with tallies.open(url) as s:
        s.counter("requests").increment(12)
        s.keyed("status").increment("200", 10)
        s.keyed("status").increment("404", 2)
        s.keyed("empty")
    assert raw(db, "select * from counters") == [("requests", 12)]
    assert raw(db, "select * from keyed order by key") == [
        ("status", "200", 10),
        ("status", "404", 2),
    ]
    assert dict(raw(db, "select * from tallies_meta")) == {
        "magic": "tallies",
        "schema": str(SCHEMA_VERSION),
    }
    assert raw(db, "select name, kind from names order by rowid") == [
        ("requests", "counter"),
        ("status", "keyed"),
        ("empty", "keyed"),
    ]
    assert raw(db, "pragma journal_mode") == [("wal",)]
    (keyed_sql,) = raw(db, "select sql from sqlite_master where name = 'keyed'")[0]
    assert keyed_sql.endswith("WITHOUT ROWID")  # one B-tree per key lookup (schema 2)
    with tallies.open(url, create=False) as s:
        assert s.snapshot() == {
            "counters": {"requests": 12},
            "keyed": {"status": {"200": 10, "404": 2}, "empty": {}},
        }
        assert s.names() == ["empty", "requests", "status"]  # sorted (docs/contract.md)


# The schema of version 1 (tallies before 2026-12-06): ``keyed`` a rowid table.
V1_SCHEMA = (
    "CREATE TABLE tallies_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE names(name TEXT PRIMARY KEY, kind TEXT NOT NULL"
    " CHECK (kind IN ('counter', 'keyed')))",
    "CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE keyed(name TEXT NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL,"
    " PRIMARY KEY(name, key))",
    "CREATE TABLE writers(writer_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, seen REAL NOT NULL)",
    "INSERT INTO tallies_meta VALUES ('magic', 'tallies'), ('schema', '1')",
    "INSERT INTO names VALUES ('hits', 'counter'), ('k', 'keyed')",
    "INSERT INTO counters VALUES ('hits', 7)",
)
V1_KEYS = {f"user:{i:05d}": i % 13 - 6 for i in range(3000)}


def _make_v1(db: Path) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("BEGIN")
        for stmt in V1_SCHEMA:
            con.execute(stmt)
        con.executemany("INSERT INTO keyed VALUES ('k', ?, ?)", V1_KEYS.items())
        con.execute("COMMIT")
        con.execute("PRAGMA journal_mode = WAL")
    finally:
        con.close()


def _layout(db: Path) -> tuple[str, bool]:
    """(schema version, whether ``keyed`` is WITHOUT ROWID)."""
    (version,) = raw(db, "select value from tallies_meta where key = 'schema'")[0]
    (sql,) = raw(db, "select sql from sqlite_master where name = 'keyed'")[0]
    return version, "WITHOUT ROWID" in sql.upper()


def test_a_version_1_file_stays_version_1_and_works_unless_the_url_says_migrate(
    db: Path,
) -> None:
    # A tallies that only knows version 1 may have the file open: neither a
    # store nor a look at it (create=False, as tallies show and the exporters
    # open) changes its layout.
    _make_v1(db)
    with tallies.open(url_of(db), create=False) as s:
        assert s.keyed("k").snapshot() == V1_KEYS
    with tallies.open(url_of(db, "?flush=3600")) as s:
        kc = s.keyed("k")
        kc.increment("user:00007", 5)
        kc.increment("new", 2)
        s.flush()
        assert kc["user:00007"] == 6 and kc.reset("new") == 2
        assert kc.reset() == {**V1_KEYS, "user:00007": 6, "new": 0}
        assert s.counter("hits").value() == 7
    assert _layout(db) == ("1", False)
    assert set(raw(db, "select distinct value from keyed")) == {(0,)}


def test_a_new_file_is_version_2(db: Path) -> None:
    with tallies.open(url_of(db)) as s:
        s.keyed("k").increment("a")
    assert _layout(db) == ("2", True)


def test_a_version_1_file_is_migrated_on_open_every_count_kept(db: Path) -> None:
    _make_v1(db)
    with tallies.open(url_of(db, "?flush=3600&migrate=1")) as s:
        assert _layout(db) == ("2", True)
        kc = s.keyed("k")
        assert kc.snapshot() == V1_KEYS and kc["user:00007"] == 1
        assert s.counter("hits").value() == 7
        kc.increment("user:00007", 5)
        kc.increment("new", 2)
        s.flush()
        assert kc.reset("user:00007") == 6
        assert kc.reset() == {**V1_KEYS, "user:00007": 0, "new": 2}
    assert set(raw(db, "select distinct value from keyed")) == {(0,)}
    assert raw(db, "pragma integrity_check") == [("ok",)]


def test_a_version_1_file_locked_now_stays_version_1_works_and_migrates_later(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _make_v1(db)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    try:
        with tallies.open(url_of(db, "?flush=3600&timeout=0.2&migrate=1")) as s:
            assert "stays at schema version 1" in caplog.text
            assert _layout(db) == ("1", False)
            kc = s.keyed("k")
            assert kc.snapshot() == V1_KEYS
            other.execute("COMMIT")
            kc.increment("user:00001", 10)
            s.flush()
            assert kc.reset() == {**V1_KEYS, "user:00001": V1_KEYS["user:00001"] + 10}
            assert _layout(db) == ("1", False)
    finally:
        other.close()
    with tallies.open(url_of(db, "?migrate=1")) as s:
        assert _layout(db) == ("2", True)
        assert set(s.keyed("k").snapshot().values()) == {0}


def test_an_index_of_the_users_on_keyed_keeps_version_1(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Dropping the old table would drop the user's index without a word.
    _make_v1(db)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as con:
        con.execute("CREATE INDEX by_value ON keyed(value)")
    with tallies.open(url_of(db, "?migrate=1")) as s:
        assert "index by_value" in caplog.text and "stays at schema version 1" in caplog.text
        assert s.keyed("k").snapshot() == V1_KEYS
    assert _layout(db) == ("1", False)
    assert raw(db, "select name from sqlite_master where name = 'by_value'") == [("by_value",)]


def test_a_view_of_the_users_on_keyed_reads_the_migrated_table(db: Path) -> None:
    _make_v1(db)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as con:
        con.execute("CREATE VIEW top_keys AS SELECT key, value FROM keyed WHERE value > 5")
    with tallies.open(url_of(db, "?migrate=1")) as s:
        assert _layout(db) == ("2", True)
        s.keyed("k").increment("big", 9)
    expected = {k: v for k, v in V1_KEYS.items() if v > 5} | {"big": 9}
    assert dict(raw(db, "select key, value from top_keys")) == expected


def test_a_writer_killed_while_migrating_leaves_version_1_whole(db: Path) -> None:
    _make_v1(db)
    before = raw(db, "select name, key, value from keyed order by name, key")
    code = f"import tallies; tallies.open({url_of(db, '?migrate=1')!r})"
    proc = run_python(code, env={"TALLIES_SQLITE_CRASH": "migrate"})
    assert proc.returncode == -9, proc.stderr
    assert _layout(db) == ("1", False)
    assert raw(db, "select name, key, value from keyed order by name, key") == before
    with tallies.open(url_of(db, "?migrate=1")) as s:
        assert _layout(db) == ("2", True)
        assert s.keyed("k").snapshot() == V1_KEYS


def test_processes_opening_a_version_1_file_at_once_migrate_it_once(db: Path) -> None:
    _make_v1(db)
    code = textwrap.dedent(f"""
        import sys, tallies
        with tallies.open({url_of(db, "?flush=3600&timeout=30&migrate=1")!r}) as s:
            kc = s.keyed("k")
            kc.increment("user:00001", 1)
            kc.increment("p" + sys.argv[1], 1)
    """)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stderr=subprocess.PIPE)
        for i in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert _layout(db) == ("2", True)
    with tallies.open(url_of(db)) as s:
        expected = {**V1_KEYS, "user:00001": V1_KEYS["user:00001"] + 4}
        assert s.keyed("k").snapshot() == {**expected, **{f"p{i}": 1 for i in range(4)}}


def test_a_truncated_version_1_file_is_refused_untouched(db: Path) -> None:
    _make_v1(db)
    data = db.read_bytes()
    for extra in ("-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    db.write_bytes(data[: len(data) // 2])
    before = digest(db)
    with pytest.raises(CorruptSegmentError, match="not a readable tallies database"):
        tallies.open(url_of(db))
    assert digest(db) == before


def test_read_your_writes_and_no_io_until_flush(db: Path, url: str) -> None:
    with tallies.open(url) as s:
        c = s.counter("n")
        kc = s.keyed("k")
        s.flush()
        c.increment(3)
        c -= 1
        kc.increment("a", 4)
        assert c.value() == 2 and int(c) == 2 and kc["a"] == 4 and "a" in kc
        assert raw(db, "select value from counters") == [(0,)]  # not written yet
        assert s.snapshot()["counters"] == {"n": 2}
        s.flush()
        assert raw(db, "select value from counters") == [(2,)]
        assert c.value() == 2 and kc.snapshot() == {"a": 4} and len(kc) == 1
        assert list(kc) == ["a"] and kc.items() == [("a", 4)]


def test_store_counters_follow_the_counter_api(url: str) -> None:
    with tallies.open(url) as s:
        c = s.counter("n")
        assert s.counter("n") is c
        with pytest.raises(TypeError):
            c.increment(1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="is a counter"):
            s.keyed("n")
        kc = s.keyed("k")
        with pytest.raises(TypeError, match="key must be a str"):
            kc.increment(3)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            kc.increment(b"x")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            kc.increment("x" * 2000)
        with pytest.raises(TypeError):
            s.counter(3)  # type: ignore[arg-type]
        assert c.value() == 0 and kc.snapshot() == {}
    with pytest.raises(ValueError, match="closed"):
        c.increment()


def test_write_through(db: Path) -> None:
    u = url_of(db, "?flush=0")
    with tallies.open(u) as s:
        c = s.counter("n")
        kc = s.keyed("k")
        c.increment(2)
        assert raw(db, "select value from counters") == [(2,)]
        c += 1
        kc.increment("x")
        assert raw(db, "select value from counters") == [(3,)]
        assert raw(db, "select key, value from keyed") == [("x", 1)]
    tallies.destroy(u)


def test_reset_takes_stored_plus_own_pending_only(db: Path, url: str) -> None:
    a = tallies.open(url)
    # another writer (its own pending deltas): the same file under other
    # parameters is another store in this process (one store per URL)
    b = tallies.open(url + "&synchronous=FULL")
    try:
        a.counter("n").increment(5)
        a.flush()
        a.counter("n").increment(2)
        b.counter("n").increment(100)  # b's pending: lands after the reset
        assert a.counter("n").reset() == 7
        assert a.counter("n").value() == 0
        b.flush()
        assert a.counter("n").value() == 100
        kc = a.keyed("k")
        kc.increment("x", 3)
        a.flush()
        kc.increment("y")
        assert kc.reset("x") == 3
        assert kc.reset() == collections.Counter({"x": 0, "y": 1})
        assert raw(db, "select key, value from keyed order by key") == [("x", 0)]
    finally:
        a.close()
        b.close()


def test_aopen_and_aflush(db: Path, url: str) -> None:
    async def main() -> int:
        async with tallies.aopen(url) as store:
            store.counter("n").increment(4)
            await store.aflush()
            assert raw(db, "select value from counters") == [(4,)]
            store.counter("n").increment(1)  # flushed by the exit of the block
        return 0

    asyncio.run(main())
    assert raw(db, "select value from counters") == [(5,)]


def test_show_and_destroy(db: Path, url: str) -> None:
    with tallies.open(url) as s:
        s.counter("jobs").increment(3)
        s.keyed("by").increment("x", 2)
    from tallies.cli.show import show

    text = show(url_of(db))
    assert "jobs" in text and "3" in text and "x" in text
    proc = run_python(
        f"import tallies.cli; raise SystemExit(tallies.cli.main(['show', {url_of(db)!r}]))"
    )
    assert proc.returncode == 0 and "jobs" in proc.stdout
    missing = url_of(db.parent / "missing.db")
    proc = run_python(
        f"import tallies.cli; raise SystemExit(tallies.cli.main(['show', {missing!r}]))"
    )
    assert proc.returncode == 2 and "no database" in proc.stderr and "Traceback" not in proc.stderr
    with tallies.open(url) as s:  # leave -wal and -shm behind
        s.counter("jobs").increment()
        s.flush()
        assert list(db.parent.glob("counts.db*"))
        assert tallies.destroy(url_of(db)) is True
    assert not list(db.parent.glob("counts.db*"))  # nothing left to flush: nothing recreated


# ---- corrupt, foreign, newer ------------------------------------------------------


def _make_valid(db: Path) -> None:
    with tallies.open(url_of(db)) as s:
        for i in range(200):
            s.keyed("k").increment(f"key-{i}" * 5, i)


@pytest.mark.parametrize(
    "kind", ["garbage", "truncated", "short", "empty", "foreign", "notables", "newer", "nomagic"]
)
def test_corrupt_foreign_newer_files_are_refused_untouched(db: Path, kind: str) -> None:
    if kind == "garbage":
        db.write_bytes(os.urandom(8192))
    elif kind == "empty":
        db.write_bytes(b"")
    elif kind == "notables":
        con = sqlite3.connect(db)
        con.execute("pragma user_version = 7")
        con.commit()
        con.close()
    elif kind == "short":
        db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 20)
    elif kind == "truncated":
        _make_valid(db)
        for extra in ("-wal", "-shm"):
            Path(str(db) + extra).unlink(missing_ok=True)
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
    elif kind == "foreign":
        con = sqlite3.connect(db)
        con.execute("create table users(id integer primary key, name text)")
        con.commit()
        con.close()
    elif kind in ("newer", "nomagic"):
        _make_valid(db)
        con = sqlite3.connect(db)
        if kind == "newer":
            con.execute("update tallies_meta set value = '99' where key = 'schema'")
        else:
            con.execute("delete from tallies_meta where key = 'magic'")
        con.commit()
        con.close()
    before = digest(db)
    with pytest.raises(CorruptSegmentError) as info, tallies.open(url_of(db)) as s:
        s.snapshot()  # a truncated file may only be noticed on reading
    assert isinstance(info.value, tallies.CorruptStoreError)
    assert digest(db) == before
    if kind == "newer":
        assert "newer" in str(info.value)


def test_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.db").mkdir()
    with pytest.raises(CorruptSegmentError):
        tallies.open(url_of(tmp_path / "d.db"))


# ---- overflow ---------------------------------------------------------------------


def test_overflow_is_held_not_applied_not_lost(db: Path, url: str) -> None:
    with tallies.open(url) as s:
        big = s.counter("big")
        kc = s.keyed("k")
        s.flush()
        con = sqlite3.connect(db)
        con.execute("update counters set value = ? where name = 'big'", (INT64_MAX - 1,))
        con.commit()
        con.close()
        big.increment(5)
        kc.increment("fine", 2)
        with pytest.raises(CountOverflowError) as info:
            s.flush()
        assert isinstance(info.value, OverflowError) and info.value.items == [("big", None)]
        assert raw(db, "select value from counters") == [(INT64_MAX - 1,)]
        assert raw(db, "select value from keyed") == [(2,)]  # the rest went through
        assert big.value() == INT64_MAX + 4
        with pytest.raises(CountOverflowError):
            s.flush()
        big.decrement(4)
        s.flush()
        assert raw(db, "select value from counters") == [(INT64_MAX,)]
        big.decrement(INT64_MAX)
        big.decrement(1)
        s.flush()
        assert big.value() == -1
    assert raw(db, "select value from counters") == [(-1,)]


def test_flush_of_more_keys_than_a_statement_carries_lands_each_exactly(db: Path, url: str) -> None:
    """A keyed counter's rows go ROWS to a statement and the rest one by one:
    new keys, stored keys, negative deltas and a new key at 0 all land."""
    n = 2 * sqlite_mod.ROWS + 37
    with tallies.open(url) as s:
        kc = s.keyed("k")
        for i in range(0, n, 2):
            kc.increment(f"key{i}", 10)
        s.flush()
        for i in range(n):
            if i % 3:
                kc.increment(f"key{i}", i)
            else:
                kc.decrement(f"key{i}", i)
        kc.increment("zero", 0)
        s.flush()
    want = {f"key{i}": (10 if i % 2 == 0 else 0) + (i if i % 3 else -i) for i in range(n)}
    assert dict(raw(db, "select key, value from keyed")) == {**want, "zero": 0}


def test_overflow_in_the_middle_of_a_statement_is_held_the_rest_lands(db: Path, url: str) -> None:
    """One key of a 100-row statement would leave int64: that key is held,
    every other key of the flush is applied."""
    n = 2 * sqlite_mod.ROWS + 37
    with tallies.open(url) as s:
        kc = s.keyed("k")
        kc.increment("key150", 0)
        s.flush()
        con = sqlite3.connect(db)
        con.execute("update keyed set value = ? where key = 'key150'", (INT64_MAX,))
        con.commit()
        con.close()
        for i in range(n):
            kc.increment(f"key{i}", 1)
        with pytest.raises(CountOverflowError) as info:
            s.flush()
        assert info.value.items == [("k", "key150")]
        got = dict(raw(db, "select key, value from keyed"))
        assert got == {**{f"key{i}": 1 for i in range(n)}, "key150": INT64_MAX}
        assert kc.value("key150") == INT64_MAX + 1  # held, still counted
        kc.decrement("key150", 1)
        s.flush()
    assert dict(raw(db, "select key, value from keyed"))["key150"] == INT64_MAX


# ---- failures: each keeps the deltas, then succeeds exactly once -------------------


def test_locked_past_the_timeout(db: Path) -> None:
    u = url_of(db, "?flush=3600&timeout=0.1")
    with tallies.open(u) as s:
        c = s.counter("n")
        c.increment(3)
        s.flush()
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        c.increment(4)
        with pytest.raises(FlushError, match="locked") as info:
            s.flush()
        assert isinstance(info.value, tallies.StoreUnavailableError)
        assert c.value() == 7  # readers are not blocked (WAL), pending still counted
        holder.execute("ROLLBACK")
        holder.close()
        s.flush()
    assert raw(db, "select value from counters") == [(7,)]


@pytest.mark.parametrize("point", ["before-begin", "before-commit", "after-commit"])
def test_failure_at_each_step_is_retried_exactly_once(
    db: Path, url: str, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tallies.open(url) as s:
        c = s.counter("n")
        kc = s.keyed("k")
        c.increment(5)
        s.flush()
        c.increment(7)
        kc.increment("x", 2)
        monkeypatch.setenv("TALLIES_SQLITE_FAIL", point)
        with pytest.raises(FlushError, match="injected"):
            s.flush()
        monkeypatch.delenv("TALLIES_SQLITE_FAIL")
        expected = 12 if point == "after-commit" else 5
        assert raw(db, "select value from counters") == [(expected,)]
        assert c.value() == 12 and kc["x"] == 2  # read: not doubled, not missed
        c.increment(1)
        s.flush()  # the same batch first (recognised if it committed), then the new one
        assert raw(db, "select value from counters") == [(13,)]
        assert raw(db, "select value from keyed") == [(2,)]


def test_removed_file_fails_one_flush_then_recreates(db: Path, url: str) -> None:
    with tallies.open(url) as s:
        c = s.counter("n")
        c.increment(2)
        s.flush()
        tallies.destroy(url_of(db))
        c.increment(3)
        with pytest.raises(FlushError, match="removed or replaced"):
            s.flush()
        with pytest.raises(tallies.StoreUnavailableError, match="does not exist"):
            c.value()  # nothing at the path to read now
        s.flush()
    assert raw(db, "select value from counters") == [(3,)]


def _can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(["mount", "--version"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only), unmounted after the test."""
    if not _can_mount():
        pytest.skip("needs root and mount(8) for a private tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_read_only_file() -> None:
    """A database file (and its -shm) made read-only: the store still reads,
    flushes fail and keep the deltas, and succeed once the modes are fixed.
    Root ignores file modes, so then the writer becomes user nobody."""
    d = tempfile.mkdtemp(prefix="tallies-ro-")
    try:
        os.chmod(d, 0o777)
        db = os.path.join(d, "ro.db")
        code = textwrap.dedent(
            f"""
            import os, urllib.parse, tallies, tallies.stores.sqlite, tallies.stores.writebehind
            if os.geteuid() == 0:  # root ignores file modes: become nobody
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            p = {db!r}
            u = "sqlite:///" + p + "?flush=3600&timeout=0.2"
            with tallies.open(u) as s:
                s.counter("n").increment(1)
            os.chmod(p, 0o444)
            s = tallies.open(u)
            c = s.counter("n")
            c.increment(2)
            for _ in range(2):
                try:
                    s.flush()
                except tallies.FlushError as exc:
                    assert "readonly" in str(exc), exc
                    print("failed")
            assert c.value() == 3
            for x in ("", "-wal", "-shm"):
                if os.path.exists(p + x):
                    os.chmod(p + x, 0o644)
            s.flush()
            s.close()
            print("ok")
            """
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = SRC
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=d,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["failed", "failed", "ok"]
        assert raw(Path(db), "select value from counters") == [(3,)]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_disk_full_tmpfs(tmpfs: Path) -> None:
    db = tmpfs / "full.db"
    u = url_of(db, "?flush=3600")
    filler = tmpfs / "filler"
    with tallies.open(u) as s:
        kc = s.keyed("k")
        kc.increment("first")
        s.flush()
        # Fill the filesystem.  Unbuffered: a buffered file keeps the bytes the
        # full disk refused and writes them again when it is closed, and CPython
        # 3.14 and 3.15 raise that second ENOSPC from the close.
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        for i in range(3000):
            kc.increment(f"key-{i:05d}-" + "x" * 40)
        with pytest.raises(FlushError, match=r"full|disk"):
            s.flush()
        assert kc.value("key-00001-" + "x" * 40) == 1
        filler.unlink()
        s.flush()
    rows = raw(db, "select count(*), sum(value) from keyed")
    assert rows == [(3001, 3001)]


def test_disk_full_rlimit_fsize(tmp_path: Path) -> None:
    """Disk full without root: RLIMIT_FSIZE in a child process."""
    db = tmp_path / "lim.db"
    code = textwrap.dedent(
        f"""
        import resource, signal, os, tallies
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        s = tallies.open({url_of(db, "?flush=3600")!r})
        kc = s.keyed("k")
        kc.increment("first")
        s.flush()
        size = max(os.path.getsize({str(db)!r}), os.path.getsize({str(db)!r} + "-wal"))
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 4096, hard))
        for i in range(3000):
            kc.increment(f"key-{{i:05d}}-" + "x" * 40)
        try:
            s.flush()
        except tallies.FlushError as exc:
            print("failed:", exc)
        else:
            raise SystemExit("the flush should have failed")
        assert kc.value("key-00007-" + "x" * 40) == 1
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        s.flush()
        s.close()
        print("ok")
        """
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "failed:" in proc.stdout and "ok" in proc.stdout
    assert raw(db, "select count(*), sum(value) from keyed") == [(3001, 3001)]


# ---- model-based ---------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("inc"), st.sampled_from("ab"), st.integers(-3, 3)),
        st.tuples(st.just("kinc"), st.sampled_from("xy"), st.integers(-3, 3)),
        st.tuples(st.just("flush")),
        st.tuples(st.just("fail"), st.sampled_from(["before-commit", "after-commit"])),
        st.tuples(st.just("reset"), st.sampled_from("ab")),
        st.tuples(st.just("kreset"), st.sampled_from(["x", None])),
        st.tuples(st.just("other")),
        st.tuples(st.just("reopen")),
    ),
    max_size=25,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(program=ops)
def test_model(tmp_path: Path, program: list[tuple[Any, ...]]) -> None:
    """Every read equals a plain dict's; after close the file holds it exactly.
    "other" is a second writer on the same file adding 10 and closing."""
    db = tmp_path / f"m{os.urandom(4).hex()}.db"
    u = url_of(db, "?flush=3600")
    model: collections.Counter[str] = collections.Counter()
    kmodel: collections.Counter[str] = collections.Counter()
    s = tallies.open(u)
    try:
        for op in program:
            kind = op[0]
            if kind == "inc":
                s.counter(op[1]).increment(op[2])
                model[op[1]] += op[2]
            elif kind == "kinc":
                s.keyed("k").increment(op[1], op[2])
                kmodel[op[1]] += op[2]
            elif kind == "flush":
                s.flush()
            elif kind == "fail":
                sqlite_mod._hits.clear()
                os.environ["TALLIES_SQLITE_FAIL"] = op[1]
                try:
                    s.flush()
                except FlushError:
                    pass
                finally:
                    del os.environ["TALLIES_SQLITE_FAIL"]
            elif kind == "reset":
                assert s.counter(op[1]).reset() == model[op[1]]
                model[op[1]] = 0
            elif kind == "kreset":
                got = s.keyed("k").reset(op[1])
                if op[1] is None:
                    assert nz(got) == nz(kmodel)
                    kmodel.clear()
                else:
                    assert got == kmodel[op[1]]
                    kmodel[op[1]] = 0
            elif kind == "other":
                with tallies.open(u) as o:
                    o.counter("a").increment(10)
                model["a"] += 10
            elif kind == "reopen":
                s.close()
                s = tallies.open(u)
            for name in "ab":
                assert s.counter(name).value() == model[name]
            assert nz(s.keyed("k").snapshot()) == nz(kmodel)
    finally:
        s.close()
    stored = dict(raw(db, "select name, value from counters"))
    assert nz(stored) == nz(model)
    kstored = dict(raw(db, "select key, value from keyed"))
    assert nz(kstored) == nz(kmodel)
    tallies.destroy(u)


def test_file_replaced_by_garbage_then_restored(db: Path, url: str) -> None:
    """A corrupt file at the path while open: flushes fail (deltas kept),
    nothing is written into the garbage, and once a good file is back the
    pending batch lands exactly once."""
    with tallies.open(url) as s:
        c = s.counter("n")
        c.increment(5)
        s.flush()
        backup = db.parent / "backup.db"
        src, dst = sqlite3.connect(db), sqlite3.connect(backup)
        src.backup(dst)  # through SQLite: never open() a file SQLite has open
        src.close()
        dst.close()
        garbage = db.parent / "garbage.bin"
        garbage.write_bytes(os.urandom(16384))
        before = digest(garbage)
        os.replace(garbage, db)  # rename: the old inode stays SQLite's
        for extra in ("-wal", "-shm"):
            Path(str(db) + extra).unlink(missing_ok=True)
        c.increment(2)
        with pytest.raises(FlushError, match="removed or replaced"):
            s.flush()
        with pytest.raises(FlushError) as info:
            s.flush()
        assert isinstance(info.value.__cause__, CorruptSegmentError)
        assert digest(db) == before  # the garbage was not written to
        os.replace(backup, db)
        s.flush()
        assert c.value() == 7
    assert raw(db, "select value from counters") == [(7,)]


def test_pickle_reopens_by_url(db: Path, url: str) -> None:
    """Unpickling a counter in a process where its store is open gives that
    store's counter (one store per URL per process, issue 24, 8)."""
    import pickle

    with tallies.open(url) as s:
        c = s.counter("n")
        kc = s.keyed("k")
        c.increment(4)
        kc.increment("a", 2)
        s.flush()
        c2 = pickle.loads(pickle.dumps(c))
        kc2 = pickle.loads(pickle.dumps(kc))
        assert c2 is c and kc2 is kc
        c2.increment()
        assert c.value() == 5 and kc2.value("a") == 2
        assert repr(c) == "BufferedCounter('n', 5)"
    assert raw(db, "select value from counters") == [(5,)]


def test_reads_stay_exact_after_an_idle_writers_entry_is_pruned(db: Path, url: str) -> None:
    """A writer that did not flush for more than PRUNE_AFTER loses its
    ``writers`` row to another writer's flush (the documented pruning).  Its
    reads must still count each of its batches once: the pruned row must not
    make the batches it already applied look unseen."""
    with tallies.open(url) as a:
        c = a.counter("n")
        kc = a.keyed("k")
        for _ in range(3):
            c.increment(5)
            kc.increment("x", 2)
            a.flush()
        assert c.value() == 15 and kc["x"] == 6
        con = sqlite3.connect(db)  # a day without a flush from `a`, as the file would show it
        with con:
            con.execute("UPDATE writers SET seen = seen - ?", (sqlite_mod.PRUNE_AFTER + 60,))
        con.close()
        with tallies.open(url) as b:
            b.counter("n").increment(1)
            b.flush()  # its first flush prunes entries not seen for PRUNE_AFTER
            assert raw(db, "select writer_id from writers") == [(b.writer_id,)]
        assert c.value() == 16 and kc["x"] == 6
        assert a.snapshot() == {"counters": {"n": 16}, "keyed": {"k": {"x": 6}}}
        c.increment(2)
        assert c.value() == 18
    with tallies.open(url) as s:
        assert s.counter("n").value() == 18 and s.keyed("k")["x"] == 6


def test_names_registered_again_in_a_file_recreated_under_an_open_store(db: Path, url: str) -> None:
    """destroy() while a store has the file open: that store's next flush fails
    (file removed), the one after re-creates the file and writes its deltas.
    The names it had registered in the old file must be registered in the new
    one too, or another store could open a counter's name as a keyed counter."""
    with tallies.open(url) as b:
        c = b.counter("n")
        kc = b.keyed("k")
        c.increment(3)
        kc.increment("a")
        b.flush()
        assert tallies.destroy(url_of(db))
        c.increment(4)
        with pytest.raises(FlushError, match="removed or replaced"):
            b.flush()
        b.flush()
        assert raw(db, "select name, kind from names order by rowid") == [
            ("n", "counter"),
            ("k", "keyed"),
        ]
        with tallies.open(url) as s:
            assert s.names() == ["k", "n"]
            with pytest.raises(ValueError, match="'n' is a counter"):
                s.keyed("n")
            assert s.snapshot() == {"counters": {"n": 4}, "keyed": {"k": {}}}


def test_a_one_key_read_is_one_statement(url: str) -> None:
    """kc[key] reads the key and this writer's recorded seq in one SELECT (its
    own read transaction), whatever the number of keys (issue 19)."""
    store = tallies.open(url)
    try:
        kc = store.keyed("k")
        for i in range(1000):
            kc.increment(f"k{i}", i)
        store.flush()
        kc.increment("k5", 10)
        conn = store._wb._be()._reader()
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        try:
            assert kc["k5"] == 15
            assert kc["missing"] == 0
        finally:
            conn.set_trace_callback(None)
        assert len(statements) == 2, statements
        assert all(s.startswith("SELECT (SELECT seq FROM writers") for s in statements)
    finally:
        store.close()


def test_a_keyed_snapshot_is_exact_at_the_int64_bounds_and_for_any_key(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyed counter's stored counts come back as two JSON arrays
    (sqlite.keyed_counts): counts at both int64 bounds, negative counts, keys
    of every kind, keys at 0, plus pending deltas: exact, in the same order
    as row by row (the fallback where SQLite has no JSON functions)."""
    keys = [" ", "ü€😀", "\x01\x7f", "a\r\nb", "\\", '"', "[1]", "{}", "0", "null"]
    want = {k: -i for i, k in enumerate(keys)}  # keys[0] at 0
    want |= {"max": INT64_MAX, "min": -INT64_MAX - 1}
    with tallies.open(url_of(db, "?flush=0")) as store:
        kc = store.keyed("ev")
        assert kc.snapshot() == {}
        for k, v in want.items():
            kc.increment(k, v)
    with tallies.open(url_of(db, "?flush=3600")) as store:
        kc = store.keyed("ev")
        kc.increment("new", -5)
        kc.increment(keys[1], 3)
        expect = want | {"new": -5, keys[1]: want[keys[1]] + 3}
        snap = kc.snapshot()
        assert snap == expect and store.snapshot()["keyed"]["ev"] == expect
        monkeypatch.setattr(sqlite_mod, "_json_arrays", False)
        rows = kc.snapshot()
        assert rows == snap and list(rows) == list(snap)


def test_without_json_functions_a_keyed_snapshot_reads_row_by_row(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SQLite without JSON functions answers 'no such function': the
    snapshot reads the rows one by one, from then on without asking again;
    a count JSON cannot hold (a BLOB another program wrote) is read the same
    way, row by row, as it always was."""
    want = {f"k{i}": i - 5 for i in range(10)}
    with tallies.open(url_of(db, "?flush=0")) as store:
        kc = store.keyed("ev")
        for k, v in want.items():
            kc.increment(k, v)
        monkeypatch.setattr(sqlite_mod, "_json_arrays", True)
        monkeypatch.setattr(
            sqlite_mod, "_KEYED_JSON", "SELECT no_such_json(key), 0 FROM keyed WHERE name = ?"
        )
        assert kc.snapshot() == want
        assert sqlite_mod._json_arrays is False
        monkeypatch.undo()
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("INSERT INTO keyed(name, key, value) VALUES ('ev', 'blob', x'00ff')")
        conn.close()
        read = store._wb._be().read("w", Query(keyed=("ev",)))
        assert read.keyed["ev"] == want | {"blob": b"\x00\xff"}
