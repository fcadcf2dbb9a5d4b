"""The ``postgresql://`` backend: the write-behind's :class:`Backend` over psycopg 3.

Imported only when a ``postgresql://`` store is opened (it needs psycopg);
``postgresql.py`` has the design, the schema and the measurements behind
them.  Everything that writes is one SQL statement in autocommit mode where
it can be (a flush, a fence): PostgreSQL then commits right after the last
row, and no row lock is held across a round trip to this process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
import weakref
from collections.abc import Callable, Collection
from functools import partial
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg import errors as pge
from psycopg import sql

from . import _signals
from ._limiter import SlotSQL, SqlSlots, acquire
from ._protocol import INT64_MAX, INT64_MIN, PRUNE_AFTER, Batch, Kind, Query, Read, Target
from ._protocol import Grant as _Grant
from ._protocol import LimitSpec as _LimitSpec
from ._protocol import RateSpec as _RateSpec
from ._wbrates import bucket_rows, overflow, prune_below, total_rows
from .base import (
    CorruptStoreError,
    CountOverflowError,
    KindClashError,
    StoreError,
    StoreNotFoundError,
    StoreUnavailableError,
    flush_overflow,
    schema_version,
)

__all__ = ["MAGIC", "SCHEMA_VERSION", "TABLES", "PostgresBackend", "schema_sql"]

log = logging.getLogger("tallies.stores")

MAGIC = "tallies"
SCHEMA_VERSION = 2
TABLES_V1 = (
    "tallies_meta",
    "names",
    "counter_stripes",
    "keyed_stripes",
    "writers",
    "counters",
    "keyed",
)
TABLES = (
    *TABLES_V1,
    "rates",
    "rate_total_stripes",
    "rate_bucket_stripes",
    "rate_totals",
    "rate_buckets",
    "limiters",
    "limiter_slots",
    "windows",
)
VIEWS = ("counters", "keyed", "rate_totals", "rate_buckets")

CHUNK = 10_000
"""Rows per statement: a flush of more is a transaction of such statements
(each one within ``statement_timeout``); of fewer, one statement."""

PRUNE_EVERY = 60.0
"""Seconds between two prunes of the writers table by one process."""

_T = TypeVar("_T")


STRIPES = 32
"""Rows per count: stripe 0 (the base) and 31 writer stripes."""
CAP = 2**57
"""A writer stripe holds a value in [-CAP, CAP]; the base holds the rest."""
BASE_MIN = INT64_MIN + (STRIPES - 1) * CAP
BASE_MAX = INT64_MAX - (STRIPES - 1) * CAP


def _stripe_check() -> sql.Composed:
    """A stripe's range: the base (stripe 0) holds what the others cannot."""
    return sql.SQL(
        "CHECK (stripe BETWEEN 0 AND {last}), CHECK (CASE WHEN stripe = 0"
        " THEN value BETWEEN {blo} AND {bhi} ELSE value BETWEEN {lo} AND {hi} END)"
    ).format(
        last=sql.Literal(STRIPES - 1),
        blo=sql.Literal(BASE_MIN),
        bhi=sql.Literal(BASE_MAX),
        lo=sql.Literal(-CAP),
        hi=sql.Literal(CAP),
    )


def schema_sql(schema: str) -> list[sql.Composed]:
    """The statements that create schema version SCHEMA_VERSION
    (``postgresql.py`` documents it): version 1, then every migration."""
    out = _v1_sql(schema)
    for version in range(2, SCHEMA_VERSION + 1):
        out += migration_sql(schema, version)
    return out


def _v1_sql(schema: str) -> list[sql.Composed]:
    s = sql.Identifier(schema)
    check = _stripe_check()
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s),
        sql.SQL("CREATE TABLE {}.tallies_meta (key text PRIMARY KEY, value text NOT NULL)").format(
            s
        ),
        sql.SQL(
            'CREATE TABLE {}.names (name text COLLATE "C" PRIMARY KEY, kind text NOT NULL'
            " CHECK (kind IN ('counter', 'keyed')))"
        ).format(s),
        sql.SQL(
            'CREATE TABLE {}.counter_stripes (name text COLLATE "C" NOT NULL,'
            " stripe smallint NOT NULL, value bigint NOT NULL, PRIMARY KEY (name, stripe), {})"
            " WITH (fillfactor = 50)"
        ).format(s, check),
        sql.SQL(
            'CREATE TABLE {}.keyed_stripes (name text COLLATE "C" NOT NULL,'
            ' key text COLLATE "C" NOT NULL, stripe smallint NOT NULL, value bigint NOT NULL,'
            " PRIMARY KEY (name, key, stripe), {}) WITH (fillfactor = 50)"
        ).format(s, check),
        sql.SQL(
            "CREATE TABLE {}.writers (writer_id text PRIMARY KEY, seq bigint NOT NULL,"
            " seen timestamptz NOT NULL)"
        ).format(s),
        sql.SQL(
            "CREATE VIEW {0}.counters AS SELECT name, sum(value)::bigint AS value"
            " FROM {0}.counter_stripes GROUP BY name"
        ).format(s),
        sql.SQL(
            "CREATE VIEW {0}.keyed AS SELECT name, key, sum(value)::bigint AS value"
            " FROM {0}.keyed_stripes GROUP BY name, key"
        ).format(s),
        sql.SQL(
            "INSERT INTO {}.tallies_meta (key, value) VALUES ('magic', {}), ('schema', {})"
        ).format(s, sql.Literal(MAGIC), sql.Literal("1")),
    ]


def migration_sql(schema: str, version: int) -> list[sql.Composed]:
    """The statements that bring schema version ``version - 1`` to ``version``.

    2: rates and limiters.  A rate is registered in ``names`` too (kind
    'rate' or 'keyed_rate': one name, one kind) with its spec in ``rates``;
    its total and bucket counts are striped as counters are (the same
    ranges: a sum of stripes never leaves int64), summed by the views
    ``rate_totals`` and ``rate_buckets``.  Limiters: their spec, one row per
    key and slot of reserved units, and the fixed windows of ``limits``."""
    assert version == 2, version
    s = sql.Identifier(schema)
    check = _stripe_check()
    c = 'text COLLATE "C" NOT NULL'
    return [
        sql.SQL(
            "ALTER TABLE {}.names DROP CONSTRAINT IF EXISTS names_kind_check,"
            " ADD CONSTRAINT names_kind_check"
            " CHECK (kind IN ('counter', 'keyed', 'rate', 'keyed_rate'))"
        ).format(s),
        sql.SQL(
            'CREATE TABLE {}.rates (name text COLLATE "C" PRIMARY KEY, kind text NOT NULL'
            " CHECK (kind IN ('rate', 'keyed_rate')), window_ns bigint NOT NULL,"
            " res_ns bigint NOT NULL)"
        ).format(s),
        sql.SQL(
            "CREATE TABLE {}.rate_total_stripes (name {c}, stripe smallint NOT NULL,"
            " value bigint NOT NULL, PRIMARY KEY (name, stripe), {ck}) WITH (fillfactor = 50)"
        ).format(s, c=sql.SQL(c), ck=check),
        sql.SQL(
            "CREATE TABLE {}.rate_bucket_stripes (name {c}, slot bigint NOT NULL, key {c},"
            " stripe smallint NOT NULL, value bigint NOT NULL,"
            " PRIMARY KEY (name, slot, key, stripe), {ck}) WITH (fillfactor = 50)"
        ).format(s, c=sql.SQL(c), ck=check),
        sql.SQL(
            "CREATE VIEW {0}.rate_totals AS SELECT name, sum(value)::bigint AS total"
            " FROM {0}.rate_total_stripes GROUP BY name"
        ).format(s),
        sql.SQL(
            "CREATE VIEW {0}.rate_buckets AS SELECT name, slot, key, sum(value)::bigint AS value"
            " FROM {0}.rate_bucket_stripes GROUP BY name, slot, key"
        ).format(s),
        sql.SQL(
            'CREATE TABLE {}.limiters (name text COLLATE "C" PRIMARY KEY, lim bigint NOT NULL,'
            " per_ns bigint NOT NULL, res_ns bigint NOT NULL, buckets bigint NOT NULL)"
        ).format(s),
        sql.SQL(
            "CREATE TABLE {}.limiter_slots (name {c}, key {c}, slot bigint NOT NULL,"
            " units bigint NOT NULL, expires_ns bigint NOT NULL, PRIMARY KEY (name, key, slot))"
        ).format(s, c=sql.SQL(c)),
        sql.SQL("CREATE INDEX ON {}.limiter_slots (expires_ns)").format(s),
        sql.SQL(
            "CREATE TABLE {}.windows (name {c}, key {c}, count bigint NOT NULL,"
            " expires_ms bigint NOT NULL, PRIMARY KEY (name, key))"
        ).format(s, c=sql.SQL(c)),
        sql.SQL("CREATE INDEX ON {}.windows (expires_ms)").format(s),
        sql.SQL("UPDATE {}.tallies_meta SET value = {} WHERE key = 'schema'").format(
            s, sql.Literal(str(version))
        ),
    ]


def spread(total: int) -> list[int]:
    """``total`` (in int64) as STRIPES values that each respect their stripe's range."""
    base = min(max(total, BASE_MIN), BASE_MAX)
    out = [base]
    rest = total - base
    for _ in range(STRIPES - 1):
        v = min(max(rest, -CAP), CAP)
        out.append(v)
        rest -= v
    assert rest == 0
    return out


# ---- timeouts: a reply that never comes -------------------------------------------


class _Watchdog:
    """Shuts down a connection's socket when a call outlives its deadline.

    psycopg has no client-side timeout for a query, and ``statement_timeout``
    only helps while the server can still answer: a reply lost on the way
    (a dead link, a proxy that swallowed it) would block a flush forever.
    ``shutdown()`` makes the blocked read return at once; psycopg then raises
    OperationalError and the connection is dropped (the outcome is unknown:
    the write-behind retries the same batch, which the writers table makes
    safe).  One thread per process, started on first use."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, int]] = {}  # token -> (deadline, fd)
        self._fired: set[int] = set()
        self._next = 0
        self._pid = 0

    def arm(self, fd: int, seconds: float) -> int:
        with self._cond:
            if self._pid != os.getpid():  # first use, or a forked child
                self._pid = os.getpid()
                self._armed.clear()
                self._fired.clear()
                _signals.start_without_signals(  # SIGTERM/SIGINT go to the main thread
                    threading.Thread(target=self._run, name="tallies-pg-watchdog", daemon=True)
                )
            self._next += 1
            self._armed[self._next] = (time.monotonic() + seconds, fd)
            self._cond.notify()
            return self._next

    def kick(self, token: int, seconds: float) -> None:
        """Move a deadline: a long transaction's next statement gets its own."""
        with self._cond:
            armed = self._armed.get(token)
            if armed is not None:
                self._armed[token] = (time.monotonic() + seconds, armed[1])

    def disarm(self, token: int) -> bool:
        """False if the deadline passed and the socket was shut down."""
        with self._cond:
            self._armed.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return False
            return True

    def _run(self) -> None:
        _signals.keep_signals_off_this_thread()
        pid = os.getpid()
        with self._cond:
            while self._pid == pid:
                now = time.monotonic()
                due = [t for t, (d, _) in self._armed.items() if d <= now]
                for t in due:
                    _, fd = self._armed.pop(t)
                    self._fired.add(t)
                    _shutdown(fd)
                wait = min((d for d, _ in self._armed.values()), default=now + 60) - now
                self._cond.wait(max(wait, 0.001))


def _shutdown(fd: int) -> None:
    with contextlib.suppress(OSError):
        s = socket.socket(fileno=os.dup(fd))
        try:
            s.shutdown(socket.SHUT_RDWR)
        finally:
            s.close()


_watchdog = _Watchdog()

# Connections of every backend in this process, to detach in a forked child.
_backends: weakref.WeakSet[PostgresBackend] = weakref.WeakSet()


def _detach_inherited() -> None:
    """In a forked child: the parent's connections must never be closed
    normally here (libpq would send the server a Terminate message on the
    socket the parent still uses).  Each socket is replaced by /dev/null in
    this process only, and the connection is freed against it."""
    for b in list(_backends):
        for conn in b._all_connections():
            with contextlib.suppress(Exception):
                fd = conn.pgconn.socket
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, fd)
                finally:
                    os.close(null)
                conn.close()
        b._w = b._r = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_detach_inherited)


# ---- the backend -------------------------------------------------------------------


class _Overflow(Exception):
    """The fast UPSERT met ``bigint out of range``: redo with exact arithmetic."""


class PostgresBackend:
    """One writer connection (flushes, under a lock) and one reader connection
    (reads, under another), both autocommit; thread-safe."""

    def __init__(
        self, conninfo: dict[str, Any], schema: str, timeout: float, shown: str, *, create: bool
    ) -> None:
        self.conninfo = conninfo  # psycopg.connect() keywords
        self.schema = schema
        self.timeout = timeout
        self.shown = shown  # the redacted URL: every message shows this
        self.create = create
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._w: psycopg.Connection[Any] | None = None
        self._r: psycopg.Connection[Any] | None = None
        self._pid = os.getpid()
        self._pruned = 0.0
        # writer id -> highest seq acknowledged through this backend: a read
        # reports at least that (the writers row of a writer idle for
        # PRUNE_AFTER may have been pruned by another writer)
        self._acked: dict[str, int] = {}
        self._stmts = _Statements(schema)
        self._rates_sql = _RateStatements(schema)
        self._limit_sql = _LimitStatements(schema)
        self._stripe = 1  # set by _claim_stripe() on every writer connection
        self._token = 0  # the watchdog's token of the writer's call in progress
        self._version = SCHEMA_VERSION  # of the schema, read by _check()
        self._limits_pruned = 0.0
        self._stays_old = False  # the schema could not be migrated (said once)
        _backends.add(self)

    # -- connections ---------------------------------------------------------------

    def _all_connections(self) -> list[psycopg.Connection[Any]]:
        return [c for c in (self._w, self._r) if c is not None]

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn: psycopg.Connection[Any] = psycopg.connect(autocommit=True, **self.conninfo)
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"{self.shown}: cannot connect to PostgreSQL: {_first_line(exc)}"
            ) from exc
        try:
            self._validate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def open(self) -> None:
        """Connect the writer now (at ``open()``: a bad URL, password or schema fails there)."""
        with self._wlock:
            if self._w is None:
                conn = self._connect()
                self._claim_stripe(conn)
                self._w = conn

    def _claim_stripe(self, conn: psycopg.Connection[Any]) -> None:
        """Pick the writer stripe this connection adds to: one that no other
        open connection holds (a session advisory lock, released when the
        connection ends), else any (two writers then share its rows)."""
        order = list(range(1, STRIPES))
        random.shuffle(order)
        for stripe in order:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s), %s)",
                ("tallies stripes " + self.schema, stripe),
            ).fetchone()
            if row is not None and row[0]:
                self._stripe = stripe
                return
        self._stripe = order[0]

    def _tables(self, conn: psycopg.Connection[Any]) -> set[str]:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = ANY(%s)",
            (self.schema, list(TABLES)),
        ).fetchall()
        return {str(r[0]) for r in rows}

    def _check(self, conn: psycopg.Connection[Any]) -> bool:
        """True if the schema holds a valid tallies schema; False if it holds
        none of our tables; CorruptStoreError for anything else."""
        tables = self._tables(conn)
        where = f"{self.shown}: schema {self.schema!r}"
        if not tables:
            return False
        if "tallies_meta" not in tables:
            raise CorruptStoreError(
                f"{where} has tables named {', '.join(sorted(tables))} but no tallies_meta: "
                "not a tallies schema; refusing to touch it (choose another with ?schema=)"
            )
        meta = dict(conn.execute(self._stmts.meta).fetchall())
        version = schema_version(
            meta, where, magic=MAGIC, newest=SCHEMA_VERSION, error=CorruptStoreError
        )
        # the tables again, after the version: a migration that committed
        # between the two reads above made both the version and its tables
        missing = set(TABLES_V1 if version == 1 else TABLES) - self._tables(conn)
        if version < 1 or missing:
            raise CorruptStoreError(
                f"{where} (version {version}) is missing table(s) {', '.join(sorted(missing))}"
                " (dropped?); restore them or destroy the store"
            )
        self._version = version
        return True

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Bring an older schema to this version, under the schema's advisory
        lock (every process opening it may try at once).  A user who may not
        alter the tables keeps using the schema at its version: counters
        work, rates and limiters say why they do not (see _need_v2)."""
        try:
            with conn.transaction():
                conn.execute(self._stmts.schema_lock, ("tallies schema " + self.schema,))
                self._check(conn)  # again, under the lock
                for version in range(self._version + 1, SCHEMA_VERSION + 1):
                    for stmt in migration_sql(self.schema, version):
                        conn.execute(stmt)
        except (pge.InsufficientPrivilege, pge.ReadOnlySqlTransaction) as exc:
            if self._stays_old:
                return
            self._stays_old = True  # said once per store
            log.warning(
                "tallies: %s: schema %r stays at version %d (%s): rates and limiters need "
                "version %d, made by the first open of a user who may alter its tables",
                self.shown, self.schema, self._version, _first_line(exc), SCHEMA_VERSION,
            )  # fmt: skip
            return
        self._version = SCHEMA_VERSION

    def _need_v2(self) -> None:
        if self._version < 2:
            raise StoreUnavailableError(
                f"{self.shown}: the tallies schema {self.schema!r} is version {self._version}: "
                "rates and limiters need version 2, which tallies makes when a user who may "
                "alter its tables (its owner) opens the store"
            )

    def _validate(self, conn: psycopg.Connection[Any]) -> None:
        try:
            if self._check(conn):
                if self._version < SCHEMA_VERSION:
                    self._migrate(conn)
                return
            if not self.create:
                raise StoreNotFoundError(f"{self.shown}: no tallies schema {self.schema!r}")
            # Create it under an advisory lock: 16 processes opening a new
            # store at once must not race on CREATE SCHEMA / CREATE TABLE.
            with conn.transaction():
                conn.execute(self._stmts.schema_lock, ("tallies schema " + self.schema,))
                if self._check(conn):
                    return
                for stmt in schema_sql(self.schema):
                    conn.execute(stmt)
            self._version = SCHEMA_VERSION
        except StoreError:
            raise
        except psycopg.Error as exc:
            if isinstance(exc, pge.InsufficientPrivilege):
                raise StoreUnavailableError(
                    f"{self.shown}: cannot create the tallies schema {self.schema!r}: "
                    f"{_first_line(exc)} (create it as its owner, or grant CREATE)"
                ) from exc
            raise StoreUnavailableError(f"{self.shown}: {_first_line(exc)}") from exc

    def _drop(self, which: str) -> None:
        conn = self._w if which == "w" else self._r
        if which == "w":
            self._w = None
        else:
            self._r = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _conn(self, which: str) -> psycopg.Connection[Any]:
        """The writer ("w") or reader ("r") connection, connected if needed
        (the caller holds its lock)."""
        conn = self._w if which == "w" else self._r
        if conn is None or conn.closed or conn.broken:
            self._drop(which)
            conn = self._connect()
            if which == "w":
                self._claim_stripe(conn)
                self._w = conn
            else:
                self._r = conn
        return conn

    def _call(
        self,
        which: str,
        body: Callable[[psycopg.Connection[Any]], _T],
        what: str,
        *,
        retry: bool = False,
    ) -> _T:
        """Run body(conn) on the writer ("w") or reader ("r") connection,
        under its lock and the watchdog's deadline.  Errors become store
        errors; a connection that failed is dropped (the next call
        reconnects and checks the schema again).  With ``retry`` (bodies
        that may run twice: reads, and writes made idempotent by the
        writer's sequence number) a lost connection or reply is retried
        once on a new connection."""
        lock = self._wlock if which == "w" else self._rlock
        with lock:
            if os.getpid() != self._pid:
                raise StoreError(f"{self.shown}: a connection inherited across fork is not used")
            for attempt in (1, 2):
                conn = self._conn(which)
                token = _watchdog.arm(conn.pgconn.socket, self.timeout + 1.0)
                if which == "w":
                    self._token = token
                try:
                    out = body(conn)
                except (CountOverflowError, KindClashError, _Overflow):
                    _watchdog.disarm(token)
                    raise
                except psycopg.Error as exc:
                    answered = _watchdog.disarm(token)  # before the socket is closed
                    self._drop(which)
                    lost = not answered or isinstance(exc, psycopg.OperationalError)
                    if retry and attempt == 1 and lost:
                        log.debug("tallies: %s: %s: retrying once: %s", self.shown, what, exc)
                        continue
                    if not answered:
                        raise StoreUnavailableError(
                            f"{self.shown}: {what}: no reply from PostgreSQL within "
                            f"{self.timeout + 1.0:g} s (outcome unknown; "
                            "the same batch is sent again, and applied once)"
                        ) from exc
                    raise self._error(what, exc) from exc
                except BaseException:
                    _watchdog.disarm(token)
                    self._drop(which)
                    raise
                _watchdog.disarm(token)
                return out
            raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, what: str, exc: psycopg.Error) -> StoreError:
        msg = _first_line(exc)
        if isinstance(exc, (pge.UndefinedTable, pge.InvalidSchemaName, pge.UndefinedColumn)):
            return CorruptStoreError(
                f"{self.shown}: {what}: {msg}: the tallies schema {self.schema!r} was dropped "
                "or altered while open"
            )
        if isinstance(exc, (pge.InsufficientPrivilege, pge.ReadOnlySqlTransaction)):
            return StoreUnavailableError(
                f"{self.shown}: {what}: the user may not write here ({msg}); "
                "the deltas are kept (grant INSERT, UPDATE on the schema's tables)"
            )
        return StoreUnavailableError(f"{self.shown}: {what}: {type(exc).__name__}: {msg}")

    def close(self) -> None:
        with self._wlock:
            self._drop("w")
        with self._rlock:
            self._drop("r")

    # -- writes ------------------------------------------------------------------------

    def apply(self, writer_id: str, batch: Batch) -> None:
        counters = sorted((n, int(d)) for n, d in batch.counters.items())
        for name, kind in batch.names.items():
            if kind == "counter" and name not in batch.counters:
                counters.append((name, 0))  # a new counter is listed at 0
        counters.sort()
        keyed = sorted((n, k, int(d)) for n, m in batch.keyed.items() for k, d in m.items())
        exact = _beyond_int64(batch.counters.values()) or any(
            _beyond_int64(m.values()) for m in batch.keyed.values()
        )
        rows = _FlushRows(writer_id, batch.seq, sorted(batch.names.items()), counters, keyed,
                          _RateRows.of(batch))  # fmt: skip
        what = f"flush of batch {batch.seq}"
        everything = False  # lock every count of the batch (after a race at an edge)
        for _attempt in range(5):
            try:
                if not exact:
                    try:
                        self._call("w", partial(self._apply_fast, rows=rows), what, retry=True)
                        break
                    except _Overflow:
                        exact = True
                try:
                    self._call("w", partial(self._apply_exact, rows=rows, everything=everything),
                               what, retry=True)  # fmt: skip
                    break
                except _Overflow:
                    everything = True
            except StoreUnavailableError as exc:
                # a deadlock or serialization failure was rolled back for sure: again
                if not isinstance(exc.__cause__, (pge.DeadlockDetected, pge.SerializationFailure)):
                    raise
        else:
            raise StoreUnavailableError(
                f"{self.shown}: {what}: rolled back 5 times by concurrent flushes; will retry"
            )
        self._ack(writer_id, batch.seq)
        now = time.monotonic()
        if now - self._pruned > PRUNE_EVERY:
            self._pruned = now
            with contextlib.suppress(StoreError):
                self._call("w", lambda c: c.execute(self._stmts.prune, (PRUNE_AFTER,)), "prune")

    def _register(self, conn: psycopg.Connection[Any], names: list[tuple[str, Kind]]) -> None:
        """Register new names (in the caller's transaction); KindClashError
        (the caller rolls back) for a name registered with the other kind."""
        conn.execute(self._stmts.register, ([n for n, _ in names], [k for _, k in names]))
        rows = conn.execute(self._stmts.kinds, ([n for n, _ in names],)).fetchall()
        have = {str(n): str(k) for n, k in rows}
        clash: list[tuple[str, str | None]] = [(n, None) for n, k in names if have.get(n) != k]
        if clash:
            raise KindClashError(
                f"{self.shown}: {', '.join(repr(n) for n, _ in clash)} registered "
                "with the other kind",
                clash,
            )

    def _add(
        self,
        conn: psycopg.Connection[Any],
        counters: list[tuple[str, int]],
        keyed: list[tuple[str, str, int]],
    ) -> None:
        """Add deltas to this writer's stripe, in the global lock order,
        inside the caller's transaction: up to CHUNK rows as statements with
        array parameters; more through COPY into a temporary table and one
        statement from it (``statement_timeout`` raised for this
        transaction in proportion: the rows are this writer's own)."""
        st = self._stmts
        if len(counters) + len(keyed) <= CHUNK:
            if counters:
                conn.execute(
                    st.add_counters, (self._stripe, [n for n, _ in counters],
                                      [d for _, d in counters])
                )  # fmt: skip
            if keyed:
                conn.execute(
                    st.add_keyed,
                    (self._stripe, [n for n, _, _ in keyed], [k for _, k, _ in keyed],
                     [d for *_, d in keyed]),
                )  # fmt: skip
            return
        rows = len(counters) + len(keyed)
        budget = self.timeout * (1 + rows // CHUNK)
        conn.execute(f"SET LOCAL statement_timeout = {int(budget * 1000)}")
        # the join and the sorts in memory, not in temporary files
        conn.execute(f"SET LOCAL work_mem = '{min(max(4, rows // 5000), 1024)}MB'")
        # no JIT: compiling these statements costs more than it saves (and the
        # costs of the plans that merge_plan rules out would make it optimise)
        conn.execute("SET LOCAL jit = off")
        conn.execute(st.temp_tables)
        for big, part in ((counters, st.counters_in), (keyed, st.keyed_in)):
            if big:
                self._merge(conn, big, part, budget)

    def _merge(
        self,
        conn: psycopg.Connection[Any],
        rows: list[tuple[str, int]] | list[tuple[str, str, int]],
        part: _BigMerge,
        budget: float,
    ) -> None:
        """A big batch into one stripe table: binary COPY into a temporary
        table, then the rows that exist are added to in the global lock
        order, and the rest inserted by a plain INSERT: no speculative
        insertion per new row (half the server's work for them).  A row
        another writer of this stripe inserted meanwhile makes that INSERT
        fail: then (after a savepoint) the rest go through ``ON CONFLICT DO
        UPDATE``.  A row this transaction wrote has its ``xmin``: that is how
        the INSERT skips the rows added to.  When most of the first 1,000
        rows are stored already, they are added to by one UPDATE joining the
        sorted batch to the stripe's index range by a merge join
        (``merge_plan``): it walks both in order, so it updates in the lock
        order, without ``ON CONFLICT``'s index probe and tuple lock per row
        (half the server's CPU for 10^6 stored rows).  Otherwise (mostly new
        rows) a probe per row finds the few stored ones, cheaper than
        sorting the batch for the join."""
        with conn.cursor().copy(part.copy) as copy:
            copy.set_types(part.types)
            for row in rows:
                copy.write_row(row)
        conn.execute(part.analyze)
        _watchdog.kick(self._token, budget + 1.0)
        both = (self._stripe, self._stripe)
        stored = conn.execute(part.sample, (self._stripe,)).fetchone()
        if stored is not None and 2 * int(stored[0]) > int(stored[1]):  # mostly stored rows
            conn.execute(self._stmts.merge_plan)
            # the rows are sorted: the first and last name bound the index range
            added = conn.execute(part.update, (self._stripe, rows[0][0], rows[-1][0])).rowcount
            conn.execute(self._stmts.plan_as_before)
        else:
            added = conn.execute(part.upsert_stored, both).rowcount
        if added == len(rows):
            return  # every row was stored already
        _watchdog.kick(self._token, budget + 1.0)
        try:
            with conn.transaction():
                conn.execute(part.insert, both)
        except pge.UniqueViolation:
            conn.execute(part.upsert, both)
        _watchdog.kick(self._token, budget + 1.0)

    def _begin(self, conn: psycopg.Connection[Any], rows: _FlushRows) -> bool:
        """In the caller's transaction: register the batch's new names and
        record its sequence number; False if it was applied already (a lost
        reply: the writer is marked seen, nothing else is done)."""
        if rows.names:
            self._register(conn, rows.names)
        if conn.execute(self._stmts.record, (rows.writer_id, rows.seq)).fetchone() is None:
            conn.execute(self._stmts.seen, (rows.writer_id,))  # applied already
            return False
        return True

    def _apply_fast(self, conn: psycopg.Connection[Any], rows: _FlushRows) -> None:
        counters, keyed = rows.counters, rows.keyed
        try:
            if not rows.names and rows.rates is None and len(counters) + len(keyed) <= CHUNK:
                # the usual flush: ONE statement, committed as it ends
                row = conn.execute(
                    self._stmts.apply,
                    {
                        "w": rows.writer_id,
                        "seq": rows.seq,
                        "st": self._stripe,
                        "cn": [n for n, _ in counters],
                        "cd": [d for _, d in counters],
                        "kn": [n for n, _, _ in keyed],
                        "kk": [k for _, k, _ in keyed],
                        "kd": [d for *_, d in keyed],
                    },
                ).fetchone()
                if row is None or not row[0]:  # applied already (a lost reply)
                    conn.execute(self._stmts.seen, (rows.writer_id,))
                return
            # new names (registered in the same transaction), or a big batch
            # (statements of CHUNK rows: each within statement_timeout)
            with conn.transaction():
                if not self._begin(conn, rows):
                    return
                self._add(conn, counters, keyed)
                if rows.rates is not None:
                    self._add_rates(conn, rows.rates)
        except (pge.NumericValueOutOfRange, pge.CheckViolation) as exc:
            raise _Overflow from exc  # a stripe (or a sum) at its edge: nothing applied

    def _apply_exact(
        self, conn: psycopg.Connection[Any], rows: _FlushRows, everything: bool
    ) -> None:
        """The rare path: a stripe or a sum at its edge.  The counts near an
        edge (all of them if ``everything``) get every stripe locked (in the
        global lock order), are added in Python, refused if they leave int64
        and spread over the stripes; the others are added as usual."""
        st = self._stmts
        counters, keyed = rows.counters, rows.keyed
        with conn.transaction():
            if not self._begin(conn, rows):
                return
            if everything:
                edge_c, edge_k = counters, keyed
            else:
                edge_c, edge_k = self._near_edge(conn, counters, keyed)
            cn = [n for n, _ in edge_c]
            conn.execute(st.touch_counters, (cn,))
            have_c: dict[str, int] = {}
            for name, v in conn.execute(st.lock_counters, (cn,)).fetchall():
                have_c[str(name)] = have_c.get(str(name), 0) + int(v)
            kn = [n for n, _, _ in edge_k]
            kk = [k for _, k, _ in edge_k]
            conn.execute(st.touch_keyed, (kn, kk))
            have_k: dict[tuple[str, str], int] = {}
            for name, key, v in conn.execute(st.lock_keyed, (kn, kk)).fetchall():
                have_k[(str(name), str(key))] = have_k.get((str(name), str(key)), 0) + int(v)
            bad: list[tuple[str, str | None]] = []
            new_c: list[tuple[str, int]] = []
            for name, d in edge_c:
                v = have_c.get(name, 0) + d
                if INT64_MIN <= v <= INT64_MAX:
                    new_c.append((name, v))
                else:
                    bad.append((name, None))
            new_k: list[tuple[str, str, int]] = []
            for name, key, d in edge_k:
                v = have_k.get((name, key), 0) + d
                if INT64_MIN <= v <= INT64_MAX:
                    new_k.append((name, key, v))
                else:
                    bad.append((name, key))
            if bad:
                raise flush_overflow(self.shown, bad, "nothing of this flush was applied")
            rows_c = [(n, i, v) for n, total in new_c for i, v in enumerate(spread(total))]
            if rows_c:
                conn.execute(st.set_counters, [list(col) for col in zip(*rows_c, strict=True)])
            rows_k = [(n, k, i, v) for n, k, total in new_k for i, v in enumerate(spread(total))]
            if rows_k:
                conn.execute(st.set_keyed, [list(col) for col in zip(*rows_k, strict=True)])
            if not everything:
                done_c = {n for n, _ in edge_c}
                done_k = {(n, k) for n, k, _ in edge_k}
                try:
                    self._add(
                        conn,
                        [(n, d) for n, d in counters if n not in done_c],
                        [(n, k, d) for n, k, d in keyed if (n, k) not in done_k],
                    )
                except (pge.NumericValueOutOfRange, pge.CheckViolation) as exc:
                    raise _Overflow from exc  # moved to the edge meanwhile: lock them all
            if rows.rates is not None:
                self._set_rates(conn, rows.rates)

    def _near_edge(
        self,
        conn: psycopg.Connection[Any],
        counters: list[tuple[str, int]],
        keyed: list[tuple[str, str, int]],
    ) -> tuple[list[tuple[str, int]], list[tuple[str, str, int]]]:
        """The deltas whose own stripe would leave its range, or whose sum
        is within 2**62 of an edge (read without locks: a count that moves
        there meanwhile makes the usual add fail, and the caller then locks
        every count of the batch)."""
        st = self._stmts
        own: dict[tuple[str, str | None], int] = {}
        total: dict[tuple[str, str | None], int] = {}
        for name, stripe, v in conn.execute(
            st.peek_counters, ([n for n, _ in counters],)
        ).fetchall():
            key: tuple[str, str | None] = (str(name), None)
            total[key] = total.get(key, 0) + int(v)
            if stripe == self._stripe:
                own[key] = int(v)
        for name, k, stripe, v in conn.execute(
            st.peek_keyed, ([n for n, _, _ in keyed], [k for _, k, _ in keyed])
        ).fetchall():
            key = (str(name), str(k))
            total[key] = total.get(key, 0) + int(v)
            if stripe == self._stripe:
                own[key] = int(v)

        def edge(key: tuple[str, str | None], d: int) -> bool:
            return abs(own.get(key, 0) + d) > CAP or abs(total.get(key, 0)) + abs(d) >= 2**62

        return (
            [(n, d) for n, d in counters if edge((n, None), d)],
            [(n, k, d) for n, k, d in keyed if edge((n, k), d)],
        )

    def _ack(self, writer_id: str, seq: int) -> None:
        with self._wlock:
            if seq > self._acked.get(writer_id, 0):
                self._acked[writer_id] = seq

    def take(self, writer_id: str, seq: int, target: Target) -> int | dict[str, int]:
        st = self._stmts

        def body(conn: psycopg.Connection[Any]) -> int | dict[str, int]:
            with conn.transaction():
                if conn.execute(st.record, (writer_id, seq)).fetchone() is None:
                    raise StoreError(
                        f"{self.shown}: reset sequence {seq} of {writer_id} already used"
                    )
                if target.kind == "rate":
                    return self._take_rate(conn, target.name)
                if target.kind == "counter":
                    row = conn.execute(st.take_counter, (target.name,)).fetchone()
                    return int(row[0]) if row is not None and row[0] is not None else 0
                if target.key is None:
                    rows = conn.execute(st.take_keyed, (target.name,)).fetchall()
                    return {str(k): int(v) for k, v in rows}
                row = conn.execute(st.take_key, (target.name, target.key)).fetchone()
                return int(row[0]) if row is not None and row[0] is not None else 0

        out = self._call("w", body, f"reset of {target.name!r}")
        self._ack(writer_id, seq)
        return out

    def fence(self, writer_id: str, seq: int) -> bool:
        def body(conn: psycopg.Connection[Any]) -> bool:
            return conn.execute(self._stmts.record, (writer_id, seq)).fetchone() is None

        applied = self._call("w", body, f"settling batch {seq}", retry=True)
        self._ack(writer_id, seq)
        return applied

    # -- reads -------------------------------------------------------------------------

    def read(self, writer_id: str, query: Query) -> Read:
        # a batch acknowledged before this statement is in its snapshot even
        # when the writers row is gone (pruned while idle)
        acked = self._acked.get(writer_id, 0)
        stmt, params = self._stmts.read(writer_id, query)

        def body(conn: psycopg.Connection[Any]) -> Read:
            if not query.rates:
                return counts(conn)
            # the rates' buckets and the writer's seq from one snapshot
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                r = counts(conn)
                self._read_rates(conn, query, r)
            return r

        def counts(conn: psycopg.Connection[Any]) -> Read:
            r = Read(acked)
            for part, name, key, value in conn.execute(stmt, params).fetchall():
                if part == 0:
                    r.seq = max(acked, int(value))
                elif part == 1:
                    r.counters[str(name)] = int(value)
                elif part == 2:
                    r.keyed.setdefault(str(name), {})
                else:
                    r.keyed.setdefault(str(name), {})[str(key)] = int(value)
            if query.counters is not None:
                for name in query.counters:
                    r.counters.setdefault(name, 0)
            if query.keyed is not None:
                for name in query.keyed:
                    r.keyed.setdefault(name, {})
            for name, key in query.keys:
                r.keyed.setdefault(name, {}).setdefault(key, 0)
            return r

        return self._call("r", body, "read", retry=True)

    def names(self) -> list[tuple[str, Kind]]:
        def body(conn: psycopg.Connection[Any]) -> list[tuple[str, Kind]]:
            rows = conn.execute(self._stmts.names).fetchall()
            return [(str(n), "keyed" if k == "keyed" else "counter") for n, k in rows]

        return self._call("r", body, "names", retry=True)

    def kind_of(self, name: str) -> Kind | None:
        def body(conn: psycopg.Connection[Any]) -> Kind | None:
            row = conn.execute(self._stmts.kind_of, (name,)).fetchone()
            if row is None:
                return None
            return "keyed" if row[0] == "keyed" else "counter"

        return self._call("r", body, "read", retry=True)

    def exists(self) -> bool:
        """Whether the schema holds a tallies store (checked on the reader)."""
        return self._call("r", lambda conn: self._check(conn), "read", retry=True)

    def drop(self) -> bool:
        """Drop the store's tables (and the schema if nothing else is in it)."""

        def body(conn: psycopg.Connection[Any]) -> bool:
            if not self._check(conn):
                return False
            s = sql.Identifier(self.schema)
            with conn.transaction():
                for view in VIEWS:
                    conn.execute(
                        sql.SQL("DROP VIEW IF EXISTS {}.{}").format(s, sql.Identifier(view))
                    )
                for t in TABLES:
                    if t not in VIEWS:
                        conn.execute(
                            sql.SQL("DROP TABLE IF EXISTS {}.{}").format(s, sql.Identifier(t))
                        )
                left = conn.execute(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = %s",
                    (self.schema,),
                ).fetchone()
                if self.schema != "public" and left is not None and left[0] == 0:
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(s))
            return True

        return self._call("w", body, "destroy")

    # -- rates (tallies.stores._wbrates) ----------------------------------------------
    #
    # A rate's total and each of its buckets are striped as counters are: a
    # flush adds to its writer's stripe, in the global lock order, inside
    # the flush's transaction (so exactly once, with the seq); a stripe at
    # its edge sends the flush down the exact path, which locks every stripe
    # of the batch's buckets and totals and spreads their sums again.  So
    # writers flushing the same buckets never queue on one row (the counters'
    # reasoning, in postgresql.py).  Every flush of a rate deletes its
    # buckets older than two windows, skipping rows that another transaction
    # holds (never waiting for them: the next flush deletes them).

    def rate_specs(self) -> dict[str, _RateSpec]:
        """Every rate in the schema, by name."""
        if self._version < 2:
            return {}
        rows = self._call(
            "r", lambda c: c.execute(self._rates_sql.specs).fetchall(), "read", retry=True
        )
        return {str(n): _rate_spec(k, w, r) for n, k, w, r in rows}

    def rate_spec(self, name: str) -> _RateSpec | None:
        """The spec of rate ``name``, None when it is not a rate."""
        if self._version < 2:
            return None
        row = self._call(
            "r", lambda c: c.execute(self._rates_sql.spec, (name,)).fetchone(), "read", retry=True
        )
        return None if row is None else _rate_spec(*row)

    def register_rate(self, name: str, spec: _RateSpec) -> _RateSpec:
        """Record rate ``name`` with ``spec`` unless it is recorded; return the
        recorded spec.  ValueError if ``name`` is a counter or keyed counter."""
        self._need_v2()
        rs = self._rates_sql

        def body(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | str:
            with conn.transaction():
                conn.execute(self._stmts.register, ([name], [spec.kind]))
                row = conn.execute(rs.kind, (name,)).fetchone()
                if row is not None and row[0] in ("counter", "keyed"):
                    return str(row[0])
                conn.execute(rs.register, (name, spec.kind, spec.window_ns, spec.res_ns))
                got = conn.execute(rs.spec, (name,)).fetchone()
                assert got is not None
                return tuple(got)

        out = self._call("w", body, f"registering rate {name!r}", retry=True)
        if isinstance(out, str):
            what = "a keyed counter" if out == "keyed" else "a counter"
            raise ValueError(f"{name!r} is {what} in {self.shown}")
        return _rate_spec(*out)

    def _add_rates(self, conn: psycopg.Connection[Any], rates: _RateRows) -> None:
        """The usual flush of rates: add to this writer's stripes."""
        rs = self._rates_sql
        if rates.buckets:
            conn.execute(rs.add_buckets, (self._stripe, *_columns(rates.buckets)))
        if rates.totals:
            conn.execute(rs.add_totals, (self._stripe, *_columns(rates.totals)))
        conn.execute(rs.prune, _columns(rates.prune))

    def _set_rates(self, conn: psycopg.Connection[Any], rates: _RateRows) -> None:
        """The exact path: every stripe of the batch's buckets and totals
        locked (in the global lock order), sums added in Python, refused
        (CountOverflowError, the caller rolls back) if one leaves int64, else
        spread over the stripes."""
        rs = self._rates_sql
        bad: list[tuple[str, str | None]] = []
        rows_b: list[tuple[str, int, str, int, int]] = []
        if rates.buckets:
            where = _columns([b[:3] for b in rates.buckets])
            conn.execute(rs.touch_buckets, where)
            have: dict[tuple[str, int, str], int] = {}
            for n, slot, k, v in conn.execute(rs.lock_buckets, where).fetchall():
                have[(n, slot, k)] = have.get((n, slot, k), 0) + int(v)
            for n, slot, k, d in rates.buckets:
                total = have.get((n, slot, k), 0) + d
                if INT64_MIN <= total <= INT64_MAX:
                    rows_b += [(n, slot, k, i, v) for i, v in enumerate(spread(total))]
                else:
                    bad.append((n, k or None))
        rows_t: list[tuple[str, int, int]] = []
        if rates.totals:
            names = [n for n, _ in rates.totals]
            conn.execute(rs.touch_totals, (names,))
            have_t: dict[str, int] = {}
            for n, v in conn.execute(rs.lock_totals, (names,)).fetchall():
                have_t[n] = have_t.get(n, 0) + int(v)
            for n, d in rates.totals:
                total = have_t.get(n, 0) + d
                if INT64_MIN <= total <= INT64_MAX:
                    rows_t += [(n, i, v) for i, v in enumerate(spread(total))]
                else:
                    bad.append((n, None))
        if bad:
            raise overflow(bad, f"{self.shown}: ")
        if rows_b:
            conn.execute(rs.set_buckets, _columns(rows_b))
        if rows_t:
            conn.execute(rs.set_totals, _columns(rows_t))
        conn.execute(rs.prune, _columns(rates.prune))

    def _take_rate(self, conn: psycopg.Connection[Any], name: str) -> int:
        """A reset: delete the buckets, zero the total (buckets before totals,
        as a flush locks them), in the caller's transaction."""
        if self._version < 2:
            return 0
        conn.execute(self._rates_sql.drop_buckets, (name,))
        row = conn.execute(self._rates_sql.take_total, (name,)).fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    def _read_rates(self, conn: psycopg.Connection[Any], query: Query, r: Read) -> None:
        """Each rate query's total (0 for a keyed rate) and buckets, one statement."""
        qs = list(query.rates)
        for q in qs:
            r.rates[q.name] = (0, {})
        if self._version < 2:
            return
        params = {
            "n": [q.name for q in qs],
            "lo": [q.lo for q in qs],
            "hi": [q.hi for q in qs],
            "k": [q.key for q in qs],
        }
        for i, key, slot, value in conn.execute(self._rates_sql.read, params).fetchall():
            name = qs[i - 1].name
            buckets = r.rates[name][1]
            if key is None:
                r.rates[name] = (int(value or 0), buckets)
            else:
                buckets.setdefault(str(key), {})[int(slot)] = int(value)

    # -- limiters (tallies.stores._limiter) -----------------------------------------
    #
    # Slots follow the server's clock (clock_timestamp(), read after the
    # key's lock is taken), so writers on every machine cut time the same
    # way whatever their clocks.  A key's decision is a transaction holding
    # a transaction-scoped advisory lock on (limiter, key): the decisions
    # on one key are serialised (they share one budget; leases make them
    # rare), different keys never wait for each other.

    LIMITER_RESOLUTION_NS = 1_000_000

    def register_limiter(self, spec: _LimitSpec) -> _LimitSpec:
        self._need_v2()
        args = (spec.name, spec.limit, spec.per_ns, spec.res_ns, spec.buckets, spec.name)

        def body(c: psycopg.Connection[Any]) -> Any:
            # The insert's conflict waits for another writer registering the
            # same name at once, but the statement's SELECT reads the
            # snapshot taken before that writer committed: no row.  The
            # next statement (autocommit: a new snapshot) sees it.
            for _ in range(3):
                row = c.execute(self._limit_sql.register, args).fetchone()
                if row is not None:
                    return row
            raise StoreError(f"{self.shown}: limiter {spec.name!r} could not be registered")

        row = self._call("w", body, f"limiter {spec.name!r}", retry=True)
        return _LimitSpec(spec.name, int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    def _limit_tx(self, spec: _LimitSpec, key: str, step: Callable[[Any, int], _T]) -> _T:
        """``step(conn, now_ns)`` in a transaction holding (limiter, key)'s lock."""
        self._need_v2()
        ls, lock = self._limit_sql, f"tallies limiter {self.schema} {spec.name}"

        def body(conn: psycopg.Connection[Any]) -> _T:
            # pipelined: statements whose answer the step does not read go
            # out with the next one that it reads (a lease is 3 round trips)
            with conn.pipeline(), conn.transaction():
                return step(conn, int(_row(conn, ls.lock, (key, lock))[0]))

        return self._call("w", body, f"limiter {spec.name!r}")

    def limit_acquire(
        self, spec: _LimitSpec, key: str, need: int, want: int, give_back: tuple[int, int] | None
    ) -> _Grant:
        """One transaction (see ``_limiter.LimitBackend``)."""
        slots = self._limit_sql.slots
        grant = self._limit_tx(
            spec,
            key,
            lambda c, now: acquire(
                spec, now, need, want, give_back, SqlSlots(c, slots, spec.name, key)
            ),
        )
        now = time.monotonic()
        if now - self._limits_pruned > PRUNE_EVERY:  # expired slots and windows of every key
            self._limits_pruned = now
            with contextlib.suppress(StoreError):
                self._call("w", lambda c: c.execute(self._limit_sql.expire), "prune")
        return grant

    def limit_read(self, spec: _LimitSpec, key: str) -> _Grant:
        self._need_v2()
        args = (spec.name, key, spec.res_ns, spec.buckets)
        row = self._call("r", lambda c: _row(c, self._limit_sql.read, args), "read", retry=True)
        now, used, oldest = int(row[0]), int(row[1]), row[2]
        return _Grant(0, used, now // spec.res_ns, now, None if oldest is None else int(oldest))

    def limit_reset(self, spec: _LimitSpec, key: str) -> int:
        slots = self._limit_sql.slots

        def step(conn: psycopg.Connection[Any], now: int) -> int:
            table = SqlSlots(conn, slots, spec.name, key)
            used, _ = table.window(now // spec.res_ns - spec.buckets)
            table.prune(INT64_MAX)
            return used

        return self._limit_tx(spec, key, step)

    def window_incr(self, name: str, key: str, expiry_ms: int, amount: int) -> tuple[int, float]:
        self._need_v2()
        args = {"n": name, "k": key, "a": amount, "e": expiry_ms}

        def body(conn: psycopg.Connection[Any]) -> tuple[int, float]:
            try:
                row = conn.execute(self._limit_sql.window_incr, args).fetchone()
            except pge.NumericValueOutOfRange:
                raise CountOverflowError(
                    f"{self.shown}: window {name!r}[{key!r}] would leave int64", []
                ) from None
            assert row is not None
            return int(row[0]), int(row[1]) / 1000

        return self._call("w", body, f"window {name!r}")

    def window_get(self, name: str, key: str) -> tuple[int, float]:
        self._need_v2()
        row = self._call(
            "r",
            lambda c: _row(c, self._limit_sql.window_get, (name, key)),
            "read",
            retry=True,
        )
        now, count, expires = row
        if count is None or int(expires) <= int(now):
            return 0, int(now) / 1000
        return int(count), int(expires) / 1000

    def window_clear(self, name: str, key: str) -> None:
        self._need_v2()
        self._call(
            "w",
            lambda c: c.execute(self._limit_sql.window_clear, (name, key)),
            f"window {name!r}",
            retry=True,
        )


def _row(conn: psycopg.Connection[Any], stmt: str, args: Any) -> Any:
    """The one row ``stmt`` answers."""
    row = conn.execute(stmt, args).fetchone()
    assert row is not None
    return row


def _beyond_int64(deltas: Collection[int]) -> bool:
    """Whether a delta is outside int64 (then the flush takes the exact path)."""
    return bool(deltas) and (min(deltas) < INT64_MIN or max(deltas) > INT64_MAX)


def _columns(rows: list[Any]) -> list[list[Any]]:
    """Rows as columns: the array parameters of an ``unnest`` (as many
    empty columns as the caller expects when there is no row)."""
    return [list(col) for col in zip(*rows, strict=True)]


def _rate_spec(kind: Any, window_ns: Any, res_ns: Any) -> _RateSpec:
    return _RateSpec("keyed_rate" if kind == "keyed_rate" else "rate", int(window_ns), int(res_ns))


class _FlushRows(NamedTuple):
    """A batch as a flush writes it: every list sorted (the lock order)."""

    writer_id: str
    seq: int
    names: list[tuple[str, Kind]]
    counters: list[tuple[str, int]]
    keyed: list[tuple[str, str, int]]
    rates: _RateRows | None


class _RateRows:
    """A batch's rate deltas as a flush writes them (sorted: the lock order)."""

    def __init__(self, batch: Batch) -> None:
        self.buckets = [(n, s, k, int(d)) for n, s, k, d in bucket_rows(batch)]
        self.totals = [(n, int(d)) for n, d in total_rows(batch)]
        self.prune = prune_below(batch)

    @classmethod
    def of(cls, batch: Batch) -> _RateRows | None:
        return cls(batch) if batch.rates or batch.keyed_rates else None


_NOW_NS = "(floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000)"
_NOW_MS = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"


class _RateStatements:
    """The statements on rates (schema version 2)."""

    def __init__(self, schema: str) -> None:
        s = sql.Identifier(schema)

        def q(text: str) -> str:
            return sql.SQL(text).format(s=s).as_string(None)

        b, t = "{s}.rate_bucket_stripes", "{s}.rate_total_stripes"
        stripes = f"generate_series(0, {STRIPES - 1})"
        self.kind = q("SELECT kind FROM {s}.names WHERE name = %s")
        self.register = q(
            "INSERT INTO {s}.rates (name, kind, window_ns, res_ns) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (name) DO NOTHING"
        )
        self.spec = q("SELECT kind, window_ns, res_ns FROM {s}.rates WHERE name = %s")
        self.specs = q("SELECT name, kind, window_ns, res_ns FROM {s}.rates ORDER BY name")
        self.add_buckets = q(
            f"INSERT INTO {b} AS t (name, slot, key, stripe, value)"
            " SELECT u.n, u.s, u.k, %s, u.d"
            " FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::bigint[]) AS u(n, s, k, d)"
            ' ORDER BY u.n COLLATE "C", u.s, u.k COLLATE "C"'
            " ON CONFLICT (name, slot, key, stripe) DO UPDATE SET value = t.value + excluded.value"
        )
        self.add_totals = q(
            f"INSERT INTO {t} AS t (name, stripe, value)"
            " SELECT u.n, %s, u.d FROM unnest(%s::text[], %s::bigint[]) AS u(n, d)"
            ' ORDER BY u.n COLLATE "C"'
            " ON CONFLICT (name, stripe) DO UPDATE SET value = t.value + excluded.value"
        )
        self.prune = q(
            f"DELETE FROM {b} WHERE ctid = ANY(ARRAY(SELECT o.ctid FROM {b} o"
            " JOIN unnest(%s::text[], %s::bigint[]) AS u(n, lo) ON o.name = u.n AND o.slot < u.lo"
            " FOR UPDATE OF o SKIP LOCKED))"
        )
        self.touch_buckets = q(
            f"INSERT INTO {b} (name, slot, key, stripe, value)"
            " SELECT u.n, u.s, u.k, g.i, 0"
            f" FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS u(n, s, k), {stripes} AS g(i)"
            ' ORDER BY u.n COLLATE "C", u.s, u.k COLLATE "C", g.i'
            " ON CONFLICT (name, slot, key, stripe) DO NOTHING"
        )
        self.lock_buckets = q(
            f"SELECT o.name, o.slot, o.key, o.value FROM {b} o"
            " JOIN unnest(%s::text[], %s::bigint[], %s::text[]) AS u(n, s, k)"
            " ON o.name = u.n AND o.slot = u.s AND o.key = u.k"
            " ORDER BY o.name, o.slot, o.key, o.stripe FOR UPDATE OF o"
        )
        self.set_buckets = q(
            f"UPDATE {b} o SET value = u.v FROM unnest(%s::text[], %s::bigint[], %s::text[],"
            " %s::smallint[], %s::bigint[]) AS u(n, s, k, i, v) WHERE o.name = u.n"
            " AND o.slot = u.s AND o.key = u.k AND o.stripe = u.i AND o.value <> u.v"
        )
        self.touch_totals = q(
            f"INSERT INTO {t} (name, stripe, value)"
            f" SELECT u.n, g.i, 0 FROM unnest(%s::text[]) AS u(n), {stripes} AS g(i)"
            ' ORDER BY u.n COLLATE "C", g.i ON CONFLICT (name, stripe) DO NOTHING'
        )
        self.lock_totals = q(
            f"SELECT name, value FROM {t} WHERE name = ANY(%s::text[])"
            " ORDER BY name, stripe FOR UPDATE"
        )
        self.set_totals = q(
            f"UPDATE {t} o SET value = u.v"
            " FROM unnest(%s::text[], %s::smallint[], %s::bigint[]) AS u(n, i, v)"
            " WHERE o.name = u.n AND o.stripe = u.i AND o.value <> u.v"
        )
        self.drop_buckets = q(f"DELETE FROM {b} WHERE name = %s")
        self.take_total = q(
            f"WITH o AS (SELECT name, stripe, value FROM {t} WHERE name = %s"
            " ORDER BY stripe FOR UPDATE),"
            f" z AS (UPDATE {t} x SET value = 0 FROM o"
            " WHERE x.name = o.name AND x.stripe = o.stripe AND o.value <> 0)"
            " SELECT sum(value) FROM o"
        )
        # per query i (1-based): a row (i, NULL, NULL, total), then its buckets
        self.read = q(
            f"SELECT q.i, NULL::text, NULL::bigint, (SELECT sum(x.value) FROM {t} x"
            " WHERE x.name = q.n) FROM unnest(%(n)s::text[]) WITH ORDINALITY AS q(n, i)"
            " UNION ALL"
            " SELECT q.i, o.key, o.slot, sum(o.value)"
            " FROM unnest(%(n)s::text[], %(lo)s::bigint[], %(hi)s::bigint[], %(k)s::text[])"
            " WITH ORDINALITY AS q(n, lo, hi, k, i)"
            f" JOIN {b} o ON o.name = q.n AND o.slot BETWEEN q.lo AND q.hi"
            " AND (q.k IS NULL OR o.key = q.k) GROUP BY q.i, o.key, o.slot"
        )


class _LimitStatements:
    """The statements on limiters and fixed windows (schema version 2)."""

    def __init__(self, schema: str) -> None:
        s = sql.Identifier(schema)

        def q(text: str) -> str:
            return sql.SQL(text).format(s=s).as_string(None)

        ls = "{s}.limiter_slots"
        self.register = q(
            "WITH i AS (INSERT INTO {s}.limiters (name, lim, per_ns, res_ns, buckets)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING"
            " RETURNING lim, per_ns, res_ns, buckets)"
            " SELECT * FROM i UNION ALL"
            " SELECT lim, per_ns, res_ns, buckets FROM {s}.limiters WHERE name = %s"
        )
        # the lock first (a subquery the planner keeps), then the clock
        self.lock = (
            f"SELECT {_NOW_NS} FROM (SELECT pg_advisory_xact_lock("
            "hashtextextended(%s, hashtextextended(%s, 0))) OFFSET 0) AS l"
        )
        self.slots = SlotSQL(
            give_back=q(
                f"UPDATE {ls} SET units = greatest(0, units - %s)"
                " WHERE name = %s AND key = %s AND slot = %s"
            ),
            prune=q(f"DELETE FROM {ls} WHERE name = %s AND key = %s AND slot < %s"),
            window=q(
                f"SELECT coalesce(sum(units), 0), min(slot) FROM {ls}"
                " WHERE name = %s AND key = %s AND slot >= %s AND units > 0"
            ),
            add=q(
                f"INSERT INTO {ls} AS t (name, key, slot, units, expires_ns)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name, key, slot)"
                " DO UPDATE SET units = t.units + excluded.units"
            ),
        )
        self.read = q(
            f"SELECT n.now, coalesce(sum(t.units), 0), min(t.slot) FROM (SELECT {_NOW_NS} AS now)"
            f" AS n LEFT JOIN {ls} t ON t.name = %s AND t.key = %s AND t.units > 0"
            " AND t.slot >= n.now / %s - %s GROUP BY n.now"
        )
        self.expire = q(
            f"DELETE FROM {ls} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {ls}"
            f" WHERE expires_ns < {_NOW_NS} FOR UPDATE SKIP LOCKED));"
            " DELETE FROM {s}.windows WHERE ctid = ANY(ARRAY(SELECT ctid FROM {s}.windows"
            f" WHERE expires_ms < {_NOW_MS} FOR UPDATE SKIP LOCKED))"
        )
        new = "t.expires_ms <= excluded.expires_ms - %(e)s"  # the stored window has ended
        self.window_incr = q(
            "INSERT INTO {s}.windows AS t (name, key, count, expires_ms)"
            f" SELECT %(n)s, %(k)s, %(a)s, {_NOW_MS} + %(e)s"
            " ON CONFLICT (name, key) DO UPDATE SET"
            f" count = CASE WHEN {new} THEN excluded.count ELSE t.count + excluded.count END,"
            f" expires_ms = CASE WHEN {new} THEN excluded.expires_ms ELSE t.expires_ms END"
            " RETURNING count, expires_ms"
        )
        self.window_get = q(
            f"SELECT n.now, t.count, t.expires_ms FROM (SELECT {_NOW_MS} AS now) AS n"
            " LEFT JOIN {s}.windows t ON t.name = %s AND t.key = %s"
        )
        self.window_clear = q("DELETE FROM {s}.windows WHERE name = %s AND key = %s")


class _BigMerge:
    """The statements that merge a big batch into one stripe table from its
    temporary table (``PostgresBackend._merge``)."""

    def __init__(
        self, q: Callable[[str], str], table: str, temp: str, cols: tuple[str, ...]
    ) -> None:
        names = ", ".join(cols)
        on = " AND ".join(f"x.{c} = i.{c}" for c in cols)
        self.types = ["text"] * len(cols) + ["int8"]
        self.copy = f"COPY pg_temp.{temp} ({names}, value) FROM STDIN (FORMAT BINARY)"
        self.analyze = f"ANALYZE pg_temp.{temp}"
        probe = f"SELECT FROM {{s}}.{table} x WHERE {on} AND x.stripe = %s"
        # how many of the first 1,000 rows exist: most of them, and the
        # UPDATE below; a few, and the upsert of the stored ones
        self.sample = q(
            f"SELECT count(*) FILTER (WHERE EXISTS ({probe})), count(*)"
            f" FROM (SELECT * FROM pg_temp.{temp} LIMIT 1000) i"
        )
        # the rows that exist, added to in the global lock order: the order of
        # the merge join that ``merge_plan`` leaves the planner, over the index
        # range of the batch's names (first, last)
        self.update = q(
            f"UPDATE {{s}}.{table} x SET value = x.value + i.value"
            f" FROM (SELECT {names}, value FROM pg_temp.{temp} ORDER BY {names}) i"
            f" WHERE {on} AND x.stripe = %s AND x.name BETWEEN %s AND %s"
        )
        # the same by a probe per row, when few exist
        self.upsert_stored = q(
            f"INSERT INTO {{s}}.{table} AS t ({names}, stripe, value)"
            f" SELECT {names}, %s, value FROM pg_temp.{temp} i WHERE EXISTS ({probe})"
            f" ORDER BY {names}"
            f" ON CONFLICT ({names}, stripe) DO UPDATE SET value = t.value + excluded.value"
        )
        # the others (not written by this transaction: xmin): new rows
        mine = f"{probe} AND x.xmin = pg_current_xact_id()::xid"
        self.insert = q(
            f"INSERT INTO {{s}}.{table} ({names}, stripe, value)"
            f" SELECT {names}, %s, value FROM pg_temp.{temp} i WHERE NOT EXISTS ({mine})"
            f" ORDER BY {names}"
        )
        self.upsert = q(
            f"INSERT INTO {{s}}.{table} AS t ({names}, stripe, value)"
            f" SELECT {names}, %s, value FROM pg_temp.{temp} i WHERE NOT EXISTS ({mine})"
            f" ORDER BY {names}"
            f" ON CONFLICT ({names}, stripe) DO UPDATE SET value = t.value + excluded.value"
        )


class _Statements:
    """Every statement, composed once with the schema's quoted name."""

    def __init__(self, schema: str) -> None:
        s = sql.Identifier(schema)

        def q(text: str) -> str:
            return sql.SQL(text).format(s=s).as_string(None)

        self.meta = q("SELECT key, value FROM {s}.tallies_meta")
        self.schema_lock = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
        # The flush: record the seq (only if above the recorded one), then add
        # the deltas, counters then keys, each in sorted order (the lock order
        # of every writer: no deadlock), all or nothing if the seq was
        # recorded already.  k reads c's RETURNING so that c runs first.
        self.apply = q(
            "WITH w AS ("
            " INSERT INTO {s}.writers AS t (writer_id, seq, seen) VALUES (%(w)s, %(seq)s, now())"
            " ON CONFLICT (writer_id) DO UPDATE SET seq = excluded.seq, seen = excluded.seen"
            " WHERE t.seq < excluded.seq RETURNING 1),"
            " c AS ("
            " INSERT INTO {s}.counter_stripes AS t (name, stripe, value)"
            " SELECT u.n, %(st)s, u.d FROM unnest(%(cn)b::text[], %(cd)b::bigint[]) AS u(n, d)"
            ' WHERE EXISTS (SELECT FROM w) ORDER BY u.n COLLATE "C"'
            " ON CONFLICT (name, stripe) DO UPDATE SET value = t.value + excluded.value"
            " RETURNING 1),"
            " k AS ("
            " INSERT INTO {s}.keyed_stripes AS t (name, key, stripe, value)"
            " SELECT u.n, u.k, %(st)s, u.d"
            " FROM unnest(%(kn)b::text[], %(kk)b::text[], %(kd)b::bigint[]) AS u(n, k, d)"
            " WHERE EXISTS (SELECT FROM w) AND (SELECT count(*) FROM c) >= 0"
            ' ORDER BY u.n COLLATE "C", u.k COLLATE "C"'
            " ON CONFLICT (name, key, stripe) DO UPDATE SET value = t.value + excluded.value"
            " RETURNING 1)"
            " SELECT (SELECT count(*) FROM w), (SELECT count(*) FROM k)"
        )
        # the same adds, one chunk each, inside a transaction that recorded the seq
        self.add_counters = q(
            "INSERT INTO {s}.counter_stripes AS t (name, stripe, value)"
            " SELECT u.n, %s, u.d FROM unnest(%b::text[], %b::bigint[]) AS u(n, d)"
            ' ORDER BY u.n COLLATE "C"'
            " ON CONFLICT (name, stripe) DO UPDATE SET value = t.value + excluded.value"
        )
        self.add_keyed = q(
            "INSERT INTO {s}.keyed_stripes AS t (name, key, stripe, value)"
            " SELECT u.n, u.k, %s, u.d"
            " FROM unnest(%b::text[], %b::text[], %b::bigint[]) AS u(n, k, d)"
            ' ORDER BY u.n COLLATE "C", u.k COLLATE "C"'
            " ON CONFLICT (name, key, stripe) DO UPDATE SET value = t.value + excluded.value"
        )
        # a big batch: COPY into temporary tables, then an update and an insert each
        self.temp_tables = (
            "CREATE TEMP TABLE IF NOT EXISTS tallies_in_counters"
            ' (name text COLLATE "C" NOT NULL, value bigint NOT NULL) ON COMMIT DELETE ROWS;'
            " CREATE TEMP TABLE IF NOT EXISTS tallies_in_keyed"
            ' (name text COLLATE "C" NOT NULL, key text COLLATE "C" NOT NULL,'
            " value bigint NOT NULL) ON COMMIT DELETE ROWS"
        )
        # the plan of a big batch's UPDATE: a merge join walks the sorted batch
        # and the table's index in step (in the lock order, no probe per row),
        # whatever the planner or the server's settings would choose (JIT is
        # off for the whole transaction: _add)
        plan = {"enable_mergejoin": "on", "enable_indexscan": "on", "enable_hashjoin": "off",
                "enable_nestloop": "off", "enable_sort": "off"}  # fmt: skip
        self.merge_plan = "; ".join(f"SET LOCAL {k} = {v}" for k, v in plan.items())
        self.plan_as_before = "; ".join(f"RESET {k}" for k in plan)
        self.counters_in = _BigMerge(q, "counter_stripes", "tallies_in_counters", ("name",))
        self.keyed_in = _BigMerge(q, "keyed_stripes", "tallies_in_keyed", ("name", "key"))
        self.peek_counters = q(
            "SELECT name, stripe, value FROM {s}.counter_stripes WHERE name = ANY(%s::text[])"
        )
        self.peek_keyed = q(
            "SELECT t.name, t.key, t.stripe, t.value FROM {s}.keyed_stripes t"
            " JOIN unnest(%s::text[], %s::text[]) AS u(n, k) ON t.name = u.n AND t.key = u.k"
        )
        self.record = q(
            "INSERT INTO {s}.writers AS t (writer_id, seq, seen) VALUES (%s, %s, now())"
            " ON CONFLICT (writer_id) DO UPDATE SET seq = excluded.seq, seen = excluded.seen"
            " WHERE t.seq < excluded.seq RETURNING 1"
        )
        self.seen = q("UPDATE {s}.writers SET seen = now() WHERE writer_id = %s")
        self.prune = q("DELETE FROM {s}.writers WHERE seen < now() - make_interval(secs => %s)")
        self.register = q(
            "INSERT INTO {s}.names (name, kind)"
            " SELECT u.n, u.k FROM unnest(%s::text[], %s::text[]) AS u(n, k)"
            ' ORDER BY u.n COLLATE "C" ON CONFLICT (name) DO NOTHING'
        )
        self.kinds = q("SELECT name, kind FROM {s}.names WHERE name = ANY(%s::text[])")
        stripes = f"generate_series(0, {STRIPES - 1})"
        # the exact path: every stripe exists, then all are locked, in order
        self.touch_counters = q(
            "INSERT INTO {s}.counter_stripes (name, stripe, value)"
            f" SELECT u.n, g.i, 0 FROM unnest(%s::text[]) AS u(n), {stripes} AS g(i)"
            ' ORDER BY u.n COLLATE "C", g.i ON CONFLICT (name, stripe) DO NOTHING'
        )
        self.lock_counters = q(
            "SELECT name, value FROM {s}.counter_stripes WHERE name = ANY(%s::text[])"
            " ORDER BY name, stripe FOR UPDATE"
        )
        self.touch_keyed = q(
            "INSERT INTO {s}.keyed_stripes (name, key, stripe, value)"
            " SELECT u.n, u.k, g.i, 0 FROM unnest(%s::text[], %s::text[]) AS u(n, k),"
            f" {stripes} AS g(i)"
            ' ORDER BY u.n COLLATE "C", u.k COLLATE "C", g.i'
            " ON CONFLICT (name, key, stripe) DO NOTHING"
        )
        self.lock_keyed = q(
            "SELECT t.name, t.key, t.value FROM {s}.keyed_stripes t"
            " JOIN unnest(%s::text[], %s::text[]) AS u(n, k) ON t.name = u.n AND t.key = u.k"
            " ORDER BY t.name, t.key, t.stripe FOR UPDATE OF t"
        )
        self.set_counters = q(
            "UPDATE {s}.counter_stripes t SET value = u.v"
            " FROM unnest(%s::text[], %s::smallint[], %s::bigint[]) AS u(n, i, v)"
            " WHERE t.name = u.n AND t.stripe = u.i AND t.value <> u.v"
        )
        self.set_keyed = q(
            "UPDATE {s}.keyed_stripes t SET value = u.v"
            " FROM unnest(%s::text[], %s::text[], %s::smallint[], %s::bigint[]) AS u(n, k, i, v)"
            " WHERE t.name = u.n AND t.key = u.k AND t.stripe = u.i AND t.value <> u.v"
        )
        # a take: lock every stripe (in order), sum the old values, zero them
        self.take_counter = q(
            "WITH o AS (SELECT name, stripe, value FROM {s}.counter_stripes WHERE name = %s"
            " ORDER BY stripe FOR UPDATE),"
            " z AS (UPDATE {s}.counter_stripes t SET value = 0 FROM o"
            " WHERE t.name = o.name AND t.stripe = o.stripe AND o.value <> 0)"
            " SELECT sum(value) FROM o"
        )
        self.take_keyed = q(
            "WITH o AS (SELECT name, key, stripe, value FROM {s}.keyed_stripes WHERE name = %s"
            " ORDER BY key, stripe FOR UPDATE),"
            " z AS (UPDATE {s}.keyed_stripes t SET value = 0 FROM o WHERE t.name = o.name"
            " AND t.key = o.key AND t.stripe = o.stripe AND o.value <> 0)"
            " SELECT key, sum(value) FROM o GROUP BY key"
        )
        self.take_key = q(
            "WITH o AS (SELECT name, key, stripe, value FROM {s}.keyed_stripes"
            " WHERE name = %s AND key = %s ORDER BY stripe FOR UPDATE),"
            " z AS (UPDATE {s}.keyed_stripes t SET value = 0 FROM o WHERE t.name = o.name"
            " AND t.key = o.key AND t.stripe = o.stripe AND o.value <> 0)"
            " SELECT sum(value) FROM o"
        )
        counting = "kind IN ('counter', 'keyed')"  # names also lists rates
        self.names = q(f"SELECT name, kind FROM {{s}}.names WHERE {counting} ORDER BY name")
        self.kind_of = q(f"SELECT kind FROM {{s}}.names WHERE name = %s AND {counting}")
        self._s = s
        self._reads: dict[tuple[str, str, bool], str] = {}

    def read(self, writer_id: str, query: Query) -> tuple[str, dict[str, Any]]:
        """One statement (one snapshot) for the query: part 0 the writer's
        seq, 1 counters, 2 keyed names, 3 keys."""
        c = "all" if query.counters is None else ("some" if query.counters else "none")
        k = "all" if query.keyed is None else ("some" if query.keyed else "none")
        shape = (c, k, bool(query.keys))
        stmt = self._reads.get(shape)
        if stmt is None:
            parts = ["SELECT 0, NULL, NULL, seq FROM {s}.writers WHERE writer_id = %(w)s"]
            if c == "all":
                parts.append(
                    "SELECT 1, name, NULL, sum(value) FROM {s}.counter_stripes GROUP BY name"
                )
            elif c == "some":
                parts.append(
                    "SELECT 1, name, NULL, sum(value) FROM {s}.counter_stripes"
                    " WHERE name = ANY(%(cn)s::text[]) GROUP BY name"
                )
            if k == "all":
                parts.append("SELECT 2, name, NULL, NULL FROM {s}.names WHERE kind = 'keyed'")
                parts.append(
                    "SELECT 3, name, key, sum(value) FROM {s}.keyed_stripes GROUP BY name, key"
                )
            elif k == "some":
                parts.append(
                    "SELECT 3, name, key, sum(value) FROM {s}.keyed_stripes"
                    " WHERE name = ANY(%(kn)s::text[]) GROUP BY name, key"
                )
            if query.keys:
                parts.append(
                    "SELECT 3, t.name, t.key, sum(t.value) FROM {s}.keyed_stripes t"
                    " JOIN unnest(%(qn)s::text[], %(qk)s::text[]) AS u(n, k)"
                    " ON t.name = u.n AND t.key = u.k GROUP BY t.name, t.key"
                )
            text = " UNION ALL ".join(parts) + " ORDER BY 1, 2, 3"
            stmt = self._reads[shape] = sql.SQL(text).format(s=self._s).as_string(None)
        params: dict[str, Any] = {"w": writer_id}
        if c == "some":
            params["cn"] = list(query.counters or ())
        if k == "some":
            params["kn"] = list(query.keyed or ())
        if query.keys:
            params["qn"] = [n for n, _ in query.keys]
            params["qk"] = [k for _, k in query.keys]
        return stmt, params


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
