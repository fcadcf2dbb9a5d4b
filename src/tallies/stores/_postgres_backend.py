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
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pge
from psycopg import sql

from . import _signals
from ._protocol import INT64_MAX, INT64_MIN, PRUNE_AFTER, Batch, Kind, Query, Read, Target
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
SCHEMA_VERSION = 1
TABLES = (
    "tallies_meta",
    "names",
    "counter_stripes",
    "keyed_stripes",
    "writers",
    "counters",
    "keyed",
)

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


def schema_sql(schema: str) -> list[sql.Composed]:
    """The statements that create schema version 1 (``postgresql.py`` documents it)."""
    s = sql.Identifier(schema)
    check = sql.SQL(
        "CHECK (stripe BETWEEN 0 AND {last}), CHECK (CASE WHEN stripe = 0"
        " THEN value BETWEEN {blo} AND {bhi} ELSE value BETWEEN {lo} AND {hi} END)"
    ).format(
        last=sql.Literal(STRIPES - 1),
        blo=sql.Literal(BASE_MIN),
        bhi=sql.Literal(BASE_MAX),
        lo=sql.Literal(-CAP),
        hi=sql.Literal(CAP),
    )
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
        ).format(s, sql.Literal(MAGIC), sql.Literal(str(SCHEMA_VERSION))),
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
        self._stripe = 1  # set by _claim_stripe() on every writer connection
        self._token = 0  # the watchdog's token of the writer's call in progress
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
        missing = set(TABLES) - tables
        if version < 1 or missing:
            raise CorruptStoreError(
                f"{where} (version {version}) is missing table(s) {', '.join(sorted(missing))}"
                " (dropped?); restore them or destroy the store"
            )
        return True

    def _validate(self, conn: psycopg.Connection[Any]) -> None:
        try:
            if self._check(conn):
                return
            if not self.create:
                raise StoreNotFoundError(f"{self.shown}: no tallies schema {self.schema!r}")
            # Create it under an advisory lock: 16 processes opening a new
            # store at once must not race on CREATE SCHEMA / CREATE TABLE.
            with conn.transaction():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    ("tallies schema " + self.schema,),
                )
                if self._check(conn):
                    return
                for stmt in schema_sql(self.schema):
                    conn.execute(stmt)
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
        exact = not all(INT64_MIN <= d <= INT64_MAX for _, d in counters) or not all(
            INT64_MIN <= d <= INT64_MAX for *_, d in keyed
        )
        names = sorted(batch.names.items())
        what = f"flush of batch {batch.seq}"
        everything = False  # lock every count of the batch (after a race at an edge)
        for _attempt in range(5):
            try:
                if not exact:
                    try:
                        self._call(
                            "w",
                            lambda c: self._apply_fast(c, writer_id, batch.seq, names,
                                                       counters, keyed),
                            what, retry=True,
                        )  # fmt: skip
                        break
                    except _Overflow:
                        exact = True
                try:
                    self._call("w", partial(self._apply_exact, writer_id=writer_id,
                                            seq=batch.seq, names=names, counters=counters,
                                            keyed=keyed, everything=everything),
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
        table, then the rows that exist are added to (``ON CONFLICT DO
        UPDATE`` in the global lock order), and the rest inserted by a plain
        INSERT: no speculative insertion per new row (half the server's work
        for them).  A row another writer of this stripe inserted meanwhile
        makes that INSERT fail: then (after a savepoint) the rest go through
        ``ON CONFLICT DO UPDATE`` too.  A row this transaction wrote has its
        ``xmin``: that is how the second statement skips the first's rows.
        When most of the first 1,000 rows are stored already, one upsert of
        every row is cheaper (one index probe per row instead of two)."""
        with conn.cursor().copy(part.copy) as copy:
            copy.set_types(part.types)
            for row in rows:
                copy.write_row(row)
        conn.execute(part.analyze)
        _watchdog.kick(self._token, budget + 1.0)
        stored = conn.execute(part.sample, (self._stripe,)).fetchone()
        if stored is not None and 2 * int(stored[0]) > int(stored[1]):  # mostly stored rows
            conn.execute(part.upsert_all, (self._stripe,))
            return
        both = (self._stripe, self._stripe)
        if conn.execute(part.update, both).rowcount == len(rows):
            return  # every row was stored already
        _watchdog.kick(self._token, budget + 1.0)
        try:
            with conn.transaction():
                conn.execute(part.insert, both)
        except pge.UniqueViolation:
            conn.execute(part.upsert, both)
        _watchdog.kick(self._token, budget + 1.0)

    def _apply_fast(
        self,
        conn: psycopg.Connection[Any],
        writer_id: str,
        seq: int,
        names: list[tuple[str, Kind]],
        counters: list[tuple[str, int]],
        keyed: list[tuple[str, str, int]],
    ) -> None:
        try:
            if not names and len(counters) + len(keyed) <= CHUNK:
                # the usual flush: ONE statement, committed as it ends
                row = conn.execute(
                    self._stmts.apply,
                    {
                        "w": writer_id,
                        "seq": seq,
                        "st": self._stripe,
                        "cn": [n for n, _ in counters],
                        "cd": [d for _, d in counters],
                        "kn": [n for n, _, _ in keyed],
                        "kk": [k for _, k, _ in keyed],
                        "kd": [d for *_, d in keyed],
                    },
                ).fetchone()
                if row is None or not row[0]:  # applied already (a lost reply)
                    conn.execute(self._stmts.seen, (writer_id,))
                return
            # new names (registered in the same transaction), or a big batch
            # (statements of CHUNK rows: each within statement_timeout)
            with conn.transaction():
                if names:
                    self._register(conn, names)
                if conn.execute(self._stmts.record, (writer_id, seq)).fetchone() is None:
                    conn.execute(self._stmts.seen, (writer_id,))  # applied already
                    return
                self._add(conn, counters, keyed)
        except (pge.NumericValueOutOfRange, pge.CheckViolation) as exc:
            raise _Overflow from exc  # a stripe (or a sum) at its edge: nothing applied

    def _apply_exact(
        self,
        conn: psycopg.Connection[Any],
        writer_id: str,
        seq: int,
        names: list[tuple[str, Kind]],
        counters: list[tuple[str, int]],
        keyed: list[tuple[str, str, int]],
        everything: bool,
    ) -> None:
        """The rare path: a stripe or a sum at its edge.  The counts near an
        edge (all of them if ``everything``) get every stripe locked (in the
        global lock order), are added in Python, refused if they leave int64
        and spread over the stripes; the others are added as usual."""
        st = self._stmts
        with conn.transaction():
            if names:
                self._register(conn, names)
            if conn.execute(st.record, (writer_id, seq)).fetchone() is None:
                conn.execute(st.seen, (writer_id,))  # applied already
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
                for view in ("counters", "keyed"):
                    conn.execute(
                        sql.SQL("DROP VIEW IF EXISTS {}.{}").format(s, sql.Identifier(view))
                    )
                for t in TABLES:
                    if t not in ("counters", "keyed"):
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
        # how many of the first 1,000 rows exist: most of them, and one
        # upsert of every row is cheaper than the two statements below
        self.sample = q(
            f"SELECT count(*) FILTER (WHERE EXISTS ({probe})), count(*)"
            f" FROM (SELECT * FROM pg_temp.{temp} LIMIT 1000) i"
        )
        self.upsert_all = q(
            f"INSERT INTO {{s}}.{table} AS t ({names}, stripe, value)"
            f" SELECT {names}, %s, value FROM pg_temp.{temp} ORDER BY {names}"
            f" ON CONFLICT ({names}, stripe) DO UPDATE SET value = t.value + excluded.value"
        )
        # the rows that exist: added to, in the global lock order
        self.update = q(
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
        self.names = q("SELECT name, kind FROM {s}.names ORDER BY name")
        self.kind_of = q("SELECT kind FROM {s}.names WHERE name = %s")
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
