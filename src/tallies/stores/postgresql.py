"""``postgresql://``: durable counts in PostgreSQL, write-behind, exactly once.

URLs::

    postgresql://user:password@host:5432/dbname?schema=tallies&flush=1.0&timeout=5
    postgres://...      the same

Parameters: ``flush`` (seconds between background flushes, default 1.0, at
least 0.001; 0 = write-through: every update returns after the statement
carrying it committed), ``timeout`` (seconds, default 5: the connect timeout,
the server's ``statement_timeout`` and ``lock_timeout``, and one second more
is how long this process waits for any reply before it drops the
connection), ``schema`` (default ``tallies``: where the tables live),
``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``, ``application_name``
(passed to libpq), ``host`` (a unix socket directory, when the URL has no
host).  A password is percent-encoded in the URL (``/`` as ``%2F``) and never
shown: messages, logs and reprs show ``postgresql://***@host:5432/db``.
Needs psycopg 3: ``pip install tallies[postgres]``.

Increments touch only local cells (``PostgresStore`` is a
:class:`~tallies.stores.writebehind.WriteBehindStore`: read its design
comment first); a flush applies its batch exactly once, in one transaction
with the writer's sequence record; reads are read-your-writes; ``reset()``
is a take (read and zero in one transaction); fork, exit and SIGTERM behave
as in every write-behind store.  :mod:`tallies.stores._postgres_backend` is
the client side.

The schema (version 2; ``SELECT * FROM tallies.counters`` reads it)
====================================================================

Created on first open (``CREATE SCHEMA IF NOT EXISTS`` and the tables, under
a transaction-level advisory lock, so any number of processes may open a new
store at once; a schema a DBA created empty is used as it is)::

    tallies_meta(key text PRIMARY KEY, value text)    magic='tallies', schema='2'
    names(name text PRIMARY KEY, kind text)            'counter' | 'keyed' | 'rate' | 'keyed_rate'
    counter_stripes(name text, stripe smallint, value bigint, PRIMARY KEY (name, stripe))
    keyed_stripes(name text, key text, stripe smallint, value bigint,
                  PRIMARY KEY (name, key, stripe))
    writers(writer_id text PRIMARY KEY, seq bigint, seen timestamptz)
    VIEW counters(name, value)       = sum of a name's stripes
    VIEW keyed(name, key, value)     = sum of a key's stripes
    -- version 2: rates and limiters
    rates(name text PRIMARY KEY, kind text, window_ns bigint, res_ns bigint)
    rate_total_stripes(name text, stripe smallint, value bigint, PRIMARY KEY (name, stripe))
    rate_bucket_stripes(name text, slot bigint, key text, stripe smallint, value bigint,
                        PRIMARY KEY (name, slot, key, stripe))      key '' for a plain rate
    VIEW rate_totals(name, total)              = sum of a plain rate's total stripes
    VIEW rate_buckets(name, slot, key, value)  = sum of a bucket's stripes
    limiters(name text PRIMARY KEY, lim bigint, per_ns bigint, res_ns bigint, buckets bigint)
    limiter_slots(name text, key text, slot bigint, units bigint, expires_ns bigint,
                  PRIMARY KEY (name, key, slot))
    windows(name text, key text, count bigint, expires_ms bigint, PRIMARY KEY (name, key))

What other programs read is the two views (plain SQL, any language).  A count
is up to 32 rows: stripe 0 (the base) and writer stripes 1..31.  A ``CHECK``
keeps each writer stripe in [-2**57, 2**57] and the base in the rest of the
int64 range, so the sum of any stripes is an int64.  Names and keys are
``COLLATE "C"`` (byte order: every writer locks rows in the same order,
whatever the database's collation).  The stripe tables have ``fillfactor =
50``, so an update finds room on its page and is a HOT update (no index
write).  A reset zeroes rows and never deletes them (a counted key stays
listed at 0).  ``writers`` is the exactly-once bookkeeping: the last
sequence number each writer process applied, pruned after a day unseen.

A schema that has some of these tables but no ``tallies_meta`` is foreign,
one with a newer version was written by a newer tallies, one with tables
missing was damaged: opening it raises ``CorruptStoreError`` and nothing is
written.  A schema of version 1 (a tallies without rates made it) is
migrated on open by a user who may alter its tables (its owner), in one
transaction under the same advisory lock: the rate and limiter tables are
added and ``names`` may hold rate kinds; nothing of version 1 changes, so
other programs' queries keep working.  A user who may not alter it uses it
at version 1: counters work, ``rate()`` and ``limiter()`` raise
StoreUnavailableError saying why.  A tallies of version 1 refuses a schema
of version 2 (newer): upgrade every writer.

Rates and limiters (version 2)
==============================
A rate's total and its buckets (wall-clock slots, ``_wbrates.py``) are
striped exactly as counters are, for the same reason: every writer of a busy
rate flushes its current bucket, so one row per bucket would be the hottest
row of all.  The flush adds to its own stripe of each bucket and of the
total in the same transaction as its sequence number (exactly once through
lost replies, as the counters), in the global lock order (name, slot, key);
at a stripe's edge it takes the exact path (every stripe locked, the sum
checked against int64, spread again).  Each flush of a rate deletes its
buckets older than two windows, ``FOR UPDATE SKIP LOCKED``: a pruner never
waits for a writer or another pruner.

A limiter's decision (``_limiter.py``: leases) is one transaction per lease:
a transaction-scoped advisory lock on (limiter, key), then the server's
``clock_timestamp()`` (so slots follow ONE clock for writers on every
machine), then give back, prune, sum the window and grant, in
``limiter_slots``.  Decisions on one key are serialised, as they must be
(one budget; a writer asks only when its lease is spent), and different keys
never wait for each other.  Expired slots and ``limits`` fixed windows are
deleted every minute by each process (``SKIP LOCKED`` again).

The flush, and why no writer queues behind a hot row
====================================================

The convoy (issue 22): writers that flush the same names update the same
rows, and a row lock is held until COMMIT.  With one row per count every
writer's flush waits for the previous one's whole statement and commit on
the first shared row, then the next writer for it: the flushes run one
after another, and a lock holder that the scheduler pauses stalls them all.
(Taking the rows in a different order in each writer also deadlocks: every
deadlock costs ``deadlock_timeout``, 1 s; a transaction held open across
round trips to its client makes each wait longer still: Unleash's pods
queued 25-47 s that way.)

So each writer adds to rows of its own.  A store's writer connection claims
a stripe 1..31 that no other open connection holds (``pg_try_advisory_lock``
on a session: released when the connection ends; with more than 31 writers
open some share a stripe, and only those wait on each other).  A flush is
ONE statement in autocommit mode::

    WITH w AS (INSERT INTO writers ... ON CONFLICT DO UPDATE SET seq = $seq
               WHERE writers.seq < $seq RETURNING 1),
         c AS (INSERT INTO counter_stripes SELECT name, $stripe, delta FROM unnest(...)
               WHERE EXISTS (SELECT FROM w) ORDER BY name
               ON CONFLICT DO UPDATE SET value = counter_stripes.value + excluded.value),
         k AS (the same for keys, ordered by (name, key), after c)
    SELECT ...

so (1) the batch and its sequence record commit together or not at all, and
a batch already recorded (its reply was lost) changes nothing; (2) the
server commits as the statement ends: no lock is held across a round trip
to this process; (3) rows are taken in one global order (the writer's row,
counts by name, keys by (name, key), stripe last), so a shared stripe, a
reset (which locks every stripe of its count) or the exact path below never
deadlock with a flush.  A flush that registers new names, or carries more
than 10,000 deltas (statements of 10,000 rows, each within
``statement_timeout``), is a transaction of such statements instead.

At an edge (a stripe would leave its range: the ``CHECK`` fails, nothing is
applied) the flush is redone in a transaction that locks every stripe of
the counts near an edge (in the same order), adds in Python, raises
CountOverflowError (nothing applied) if a sum would leave int64, or spreads
the new total over the stripes; the other counts are added as usual.

Measured (``tallies bench --stores``, part ``postgresql``:
``benchmarks/postgres_store.py``; 2026-12-06 01:59 UTC, this 2-vCPU machine
shared with other builds, load 13-14, fsync on; 16 writer processes each
adding 1 to the same 1,000 keys every 100 ms and flushing for 30 s, every
mode in one run; latency of a flush, or of one period's writes)::

                                                   p50        p99   flushes done
    this store (own stripes, one statement)       108 ms     242 ms   3,920 / 4,800
    control: this store, each writer own keys     113 ms     342 ms   3,528 / 4,800
    one row per key, one sorted UPSERT per flush 1,234 ms   9,843 ms     262 / 4,800
    one row per key, client transaction, BEGIN;
      an UPSERT per key in the writer's order;
      COMMIT (120 deadlocks, 1 s each)         97,527 ms 102,617 ms      16 / 4,800
    UPDATE ... SET n = n + 1 per event          5,563 ms  15,846 ms      81 / 4,800

(The same comparison before stripes, with one row per key written by this
statement: p50 741 ms against 122 ms for the control, in a 10 s run.  Again
at 03:42 UTC, load 21-23: this store p50 141 ms, p99 410 ms; the control
180 / 745 ms; the sorted UPSERT 1,714 / 11,286 ms; the client transaction
97,656 / 101,697 ms with 138 deadlocks; an UPDATE per event 4,881 / 12,248
ms.  The 100 ms p99 target is missed on this machine by this store and by
the control alike.)

A flush of more than 10,000 deltas (``_BigMerge``) copies them (binary
``COPY``, bigint) into a temporary table and inserts the rows not stored
with one plain sorted ``INSERT`` (``ON CONFLICT``'s speculative insertion
was half of the server's work for a new row: 4.5-5.0 s of server CPU for
10^6 new keys, 2.7-2.8 s without it).  The stored rows are added to first:
when the batch's first 1,000 rows are mostly stored, by one ``UPDATE ...
FROM`` the sorted batch, planned as a merge join over the primary key
(``merge_plan``: hash joins, nested loops and a sort of the table ruled out,
merge joins and index scans ruled in; JIT is off for a big batch), which walks the batch and
the index in step and so updates in the global lock order; otherwise by one
sorted ``INSERT ... ON CONFLICT DO UPDATE`` of the rows a probe finds
stored (cheap when few are).  A row that another writer of the same stripe
inserts between the statements makes the plain INSERT fail; it runs in a
savepoint, and the rows are then upserted.

Where the seconds of a 10^6-key flush go (2026-12-06 14:30-14:45 UTC, this
2-vCPU machine, fsync on, load 1.5 then 5-7 from other engineers' work;
client CPU from ``time.process_time``, server CPU from ``/proc`` of every
server process): in the client 0.6-0.9 s (the batch sorted and checked,
0.3-0.4 s; ``COPY`` ``write_row`` of 10^6 rows 0.17 s; psycopg's waits);
in the server ``COPY`` 0.2-0.3 s, ``ANALYZE`` 0.07 s, and the merge: for
new rows the plain INSERT 1.75 s (heap, index entry and WAL of each row),
for stored rows ``ON CONFLICT DO UPDATE`` 3.4-4.2 s (an index probe, a
tuple lock and an update per row; 4.3-5.7 s with JIT, which the planner
turns on at this size) against 1.8-2.1 s for the merge-join UPDATE (the
same statement forced to a nested loop, probe per row: 3.8-4.1 s; a
``MERGE`` statement, PG 15, hash-joined 2.6-2.9 s, with no lock order).
The commit (fsync of the WAL) is 10-50 ms. Same run, main and this code
alternated twice (14:55-14:57 UTC, load 4.2-5.3): stored rows wall
5.98-6.72 s before, 3.58-3.71 s after (server CPU 3.45-3.68 s before,
1.76-2.02 s after; client 0.70-0.73 s, 0.62-0.64 s); new rows 3.19-4.67 s,
3.85-4.18 s (server CPU 1.91-2.00 s, 2.02-2.04 s: unchanged within the
noise). The 4 s target: met by stored rows in these runs (3.6-3.7 s),
missed by new rows in one of two (4.18 s); met by both at load 3.5
(2.3-3.0 s, 14:53 UTC), missed by both at load 6.8-7.1 (5.0-7.0 s, an
earlier form of this change). The server's CPU for 10^6 rows (1.8-2.3 s)
and the client's (0.6-0.9 s) run one after the other (one transaction, one
connection: exactly once needs the batch and its sequence record in one
commit, so the work cannot be split over connections), and each of the 2
vCPUs is shared with other
processes.  Measured and not taken: COPY data
built as one bytes buffer instead of ``write_row`` (the loop is 0.17 s of
CPU: at most that to gain), ``MERGE`` (PG 15 only, and its hash join takes
rows in no fixed order), the rows as arrays through ``unnest`` instead of
``COPY`` (slower), ``fillfactor`` 90 (no gain), a client-side pipeline
(the server's merge waits for the whole COPY; splitting the batch over
transactions or connections would break exactly once), and
``synchronous_commit`` off (it would acknowledge a flush a crash can lose),
and the batch sent unsorted for the server to sort (the client saved 0.1 s,
the server spent 0.5-0.9 s more: its sort is quick on presorted input).
JIT off for the whole big transaction, not only its UPDATE: 1.88-1.90 s
of server CPU for 10^6 new rows against 1.95-1.96 s (same run, load 3.5).

The stripes make the shared keys cost what keys of one's own cost (the
control row); the rest of the latency is the machine (16 writer processes
and 16 server processes on 2 vCPUs).  In numbers (2026-12-06 07:12 UTC,
this machine): a 1,000-key flush costs about 10.5 ms of CPU in the writer
(the batch, psycopg's parameters) and 4.6 ms in the server, so 16 writers
flushing every 100 ms ask for about 2.4 CPU-seconds a second, more than the
2 vCPUs have even idle.  At 4, 8 and 16 writers for 10 s each (load 17-26
from other work) the p99 was 493 / 193 / 533 ms for this store, 344 / 368
/ 703 ms for the control and 758 / 2,829 / 7,365 ms for one sorted UPSERT
per flush on shared rows: the store tracks the control at every count of
writers, and the p99 is the machine's.

Again at 14:25-14:48 UTC (this machine, fsync on, this flush unchanged):
one writer's 1,000-key flush takes 1.4 ms of the writer's CPU (the 10.5 ms
above included the load's waits) and 5.3 ms of wall time; in the convoy
the writers spent 1.7-1.8 ms of CPU and the server 4.8-5.3 ms per flush
(``/proc`` of every process), and as the 16 writers start their periods
together, every 100 ms asks for 16 x 6.6 = 106 ms of CPU at once: the last
flush of a burst ends no sooner than 53 ms after it began on 2 idle vCPUs,
which is the p50 measured (49-59 ms).  p99: 113 ms (10 s, load 1.4-2.4;
control 165 ms), 97 ms (10 s, load 4.9-6.4; control 128 ms), 196 ms (30
s, load 5.4-9.3; control 248 ms): met or missed by what else runs on the 2
vCPUs, the store below the control each time.  A cheaper statement was
measured: the adds as an ``UPDATE`` merge-joined as for a big batch costs
the server 3.0-3.3 ms per 1,000 rows against 3.7-4.4 ms (same run, load
5): 0.8 ms of the 6.6 a flush costs, about 6 ms off the p50, and it needs
planner settings on the writer's session and a second statement for new
keys: not taken.  Per-writer delta rows folded into
totals later were the other candidate: they remove the shared locks too,
but a reader must add up every unfolded row, the fold is one more moving
part, and an int64 overflow of a sum can only be refused exactly by
serialising the writers of a name again; bounded stripes keep every sum in
range by construction and need no fold.

On the quiet machine (2026-12-06 16:11-16:21 UTC, this 2-vCPU machine, nothing
else running, fsync on, commit 79b7845), two runs of ``tallies bench --stores
--part postgresql`` one after the other met every target: increment 1.01x and
0.99x ``Counter.increment()``; an UPDATE per event 27,338x and 26,674x an
increment; a 1,000-key flush 4.8 and 5.0 ms; 10^6 keys, new rows 3.26 and
3.28 s, stored rows 2.29 and 2.38 s; 16 writers on the same 1,000 keys for
30 s, p99 60.1 and 60.6 ms (p50 34 ms; the control 57.5 and 52.3 ms; 4,800 of
4,800 flushes exact each time), against one sorted UPSERT per flush 2,759
and 3,895 ms, a client transaction 103,229 ms (125 and 123 deadlocks) and an
UPDATE per event 1,533 and 1,550 ms.  The misses above were this machine
shared with other work.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from ._params import FLUSH, Param, seconds, text
from ._protocol import Backend
from .base import StoreError, StoreNotFoundError, StoreURL, import_backend
from .writebehind import WriteBehindStore

__all__ = ["STORE", "PostgresMissingError", "PostgresOptions", "PostgresStore", "postgres_options"]


class PostgresMissingError(StoreError, ImportError):
    """postgresql:// needs psycopg 3, which is not installed."""


_backend_module = partial(
    import_backend,
    "psycopg",
    "_postgres_backend",
    PostgresMissingError,
    "postgresql:// stores need psycopg 3, which is not installed: pip install tallies[postgres]",
)


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_PASSED = ("sslmode", "sslrootcert", "sslcert", "sslkey", "application_name")


def _schema(url: StoreURL, key: str, raw: str) -> str:
    if not _IDENT.match(raw):
        raise ValueError(
            f"{url.shown!r}: {key}={raw!r} is not a plain SQL name "
            "(a letter or _, then letters, digits or _, at most 63)"
        )
    return raw


def _sslmode(url: StoreURL, key: str, raw: str) -> str:
    if raw not in _SSLMODES:
        raise ValueError(f"{url.shown!r}: {key} must be one of {', '.join(_SSLMODES)}, not {raw!r}")
    return raw


PARAMS: tuple[Param, ...] = (
    FLUSH,
    seconds("timeout", 5.0, 0.1, 3600.0),
    Param("schema", "tallies", _schema),
    Param("sslmode", None, _sslmode),
    text("sslrootcert", None),
    text("sslcert", None),
    text("sslkey", None),
    text("application_name", None),
    text("host", None),
)


@dataclass(frozen=True)
class PostgresOptions:
    """What a ``postgresql://`` URL says.  Equal options are the same store
    (the password is not compared: it opens the same tables)."""

    host: str
    port: int | None
    dbname: str
    user: str | None
    schema: str
    timeout: float
    extra: tuple[tuple[str, str], ...] = ()
    password: str | None = field(default=None, compare=False, repr=False)

    def conninfo(self) -> dict[str, Any]:
        """psycopg.connect() keywords (libpq's)."""
        ms = int(self.timeout * 1000)
        kw: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "password": self.password,
            "connect_timeout": max(2, math.ceil(self.timeout)),  # libpq: whole s, 2 at least
            "application_name": "tallies",
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms} "
            f"-c idle_in_transaction_session_timeout={2 * max(ms, 1000)}",
        }
        kw.update(self.extra)
        return {k: v for k, v in kw.items() if v is not None}


def postgres_options(url: StoreURL, values: dict[str, Any]) -> PostgresOptions:
    """Split ``postgresql://[user[:password]@]host[:port]/dbname`` (parameters parsed)."""
    if url.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"{url.shown!r}: not a postgresql:// URL")
    expected = "expected postgresql://user:password@host:port/dbname"
    try:
        parts = urlsplit("//" + url.target)
        host = parts.hostname or ""
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url.shown!r}: {exc} ({expected})") from None
    if "," in parts.netloc:
        raise ValueError(f"{url.shown!r}: one host only ({expected})")
    socket_dir = values.get("host")
    if host and socket_dir:
        raise ValueError(f"{url.shown!r}: a host in the URL and host= too; give one")
    host = host or socket_dir or ""
    if not host:
        raise ValueError(f"{url.shown!r}: no host ({expected}, or ?host=/socket/directory)")
    dbname = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not dbname or "/" in dbname:
        raise ValueError(f"{url.shown!r}: no database name ({expected})")
    if port == 0:
        raise ValueError(f"{url.shown!r}: port 0 is not a port ({expected})")
    for v in (dbname, host, parts.username or "", parts.password or ""):
        if "\x00" in unquote(v):
            raise ValueError(f"{url.shown!r}: the URL contains a NUL character")
    extra = tuple((k, str(values[k])) for k in _PASSED if values.get(k) is not None)
    return PostgresOptions(
        host=host,
        port=port,
        dbname=dbname,
        user=unquote(parts.username) if parts.username else None,
        schema=values["schema"],
        timeout=float(values["timeout"]),
        extra=extra,
        password=unquote(parts.password) if parts.password is not None else None,
    )


class PostgresStore(WriteBehindStore):
    """Counters in PostgreSQL, written behind: ``tallies.open("postgresql://...")``."""

    scheme: ClassVar[str] = "postgresql"
    PARAMS = PARAMS

    @classmethod
    def backend_options(cls, url: StoreURL, values: dict[str, Any]) -> PostgresOptions:
        return postgres_options(url, values)

    @classmethod
    def connect(cls, url: StoreURL, options: PostgresOptions, create: bool, first: bool) -> Backend:
        backend: Any = _backend_module().PostgresBackend(
            options.conninfo(), options.schema, options.timeout, url.shown, create=create
        )
        if first:
            backend.open()  # connect and check (or create) the schema now
        b: Backend = backend
        return b

    @classmethod
    def destroy_url(cls, url: StoreURL) -> bool:
        from ._params import parse

        options = postgres_options(url, parse(url, cls.params()))
        backend = _backend_module().PostgresBackend(
            options.conninfo(), options.schema, options.timeout, url.shown, create=False
        )
        try:
            return bool(backend.drop())
        except StoreNotFoundError:
            return False
        finally:
            backend.close()

    @property
    def schema(self) -> str:
        """The PostgreSQL schema that holds this store's tables."""
        schema: str = self._options.schema  # type: ignore[attr-defined]
        return schema


STORE = PostgresStore
