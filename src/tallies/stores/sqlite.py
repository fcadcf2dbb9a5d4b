"""``sqlite:///counts.db``: durable counts in an SQLite file, write-behind.

Design (the machinery is in ``writebehind.py``; read its docstring first)
=========================================================================

URL: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (the
SQLAlchemy convention: the path is what follows the third slash).
Parameters:

``flush=SECONDS``  write-behind interval (default 1.0).  ``flush=0`` is
                   write-through: every update returns only after the
                   transaction carrying it committed, so that update does I/O
                   (and can raise FlushError: its delta is then kept and
                   written by a later flush; do not retry it).
``timeout=SECONDS`` busy timeout: how long a transaction waits for another
                   writer's lock before failing (default 5.0).
``synchronous=NORMAL|FULL`` SQLite's ``PRAGMA synchronous`` (default NORMAL:
                   a committed flush survives the process being killed; FULL
                   also survives a power loss, at an fsync per commit).
``migrate=0|1``    ``migrate=1`` brings a file of schema version 1 to version 2
                   when this store opens it (default 0: a version 1 file stays
                   version 1 and works as before; see below).

Every connection uses ``isolation_level=None`` (we issue BEGIN/COMMIT
ourselves), WAL mode (readers never block the writer; several processes and
threads share the file; WAL needs shared memory between them, so one host
only: never over NFS), and ``BEGIN IMMEDIATE`` for every write transaction
(the write lock is taken up front, so two writers never deadlock upgrading a
read lock: the classic SQLITE_BUSY bug of deferred transactions).  The
writer waits for that lock itself, with randomised sleeps from 50 us doubling
to 2 ms, up to ``timeout`` (SQLite's own busy handler sleeps 1, 2, 5, 10 ...
ms, which halves throughput when processes contend).  A store has one writer
connection (used by flushes, under the flush lock) and one reader connection
(reads are one short read transaction each).

Two rules this module keeps, each learnt from lost commits (see the
regression test with processes creating and closing one file together):

* It never ``open()``s the database file itself while SQLite may have it
  open in this process: closing any descriptor of a file drops every POSIX
  lock the process holds on it, and another process may then checkpoint and
  reset the WAL under our connections.  Files are checked through SQLite.
* A new file is built complete (schema, WAL mode set, connection closed so
  every page is in the main file) under a temporary name and ``link()``-ed
  into place: a new database in WAL mode keeps its first pages in the -wal
  while the main file is still empty, and SQLite deletes a -wal it finds
  beside an empty database.

Schema (version 2; ``sqlite3 counts.db 'select * from counters'`` reads it)::

    tallies_meta(key TEXT PRIMARY KEY, value TEXT)      magic='tallies', schema='2'
    names(name TEXT PRIMARY KEY, kind TEXT)             'counter' | 'keyed', in creation order
    counters(name TEXT PRIMARY KEY, value INTEGER)      one row per counter
    keyed(name TEXT, key TEXT, value INTEGER, PRIMARY KEY(name, key)) WITHOUT ROWID
    writers(writer_id TEXT PRIMARY KEY, seq INTEGER, seen REAL)

``keyed`` is WITHOUT ROWID (version 2): its rows live in the primary key's
B-tree, so reading one key descends one B-tree instead of the index and then
the table, and the file holds each key once (version 1, a rowid table, kept
every key twice: in the table and in its primary-key index).  At a million
keys, 2026-12-06, this project's 2-vCPU machine: the file 20 MiB instead of
50, one-key reads through ``sqlite3`` 8 us instead of 12.5 (3.2 us at a
thousand keys), ``kc[key]`` 15 us instead of 18.5 (9.4 at a thousand).  New files
are created at version 2.  A file of version 1 stays at version 1, which this
tallies reads and writes as before (the same SQL serves both layouts), unless
the URL says ``migrate=1``: never by itself, because a tallies of version 1
that has the file open keeps working on it only while it stays version 1 (its
keyed ``reset()`` reads the rowid, and its next connection, a reconnect or a
fork child's, refuses a newer file: its pending counts would be lost), and
``tallies show`` or an exporter opening the file must not do that to it.
With ``migrate=1`` (once every process that opens the file runs this tallies)
one transaction (``BEGIN IMMEDIATE``, the version read again under the lock)
copies ``keyed`` into the new layout, drops the old table and sets schema
'2'; a process killed meanwhile leaves version 1 whole.  A migration that
cannot run now (the file read-only, full, or locked by another writer for
``timeout``; an index or trigger of the user's on ``keyed``, which dropping
the table would drop) leaves the file at version 1, logged as a warning; a
view of the user's that reads ``keyed`` reads the new table (the rename runs
with ``legacy_alter_table``, which does not re-check views); a corrupt table
found while copying raises CorruptSegmentError.  The dropped table's pages
stay in the file as free pages for later writes (``VACUUM`` returns them).
A tallies of version 1 refuses a file of version 2 (newer).

Names and keys follow the rules every store shares (docs/contract.md;
``base.counter_name``, ``base.check_key``): keys are str (TEXT; nothing else
has a lossless, portable TEXT form), a non-str key raises TypeError, a bad str
(empty, over 1024 UTF-8 bytes, NUL, lone surrogate) ValueError.  A name keeps
the kind it was registered with; a flush that would register it with the
other kind raises KindClashError from inside the transaction (nothing applied)
and the write-behind sets that name aside.  ``SqliteStore`` is a
``WriteBehindStore``: its URL parameters are ``PARAMS`` (parsed by
``_params.py``), its backend ``SqliteBackend``.

A flush is one transaction: ``UPDATE writers SET seq = batch seq WHERE seq <
batch seq`` (no row changed and a row present: the batch was applied
already, so it is acknowledged and not applied again; no row: insert it),
insert new names, then for each delta ``INSERT ... ON CONFLICT DO UPDATE SET
value = value + excluded.value WHERE <the sum stays in int64>`` (a keyed
counter's rows 100 to a statement) (SQLite would
silently turn an overflowing integer sum into a REAL), prune writers not seen
for a day (at most once a minute per process); COMMIT.  If any row refused
its update, the transaction is rolled back and done again with exact Python
arithmetic, which raises CountOverflowError (nothing applied, the seq not
recorded) naming every count that would leave int64.

A file that is not an SQLite database, an SQLite database without our
``tallies_meta`` (foreign, or no tables at all), of a newer schema,
truncated, empty or garbage raises CorruptSegmentError (alias
CorruptStoreError) on open, and nothing is written to it.  Before every
write transaction the file's inode is compared with the one opened: a
removed or replaced file fails that flush (deltas kept) and the next attempt
reconnects (re-creating the file if the store was opened with
``create=True``).  After any other failed write both connections are
re-opened on the next attempt (a read-only or full file may have been fixed,
and connections of one process share a file's lock state).

Crash points for the tests: ``TALLIES_SQLITE_CRASH=tag[:n]`` SIGKILLs this
process at the n-th arrival (default the first) at ``before-begin``,
``before-commit`` (every write done), ``after-commit`` (before the batch is
marked done) or ``migrate`` (a version 1 file's migration, before its
COMMIT); ``TALLIES_SQLITE_FAIL=tag[:n]`` raises OSError there instead
(an error the caller sees after a commit: a lost reply).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import random
import secrets
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ._limiter import SlotSQL, SqlSlots, acquire
from ._params import FLUSH, choice, seconds
from ._protocol import (
    INT64_MAX,
    INT64_MIN,
    PRUNE_AFTER,
    Batch,
    Grant,
    Kind,
    LimitSpec,
    Query,
    RateSpec,
    Read,
    Target,
)
from ._wbrates import bucket_rows, overflow, prune_below, total_rows
from .base import (
    CorruptSegmentError,
    CountOverflowError,
    KindClashError,
    StoreError,
    StoreNotFoundError,
    StoreUnavailableError,
    StoreURL,
    flush_overflow,
    schema_version,
)
from .writebehind import WriteBehindStore

__all__ = [
    "MAGIC",
    "SCHEMA_VERSION",
    "STORE",
    "SqliteBackend",
    "SqliteOptions",
    "SqliteStore",
    "sqlite_path",
]

log = logging.getLogger("tallies.stores")

MAGIC = "tallies"
SCHEMA_VERSION = 2
DEFAULT_TIMEOUT = 5.0

SCHEMA = (
    "CREATE TABLE tallies_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE names(name TEXT PRIMARY KEY, kind TEXT NOT NULL"
    " CHECK (kind IN ('counter', 'keyed')))",
    "CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE keyed(name TEXT NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL,"
    " PRIMARY KEY(name, key)) WITHOUT ROWID",
    "CREATE TABLE writers(writer_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, seen REAL NOT NULL)",
)
TABLES = {"tallies_meta", "names", "counters", "keyed", "writers"}

#: Version 1 -> 2: ``keyed`` becomes WITHOUT ROWID (see the docstring).
MIGRATE_2 = (
    SCHEMA[3].replace("TABLE keyed(", "TABLE keyed_v2("),
    "INSERT INTO keyed_v2(name, key, value) SELECT name, key, value FROM keyed ORDER BY name, key",
    "DROP TABLE keyed",
    "PRAGMA legacy_alter_table = ON",  # a user's view of keyed is not re-checked
    "ALTER TABLE keyed_v2 RENAME TO keyed",
    "PRAGMA legacy_alter_table = OFF",
    "UPDATE tallies_meta SET value = '2' WHERE key = 'schema'",
)

# Rates and limiters (tallies.stores._wbrates, ._limiter): tables created on
# first use, in the transaction that first needs them, so that they need no
# schema version of their own: a file stays readable by a tallies of its
# version that has never heard of them.
RATE_TABLES = (
    "CREATE TABLE IF NOT EXISTS rates(name TEXT PRIMARY KEY, kind TEXT NOT NULL,"
    " window_ns INTEGER NOT NULL, res_ns INTEGER NOT NULL, total INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS rate_buckets(name TEXT NOT NULL, slot INTEGER NOT NULL,"
    " key TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY(name, slot, key)) WITHOUT ROWID",
)
LIMIT_TABLES = (
    "CREATE TABLE IF NOT EXISTS limiters(name TEXT PRIMARY KEY, lim INTEGER NOT NULL,"
    " per_ns INTEGER NOT NULL, res_ns INTEGER NOT NULL, buckets INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS limiter_slots(name TEXT NOT NULL, key TEXT NOT NULL,"
    " slot INTEGER NOT NULL, units INTEGER NOT NULL, expires_ns INTEGER NOT NULL,"
    " PRIMARY KEY(name, key, slot)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS limiter_slots_expiry ON limiter_slots(expires_ns)",
    "CREATE TABLE IF NOT EXISTS windows(name TEXT NOT NULL, key TEXT NOT NULL,"
    " count INTEGER NOT NULL, expires_ms INTEGER NOT NULL, PRIMARY KEY(name, key)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS windows_expiry ON windows(expires_ms)",
)

SLOTS = SlotSQL(
    give_back="UPDATE limiter_slots SET units = MAX(0, units - ?) "
    "WHERE name = ? AND key = ? AND slot = ?",
    prune="DELETE FROM limiter_slots WHERE name = ? AND key = ? AND slot < ?",
    window="SELECT COALESCE(SUM(units), 0), MIN(slot) FROM limiter_slots "
    "WHERE name = ? AND key = ? AND slot >= ? AND units > 0",
    add="INSERT INTO limiter_slots(name, key, slot, units, expires_ns) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(name, key, slot) DO UPDATE SET units = units + excluded.units",
)

# The sum value + d stays in int64 (both sides computed without overflow).
_FITS = (
    "(excluded.value >= 0 AND value <= 9223372036854775807 - excluded.value) OR "
    "(excluded.value < 0 AND value >= (-9223372036854775807 - 1) - excluded.value)"
)
_ADD_COUNTER = (
    "INSERT INTO counters(name, value) VALUES (?, ?) "
    f"ON CONFLICT(name) DO UPDATE SET value = value + excluded.value WHERE {_FITS}"
)
_ADD_KEY = (
    "INSERT INTO keyed(name, key, value) VALUES (?, ?, ?) "
    f"ON CONFLICT(name, key) DO UPDATE SET value = value + excluded.value WHERE {_FITS}"
)
#: Rows of one keyed counter a statement of ``_ADD_KEYS`` adds (the name
#: bound once, as ``?1``).
ROWS = 100
_ADD_KEYS = (
    "INSERT INTO keyed(name, key, value) VALUES "
    + ", ".join(["(?1, ?, ?)"] * ROWS)
    + f" ON CONFLICT(name, key) DO UPDATE SET value = value + excluded.value WHERE {_FITS}"
)
_SET_COUNTER = (
    "INSERT INTO counters(name, value) VALUES (?, ?) "
    "ON CONFLICT(name) DO UPDATE SET value = excluded.value"
)
_SET_KEY = (
    "INSERT INTO keyed(name, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT(name, key) DO UPDATE SET value = excluded.value"
)
_RECORD = (
    "INSERT INTO writers(writer_id, seq, seen) VALUES (?, ?, ?) "
    "ON CONFLICT(writer_id) DO UPDATE SET seq = excluded.seq, seen = excluded.seen"
)

_READ_KEY = (
    "SELECT (SELECT seq FROM writers WHERE writer_id = ?), "
    "(SELECT value FROM keyed WHERE name = ? AND key = ?)"
)

_KEYED_ROWS = "SELECT key, value FROM keyed WHERE name = ?"
_KEYED_JSON = "SELECT json_group_array(key), json_group_array(value) FROM keyed WHERE name = ?"
_json_arrays = True  # until SQLite answers that it has no JSON functions


def keyed_counts(conn: sqlite3.Connection, name: str) -> dict[str, int]:
    """A keyed counter's stored counts, in the primary key's order.

    One row per key through ``sqlite3`` costs a tuple, a str and an int made
    one by one in Python (1.0 s at a million keys, 2026-12-06, this
    project's 2-vCPU machine); ``json_group_array`` makes SQLite write the
    keys and the counts as two JSON arrays, which ``json.loads`` turns into
    lists in C (0.69 s).  Both aggregates see the rows in the same order.
    Without SQLite's JSON functions (before 3.38 they may be compiled out),
    or for a value that JSON cannot hold, the rows one by one."""
    global _json_arrays
    if _json_arrays:
        try:
            keys, counts = conn.execute(_KEYED_JSON, (name,)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such function" in str(exc):
                _json_arrays = False
        else:
            return dict(zip(json.loads(keys), json.loads(counts), strict=True))
    return dict(conn.execute(_KEYED_ROWS, (name,)))


PRUNE_EVERY = 60.0
"""Seconds between two prunes of the writers table by one process."""


class _Refused(Exception):
    """A guarded UPSERT refused its row (an int64 overflow): redo exactly."""


# ---- test hooks ----------------------------------------------------------------

_hits: collections.Counter[str] = collections.Counter()


_HOOK_VARS = ("TALLIES_SQLITE_CRASH", "TALLIES_SQLITE_FAIL")


def _armed() -> bool:
    """Whether a test hook is set (read once per transaction: cheap)."""
    env = os.environ
    return _HOOK_VARS[0] in env or _HOOK_VARS[1] in env


def _point(tag: str) -> None:
    for var, kill in ((_HOOK_VARS[0], True), (_HOOK_VARS[1], False)):
        spec = os.environ.get(var)
        if not spec:
            continue
        name, _, nth = spec.partition(":")
        if name != tag:
            continue
        _hits[var + tag] += 1
        if _hits[var + tag] == int(nth or 1):
            if kill:
                os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(10)  # pragma: no cover - the signal is on its way
            raise OSError(f"injected failure at {tag} ({var})")


# ---- the file --------------------------------------------------------------------


def sqlite_path(url: StoreURL) -> str:
    """The file a ``sqlite:///...`` URL names (relative to the working directory
    unless it starts with a fourth slash)."""
    target = url.target
    if not target.startswith("/") or len(target) < 2:
        raise ValueError(
            f"{url.shown!r}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = target[1:]
    if path == ":memory:" or path.startswith("file:"):
        raise ValueError(f"{url.shown!r}: sqlite:// stores are files (no :memory:, no file: URIs)")
    if "\x00" in path:
        raise ValueError(f"{url.shown!r}: the path contains a NUL character")
    return path


def _check_path(path: str) -> None:
    """Refuse a directory.  The file itself is checked by SQLite only: this
    process must never open() and close() a database file that SQLite has
    open, since closing any descriptor of a file drops every POSIX lock the
    process holds on it, and another process could then checkpoint and reset
    the WAL under our connections (SQLite's "how to corrupt", 2.2)."""
    if os.path.isdir(path):
        raise CorruptSegmentError(f"{path} is a directory, not a tallies database")


def _create_file(path: str) -> None:
    """Build a complete, empty tallies database under a temporary name and
    link it into place, so that no process ever opens a half-made one.

    (A brand-new database in WAL mode keeps its first pages in the -wal file
    while the main file is still 0 bytes, and SQLite treats a -wal next to a
    0-byte database as stale and deletes it: processes creating a database
    at once lost whole commits that way.  Ours is built in rollback mode,
    switched to WAL, closed, which leaves every page in the main file.)
    The loser of the ``link`` race uses the winner's file."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    )
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for stmt in SCHEMA:
                conn.execute(stmt)
            conn.executemany(
                "INSERT INTO tallies_meta(key, value) VALUES (?, ?)",
                [("magic", MAGIC), ("schema", str(SCHEMA_VERSION))],
            )
            conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode = WAL")
        finally:
            conn.close()
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailableError(f"sqlite: cannot create {path}: {exc}") from exc
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):
                os.unlink(tmp + suffix)


class _NotMigrated(Exception):
    """A version 1 file that ``migrate=1`` leaves at version 1 (why: the text)."""


def _migrate_2(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2 (the caller holds the write lock)."""
    meta = dict(conn.execute("SELECT key, value FROM tallies_meta").fetchall())
    if meta.get("schema") != "1":  # read again, under the lock
        return
    theirs = conn.execute(
        "SELECT type, name FROM sqlite_master WHERE tbl_name = 'keyed'"
        " AND type IN ('index', 'trigger') AND name NOT LIKE 'sqlite_autoindex_%'"
    ).fetchall()
    if theirs:
        found = ", ".join(f"{kind} {name}" for kind, name in theirs)
        raise _NotMigrated(f"the table keyed has objects that are not tallies' ({found})")
    for stmt in MIGRATE_2:
        conn.execute(stmt)


def _corrupt(path: str, exc: BaseException) -> CorruptSegmentError:
    return CorruptSegmentError(f"{path} is not a readable tallies database: {exc}")


class SqliteBackend:
    """The :class:`~tallies.stores.writebehind.Backend` over one SQLite file."""

    def __init__(
        self, path: str, *, create: bool, timeout: float, synchronous: str, migrate: bool = False
    ) -> None:
        self.path = path
        self.create = create
        self.timeout = timeout
        self.synchronous = synchronous
        self.migrate = migrate
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
        self._ident: tuple[int, int] | None = None
        self._rident: tuple[int, int] | None = None
        self._pruned = 0.0
        self._limits_pruned = 0
        # writer id -> highest seq this connection saw acknowledged; a read
        # reports at least that (see read()), since the writers row of a
        # writer idle for PRUNE_AFTER may have been pruned by another writer
        self._acked: dict[str, int] = {}
        # every name registered through this connection; registered again
        # when the writer reopens a different file (removed and re-created
        # while open), whose names table no longer has them
        self._names: dict[str, Kind] = {}
        self._new_file = False
        self._w = self._open(validate=True)

    # -- connections -------------------------------------------------------------

    def _connect(self, create: bool | None = None) -> sqlite3.Connection:
        create = self.create if create is None else create
        if not os.path.exists(self.path):
            if not create:
                raise StoreNotFoundError(f"sqlite: no database at {self.path}")
            _create_file(self.path)
        _check_path(self.path)
        uri = "file:" + _quote(os.path.abspath(self.path)) + "?mode=rw"
        try:
            conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, timeout=self.timeout, check_same_thread=False
            )
        except sqlite3.OperationalError as exc:
            if not os.path.exists(self.path):
                raise StoreNotFoundError(f"sqlite: no database at {self.path}") from exc
            raise StoreUnavailableError(f"sqlite: cannot open {self.path}: {exc}") from exc
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        return conn

    def _open(self, validate: bool) -> sqlite3.Connection:
        conn = self._connect()
        try:
            if validate:  # the writer: remember which file it opened
                st = os.stat(self.path)
                self._ident = (st.st_dev, st.st_ino)
                self._validate(conn)
                # The writer waits for the write lock in _begin(), with short
                # sleeps; SQLite's own busy handler sleeps 1, 2, 5, 10 ... ms.
                conn.execute("PRAGMA busy_timeout = 0")
            # Only busy_timeout and synchronous are set: mmap_size and
            # cache_size stay SQLite's defaults (no memory map, a 2 MB page
            # cache per connection).  A one-key read costs its B-tree pages
            # that are not in the connection's cache, and any flush (ours or
            # another process's) empties that cache, so a read at a million
            # keys meets a cold leaf whatever the cache size: measured at 10^6
            # keys (2026-12-06, 2-vCPU machine), cold reads through sqlite3
            # cost the same with cache_size = 64 MiB, and with mmap_size =
            # 256 MiB they were slower (17 us against 12.5 with the old
            # layout, kc[key] 17-21 us against 15-16 with the new one: a page
            # fault per first touch costs more than a pread), while RSS grew
            # by 3-4 MiB over 25 reads (the mapped pages count as resident) and
            # a memory-mapped file turns an I/O error into a SIGBUS.  Pages
            # of 8 or 16 KiB (instead of 4) made cold reads slower too (10
            # and 12.7 us against 7.7: a bigger page to copy and search).
            # What made reads cheaper is the layout: WITHOUT ROWID, above.
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _validate(self, conn: sqlite3.Connection) -> None:
        """Check the schema; never write to a file that is not ours."""
        try:
            tables = self._tables(conn)
            version = self._check_meta(conn, tables)
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            if version < SCHEMA_VERSION and self.migrate:
                self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _transient(exc):
                raise StoreUnavailableError(f"sqlite: {self.path}: {exc}") from exc
            raise _corrupt(self.path, exc) from exc

    @staticmethod
    def _tables(conn: sqlite3.Connection) -> set[str]:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {r[0] for r in rows}

    def _check_meta(self, conn: sqlite3.Connection, tables: set[str]) -> int:
        """The file's schema version; CorruptSegmentError if it is not ours."""
        if "tallies_meta" not in tables:
            raise CorruptSegmentError(
                f"{self.path} is an SQLite database but not a tallies one (no tallies_meta); "
                "refusing to touch it"
            )
        meta = dict(conn.execute("SELECT key, value FROM tallies_meta").fetchall())
        version = schema_version(
            meta, str(self.path), magic=MAGIC, newest=SCHEMA_VERSION, error=CorruptSegmentError
        )
        if version < 1 or not tables >= TABLES:
            raise CorruptSegmentError(f"{self.path}: schema {version} is missing tables")
        return version

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring a file of version 1 to version 2 in one transaction (the
        module docstring says what changes).  A migration that cannot run now
        (locked, read-only, full: an OperationalError; a user's index or
        trigger on keyed) leaves version 1, which works; a corrupt table
        raises (through _validate)."""
        try:
            conn.execute("PRAGMA busy_timeout = 0")  # _begin() waits, as the writer does
            self._transaction(conn, _migrate_2, "migrate")
        except (sqlite3.OperationalError, _NotMigrated) as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _transient(exc):
                raise
            log.warning(
                "tallies: sqlite: %s stays at schema version 1 (%s); "
                "an open with migrate=1 tries again",
                self.path, exc,
            )  # fmt: skip

    def _same_file(self, ident: tuple[int, int] | None) -> bool:
        """Whether the path still names the file a connection opened (``ident``:
        its device and inode)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == ident

    def _writer(self) -> sqlite3.Connection:
        """The writer connection, after checking that the file is still the
        one we opened (a removed or replaced file fails this attempt)."""
        conn = self._w
        if conn is None:
            # Close the reader too: connections of one process share a file's
            # lock and shared-memory state (a read-only -shm, say).
            self._drop_writer()
            conn = self._w = self._open(validate=True)
            return conn
        if not self._same_file(self._ident):
            self._drop_writer()
            self._new_file = True  # (a re-created file may even reuse the inode)
            exc = StoreUnavailableError(
                f"sqlite: {self.path} was removed or replaced while open; "
                "the next attempt opens the file now at that path"
            )
            exc.retry_now = True  # type: ignore[attr-defined]  # the exit flush retries at once
            raise exc
        return conn

    def _drop_writer(self) -> None:
        """Close both connections (the caller holds _wlock; the order is
        always _wlock then _rlock)."""
        conn, self._w = self._w, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        with self._rlock:
            self._drop_reader()

    def _drop_reader(self) -> None:
        """Close the reader connection (the caller holds _rlock): the next
        read opens a fresh one."""
        rconn, self._r = self._r, None
        if rconn is not None:
            with contextlib.suppress(Exception):
                rconn.close()

    def _reader(self) -> sqlite3.Connection:
        """The reader connection; it never creates the file (a removed file
        makes reads fail until a flush re-creates it).  Before each read the
        file's inode is compared with the one the reader opened: a file
        removed and created again (by ``destroy`` in another process, say) is
        read from now on, never the deleted one."""
        conn = self._r
        if conn is not None and not self._same_file(self._rident):
            self._r = None
            with contextlib.suppress(Exception):
                conn.close()
            conn = None
        if conn is None:
            try:
                conn = self._connect(create=False)
            except StoreNotFoundError as exc:
                raise StoreUnavailableError(f"sqlite: {self.path} does not exist now") from exc
            try:
                st = os.stat(self.path)
                self._check_meta(conn, self._tables(conn))
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise _corrupt(self.path, exc) from exc
            except FileNotFoundError as exc:
                conn.close()
                raise StoreUnavailableError(f"sqlite: {self.path} does not exist now") from exc
            except BaseException:
                conn.close()
                raise
            self._rident = (st.st_dev, st.st_ino)
            self._r = conn
        return conn

    # -- write transactions ------------------------------------------------------

    def _write(self, body: Any) -> Any:
        """Run body(conn) inside BEGIN IMMEDIATE ... COMMIT, with the crash points."""
        with self._wlock:
            conn = self._writer()
            armed = _armed()
            if armed:
                _point("before-begin")
            try:
                out = self._transaction(conn, body, "before-commit")
            except (CountOverflowError, KindClashError, _Refused):
                raise
            except sqlite3.Error as exc:
                if not (isinstance(exc, sqlite3.OperationalError) and _busy(exc)):
                    self._drop_writer()  # re-open on the next attempt
                raise
            if armed:
                _point("after-commit")
            return out

    def _transaction(self, conn: sqlite3.Connection, body: Any, tag: str) -> Any:
        """body(conn) inside BEGIN IMMEDIATE ... COMMIT, rolled back if
        anything raises; the crash point ``tag`` just before COMMIT."""
        self._begin(conn)
        try:
            out = body(conn)
            if _armed():
                _point(tag)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
            raise
        return out

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting up to ``timeout`` seconds for the write
        lock with short randomised sleeps (50 us doubling to 2 ms)."""
        deadline = time.monotonic() + self.timeout
        delay = 0.00005
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.002)

    @staticmethod
    def _recorded(conn: sqlite3.Connection, writer_id: str) -> int:
        row = conn.execute("SELECT seq FROM writers WHERE writer_id = ?", (writer_id,)).fetchone()
        return int(row[0]) if row is not None else 0

    def apply(self, writer_id: str, batch: Batch) -> None:
        def body(conn: sqlite3.Connection, exact: bool) -> None:
            now = time.time()
            cur = conn.execute(
                "UPDATE writers SET seq = ?, seen = ? WHERE writer_id = ? AND seq < ?",
                (batch.seq, now, writer_id, batch.seq),
            )
            if cur.rowcount == 0:
                row = conn.execute(
                    "SELECT seq FROM writers WHERE writer_id = ?", (writer_id,)
                ).fetchone()
                if row is not None:  # recorded seq >= batch.seq: applied already
                    conn.execute(
                        "UPDATE writers SET seen = ? WHERE writer_id = ?", (now, writer_id)
                    )
                    return
                conn.execute(
                    "INSERT INTO writers(writer_id, seq, seen) VALUES (?, ?, ?)",
                    (writer_id, batch.seq, now),
                )
            names = {**self._names, **batch.names} if self._new_file else batch.names
            if names:
                conn.executemany(
                    "INSERT OR IGNORE INTO names(name, kind) VALUES (?, ?)", names.items()
                )
                self._check_kinds(conn, names)
                conn.executemany(
                    "INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)",
                    [(n,) for n, k in names.items() if k == "counter"],
                )
            if exact:
                self._add_exact(conn, batch)
            elif not self._add_fast(conn, batch):
                raise _Refused
            if batch.rates or batch.keyed_rates:
                self._add_rates(conn, batch)
            if now - self._pruned > PRUNE_EVERY:
                conn.execute("DELETE FROM writers WHERE seen < ?", (now - PRUNE_AFTER,))
                self._pruned = now

        try:
            self._write(lambda conn: body(conn, False))
        except _Refused:  # rolled back: redo with exact arithmetic (rare)
            self._write(lambda conn: body(conn, True))
        self._ack(writer_id, batch.seq)
        with self._wlock:
            self._names.update(batch.names)
            self._new_file = False

    def _check_kinds(self, conn: sqlite3.Connection, names: dict[str, Kind]) -> None:
        """Refuse the batch (KindClashError: the caller rolls back) if a name
        it registers is registered with the other kind (another writer used
        the name first, the other way)."""
        clash: list[tuple[str, str | None]] = []
        for name, kind in names.items():
            row = conn.execute("SELECT kind FROM names WHERE name = ?", (name,)).fetchone()
            if (row is not None and row[0] != kind) or _rate_row(conn, name) is not None:
                clash.append((name, None))  # (the other kind, or a rate)
        if clash:
            raise KindClashError(
                f"sqlite: {self.path}: {', '.join(repr(n) for n, _ in clash)} registered "
                "with the other kind",
                clash,
            )

    def _ack(self, writer_id: str, seq: int) -> None:
        with self._wlock:
            if seq > self._acked.get(writer_id, 0):
                self._acked[writer_id] = seq

    @staticmethod
    def _add_fast(conn: sqlite3.Connection, batch: Batch) -> bool:
        """Guarded UPSERTs; False if any row refused (the caller rolls back).
        A keyed counter's rows go ``ROWS`` to a statement (``_ADD_KEYS``:
        one step, one reset and the name bound once for 100 rows; each
        statement's parameters one list filled by slices), the rest one a
        statement fed by C iterators (``zip``, ``repeat``): no Python step a
        key.  2026-12-06, this project's 2-vCPU machine, 10^6 new keys in one
        transaction: 0.92 s of CPU against 1.53 s one row a statement."""
        rows_c = list(batch.counters.items())
        for _, d in rows_c:
            if not INT64_MIN <= d <= INT64_MAX:
                return False
        for m in batch.keyed.values():
            if m and not (min(m.values()) >= INT64_MIN and max(m.values()) <= INT64_MAX):
                return False
        changed = 0
        if len(rows_c) == 1:
            changed += conn.execute(_ADD_COUNTER, rows_c[0]).rowcount
        elif rows_c:
            changed += conn.executemany(_ADD_COUNTER, rows_c).rowcount
        want = len(rows_c)
        for name, m in batch.keyed.items():
            if not m:
                continue
            ks, ds = list(m), list(m.values())
            full = len(ks) - len(ks) % ROWS
            if full:
                changed += conn.executemany(_ADD_KEYS, _row_lists(name, ks, ds, full)).rowcount
            if full < len(ks):
                rows = zip(itertools.repeat(name), ks[full:], ds[full:])
                changed += conn.executemany(_ADD_KEY, rows).rowcount
            want += len(m)
        return changed == want

    def _add_exact(self, conn: sqlite3.Connection, batch: Batch) -> None:
        """Exact arithmetic in Python: raise CountOverflowError naming every
        sum that leaves int64 (the caller rolls back), else write the sums."""
        bad: list[tuple[str, str | None]] = []
        new_c = []
        for name, d in batch.counters.items():
            row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            v = (int(row[0]) if row else 0) + d
            if INT64_MIN <= v <= INT64_MAX:
                new_c.append((name, v))
            else:
                bad.append((name, None))
        new_k = []
        for name, m in batch.keyed.items():
            for key, d in m.items():
                row = conn.execute(
                    "SELECT value FROM keyed WHERE name = ? AND key = ?", (name, key)
                ).fetchone()
                v = (int(row[0]) if row else 0) + d
                if INT64_MIN <= v <= INT64_MAX:
                    new_k.append((name, key, v))
                else:
                    bad.append((name, key))
        if bad:
            raise flush_overflow(
                f"sqlite: {self.path}",
                bad,
                "nothing of this flush was applied; those deltas are held (still in value()) "
                "and every later flush tries them again",
            )
        conn.executemany(_SET_COUNTER, new_c)
        conn.executemany(_SET_KEY, new_k)

    def take(self, writer_id: str, seq: int, target: Target) -> int | dict[str, int]:
        def body(conn: sqlite3.Connection) -> int | dict[str, int]:
            if self._recorded(conn, writer_id) >= seq:
                raise StoreError(f"sqlite: reset sequence {seq} of {writer_id} already used")
            out: int | dict[str, int]
            if target.kind == "rate":
                out = self._take_rate(conn, target.name)
            elif target.kind == "counter":
                row = conn.execute(
                    "SELECT value FROM counters WHERE name = ?", (target.name,)
                ).fetchone()
                out = int(row[0]) if row else 0
                conn.execute("UPDATE counters SET value = 0 WHERE name = ?", (target.name,))
            elif target.key is None:
                out = keyed_counts(conn, target.name)  # (no rowid since version 2)
                conn.execute("UPDATE keyed SET value = 0 WHERE name = ?", (target.name,))
            else:
                row = conn.execute(
                    "SELECT value FROM keyed WHERE name = ? AND key = ?", (target.name, target.key)
                ).fetchone()
                out = int(row[0]) if row else 0
                conn.execute(
                    "UPDATE keyed SET value = 0 WHERE name = ? AND key = ?",
                    (target.name, target.key),
                )
            conn.execute(_RECORD, (writer_id, seq, time.time()))
            return out

        result: int | dict[str, int] = self._write(body)
        self._ack(writer_id, seq)
        return result

    def fence(self, writer_id: str, seq: int) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            if self._recorded(conn, writer_id) >= seq:
                return True
            conn.execute(_RECORD, (writer_id, seq, time.time()))
            return False

        applied: bool = self._write(body)
        self._ack(writer_id, seq)
        return applied

    # -- reads -----------------------------------------------------------------------

    def _read_tx(self, body: Any) -> Any:
        with self._rlock:
            conn = self._reader()
            try:
                conn.execute("BEGIN")
                try:
                    return body(conn)
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self._drop_reader()
                raise StoreUnavailableError(f"sqlite: cannot read {self.path}: {exc}") from exc

    def read(self, writer_id: str, query: Query) -> Read:
        # a batch acknowledged before this read transaction starts is in its
        # snapshot even when the writers row is gone (pruned while idle)
        acked = self._acked.get(writer_id, 0)
        if len(query.keys) == 1 and query.counters == () and query.keyed == ():
            return self._read_key(writer_id, *query.keys[0], acked)

        def body(conn: sqlite3.Connection) -> Read:
            r = Read(max(self._recorded(conn, writer_id), acked))
            if query.counters is None:
                rows = conn.execute(
                    "SELECT c.name, c.value FROM counters c LEFT JOIN names n USING (name) "
                    "ORDER BY n.rowid"
                ).fetchall()
                r.counters = {str(n): int(v) for n, v in rows}
            else:
                for name in query.counters:
                    row = conn.execute(
                        "SELECT value FROM counters WHERE name = ?", (name,)
                    ).fetchone()
                    r.counters[name] = int(row[0]) if row else 0
            if query.keyed is None:
                query_keyed: Any = [
                    str(name)
                    for (name,) in conn.execute(
                        "SELECT name FROM names WHERE kind = 'keyed' ORDER BY rowid"
                    ).fetchall()
                ]
            else:
                query_keyed = query.keyed
            for name in query_keyed:
                r.keyed[name] = keyed_counts(conn, name)
            for name, key in query.keys:
                row = conn.execute(
                    "SELECT value FROM keyed WHERE name = ? AND key = ?", (name, key)
                ).fetchone()
                r.keyed.setdefault(name, {})[key] = int(row[0]) if row else 0
            if query.rates:
                self._read_rates(conn, query, r)
            return r

        result: Read = self._read_tx(body)
        return result

    def _read_key(self, writer_id: str, name: str, key: str, acked: int) -> Read:
        """One key and the writer's recorded seq in ONE statement (its own
        read transaction: both from the same snapshot), two index lookups."""
        with self._rlock:
            conn = self._reader()
            try:
                row = conn.execute(_READ_KEY, (writer_id, name, key)).fetchone()
            except sqlite3.DatabaseError as exc:
                self._drop_reader()
                raise StoreUnavailableError(f"sqlite: cannot read {self.path}: {exc}") from exc
        seq, v = row
        return Read(max(int(seq or 0), acked), keyed={name: {key: int(v or 0)}})

    def names(self) -> list[tuple[str, Kind]]:
        def body(conn: sqlite3.Connection) -> list[tuple[str, Kind]]:
            rows = conn.execute("SELECT name, kind FROM names ORDER BY rowid").fetchall()
            return [(str(n), "keyed" if k == "keyed" else "counter") for n, k in rows]

        result: list[tuple[str, Kind]] = self._read_tx(body)
        return result

    def kind_of(self, name: str) -> Kind | None:
        def body(conn: sqlite3.Connection) -> Kind | None:
            row = conn.execute("SELECT kind FROM names WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            return "keyed" if row[0] == "keyed" else "counter"

        result: Kind | None = self._read_tx(body)
        return result

    # -- rates (tallies.stores._wbrates) ---------------------------------------------

    def register_rate(self, name: str, spec: RateSpec) -> RateSpec:
        """Record rate ``name`` with ``spec`` unless it is recorded; return the
        recorded spec.  ValueError if ``name`` is a counter or keyed counter."""

        def body(conn: sqlite3.Connection) -> RateSpec:
            for stmt in RATE_TABLES:
                conn.execute(stmt)
            row = conn.execute("SELECT kind FROM names WHERE name = ?", (name,)).fetchone()
            if row is not None:
                what = "a keyed counter" if row[0] == "keyed" else "a counter"
                raise ValueError(f"{name!r} is {what} in sqlite: {self.path}")
            conn.execute(
                "INSERT OR IGNORE INTO rates(name, kind, window_ns, res_ns, total) "
                "VALUES (?, ?, ?, ?, 0)",
                (name, spec.kind, spec.window_ns, spec.res_ns),
            )
            got = _rate_row(conn, name)
            assert got is not None
            return got

        out: RateSpec = self._write(body)
        return out

    def rate_specs(self) -> dict[str, RateSpec]:
        """Every rate in the file, by name."""

        def body(conn: sqlite3.Connection) -> dict[str, RateSpec]:
            try:
                rows = conn.execute(
                    "SELECT name, kind, window_ns, res_ns FROM rates ORDER BY name"
                ).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return {}
                raise
            return {str(n): _spec(k, w, r) for n, k, w, r in rows}

        out: dict[str, RateSpec] = self._read_tx(body)
        return out

    def rate_spec(self, name: str) -> RateSpec | None:
        """The spec of rate ``name``, None when it is not a rate."""
        out: RateSpec | None = self._read_tx(lambda conn: _rate_row(conn, name))
        return out

    @staticmethod
    def _add_rates(conn: sqlite3.Connection, batch: Batch) -> None:
        """Add bucket deltas and totals; prune each written rate's buckets
        older than two windows before its newest bucket in the batch."""
        for stmt in RATE_TABLES:
            conn.execute(stmt)
        bad: list[tuple[str, str | None]] = []
        rows = bucket_rows(batch)
        for name, slot, key, d in rows:
            row = conn.execute(
                "SELECT value FROM rate_buckets WHERE name = ? AND slot = ? AND key = ?",
                (name, slot, key),
            ).fetchone()
            v = (int(row[0]) if row else 0) + d
            if not INT64_MIN <= v <= INT64_MAX:
                bad.append((name, key or None))
        totals = total_rows(batch)
        for name, d in totals:
            row = conn.execute("SELECT total FROM rates WHERE name = ?", (name,)).fetchone()
            if not INT64_MIN <= (int(row[0]) if row else 0) + d <= INT64_MAX:
                bad.append((name, None))
        if bad:
            raise overflow(bad, "")
        conn.executemany(
            "INSERT INTO rate_buckets(name, slot, key, value) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name, slot, key) DO UPDATE SET value = value + excluded.value",
            rows,
        )
        conn.executemany(
            "UPDATE rates SET total = total + ? WHERE name = ?", [(d, n) for n, d in totals]
        )
        conn.executemany("DELETE FROM rate_buckets WHERE name = ? AND slot < ?", prune_below(batch))

    @staticmethod
    def _take_rate(conn: sqlite3.Connection, name: str) -> int:
        row = None
        with contextlib.suppress(sqlite3.OperationalError):  # no rates table: nothing
            row = conn.execute("SELECT total FROM rates WHERE name = ?", (name,)).fetchone()
        if row is None:
            return 0
        conn.execute("UPDATE rates SET total = 0 WHERE name = ?", (name,))
        conn.execute("DELETE FROM rate_buckets WHERE name = ?", (name,))
        return int(row[0])

    @staticmethod
    def _read_rates(conn: sqlite3.Connection, query: Query, r: Read) -> None:
        for q in query.rates:
            try:
                row = conn.execute("SELECT total FROM rates WHERE name = ?", (q.name,)).fetchone()
                if q.key is None:
                    rows = conn.execute(
                        "SELECT key, slot, value FROM rate_buckets "
                        "WHERE name = ? AND slot BETWEEN ? AND ?",
                        (q.name, q.lo, q.hi),
                    ).fetchall()
                else:
                    rows = conn.execute(
                        "SELECT key, slot, value FROM rate_buckets "
                        "WHERE name = ? AND slot BETWEEN ? AND ? AND key = ?",
                        (q.name, q.lo, q.hi, q.key),
                    ).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                row, rows = None, []
            buckets: dict[str, dict[int, int]] = {}
            for k, slot, v in rows:
                buckets.setdefault(str(k), {})[int(slot)] = int(v)
            r.rates[q.name] = (int(row[0]) if row else 0, buckets)

    # -- limiters (tallies.stores._limiter) -------------------------------------------

    LIMITER_RESOLUTION_NS = 1_000_000

    def register_limiter(self, spec: LimitSpec) -> LimitSpec:
        def body(conn: sqlite3.Connection) -> LimitSpec:
            for stmt in LIMIT_TABLES:
                conn.execute(stmt)
            conn.execute(
                "INSERT OR IGNORE INTO limiters(name, lim, per_ns, res_ns, buckets) "
                "VALUES (?, ?, ?, ?, ?)",
                (spec.name, spec.limit, spec.per_ns, spec.res_ns, spec.buckets),
            )
            row = conn.execute(
                "SELECT lim, per_ns, res_ns, buckets FROM limiters WHERE name = ?", (spec.name,)
            ).fetchone()
            return LimitSpec(spec.name, int(row[0]), int(row[1]), int(row[2]), int(row[3]))

        out: LimitSpec = self._write(body)
        return out

    @staticmethod
    def _window_of(
        conn: sqlite3.Connection, spec: LimitSpec, key: str, s: int
    ) -> tuple[int, int | None]:
        return SqlSlots(conn, SLOTS, spec.name, key).window(s - spec.buckets)

    def limit_acquire(
        self, spec: LimitSpec, key: str, need: int, want: int, give_back: tuple[int, int] | None
    ) -> Grant:
        """One ``BEGIN IMMEDIATE`` transaction (see ``_limiter.LimitBackend``);
        slots follow this machine's wall clock."""

        def body(conn: sqlite3.Connection) -> Grant:
            for stmt in LIMIT_TABLES:
                conn.execute(stmt)
            now = time.time_ns()
            grant = acquire(spec, now, need, want, give_back, SqlSlots(conn, SLOTS, spec.name, key))
            if now - self._limits_pruned > PRUNE_EVERY * 1e9:
                conn.execute("DELETE FROM limiter_slots WHERE expires_ns < ?", (now,))
                conn.execute("DELETE FROM windows WHERE expires_ms < ?", (now // 1_000_000,))
                self._limits_pruned = now
            return grant

        out: Grant = self._write(body)
        return out

    def limit_read(self, spec: LimitSpec, key: str) -> Grant:
        def body(conn: sqlite3.Connection) -> Grant:
            now = time.time_ns()
            s = now // spec.res_ns
            try:
                used, oldest = self._window_of(conn, spec, key, s)
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                used, oldest = 0, None
            return Grant(0, used, s, now, oldest)

        out: Grant = self._read_tx(body)
        return out

    def limit_reset(self, spec: LimitSpec, key: str) -> int:
        def body(conn: sqlite3.Connection) -> int:
            for stmt in LIMIT_TABLES:
                conn.execute(stmt)
            s = time.time_ns() // spec.res_ns
            used, _ = self._window_of(conn, spec, key, s)
            conn.execute("DELETE FROM limiter_slots WHERE name = ? AND key = ?", (spec.name, key))
            return used

        out: int = self._write(body)
        return out

    def window_incr(self, name: str, key: str, expiry_ms: int, amount: int) -> tuple[int, float]:
        def body(conn: sqlite3.Connection) -> tuple[int, float]:
            for stmt in LIMIT_TABLES:
                conn.execute(stmt)
            now = time.time_ns() // 1_000_000
            row = conn.execute(
                "SELECT count, expires_ms FROM windows WHERE name = ? AND key = ?", (name, key)
            ).fetchone()
            if row is None or int(row[1]) <= now:
                count, expires = amount, now + expiry_ms
            else:
                count, expires = int(row[0]) + amount, int(row[1])
                if count > INT64_MAX:
                    raise CountOverflowError(
                        f"sqlite: {self.path}: window {name!r}[{key!r}] would leave int64", []
                    )
            conn.execute(
                "INSERT INTO windows(name, key, count, expires_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name, key) DO UPDATE SET count = excluded.count, "
                "expires_ms = excluded.expires_ms",
                (name, key, count, expires),
            )
            return count, expires / 1000

        out: tuple[int, float] = self._write(body)
        return out

    def window_get(self, name: str, key: str) -> tuple[int, float]:
        def body(conn: sqlite3.Connection) -> tuple[int, float]:
            now = time.time_ns() // 1_000_000
            try:
                row = conn.execute(
                    "SELECT count, expires_ms FROM windows WHERE name = ? AND key = ?",
                    (name, key),
                ).fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                row = None
            if row is None or int(row[1]) <= now:
                return 0, now / 1000
            return int(row[0]), int(row[1]) / 1000

        out: tuple[int, float] = self._read_tx(body)
        return out

    def window_clear(self, name: str, key: str) -> None:
        def body(conn: sqlite3.Connection) -> None:
            for stmt in LIMIT_TABLES:
                conn.execute(stmt)
            conn.execute("DELETE FROM windows WHERE name = ? AND key = ?", (name, key))

        self._write(body)

    def close(self) -> None:
        with self._wlock:
            self._drop_writer()


def _row_lists(name: str, ks: list[str], ds: list[int], full: int) -> Iterator[list[object]]:
    """The parameters of ``_ADD_KEYS`` for the first ``full`` keys (a
    multiple of ``ROWS``): ``[name, key1, delta1, ...]`` a statement."""
    for start in range(0, full, ROWS):
        params: list[object] = [name] * (2 * ROWS + 1)
        params[1::2] = ks[start : start + ROWS]
        params[2::2] = ds[start : start + ROWS]
        yield params


def _spec(kind: Any, window_ns: Any, res_ns: Any) -> RateSpec:
    return RateSpec("keyed_rate" if kind == "keyed_rate" else "rate", int(window_ns), int(res_ns))


def _rate_row(conn: sqlite3.Connection, name: str) -> RateSpec | None:
    """The spec of rate ``name`` (None: not a rate, or no rates table yet)."""
    try:
        row = conn.execute(
            "SELECT kind, window_ns, res_ns FROM rates WHERE name = ?", (name,)
        ).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return None if row is None else _spec(*row)


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _transient(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return _busy(exc) or "unable to open" in text or "readonly" in text or "disk" in text


# ---- the store ---------------------------------------------------------------------


@dataclass(frozen=True)
class SqliteOptions:
    """What a ``sqlite://`` URL says: the file (the same file however the URL
    spells its path) and the connection options."""

    path: str = field(compare=False)
    real: str
    timeout: float
    synchronous: str
    migrate: bool = field(default=False, compare=False)


class SqliteStore(WriteBehindStore):
    """Durable counters in an SQLite file: see the module docstring."""

    scheme: ClassVar[str] = "sqlite"
    PARAMS = (
        FLUSH,
        seconds("timeout", DEFAULT_TIMEOUT, 0, 86400),
        choice("synchronous", "NORMAL", ("NORMAL", "FULL")),
        choice("migrate", "0", ("0", "1")),
    )

    @classmethod
    def backend_options(cls, url: StoreURL, values: dict[str, Any]) -> SqliteOptions:
        path = sqlite_path(url)
        return SqliteOptions(
            path,
            os.path.realpath(path),
            values["timeout"],
            values["synchronous"],
            values["migrate"] == "1",
        )

    @classmethod
    def connect(
        cls, url: StoreURL, options: SqliteOptions, create: bool, first: bool
    ) -> SqliteBackend:
        return SqliteBackend(
            options.path,
            create=create,
            timeout=options.timeout,
            synchronous=options.synchronous,
            migrate=options.migrate,
        )

    @classmethod
    def destroy_url(cls, url: StoreURL) -> bool:
        path = sqlite_path(url)
        found = False
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(path + suffix)
            except FileNotFoundError:
                continue
            found = found or suffix == ""
        return found

    @property
    def path(self) -> str:
        path: str = self._options.path  # type: ignore[attr-defined]
        return path


STORE = SqliteStore
