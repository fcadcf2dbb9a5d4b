"""The Redis side of ``redis://``: exactly-once batches, reads, resets, names.

Imported only when a ``redis://`` store is opened (it needs redis-py); the key
layout and the Lua scripts are in :mod:`tallies.stores._redis_lua`, whose
docstring explains them.  :class:`RedisBackend` knows nothing about local
cells: the write-behind (:mod:`tallies.stores.writebehind`) calls
:meth:`RedisBackend.apply` with one batch of deltas, the same ``(writer, seq)``
again with the same deltas when a try failed, and this module turns a batch
into script calls:

- standalone server: the batch is cut into parts of at most ``batch`` fields
  (counters and keys), one ``EVALSHA`` each, all in one pipeline (packed
  here and sent call by call as packed: :func:`_pipelined`), recorded under
  one writer key;
- Redis Cluster: the batch is grouped by hash tag (one per name), each group
  cut into parts and recorded under the writer key of that tag; calls are
  pipelined per node (each call goes to the node that owns its slot).

A part already applied answers ``dup``; a part whose predecessor failed
answers ``gap`` and is sent again after it.  So a call that times out, a reply
that is lost, a server that restarts, a ``NOSCRIPT`` after a restart or a
``MOVED`` after a resharding all end the same way: each part applied once.

The scripts are redis-py ``Script`` objects (``register_script``: the SHA
computed once, the source at hand for ``SCRIPT LOAD``), but they are not run
through ``Script.__call__`` nor passed to a pipeline: every call is queued as
``EVALSHA`` in a pipeline per node (``pipe.evalsha(script.sha, ...)`` on a
cluster, :func:`_pipelined` on a standalone server), and a ``NOSCRIPT``
reply is answered here (load, send that call again).  Measured, 2026-12-06, on
this project's 2-vCPU machine with Redis 7.0.15 on loopback (median of 7
rounds of 500): passing the ``Script`` to the pipeline makes redis-py run
``SCRIPT EXISTS`` before every pipeline, one more round trip per flush: a
pipeline of 5 calls 384 us against 280 us (1.37x), of 1 call 266 against 152
us (1.75x).  ``Script.__call__`` for a lone call costs what ``evalsha`` does
(136 against 169 us, noise), but on the free-threaded build the flushes that
fail while Redis is down kept memory alive through it (12.7 kB after 390
failed flushes in ``test_redis_stopped_under_load_then_back``, over the test's
8 kB; the pipeline path passes it), so a lone call is a pipeline of one.

A flush is bounded by ``timeout`` per round trip: a call that times out is
not sent again by redis-py (its retry is for a dropped connection only), so
``flush()`` raises FlushError after ``timeout`` when Redis does not answer
(one round trip per node it needs on a cluster, in turn).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
import threading
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis
import redis.exceptions as rexc
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from ._params import FLUSH, Param, integer, parse, seconds, text
from ._protocol import (
    INT64_MAX,
    INT64_MIN,
    MAX_BACKOFF,
    Batch,
    Grant,
    Kind,
    LimitSpec,
    Query,
    RateQuery,
    RateSpec,
    Read,
    Target,
)
from ._redact import redact_url
from ._redis_lua import (
    APPLY_LUA,
    LIMIT_LUA,
    READ_LUA,
    REGISTER_LUA,
    RESET_LUA,
    SCAN_LUA,
    WINDOW_LUA,
    data_key,
    fixed_window_key,
    limiter_key,
    limiter_spec_key,
    name_from_data_key,
    rate_bucket_key,
    rate_meta_key,
    reset_key,
    scan_pattern,
    tag_of,
    writer_key,
)
from .base import (
    CorruptStoreError,
    CountOverflowError,
    KindClashError,
    StoreError,
    StoreUnavailableError,
    StoreURL,
)

__all__ = ["PARAMS", "RedisBackend", "RedisOptions", "parse_redis_url", "redis_options"]
_T = TypeVar("_T")
_WRITER_OK = re.compile(r"[A-Za-z0-9_.:-]{1,100}\Z")
_MAX_SEQ = 10**15 - 1  # the script compares seqs as exact doubles
SCAN_COUNT = 2000  # fields per page of a snapshot's HSCAN (_scan_hash)

#: What redis-py retries (once, at once): a dropped connection, never a call
#: that timed out (that would double ``timeout``; issue 28, 4).
_RETRY_ON = (rexc.ConnectionError,)

#: Errors that mean "Redis did not answer (now)": the deltas stay, a later try.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.BusyLoadingError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
    rexc.ClusterError,
    rexc.RedisClusterException,
    rexc.ReadOnlyError,
    rexc.OutOfMemoryError,
    OSError,
)


@dataclass(frozen=True)
class RedisOptions:
    """What a ``redis://`` URL says (everything but the write-behind's own options)."""

    cluster: bool
    tls: bool
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    prefix: str
    timeout: float
    batch: int
    writer_ttl_ms: int
    ssl: tuple[tuple[str, str], ...]  # (name, value) pairs for redis-py, sorted
    #: replicas that must acknowledge a batch (``WAIT``) before it counts as applied
    wait: int = 0


_SSL_PARAMS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


#: The shortest ``writer_ttl``: 20 times the flusher's longest back-off, so a
#: batch whose reply was lost is retried long before its writer record expires
#: (unless Redis stays unreachable for longer than this).
MIN_WRITER_TTL = 20 * MAX_BACKOFF
#: The most replicas ``wait`` can ask for.
MAX_WAIT = 100

#: Every parameter of a ``redis://`` URL, ``flush`` (the write-behind's) included.
PARAMS: tuple[Param, ...] = (
    FLUSH,
    text("prefix", "tallies:"),
    seconds("timeout", 5.0, 0.01, 3600.0),
    integer("batch", 200, 1, 2000),
    seconds("writer_ttl", 86400.0, MIN_WRITER_TTL, 10.0 * 365 * 86400),
    integer("wait", 0, 0, MAX_WAIT, counting="replicas"),
    *(text(name, None) for name in _SSL_PARAMS),
)


def parse_redis_url(url: StoreURL) -> RedisOptions:
    """Split ``redis[s][+cluster]://[user:password@]host[:port][/db]?...``."""
    return redis_options(url, parse(url, PARAMS))


def redis_options(url: StoreURL, values: dict[str, Any]) -> RedisOptions:
    """The options of a redis URL whose parameters ``values`` are parsed."""
    scheme = url.scheme
    if scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        raise ValueError(f"{url.shown!r}: not a redis:// URL")
    cluster = scheme.endswith("+cluster")
    tls = scheme.startswith("rediss")
    try:
        parts = urlsplit("//" + url.target)
        host = parts.hostname
        port = parts.port or 6379
    except ValueError as exc:
        raise ValueError(f"{url.shown!r}: {exc}") from None
    if not host:
        raise ValueError(f"{url.shown!r}: no host (expected {scheme}://host:port/db)")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{url.shown!r}: the database must be a number, not {path!r}")
    db = int(path or 0)
    if cluster and db != 0:
        raise ValueError(f"{url.shown!r}: Redis Cluster has only database 0")
    prefix = values["prefix"]
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"{url.shown!r}: the prefix must not contain '{{' or '}}' (hash tags)")
    if len(prefix.encode()) > 200:
        raise ValueError(f"{url.shown!r}: the prefix is longer than 200 bytes")
    ssl = tuple(sorted((k, values[k]) for k in _SSL_PARAMS if values.get(k) is not None))
    if ssl and not tls:
        raise ValueError(f"{url.shown!r}: ssl_* parameters need rediss://")
    return RedisOptions(
        cluster=cluster,
        tls=tls,
        host=host,
        port=port,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        prefix=prefix,
        timeout=values["timeout"],
        batch=values["batch"],
        writer_ttl_ms=int(values["writer_ttl"] * 1000),
        ssl=ssl,
        wait=values["wait"],
    )


def _pack_evalsha(
    encode: Callable[[Any], bytes], sha: bytes, keys: Sequence[Any], args: Sequence[Any]
) -> bytes:
    """``EVALSHA sha len(keys) *keys *args`` in RESP, one ``bytes`` (an
    argument that is not ``bytes`` goes through redis-py's ``encode``; a
    :class:`_Fields` stands for its ``field, delta`` arguments).

    redis-py's ``pack_command`` checks and encodes each argument in Python
    (about 0.45 us an argument); ours are bytes already, and one ``%`` a
    argument costs a third of that (2026-12-06, this project's 2-vCPU
    machine, 2 x 10^6 arguments of a 10^6-key flush: 0.30 s against 0.91 s of
    CPU), most of a big flush's client time otherwise."""
    count = 3 + len(keys) + len(args)
    parts = [b"", b"$%d\r\n%d\r\n" % (len(str(len(keys))), len(keys))]
    for seq in (keys, args):
        for a in seq:
            if type(a) is bytes:
                parts.append(b"$%d\r\n%b\r\n" % (len(a), a))
            elif type(a) is _Fields:
                count += 2 * len(a.keys) - 1
                parts.append(a.resp())
            else:
                parts.append(_bulk(encode(a)))
    parts[0] = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n" % (count, len(sha), sha)
    return b"".join(parts)


def _bulk(a: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(a), a)


def _get_connection(pool: Any) -> Any:
    try:  # redis-py >= 5.3 (a command name is deprecated there)
        return pool.get_connection()
    except TypeError:  # redis-py 4.6 - 5.2: a command name is required
        return pool.get_connection("EVALSHA")


def _pipelined(client: Any, commands: Iterable[bytes]) -> list[Any]:
    """Send packed commands on one pooled connection, each as soon as it is
    packed (Redis runs the first calls while the rest are packed: two CPUs
    at work, not one after the other), then read every reply: a pipeline,
    without redis-py's packing (:func:`_pack_evalsha`).  An error reply is
    returned (as ``pipe.execute(raise_on_error=False)`` does); a dropped
    connection is retried as the client's ``Retry`` says, everything sent
    again (safe: an applied part answers ``dup``); any other failure
    disconnects, so that no reply is ever read out of turn."""
    pool = client.connection_pool
    conn = _get_connection(pool)
    todo = iter(commands)
    packed: list[bytes] = []

    def once() -> list[Any]:
        if packed:  # a retry: what was sent before, again
            conn.send_packed_command(packed)
        for cmd in todo:
            packed.append(cmd)
            conn.send_packed_command((cmd,))
        replies: list[Any] = []
        for _ in packed:
            try:
                replies.append(conn.read_response())
            except rexc.ResponseError as exc:
                replies.append(exc)
        return replies

    try:
        out: list[Any] = conn.retry.call_with_retry(once, lambda _error: conn.disconnect())
        return out
    except BaseException:
        conn.disconnect()
        raise
    finally:
        packed.clear()  # an error's traceback keeps this frame: not the batch
        pool.release(conn)


def _is_script_error(exc: BaseException, word: str) -> bool:
    return isinstance(exc, rexc.ResponseError) and str(exc).startswith(f"TALLIES {word}")


_PAIR = b"$%d\r\n%b\r\n$%d\r\n%b\r\n".__mod__


@dataclass(frozen=True)
class _Fields:
    """The ``field1, delta1, ..., fieldn, deltan`` arguments of one keyed
    counter in one script call, encoded only when the call is sent
    (:meth:`resp`, inside :func:`_pipelined`: while Redis runs the calls
    before it).  ``resp`` formats a field and its delta with one ``%`` of
    a ``zip`` fed by ``map``: no Python bytecode a field (2026-12-06, this
    project's 2-vCPU machine, 10^6 fields: 0.38 s of CPU against 0.85 s for
    the slices and the per-argument ``%`` of before)."""

    keys: list[str]
    deltas: list[int]

    def _encoded(self) -> tuple[list[bytes], list[bytes]]:
        how = itertools.repeat("utf-8"), itertools.repeat("surrogateescape")
        kb = list(map(str.encode, self.keys, *how))
        return kb, list(map(b"%d".__mod__, self.deltas))

    def argv(self) -> list[bytes]:
        kb, db = self._encoded()
        flat: list[bytes] = [b""] * (2 * len(kb))
        flat[::2] = kb
        flat[1::2] = db
        return flat

    def resp(self) -> bytes:
        kb, db = self._encoded()
        return b"".join(map(_PAIR, zip(map(len, kb), kb, map(len, db), db, strict=True)))


def _argv(args: Sequence[Any]) -> list[Any]:
    """``args`` with each :class:`_Fields` spelt out (redis-py's pipeline)."""
    out: list[Any] = []
    for a in args:
        if type(a) is _Fields:
            out += a.argv()
        else:
            out.append(a)
    return out


# A run of one call: (name, its fields or None for a counter, the deltas)
_Run = tuple[str, list[str] | None, list[int]]


@dataclass
class _Call:
    """One script call of a batch: one part of one group (writer key)."""

    wkey: str
    part: int
    runs: list[_Run]
    keys: list[bytes]
    args: list[Any]  # bytes, and a _Fields for each keyed counter's fields
    # rate buckets and totals: (redis key, field, delta)
    rfields: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def fields(self) -> list[tuple[str, str | None, int]]:
        """Every delta of the call: (name, field or None for a counter, delta)."""
        out: list[tuple[str, str | None, int]] = []
        for name, ks, ds in self.runs:
            if ks is None:
                out.append((name, None, ds[0]))
            else:
                out += zip(itertools.repeat(name), ks, ds)
        return out


def _cut(runs: list[_Run], size: int) -> list[list[_Run]]:
    """``runs`` cut into parts of at most ``size`` fields, in order (a keyed
    counter's fields may span parts; list slices, no step a field)."""
    parts: list[list[_Run]] = []
    cur: list[_Run] = []
    room = size
    for name, ks, ds in runs:
        i, n = 0, len(ds)
        while i < n:
            if room == 0:
                parts.append(cur)
                cur, room = [], size
            j = min(n, i + room)
            whole = i == 0 and j == n
            cur.append((name, ks if ks is None or whole else ks[i:j], ds if whole else ds[i:j]))
            room -= j - i
            i = j
    if cur:
        parts.append(cur)
    return parts


# One read: (name, mode 'c' | 'h' | 'f', field, the Redis key or None for the
# name's data key)
_ReadOp = tuple[str, str, str | None, str | None]


@dataclass
class _Op:
    """The writer's operation whose outcome is not known yet (in flight)."""

    seq: int
    calls: list[_Call] | None = None  # an apply
    target: Target | None = None  # a take


class RedisBackend:
    """One connection pool (or cluster client) and the scripts; thread-safe.

    Implements the write-behind's ``Backend`` protocol.  Every operation of
    one writer runs under one lock, so the backend always knows which of its
    operations is in flight (sent, outcome unknown: at most one, since the
    write-behind settles a failed batch before it sends anything else) and
    the last one acknowledged.  ``read()`` reports that acknowledged seq; when
    an operation is in flight it reads the writer records in the same atomic
    script as the values and subtracts the parts of the in-flight batch that
    the records show applied, so a read is exact whatever the outcome.
    """

    def __init__(self, options: RedisOptions, url: str) -> None:
        self.options = options
        self.timeout = options.timeout
        self.url = redact_url(url)  # only ever shown (messages)
        self.prefix = options.prefix
        self._lock = threading.RLock()
        self._acked: dict[str, int] = {}
        self._inflight: dict[str, _Op] = {}
        # names whose key this backend has seen with the right type: their
        # kind can no longer clash (keys are never deleted, only zeroed)
        self._verified: set[str] = set()
        # set once a count at 10^18 or beyond has been seen: from then on a
        # batch of several parts is checked for overflow before it is sent
        self._near_edge = False
        # (client, script SHA) pairs loaded by this backend (see _run)
        self._loaded: set[tuple[int, str]] = set()
        common: dict[str, Any] = {
            "username": options.username,
            "password": options.password,
            "socket_timeout": options.timeout,
            "socket_connect_timeout": options.timeout,
        }
        if options.tls:
            common["ssl"] = True
            for k, v in options.ssl:
                common[k] = v
        self._client: Any
        if options.cluster:
            from redis.cluster import RedisCluster

            try:
                self._client = RedisCluster(
                    host=options.host,
                    port=options.port,
                    retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2, _RETRY_ON),
                    **common,
                )
            except UNAVAILABLE as exc:  # it asks the cluster for its slots now
                raise self._unavailable("connect", exc) from exc
        else:
            self._client = redis.Redis(
                host=options.host,
                port=options.port,
                db=options.db,
                retry=Retry(NoBackoff(), 1, _RETRY_ON),
                **common,
            )
        self._apply = self._client.register_script(APPLY_LUA)
        self._reset = self._client.register_script(RESET_LUA)
        self._readscript = self._client.register_script(READ_LUA)
        self._limitscript = self._client.register_script(LIMIT_LUA)
        self._windowscript = self._client.register_script(WINDOW_LUA)
        self._registerscript = self._client.register_script(REGISTER_LUA)
        self._scanscript = self._client.register_script(SCAN_LUA)

    # -- connection helpers ------------------------------------------------

    def _node_client(self, key: str) -> Any:
        """The client that serves ``key`` (the node that owns its slot)."""
        if not self.options.cluster:
            return self._client
        node = self._client.get_node_from_key(key)
        return self._client.get_redis_connection(node)

    def _all_nodes(self) -> list[Any]:
        if not self.options.cluster:
            return [self._client]
        return [self._client.get_redis_connection(n) for n in self._client.get_primaries()]

    def _refresh(self) -> None:
        if self.options.cluster:
            with contextlib.suppress(*UNAVAILABLE):
                self._client.nodes_manager.initialize()

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"{self.url}: {what}: Redis did not answer ({type(exc).__name__}: {exc})"
        )

    @contextlib.contextmanager
    def _answering(self, what: str) -> Iterator[None]:
        """Redis not answering inside the block: StoreUnavailableError (``what``)."""
        try:
            yield
        except UNAVAILABLE as exc:
            raise self._unavailable(what, exc) from exc

    def ping(self) -> None:
        try:
            for c in self._all_nodes():
                c.ping()
        except UNAVAILABLE as exc:
            raise self._unavailable("connect", exc) from exc
        except rexc.RedisError as exc:  # DB index out of range, wrong password, ...
            raise StoreUnavailableError(
                f"{self.url}: connect: Redis refused ({type(exc).__name__}: {exc})"
            ) from exc

    def close(self) -> None:
        with contextlib.suppress(*UNAVAILABLE):
            self._client.close()

    def writer_name(self, writer_id: object) -> str:
        """The writer id as it appears in keys (``host:pid:random`` is kept)."""
        w = str(writer_id)
        if _WRITER_OK.match(w):
            return w
        return hashlib.sha1(w.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    # -- running script calls ----------------------------------------------

    def _run(
        self, script: Any, calls: Sequence[tuple[list[Any], list[Any]]], what: str
    ) -> tuple[list[Any], list[tuple[int, BaseException]]]:
        """Send script calls (pipelined per node, in order; ``script`` is a
        redis-py ``Script``: its SHA, its source for a NOSCRIPT); retry
        NOSCRIPT, MOVED/ASK/TRYAGAIN and ``gap``.  Returns (results, refused
        calls)."""
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        refused: list[tuple[int, BaseException]] = []
        for _round in range(6):
            if not todo:
                break
            by_node: dict[int, tuple[Any, list[int]]] = {}
            again: list[int] = []
            try:
                for i in todo:
                    client = self._node_client(calls[i][0][0])
                    by_node.setdefault(id(client), (client, []))[1].append(i)
                for client, idxs in by_node.values():
                    if len(idxs) > 1 and (id(client), script.sha) not in self._loaded:
                        # a server without the script would answer NOSCRIPT to
                        # every call of a big batch, all sent twice: load it first
                        client.script_load(script.script)
                        self._loaded.add((id(client), script.sha))
                    if self.options.cluster:
                        pipe = client.pipeline(transaction=False)
                        for i in idxs:
                            keys, args = calls[i]
                            pipe.evalsha(script.sha, len(keys), *keys, *_argv(args))
                        replies = pipe.execute(raise_on_error=False)
                    else:
                        sha = script.sha.encode()
                        enc = client.connection_pool.get_encoder().encode
                        replies = _pipelined(
                            client, (_pack_evalsha(enc, sha, *calls[i]) for i in idxs)
                        )
                    noscript = False
                    for i, r in zip(idxs, replies, strict=False):
                        if not isinstance(r, BaseException):
                            results[i] = r
                        elif isinstance(r, rexc.NoScriptError):
                            noscript = True
                            again.append(i)
                        elif isinstance(r, (rexc.AskError, rexc.TryAgainError)) or _is_script_error(
                            r, "gap"
                        ):
                            again.append(i)
                        elif isinstance(r, UNAVAILABLE):
                            raise r
                        else:
                            refused.append((i, r))
                    if noscript:
                        client.script_load(script.script)
            except UNAVAILABLE as exc:
                raise self._unavailable(what, exc) from exc
            # a part after a refused part of the same writer key can only
            # answer "gap": it is not applied, and the batch stays unacknowledged
            blocked = {calls[i][0][0] for i, _ in refused}
            todo = sorted(i for i in again if calls[i][0][0] not in blocked)
            if todo:
                self._refresh()
        if todo:
            raise StoreUnavailableError(
                f"{self.url}: {what}: {len(todo)} script call(s) kept being redirected; will retry"
            )
        return results, refused

    # -- apply -----------------------------------------------------------------

    def plan(self, writer_id: object, batch: Batch) -> list[_Call]:
        """The script calls that apply ``batch``, in sending order.

        Deterministic: the same batch gives the same calls (names sorted, a
        keyed counter's fields in its dict's order: the write-behind never
        changes a batch once built, and a retry sends that same batch), so a
        retry sends the same ``(seq, part)`` with the same deltas.  The fields
        are not sorted: sorting 10^6 keys costs about as much as the rest of
        the client's work for them.  A newly registered counter with no delta gets an ``INCRBY 0``
        (its key then exists, at 0).
        """
        seq = batch.seq
        if not 0 <= seq <= _MAX_SEQ:
            raise ValueError(f"batch sequence number {seq} is outside [0, {_MAX_SEQ}]")
        writer = self.writer_name(writer_id)
        cluster = self.options.cluster
        counters = {n: int(d) for n, d in batch.counters.items() if d}
        for name, kind in batch.names.items():
            if kind == "counter" and name not in counters:
                counters[name] = 0
        keyed = {n: m for n, m in batch.keyed.items() if m}  # a key at 0: listed at 0
        # groups: tag -> names (sorted); one group on a standalone server
        groups: dict[str | None, list[str]] = {}
        rated = batch.rates.keys() | batch.keyed_rates.keys()
        for name in sorted(counters.keys() | keyed.keys() | rated):
            groups.setdefault(tag_of(name) if cluster else None, []).append(name)
        calls: list[_Call] = []
        ttl = str(self.options.writer_ttl_ms).encode()
        size = self.options.batch
        pfx = (self.prefix + "{").encode()
        for tag in sorted(groups, key=lambda t: "" if t is None else t):
            runs: list[_Run] = []
            for name in groups[tag]:
                if name in counters:
                    runs.append((name, None, [counters[name]]))
                elif name in keyed:
                    m = keyed[name]
                    runs.append((name, list(m), list(m.values())))
            wkey = writer_key(self.prefix, writer, tag)
            wkey_b = wkey.encode("utf-8", "surrogateescape")
            seq_b = str(seq).encode()
            for part, chunk in enumerate(_cut(runs, size)):
                keys = [wkey_b]
                args: list[Any] = [seq_b, str(part).encode(), ttl]
                for name, ks, ds in chunk:
                    keys.append(pfx + name.encode("utf-8", "surrogateescape") + b"}")
                    if ks is None:
                        args += (b"c", b"%d" % ds[0])
                    else:
                        args += (b"h", b"%d" % len(ks), _Fields(ks, ds))
                calls.append(_Call(wkey, part, chunk, keys, args))
            rparts = self._rate_parts([n for n in groups[tag] if n in rated], batch)
            done = sum(1 for c in calls if c.wkey == wkey)  # this group's parts so far
            for rpart, (keys_r, args_r, rf) in enumerate(rparts, start=done):
                args = [seq_b, str(rpart).encode(), ttl, *args_r]
                calls.append(_Call(wkey, rpart, [], [wkey_b, *keys_r], args, rf))
        return calls

    def _rate_parts(
        self, names: list[str], batch: Batch
    ) -> list[tuple[list[bytes], list[bytes], list[tuple[str, str, int]]]]:
        """The rate ops of one group, cut into parts of at most ``batch``
        fields: a plain rate's total (``h`` on its meta key, field ``t``) and
        each bucket (``e``: the bucket key, its expiry, fields)."""
        ops: list[tuple[str, str, int | None, list[tuple[str, int]]]] = []
        for name in names:
            spec = batch.rate_specs[name]
            m = batch.rates.get(name)
            if m:
                ops.append((rate_meta_key(self.prefix, name), "h", None, [("t", sum(m.values()))]))
                for slot in sorted(m):
                    ops.append(
                        (
                            rate_bucket_key(self.prefix, name, slot),
                            "e",
                            spec.keep_ms(slot),
                            [("n", m[slot])],
                        )
                    )
            by_slot: dict[int, list[tuple[str, int]]] = {}
            for k, b in sorted(batch.keyed_rates.get(name, {}).items()):
                for slot, d in b.items():
                    by_slot.setdefault(slot, []).append((k, d))
            for slot in sorted(by_slot):
                ops.append(
                    (
                        rate_bucket_key(self.prefix, name, slot),
                        "e",
                        spec.keep_ms(slot),
                        by_slot[slot],
                    )
                )
        size = self.options.batch
        parts: list[tuple[list[bytes], list[bytes], list[tuple[str, str, int]]]] = []
        keys: list[bytes] = []
        args: list[bytes] = []
        rf: list[tuple[str, str, int]] = []
        n = 0
        for rkey, kind, at, items in ops:
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                kb = rkey.encode("utf-8", "surrogateescape")
                if n + len(chunk) > size or kb in keys:
                    parts.append((keys, args, rf))
                    keys, args, rf, n = [], [], [], 0
                keys.append(kb)
                args.append(kind.encode())
                if at is not None:
                    args.append(b"%d" % at)
                args.append(b"%d" % len(chunk))
                for f, d in chunk:
                    args += (f.encode("utf-8", "surrogateescape"), b"%d" % d)
                    rf.append((rkey, f, d))
                n += len(chunk)
        if keys:
            parts.append((keys, args, rf))
        return parts

    def apply(self, writer_id: str, batch: Batch) -> None:
        """Apply ``batch`` exactly once (idempotent per ``(writer_id, batch.seq)``).

        Raises :class:`StoreUnavailableError` when Redis does not answer (some
        parts may be applied; the same batch sent again applies the rest),
        :class:`CountOverflowError` when a count would leave int64 and nothing
        of the batch is applied, and :class:`CorruptStoreError` when a key
        holds something that is not a tallies count.
        """
        writer = self.writer_name(writer_id)
        with self._lock:
            calls = self.plan(writer, batch)
            self._inflight[writer] = _Op(batch.seq, calls=calls)
            if len(calls) > 1:
                self._precheck_kinds(calls, batch.seq)
                if self._near_edge:
                    self._precheck(calls, batch.seq)
            results, refused = self._run(self._apply, [(c.keys, c.args) for c in calls], "flush")
            if any(_text(r) == "big" for r in results if r is not None):
                self._near_edge = True
            if refused:
                applied = any(r is not None for r in results)
                if any(_is_script_error(e, "overflow") for _, e in refused):
                    self._near_edge = True
                raise self._refusal(calls, refused, applied)
            self._replicated([c.wkey for c in calls], f"flush of {batch.describe()}")
            self._inflight.pop(writer, None)
            self._acked[writer] = max(self._acked.get(writer, 0), batch.seq)
            for c in calls:
                self._verified.update(name for name, _, _ in c.runs)

    def _by_node(self, items: Iterable[_T], key: Callable[[_T], str]) -> list[tuple[Any, list[_T]]]:
        """``items`` grouped by the node that holds each one's Redis key
        ``key(item)`` (one group on a standalone server): ``(client, items)``."""
        by_node: dict[int, tuple[Any, list[_T]]] = {}
        for item in items:
            client = self._node_client(key(item))
            by_node.setdefault(id(client), (client, []))[1].append(item)
        return list(by_node.values())

    def _data_key(self, name: str) -> str:
        return data_key(self.prefix, name)

    def _precheck_kinds(self, calls: list[_Call], seq: int) -> None:
        """Before a batch of several calls: is a name of it a key of the other
        type (a counter where the batch has a keyed counter, or the reverse)?

        One call refuses a wrong type atomically (nothing applied: a
        KindClashError the write-behind resolves), but several would leave
        the calls before the refused one applied.  So the names this backend
        has not yet seen with the right type are checked first (one ``TYPE``
        each, pipelined per node), unless a part of the batch is already
        applied (a retry: the scripts decide).  A key of the other type
        created by another client between this check and the scripts can
        still refuse a later call: the batch then stays in flight (retried)
        until that key is gone, as an overflow race does."""
        want: dict[str, str] = {}
        for c in calls:
            for name, ks, _ in c.runs:
                if name not in self._verified:
                    want[name] = "string" if ks is None else "hash"
        if not want:
            return
        with self._answering("flush"):
            for rec in self._get_many([c.wkey for c in calls]):
                if rec is not None and int(rec.split(b":")[0]) >= seq:
                    return
            clash: list[tuple[str, str | None]] = []
            for client, names in self._by_node(want, self._data_key):
                pipe = client.pipeline(transaction=False)
                for name in names:
                    pipe.type(data_key(self.prefix, name))
                for name, t in zip(names, pipe.execute(), strict=True):
                    if _text(t) not in ("none", want[name]):
                        clash.append((name, None))
        if clash:
            raise KindClashError(
                f"{self.url}: {', '.join(repr(n) for n, _ in clash)} registered with the "
                "other kind; nothing of the flush was applied",
                clash,
            )

    def _replicated(self, keys: Sequence[str], what: str) -> None:
        """``wait=N``: return once N replicas of each node that holds one of
        ``keys`` have every write made so far on that node; else raise
        :class:`StoreUnavailableError` (the operation stays in flight and is
        sent again with the same numbers: its applied parts answer ``dup``).

        ``WAIT`` counts the replicas that reached the replication offset of
        the calling connection's last write, and a retried part that answers
        ``dup`` writes nothing.  So each node first gets a ``PEXPIRE`` of the
        writer (or reset) record on the connection that then sends ``WAIT``:
        a write that brings that connection's offset past every earlier write
        on the node, this operation's included, whichever connection made it.
        ``WAIT`` waits at most half of ``timeout`` (the socket waits for all of
        it).
        """
        n = self.options.wait
        if not n:
            return
        ms = max(1, int(self.options.timeout * 500))
        by_node: dict[int, tuple[Any, str]] = {}
        for key in keys:
            client = self._node_client(key)
            by_node.setdefault(id(client), (client, key))
        for client, key in by_node.values():
            try:
                pipe = client.pipeline(transaction=False)
                pipe.pexpire(key, self.options.writer_ttl_ms)
                pipe.execute_command("WAIT", n, ms)
                _, acked = pipe.execute()
            except UNAVAILABLE as exc:
                raise self._unavailable(what, exc) from exc
            if int(acked) < n:
                raise StoreUnavailableError(
                    f"{self.url}: {what}: WAIT {n}: {int(acked)} of {n} replica(s) "
                    f"acknowledged it within {ms} ms; it stays in flight and is sent "
                    "again with the same numbers (applied parts answer dup)"
                )

    def _precheck(self, calls: list[_Call], seq: int) -> None:
        """Before a batch of several parts: would a count leave int64?

        Each script call checks its own part atomically, but an overflow
        refused in a later part would leave the earlier parts applied, and
        CountOverflowError promises that nothing was.  So once this backend
        has seen a count at 10^18 or beyond (the only way a sum can leave
        int64), a batch of several parts is first checked here, unless a part
        of it is already applied (a retry: the scripts decide).  A count
        pushed to the edge by another writer between this check and the
        scripts (or before this backend saw any count near the edge) can
        still make a later part refuse after earlier ones applied: then the
        batch stays in flight and is retried, nothing lost or doubled, until
        the count is back in range.
        """
        with self._answering("flush"):
            records = self._get_many([c.wkey for c in calls])
            for rec in records:
                if rec is not None and int(rec.split(b":")[0]) >= seq:
                    return  # a retry: parts may be applied, the scripts decide
            bad: list[tuple[str, str | None]] = []
            # one GET per counter and one HMGET per keyed counter, pipelined per node
            deltas: dict[str, dict[str | None, int]] = {}
            for c in calls:
                for name, key, d in c.fields:
                    deltas.setdefault(name, {})[key] = d
            for client, names in self._by_node(deltas, self._data_key):
                pipe = client.pipeline(transaction=False)
                for name in names:
                    fields = list(deltas[name])
                    if fields == [None]:
                        pipe.get(data_key(self.prefix, name))
                    else:
                        pipe.hmget(data_key(self.prefix, name), fields)
                replies = pipe.execute(raise_on_error=False)
                for name, raw in zip(names, replies, strict=True):
                    if isinstance(raw, BaseException):
                        continue  # a wrong type: the script says so
                    fields = list(deltas[name])
                    values = [raw] if fields == [None] else list(raw)
                    for key, v in zip(fields, values, strict=True):
                        if v is None:
                            continue
                        with contextlib.suppress(ValueError):
                            if not INT64_MIN <= int(v) + deltas[name][key] <= INT64_MAX:
                                bad.append((name, key))
        if bad:
            raise CountOverflowError(
                f"{self.url}: the flush would move {len(bad)} count(s) outside the signed "
                f"64-bit range (first: {bad[0][0]!r}"
                + (f", key {bad[0][1]!r})" if bad[0][1] is not None else ")")
                + "; nothing of it was applied",
                bad,
            )

    def _get_many(self, keys: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        unique = list(dict.fromkeys(keys))
        got: dict[str, bytes | None] = {}
        for client, ks in self._by_node(unique, str):
            pipe = client.pipeline(transaction=False)
            for k in ks:
                pipe.get(k)
            for k, v in zip(ks, pipe.execute(), strict=False):
                got[k] = v
        for k in unique:
            out.append(got[k])
        return out

    def _refusal(
        self, calls: list[_Call], refused: list[tuple[int, BaseException]], applied: bool
    ) -> StoreError:
        overflow = [e for _, e in refused if _is_script_error(e, "overflow")]
        wrong = [e for _, e in refused if _is_script_error(e, "wrong type")]
        first = str(refused[0][1])
        if wrong and len(wrong) == len(refused) and not applied:
            clash: list[tuple[str, str | None]] = []
            for e in wrong:
                m = re.match(r"TALLIES wrong type: (.*) is a \w+, not a", str(e))
                name = name_from_data_key(self.prefix, m.group(1)) if m else None
                if name is not None:
                    clash.append((name, None))
            if len(clash) == len(wrong):
                return KindClashError(
                    f"{self.url}: {first}; nothing of the flush was applied", clash
                )
        if overflow and len(overflow) == len(refused) and not applied:
            items: list[tuple[str, str | None]] = []
            for e in overflow:
                m = re.match(r"TALLIES overflow: (.*?)(?: field (.*))? is -?\d+, adding", str(e))
                if m:
                    name = name_from_data_key(self.prefix, m.group(1))
                    if name is not None:
                        items.append((name, m.group(2)))
            return CountOverflowError(
                f"{self.url}: the flush would move a count outside the signed 64-bit range "
                f"({first}); nothing of it was applied",
                items,
            )
        if overflow:
            return StoreUnavailableError(
                f"{self.url}: part of the flush was applied and a later part would move a "
                f"count outside the signed 64-bit range ({first}); the batch stays in flight "
                "and is retried until the count is back in range"
            )
        return CorruptStoreError(
            f"{self.url}: Redis refused {len(refused)} part(s) of the flush: {first}"
        )

    # -- take (reset) and fence -------------------------------------------------

    def _reset_call(self, writer: str, seq: int, target: Target, mode: str) -> Any:
        keys = [
            data_key(self.prefix, target.name),
            reset_key(self.prefix, writer, target.name),
        ]
        if mode == "q":  # a rate: its meta key, and every bucket that may exist
            import time

            keys[0] = rate_meta_key(self.prefix, target.name)
            spec = self.rate_spec(target.name)
            if spec is not None:
                cur = time.time_ns() // spec.res_ns
                keep = -(-max(spec.window_ns, 60_000_000_000) // spec.res_ns)
                for slot in range(cur - spec.nb - keep - 2, cur + 3):
                    keys.append(rate_bucket_key(self.prefix, target.name, slot))
        args = [mode, str(seq), str(self.options.writer_ttl_ms)]
        if target.key is not None and mode == "f":
            args.append(target.key)
        results, refused = self._run(self._reset, [(keys, args)], f"reset of {target.name!r}")
        if refused:
            raise CorruptStoreError(f"{self.url}: reset of {target.name!r}: {refused[0][1]}")
        return results[0]

    def take(self, writer_id: str, seq: int, target: Target) -> int | dict[str, int]:
        """Read and zero ``target`` atomically (idempotent per seq); return what was stored."""
        writer = self.writer_name(writer_id)
        mode = (
            "c"
            if target.kind == "counter"
            else "q"
            if target.kind == "rate"
            else "h"
            if target.key is None
            else "f"
        )
        with self._lock:
            self._inflight[writer] = _Op(seq, target=target)
            raw = self._reset_call(writer, seq, target, mode)
            self._replicated([reset_key(self.prefix, writer, target.name)], "reset")
            self._inflight.pop(writer, None)
            self._acked[writer] = max(self._acked.get(writer, 0), seq)
        where = data_key(self.prefix, target.name)
        if mode == "q":
            return self._int(raw, rate_meta_key(self.prefix, target.name))
        if mode == "h":
            it = iter(raw or [])
            return {_text(k): self._int(v, where) for k, v in zip(it, it, strict=False)}
        return self._int(raw, where)

    def fence(self, writer_id: str, seq: int) -> bool:
        """True if take ``seq`` happened; else make sure it never can."""
        writer = self.writer_name(writer_id)
        with self._lock:
            op = self._inflight.get(writer)
            if op is None or op.seq != seq or op.target is None:
                raise StoreError(
                    f"{self.url}: cannot settle reset {seq}: this connection did not send it"
                )
            happened = bool(self._reset_call(writer, seq, op.target, "x"))
            self._replicated([reset_key(self.prefix, writer, op.target.name)], "reset")
            self._inflight.pop(writer, None)
            self._acked[writer] = max(self._acked.get(writer, 0), seq)
        return happened

    # -- reading -----------------------------------------------------------------

    def _int(self, raw: Any, where: str) -> int:
        if raw is None or raw is False:
            return 0
        try:
            v = int(raw)
        except ValueError:
            raise CorruptStoreError(
                f"{self.url}: {where} holds {raw!r}, not an integer count"
            ) from None
        if not -(10**18) < v < 10**18:
            self._near_edge = True
        return v

    def kind_of(self, name: str) -> Kind | None:
        dkey = data_key(self.prefix, name)
        try:
            t = _text(self._node_client(dkey).type(dkey))
        except UNAVAILABLE as exc:
            raise self._unavailable(f"looking up {name!r}", exc) from exc
        if t == "string":
            return "counter"
        if t == "hash":
            return "keyed"
        if t == "none":
            return None
        raise CorruptStoreError(f"{self.url}: {dkey} is a Redis {t}, not a tallies count")

    def names(self) -> list[tuple[str, Kind]]:
        """Every name in Redis under the prefix, sorted, with its kind.

        ``SCAN`` on every master; keys of other types under ``P{`` are skipped.
        A keyed counter exists in Redis while it has a key.
        """
        found: dict[str, Kind] = {}
        pattern = scan_pattern(self.prefix)
        try:
            for client in self._all_nodes():
                keys = list(client.scan_iter(match=pattern, count=1000))
                for start in range(0, len(keys), 1000):
                    chunk = keys[start : start + 1000]
                    pipe = client.pipeline(transaction=False)
                    for k in chunk:
                        pipe.type(k)
                    for k, t in zip(chunk, pipe.execute(), strict=False):
                        name = name_from_data_key(self.prefix, _text(k))
                        if name is None:
                            continue
                        if _text(t) == "string":
                            found[name] = "counter"
                        elif _text(t) == "hash":
                            found[name] = "keyed"
        except UNAVAILABLE as exc:
            raise self._unavailable("listing names", exc) from exc
        return sorted(found.items())

    def read(self, writer_id: str, query: Query) -> Read:
        """The queried values, and the seq they reflect for this writer."""
        writer = self.writer_name(writer_id)
        with self._lock:  # no batch of this writer commits between the listing and the reads
            return self._read_locked(writer, query)

    def _read_locked(self, writer: str, query: Query) -> Read:
        ops: list[_ReadOp] = []
        if query.counters is None or query.keyed is None:
            # listed under the lock: a name whose first batch committed after
            # the listing would be left out of a read that counts that batch
            # as stored (its deltas then in neither part)
            every = self.names()
        if query.counters is None:
            ops += [(n, "c", None, None) for n, k in every if k == "counter"]
        else:
            ops += [(n, "c", None, None) for n in query.counters]
        if query.keyed is None:
            ops += [(n, "h", None, None) for n, k in every if k == "keyed"]
        else:
            ops += [(n, "h", None, None) for n in query.keyed]
        ops += [(n, "f", k, None) for n, k in query.keys]
        rinfo = self._rate_ops(query.rates, ops)
        op = self._inflight.get(writer)
        acked = self._acked.get(writer, 0)
        if op is None:
            return self._assemble(acked, ops, self._read_plain(ops), rinfo)
        return self._read_inflight(writer, op, ops, rinfo)

    def _rate_ops(
        self, queries: Sequence[RateQuery], ops: list[_ReadOp]
    ) -> list[tuple[int, RateQuery, int | None]]:
        """Append the reads of rate queries to ``ops``: a plain rate's total
        and each bucket of the range.  Returns (op index, query, slot or None
        for the total)."""
        out: list[tuple[int, RateQuery, int | None]] = []
        for q in queries:
            if q.spec.kind == "rate":
                out.append((len(ops), q, None))
                ops.append((q.name, "f", "t", rate_meta_key(self.prefix, q.name)))
            for slot in range(q.lo, q.hi + 1):
                bkey = rate_bucket_key(self.prefix, q.name, slot)
                out.append((len(ops), q, slot))
                if q.spec.kind == "rate":
                    ops.append((q.name, "f", "n", bkey))
                elif q.key is None:
                    ops.append((q.name, "h", None, bkey))
                else:
                    ops.append((q.name, "f", q.key, bkey))
        return out

    def _read_plain(self, ops: list[_ReadOp]) -> list[Any]:
        values: list[Any] = [None] * len(ops)
        try:
            # a keyed counter's hash a page at a time (_scan_hash); a keyed rate's
            # bucket (its own key) with HGETALL below
            hashes = [i for i, op in enumerate(ops) if op[1] == "h" and op[3] is None]
            for i in hashes:
                values[i] = self._scan_hash(ops[i][0])
            rest = [i for i, op in enumerate(ops) if not (op[1] == "h" and op[3] is None)]
            by_node = self._by_node(rest, lambda i: ops[i][3] or data_key(self.prefix, ops[i][0]))
            for client, idxs in by_node:
                for start in range(0, len(idxs), 1000):
                    chunk = idxs[start : start + 1000]
                    pipe = client.pipeline(transaction=False)
                    for i in chunk:
                        name, mode, key, rkey = ops[i]
                        dkey = rkey or data_key(self.prefix, name)
                        if mode == "c":
                            pipe.get(dkey)
                        elif mode == "h":
                            pipe.hgetall(dkey)
                        else:
                            pipe.hget(dkey, key)
                    for i, raw in zip(chunk, pipe.execute(raise_on_error=False), strict=False):
                        if isinstance(raw, BaseException):
                            if isinstance(raw, UNAVAILABLE):
                                raise raw
                            raise CorruptStoreError(
                                f"{self.url}: reading {ops[i][0]!r}: {raw}"
                            ) from raw
                        values[i] = raw
        except UNAVAILABLE as exc:
            raise self._unavailable("reading", exc) from exc
        return values

    def _scan_hash(self, name: str) -> dict[str, int]:
        """Every field of a keyed counter's hash, a page (``SCAN_COUNT``
        fields) per call: Redis is never blocked for more than one page,
        however many keys (``HGETALL`` of a million fields blocks it for the
        whole reply: 0.45-0.64 s measured; a page of 2000 fields takes it
        1.7-2.3 ms).  Each page is decoded (its counts made ints and checked)
        while Redis reads the next one (:meth:`_hash_pages` asks for it
        first): two CPUs at work.  The dict is built once at the end, from
        the pages' lists: a dict grown a page at a time cost 0.1-0.2 s more
        of CPU at a million fields (measured twice).

        How a page travels depends on who parses replies (:func:`_parses_in_c`).
        With hiredis (the ``redis`` extra) it is a plain ``HSCAN``, parsed in
        C.  With redis-py's pure-Python parser (about 1 us a field: 2 s of
        CPU at a million fields) and on a cluster it is the scan script
        (``scan.lua``), whose page is one JSON string that ``json.loads``
        decodes in C.  The script costs Redis more: Lua's table of the page
        and cjson add a third to ``HSCAN``'s own 0.8-0.9 us a field on Redis
        7.0.15 and about double it on Redis 8.0.6 (a snapshot of 10^6 fields,
        INFO commandstats: 0.85-1.2 s of Redis CPU plain against 1.1-1.6 s
        scripted on 7.0, 0.8-0.9 s against 1.4-2.5 s on 8.0; 2026-12-06, this
        project's 2-vCPU machine under load 5-7).  Both clients take about
        0.6 s of CPU, most of it the dict.

        Called under ``self._lock`` with no operation in flight: no batch of
        this writer can commit between two pages, so the pages and the
        writer's acknowledged seq stay consistent.  Another writer's batch
        may land between two pages (a field then shows its count before or
        after it, as an ``HGETALL`` before or after it would; the parts of
        one batch were never applied together anyway).  A field that HSCAN
        returns twice keeps its later value."""
        dkey = data_key(self.prefix, name)
        fields_of: list[list[str]] = []
        values_of: list[list[int]] = []
        # closed at once on a bad page: its connection then too
        with contextlib.closing(self._hash_pages(name, dkey)) as pages:
            for page in pages:
                try:
                    fields, counts = hash_page(page)
                except ValueError as exc:
                    raise CorruptStoreError(f"{self.url}: reading {name!r}: {exc}") from exc
                try:
                    values = list(map(int, counts))  # int() takes text and bytes alike
                except ValueError:  # a bad count: _int names it (CorruptStoreError)
                    for f, c in zip(fields, counts, strict=True):
                        self._int(_text(c), f"{dkey} field {f!r}")
                    raise
                self._note_edge(values)
                fields_of.append(fields)
                values_of.append(values)
        chain = itertools.chain.from_iterable
        return dict(zip(chain(fields_of), chain(values_of), strict=True))

    def _hash_pages(self, name: str, dkey: str) -> Generator[bytes | list[bytes], None, None]:
        """The pages of ``dkey``, in order, each as :func:`hash_page` takes
        it: ``HSCAN``'s flat list where the connection parses in C, else the
        scan script's JSON.  On a standalone server the call for the next
        page is sent (on one pooled connection) BEFORE the current page is
        yielded, so Redis reads it while the caller decodes this one; a
        NOSCRIPT is answered with ``SCRIPT LOAD`` and the same cursor again,
        a dropped connection is retried as the client's ``Retry`` says (from
        the page not read yet), any other failure disconnects, so that no
        reply is read out of turn.  On a cluster each page is a script call
        of :meth:`_run` (redirections)."""
        script = self._scanscript
        cursor: bytes = b"0"
        if self.options.cluster:
            while True:
                results, refused = self._run(script, [([dkey], [cursor, SCAN_COUNT])], "reading")
                if refused:
                    raise CorruptStoreError(f"{self.url}: reading {name!r}: {refused[0][1]}")
                cursor, page = results[0]
                yield page
                if int(cursor) == 0:
                    return
        pool = self._client.connection_pool
        enc = pool.get_encoder().encode
        sha = script.sha.encode()
        conn = _get_connection(pool)
        plain = _parses_in_c(conn)
        sent = False

        def send() -> None:
            nonlocal sent
            if plain:
                parts = (_bulk(enc(dkey)), _bulk(cursor), _bulk(b"%d" % SCAN_COUNT))
                conn.send_packed_command((b"*5\r\n$5\r\nHSCAN\r\n%b%b$5\r\nCOUNT\r\n%b" % parts,))
            else:
                conn.send_packed_command((_pack_evalsha(enc, sha, [dkey], [cursor, SCAN_COUNT]),))
            sent = True

        def one_reply() -> Any:
            if not sent:
                send()
            return conn.read_response()

        def dropped(_error: BaseException) -> None:
            nonlocal sent
            sent = False
            conn.disconnect()

        try:
            while True:
                try:
                    reply = conn.retry.call_with_retry(one_reply, dropped)
                except rexc.NoScriptError:
                    conn.send_command("SCRIPT", "LOAD", script.script)
                    conn.read_response()
                    sent = False
                    continue
                except rexc.ResponseError as exc:
                    raise CorruptStoreError(f"{self.url}: reading {name!r}: {exc}") from exc
                sent = False
                cursor, page = reply
                last = int(cursor) == 0
                if not last:
                    with contextlib.suppress(*_RETRY_ON):  # then one_reply sends it
                        send()
                yield page
                if last:
                    return
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def _read_inflight(
        self,
        writer: str,
        op: _Op,
        ops: list[_ReadOp],
        rinfo: list[tuple[int, RateQuery, int | None]],
    ) -> Read:
        """Values and writer records in one atomic read per group; then the
        parts of the in-flight batch that the records show applied are
        subtracted (or a take that happened is acknowledged)."""
        cluster = self.options.cluster
        groups: dict[str | None, list[int]] = {}
        for i, (name, _, _, _) in enumerate(ops):
            groups.setdefault(tag_of(name) if cluster else None, []).append(i)
        target = op.target
        if target is not None:
            t = tag_of(target.name) if cluster else None
            groups.setdefault(t, [])
        calls: list[tuple[list[str], list[str]]] = []
        meta: list[tuple[str, list[int], bool]] = []
        for tag, idxs in groups.items():
            wkey = writer_key(self.prefix, writer, tag)
            rkey = wkey
            has_take = target is not None and (not cluster or tag_of(target.name) == tag)
            if target is not None and has_take:
                rkey = reset_key(self.prefix, writer, target.name)
            for start in range(0, max(len(idxs), 1), 500):
                chunk = idxs[start : start + 500]
                keys = [wkey, rkey]
                args: list[str] = []
                for i in chunk:
                    name, mode, key, okey = ops[i]
                    keys.append(okey or data_key(self.prefix, name))
                    args += [mode] if mode != "f" else ["f", key or ""]
                calls.append((keys, args))
                meta.append((wkey, chunk, has_take))
        results, refused = self._run(self._readscript, calls, "reading")
        if refused:
            raise CorruptStoreError(f"{self.url}: reading: {refused[0][1]}")
        values: list[Any] = [None] * len(ops)
        seq = op.seq - 1
        for (wkey, chunk, has_take), res in zip(meta, results, strict=False):
            wrec, rrec, vals = res[0], res[1], res[2:]
            for i, v in zip(chunk, vals, strict=False):
                values[i] = v
            if has_take and rrec:
                r1, _, body = _text(rrec).partition(":")
                if r1.isdigit() and int(r1) == op.seq and body != "!":
                    seq = op.seq  # the take happened
            if op.calls is not None and wrec:
                rs, _, rp = _text(wrec).partition(":")
                if rs.isdigit() and rp.isdigit() and int(rs) == op.seq:
                    applied = [c for c in op.calls if c.wkey == wkey and c.part <= int(rp)]
                    self._subtract(ops, chunk, values, applied)
        for v in values:
            if isinstance(v, dict):  # a keyed counter's, from _subtract
                self._note_edge(v.values())
        return self._assemble(seq, ops, values, rinfo)

    @staticmethod
    def _subtract(
        ops: list[_ReadOp],
        idxs: list[int],
        values: list[Any],
        applied: list[_Call],
    ) -> None:
        """Remove the deltas of applied parts of the in-flight batch from values."""
        counters: dict[str, int] = {}
        keyed: dict[str, dict[str, int]] = {}
        rated: dict[str, dict[str, int]] = {}  # rate key -> field -> delta
        for c in applied:
            for name, key, d in c.fields:
                if key is None:
                    counters[name] = counters.get(name, 0) + d
                else:
                    m = keyed.setdefault(name, {})
                    m[key] = m.get(key, 0) + d
            for bkey, f, d in c.rfields:
                fm = rated.setdefault(bkey, {})
                fm[f] = fm.get(f, 0) + d
        for i in idxs:
            name, mode, key, rkey = ops[i]
            if rkey is not None:
                rm = rated.get(rkey)
                if not rm:
                    continue
                if mode == "f" and key is not None and key in rm:
                    values[i] = int(values[i] or 0) - rm[key]
                elif mode == "h":
                    flat = list(values[i] or [])
                    have = {_text(k): int(v) for k, v in zip(flat[::2], flat[1::2], strict=False)}
                    for k, dv in rm.items():
                        have[k] = have.get(k, 0) - dv
                    values[i] = have
                continue
            if mode == "c" and name in counters:
                values[i] = int(values[i] or 0) - counters[name]
            elif mode == "f" and key is not None and key in keyed.get(name, {}):
                values[i] = int(values[i] or 0) - keyed[name][key]
            elif mode == "h" and name in keyed:
                flat = list(values[i] or [])
                have = {_text(k): int(v) for k, v in zip(flat[::2], flat[1::2], strict=False)}
                for k, dv in keyed[name].items():
                    have[k] = have.get(k, 0) - dv
                    if not have[k]:
                        del have[k]
                values[i] = have

    def _assemble(
        self,
        seq: int,
        ops: list[_ReadOp],
        values: list[Any],
        rinfo: list[tuple[int, RateQuery, int | None]] = (),  # type: ignore[assignment]
    ) -> Read:
        out = Read(seq)
        rate_ops = {i for i, _, _ in rinfo}
        for i, q, slot in rinfo:
            _, buckets = out.rates.setdefault(q.name, (0, {}))
            raw = values[i]
            where = ops[i][3] or q.name
            if slot is None:
                out.rates[q.name] = (self._int(raw, where), buckets)
            elif q.spec.kind == "rate":
                v = self._int(raw, where)
                if v:
                    buckets.setdefault("", {})[slot] = v
            elif q.key is not None:
                v = self._int(raw, where)
                if v:
                    buckets.setdefault(q.key, {})[slot] = v
            else:
                if isinstance(raw, dict):
                    items = list(raw.items())
                else:
                    flat = list(raw or [])
                    items = list(zip(flat[::2], flat[1::2], strict=False))
                for k, v in items:
                    n = self._int(v, where)
                    if n:
                        buckets.setdefault(_text(k), {})[slot] = n
        for i, ((name, mode, key, _), raw) in enumerate(zip(ops, values, strict=False)):
            if i in rate_ops:
                continue
            dkey = data_key(self.prefix, name)
            if mode == "c":
                out.counters[name] = self._int(raw, dkey)
            elif mode == "f":
                assert key is not None
                out.keyed.setdefault(name, {})[key] = self._int(raw, f"{dkey} field {key!r}")
            elif isinstance(raw, dict):  # _scan_hash's or _subtract's: checked counts
                if name in out.keyed:
                    out.keyed[name].update(raw)
                else:  # the read's own dict: no copy
                    out.keyed[name] = raw
            else:  # the read script's HGETALL: a flat list of bytes
                flat = list(raw or [])
                items = list(zip(flat[::2], flat[1::2], strict=False))
                m = out.keyed.setdefault(name, {})
                m.update(self._hash(items, dkey))
        return out

    # -- rates (tallies.stores._wbrates) ------------------------------------------

    def _register(self, keys: list[str], args: list[str], what: str) -> list[Any]:
        try:
            out: list[Any] = self._registerscript(
                keys=keys, args=args, client=self._node_client(keys[0])
            )
        except rexc.ResponseError as exc:
            if _is_script_error(exc, "clash"):
                raise
            raise CorruptStoreError(f"{self.url}: {what}: {exc}") from exc
        except UNAVAILABLE as exc:
            raise self._unavailable(what, exc) from exc
        return out

    def register_rate(self, name: str, spec: RateSpec) -> RateSpec:
        """Record rate ``name`` (HSETNX on its meta key) unless recorded;
        ValueError if a counter or keyed counter has the name."""
        keys = [rate_meta_key(self.prefix, name), data_key(self.prefix, name)]
        args = ["k", spec.kind, "w", str(spec.window_ns), "r", str(spec.res_ns), "t", "0"]
        try:
            got = self._register(keys, args, f"registering rate {name!r}")
        except rexc.ResponseError as exc:
            t = str(exc).rpartition(" ")[2]
            what = "a keyed counter" if t == "hash" else "a counter"
            raise ValueError(f"{name!r} is {what} in {self.url}") from None
        return self._spec_of(name, got[:3])

    def _spec_of(self, name: str, raw: list[Any]) -> RateSpec:
        k, w, r = (_text(x) if x is not None else "" for x in raw)
        if k not in ("rate", "keyed_rate") or not (w.isdigit() and r.isdigit()):
            raise CorruptStoreError(
                f"{self.url}: {rate_meta_key(self.prefix, name)} is not a tallies rate"
            )
        return RateSpec("rate" if k == "rate" else "keyed_rate", int(w), int(r))

    def rate_spec(self, name: str) -> RateSpec | None:
        mkey = rate_meta_key(self.prefix, name)
        try:
            raw = self._node_client(mkey).hmget(mkey, ["k", "w", "r"])
        except UNAVAILABLE as exc:
            raise self._unavailable(f"looking up rate {name!r}", exc) from exc
        if raw[0] is None:
            return None
        return self._spec_of(name, raw)

    def rate_specs(self) -> dict[str, RateSpec]:
        """Every rate under the prefix (SCAN of the meta keys on every master)."""
        escaped = scan_pattern(self.prefix)[: -len("\\{*")] + "~q\\{*"
        out: dict[str, RateSpec] = {}
        try:
            for client in self._all_nodes():
                keys = [_text(k) for k in client.scan_iter(match=escaped, count=1000)]
                if not keys:
                    continue
                pipe = client.pipeline(transaction=False)
                for k in keys:
                    pipe.hmget(k, ["k", "w", "r"])
                for k, raw in zip(keys, pipe.execute(), strict=True):
                    name = k[len(self.prefix) + 3 : -1]
                    if raw[0] is not None and name:
                        out[name] = self._spec_of(name, raw)
        except UNAVAILABLE as exc:
            raise self._unavailable("listing rates", exc) from exc
        return dict(sorted(out.items()))

    # -- limiters (tallies.stores._limiter) ------------------------------------------

    LIMITER_RESOLUTION_NS = 1_000_000
    LIMIT_MAX = 2**53
    """Limits above this are refused: the limiter script counts in doubles."""

    def register_limiter(self, spec: LimitSpec) -> LimitSpec:
        if spec.limit > self.LIMIT_MAX:
            raise ValueError(
                f"limiter() limit {spec.limit} is above {self.LIMIT_MAX} (2**53), the most a "
                "redis:// limiter counts exactly"
            )
        if spec.res_ns % 1000:
            raise ValueError("limiter() resolution must be a whole number of microseconds")
        key = limiter_spec_key(self.prefix, spec.name)
        args = ["l", str(spec.limit), "p", str(spec.per_ns), "r", str(spec.res_ns)]
        args += ["b", str(spec.buckets)]
        got = [_text(x) for x in self._register([key], args, f"limiter {spec.name!r}")]
        try:
            return LimitSpec(spec.name, *(int(x) for x in got))
        except ValueError:
            raise CorruptStoreError(f"{self.url}: {key} is not a tallies limiter") from None

    def _limit(self, mode: str, spec: LimitSpec, key: str, args: list[int]) -> Grant:
        rkey = limiter_key(self.prefix, spec.name, key)
        argv = [mode, str(spec.res_ns // 1000), str(spec.buckets), str(spec.limit)]
        argv += [str(a) for a in args]
        try:
            raw = self._limitscript(keys=[rkey], args=argv, client=self._node_client(rkey))
        except UNAVAILABLE as exc:
            raise self._unavailable(f"limiter {spec.name!r}", exc) from exc
        except rexc.ResponseError as exc:
            if isinstance(exc, (rexc.NoScriptError, rexc.MovedError, rexc.AskError)):
                raise self._unavailable(f"limiter {spec.name!r}", exc) from exc
            raise CorruptStoreError(f"{self.url}: limiter {spec.name!r}: {exc}") from exc
        g, used, slot, now_us, oldest = (int(x) for x in raw)
        return Grant(g, used, slot, now_us * 1000, None if oldest < 0 else oldest)

    def limit_acquire(
        self, spec: LimitSpec, key: str, need: int, want: int, give_back: tuple[int, int] | None
    ) -> Grant:
        """One script call (one round trip): see ``lua/limit.lua``."""
        gs, gu = give_back if give_back is not None else (-1, 0)
        return self._limit("a", spec, key, [need, want, gs, gu])

    def limit_read(self, spec: LimitSpec, key: str) -> Grant:
        return self._limit("r", spec, key, [0, 0, -1, 0])

    def limit_reset(self, spec: LimitSpec, key: str) -> int:
        return self._limit("z", spec, key, [0, 0, -1, 0]).used

    def _window(self, mode: str, name: str, key: str, amount: int, ms: int) -> tuple[int, float]:
        rkey = fixed_window_key(self.prefix, name, key)
        try:
            raw = self._windowscript(
                keys=[rkey], args=[mode, str(amount), str(ms)], client=self._node_client(rkey)
            )
        except UNAVAILABLE as exc:
            raise self._unavailable(f"window {name!r}", exc) from exc
        except rexc.ResponseError as exc:
            raise CorruptStoreError(f"{self.url}: window {name!r}: {exc}") from exc
        return int(raw[0]), int(raw[1]) / 1000

    def window_incr(self, name: str, key: str, expiry_ms: int, amount: int) -> tuple[int, float]:
        return self._window("i", name, key, amount, expiry_ms)

    def window_get(self, name: str, key: str) -> tuple[int, float]:
        return self._window("g", name, key, 0, 1)

    def window_clear(self, name: str, key: str) -> None:
        self._window("c", name, key, 0, 1)

    def _hash(self, items: list[tuple[Any, Any]], dkey: str) -> dict[str, int]:
        """A hash's fields as {key: count}: one comprehension (no call per
        field), the per-field checks only when it meets a bad count."""
        try:
            m = {
                (k.decode("utf-8", "surrogateescape") if type(k) is bytes else str(k)): int(v)
                for k, v in items
            }
        except (ValueError, TypeError):
            return {_text(k): self._int(v, f"{dkey} field {_text(k)!r}") for k, v in items}
        self._note_edge(m.values())
        return m

    def _note_edge(self, counts: Collection[int]) -> None:
        """Note counts at 10^18 or beyond (``_near_edge``): two C passes."""
        if counts and not -(10**18) < min(counts) <= max(counts) < 10**18:
            self._near_edge = True

    # -- destroy -------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether any key of the store is there."""
        base = scan_pattern(self.prefix)[: -len("\\{*")]
        try:
            for client in self._all_nodes():
                for pattern in (base + "\\{*", base + "~*"):
                    for _ in client.scan_iter(match=pattern, count=1000):
                        return True
        except UNAVAILABLE as exc:
            raise self._unavailable("looking for the store", exc) from exc
        return False

    def delete_all(self) -> int:
        """Delete every key of the store (counts and bookkeeping); how many."""
        deleted = 0
        base = scan_pattern(self.prefix)[: -len("\\{*")]
        try:
            for client in self._all_nodes():
                for pattern in (base + "\\{*", base + "~*"):
                    keys = list(client.scan_iter(match=pattern, count=1000))
                    for start in range(0, len(keys), 500):
                        pipe = client.pipeline(transaction=False)
                        for k in keys[start : start + 500]:
                            pipe.delete(k)
                        deleted += sum(int(n) for n in pipe.execute())
        except UNAVAILABLE as exc:
            raise self._unavailable("destroy", exc) from exc
        return deleted


def hash_page(page: bytes | list[bytes]) -> tuple[list[str], list[str] | list[bytes]]:
    """One page of a hash as (fields, counts as text or bytes; ``int()``
    takes both), from either form :meth:`RedisBackend._hash_pages` reads:

    * ``HSCAN``'s flat list ``[field, count, field, count, ...]`` of bytes:
      the fields joined by NUL, decoded and split again, three C calls
      whatever the number of fields (a field with a NUL in it, which only
      another client can write, makes more parts: then one at a time);
    * the scan script's JSON string of that list (``scan.lua``): one
      ``json.loads``.

    A field that is not UTF-8 (written by another client) is read as
    ``_text`` reads it."""
    if type(page) is list:
        if len(page) % 2:
            raise ValueError(f"a hash page of {len(page)} parts, not field-count pairs")
        raw = page[::2]
        fields = b"\0".join(raw).decode("utf-8", "surrogateescape").split("\0")
        if len(fields) != len(raw):  # a NUL in a field (or no field at all)
            fields = [_text(f) for f in raw]
        return fields, page[1::2]
    if type(page) is not bytes:
        raise ValueError(f"a hash page that is neither a list nor bytes: {page!r:.80}")
    flat = json.loads(page.decode("utf-8", "surrogateescape"))
    if type(flat) is not list or len(flat) % 2:
        raise ValueError(f"a hash page that is not [field, count, ...] pairs: {page[:80]!r}")
    return flat[::2], flat[1::2]


def _parses_in_c(conn: Any) -> bool:
    """Whether redis-py reads ``conn``'s replies with hiredis (C): then a
    page of ``HSCAN`` costs the client about 0.1 us a field; redis-py's own
    parser takes about 1 us (:meth:`RedisBackend._scan_hash`)."""
    return "Hiredis" in type(getattr(conn, "_parser", None)).__name__


def _text(raw: Any) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "surrogateescape")
    return str(raw)
