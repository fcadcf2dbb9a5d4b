"""The Redis side of ``redis://``: exactly-once batches, reads, resets, names.

Imported only when a ``redis://`` store is opened (it needs redis-py); the key
layout and the Lua scripts are in :mod:`tallies.stores._redis_lua`, whose
docstring explains them.  :class:`RedisBackend` knows nothing about local
cells: the write-behind (:mod:`tallies.stores.writebehind`) calls
:meth:`RedisBackend.apply` with one batch of deltas, the same ``(writer, seq)``
again with the same deltas when a try failed, and this module turns a batch
into script calls:

- standalone server: the batch is cut into parts of at most ``batch`` fields
  (counters and keys), one ``EVALSHA`` each, all in one pipeline, recorded
  under one writer key;
- Redis Cluster: the batch is grouped by hash tag (one per name), each group
  cut into parts and recorded under the writer key of that tag; calls are
  pipelined per node (each call goes to the node that owns its slot).

A part already applied answers ``dup``; a part whose predecessor failed
answers ``gap`` and is sent again after it.  So a call that times out, a reply
that is lost, a server that restarts, a ``NOSCRIPT`` after a restart or a
``MOVED`` after a resharding all end the same way: each part applied once.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.exceptions as rexc
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from ._redis_lua import (
    APPLY_LUA,
    RESET_LUA,
    data_key,
    name_from_data_key,
    reset_key,
    scan_pattern,
    tag_of,
    writer_key,
)
from .base import (
    CorruptStoreError,
    CountOverflowError,
    StoreError,
    StoreUnavailableError,
    StoreURL,
)

__all__ = ["RedisBackend", "RedisOptions", "parse_redis_url"]

_APPLY_SHA = hashlib.sha1(APPLY_LUA.encode()).hexdigest()
_RESET_SHA = hashlib.sha1(RESET_LUA.encode()).hexdigest()
_WRITER_OK = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_MAX_SEQ = 10**15 - 1  # the script compares seqs as exact doubles

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
    ssl: Mapping[str, str]


#: The parameters this module reads from the URL (the write-behind has its own).
URL_PARAMS = frozenset(
    {
        "prefix",
        "timeout",
        "batch",
        "writer_ttl",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
    }
)
_SSL_PARAMS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def _number(url: StoreURL, name: str, default: float, lo: float, hi: float) -> float:
    raw = url.params.get(name)
    if raw is None:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{url.raw!r}: {name}={raw!r} is not a number") from None
    if not lo <= v <= hi:
        raise ValueError(f"{url.raw!r}: {name}={raw!r} is outside [{lo:g}, {hi:g}]")
    return v


def parse_redis_url(url: StoreURL) -> RedisOptions:
    """Split ``redis[s][+cluster]://[user:password@]host[:port][/db]?...``."""
    scheme = url.scheme
    if scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        raise ValueError(f"{url.raw!r}: not a redis:// URL")
    cluster = scheme.endswith("+cluster")
    tls = scheme.startswith("rediss")
    try:
        parts = urlsplit("//" + url.target)
        host = parts.hostname
        port = parts.port or 6379
    except ValueError as exc:
        raise ValueError(f"{url.raw!r}: {exc}") from None
    if not host:
        raise ValueError(f"{url.raw!r}: no host (expected {scheme}://host:port/db)")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{url.raw!r}: the database must be a number, not {path!r}")
    db = int(path or 0)
    if cluster and db != 0:
        raise ValueError(f"{url.raw!r}: Redis Cluster has only database 0")
    prefix = url.params.get("prefix", "tallies:")
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"{url.raw!r}: the prefix must not contain '{{' or '}}' (hash tags)")
    if len(prefix.encode()) > 200:
        raise ValueError(f"{url.raw!r}: the prefix is longer than 200 bytes")
    ssl = {k: url.params[k] for k in _SSL_PARAMS if k in url.params}
    if ssl and not tls:
        raise ValueError(f"{url.raw!r}: ssl_* parameters need rediss://")
    return RedisOptions(
        cluster=cluster,
        tls=tls,
        host=host,
        port=port,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        prefix=prefix,
        timeout=_number(url, "timeout", 5.0, 0.01, 3600.0),
        batch=int(_number(url, "batch", 200, 1, 100_000)),
        writer_ttl_ms=int(_number(url, "writer_ttl", 86400.0, 1.0, 10.0 * 365 * 86400) * 1000),
        ssl=ssl,
    )


def _is_script_error(exc: BaseException, word: str) -> bool:
    return isinstance(exc, rexc.ResponseError) and str(exc).startswith(f"TALLIES {word}")


class RedisBackend:
    """One connection pool (or cluster client) and the scripts; thread-safe."""

    def __init__(self, options: RedisOptions, url: str) -> None:
        self.options = options
        self.url = url
        self.prefix = options.prefix
        common: dict[str, Any] = {
            "username": options.username,
            "password": options.password,
            "socket_timeout": options.timeout,
            "socket_connect_timeout": options.timeout,
        }
        if options.tls:
            common["ssl"] = True
            for k, v in options.ssl.items():
                common[k] = v
        self._client: Any
        if options.cluster:
            from redis.cluster import RedisCluster

            self._client = RedisCluster(
                host=options.host,
                port=options.port,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
                **common,
            )
        else:
            self._client = redis.Redis(
                host=options.host,
                port=options.port,
                db=options.db,
                retry=Retry(NoBackoff(), 1),
                **common,
            )

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
            self._client.nodes_manager.initialize()

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(f"{self.url}: {what}: Redis did not answer: {exc}")

    def ping(self) -> None:
        try:
            for c in self._all_nodes():
                c.ping()
        except UNAVAILABLE as exc:
            raise self._unavailable("ping", exc) from exc

    def close(self) -> None:
        try:
            self._client.close()
        except UNAVAILABLE:
            pass

    # -- writing -------------------------------------------------------------

    def writer_name(self, writer_id: object) -> str:
        w = str(writer_id)
        if _WRITER_OK.match(w):
            return w
        return hashlib.sha1(w.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def plan(
        self,
        writer_id: object,
        seq: int,
        counters: Mapping[str, int],
        keyed: Mapping[str, Mapping[str, int]],
    ) -> list[tuple[list[str], list[str]]]:
        """The script calls (keys, args) that apply one batch, in sending order.

        Deterministic: the same batch gives the same calls, so a retry sends
        the same ``(seq, part)`` for the same deltas.
        """
        if not 0 <= seq <= _MAX_SEQ:
            raise ValueError(f"batch sequence number {seq} is outside [0, {_MAX_SEQ}]")
        writer = self.writer_name(writer_id)
        groups: dict[str | None, list[tuple[str, str | None, int]]] = {}
        cluster = self.options.cluster
        for name, delta in counters.items():
            if delta:
                groups.setdefault(tag_of(name) if cluster else None, []).append(
                    (name, None, int(delta))
                )
        for name, keys in keyed.items():
            for key, delta in keys.items():
                if delta:
                    groups.setdefault(tag_of(name) if cluster else None, []).append(
                        (name, key, int(delta))
                    )
        calls: list[tuple[list[str], list[str]]] = []
        ttl = str(self.options.writer_ttl_ms)
        size = self.options.batch
        for tag in sorted(groups, key=lambda t: "" if t is None else t):
            fields = sorted(groups[tag], key=lambda f: (f[0], f[1] is not None, f[1] or ""))
            wkey = writer_key(self.prefix, writer, tag)
            for part, start in enumerate(range(0, len(fields), size)):
                chunk = fields[start : start + size]
                keys = [wkey]
                args = [str(seq), str(part), ttl]
                i = 0
                while i < len(chunk):
                    name, key, delta = chunk[i]
                    keys.append(data_key(self.prefix, name))
                    if key is None:
                        args += ["c", str(delta)]
                        i += 1
                        continue
                    j = i
                    while j < len(chunk) and chunk[j][0] == name and chunk[j][1] is not None:
                        j += 1
                    args += ["h", str(j - i)]
                    for _, k, d in chunk[i:j]:
                        args += [k or "", str(d)]
                    i = j
                calls.append((keys, args))
        return calls

    def apply(
        self,
        writer_id: object,
        seq: int,
        counters: Mapping[str, int],
        keyed: Mapping[str, Mapping[str, int]],
    ) -> None:
        """Apply one batch exactly once (idempotent per ``(writer_id, seq)``).

        Raises :class:`StoreUnavailableError` when Redis does not answer (some
        parts may be applied; a retry of the same batch applies the rest),
        :class:`CountOverflowError` when a count would leave int64 and
        :class:`CorruptStoreError` when a key holds something that is not a
        tallies count (those parts are not applied; the others are).
        """
        self._run(_APPLY_SHA, APPLY_LUA, self.plan(writer_id, seq, counters, keyed), "flush")

    def _run(self, sha: str, source: str, calls: list[tuple[list[str], list[str]]], what: str) -> list[Any]:
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        refused: list[tuple[int, BaseException]] = []
        for _round in range(6):
            if not todo:
                break
            by_node: dict[int, tuple[Any, list[int]]] = {}
            try:
                for i in todo:
                    client = self._node_client(calls[i][0][0])
                    by_node.setdefault(id(client), (client, []))[1].append(i)
                again: list[int] = []
                for client, idxs in by_node.values():
                    pipe = client.pipeline(transaction=False)
                    for i in idxs:
                        keys, args = calls[i]
                        pipe.evalsha(sha, len(keys), *keys, *args)
                    replies = pipe.execute(raise_on_error=False)
                    noscript = False
                    for i, r in zip(idxs, replies):
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
                        client.script_load(source)
            except UNAVAILABLE as exc:
                raise self._unavailable(what, exc) from exc
            # a part after a refused part of the same writer key can only
            # answer "gap": it is not applied, and the batch stays unacknowledged
            blocked = {calls[i][0][0] for i, _ in refused}
            todo = sorted(i for i in again if calls[i][0][0] not in blocked)
            if todo:
                self._refresh_if_moved()
        else:
            if todo:
                raise StoreUnavailableError(
                    f"{self.url}: {what}: {len(todo)} script call(s) kept being redirected "
                    "or refused; will retry"
                )
        if refused:
            raise self._refusal(calls, refused)
        return results

    def _refresh_if_moved(self) -> None:
        try:
            self._refresh()
        except UNAVAILABLE:
            pass

    def _refusal(
        self, calls: list[tuple[list[str], list[str]]], refused: list[tuple[int, BaseException]]
    ) -> StoreError:
        overflow = [e for _, e in refused if _is_script_error(e, "overflow")]
        first = str(refused[0][1])
        if overflow and len(overflow) == len(refused):
            items: list[tuple[str, str | None]] = []
            for e in overflow:
                m = re.match(r"TALLIES overflow: (.*?)(?: field (.*))? is -?\d+, adding", str(e))
                if m:
                    name = name_from_data_key(self.prefix, m.group(1))
                    if name is not None:
                        items.append((name, m.group(2)))
            return CountOverflowError(
                f"{self.url}: {len(overflow)} part(s) of the flush would move a count "
                f"outside the signed 64-bit range and were not applied ({first})",
                items,
            )
        return CorruptStoreError(
            f"{self.url}: Redis refused {len(refused)} part(s) of the flush: {first}"
        )

    # -- reading -------------------------------------------------------------

    def _int(self, raw: Any, where: str) -> int:
        if raw is None:
            return 0
        try:
            return int(raw)
        except ValueError:
            raise CorruptStoreError(
                f"{self.url}: {where} holds {raw!r}, not an integer count"
            ) from None

    def _wrong_type(self, exc: rexc.ResponseError, name: str, keyed: bool) -> StoreError | None:
        if "WRONGTYPE" not in str(exc):
            return None
        kind = "a keyed counter (a Redis hash)" if not keyed else "not a hash"
        return CorruptStoreError(f"{self.url}: {name!r} is {kind} in this store")

    def read_counter(self, name: str) -> int:
        key = data_key(self.prefix, name)
        try:
            raw = self._node_client(key).get(key)
        except UNAVAILABLE as exc:
            raise self._unavailable(f"reading {name!r}", exc) from exc
        except rexc.ResponseError as exc:
            raise self._wrong_type(exc, name, False) or CorruptStoreError(str(exc)) from exc
        return self._int(raw, key)

    def read_key(self, name: str, key: str) -> int:
        dkey = data_key(self.prefix, name)
        try:
            raw = self._node_client(dkey).hget(dkey, key)
        except UNAVAILABLE as exc:
            raise self._unavailable(f"reading {name!r}", exc) from exc
        except rexc.ResponseError as exc:
            raise self._wrong_type(exc, name, True) or CorruptStoreError(str(exc)) from exc
        return self._int(raw, f"{dkey} field {key!r}")

    def read_keyed(self, name: str) -> dict[str, int]:
        dkey = data_key(self.prefix, name)
        try:
            raw = self._node_client(dkey).hgetall(dkey)
        except UNAVAILABLE as exc:
            raise self._unavailable(f"reading {name!r}", exc) from exc
        except rexc.ResponseError as exc:
            raise self._wrong_type(exc, name, True) or CorruptStoreError(str(exc)) from exc
        return {
            k.decode("utf-8", "surrogateescape"): self._int(v, f"{dkey} field {k!r}")
            for k, v in raw.items()
        }

    def kinds(self) -> dict[str, str]:
        """Every name in Redis under the prefix: ``"counter"`` or ``"keyed"``.

        ``SCAN`` on every master; keys of other types under ``P{`` are skipped.
        """
        found: dict[str, str] = {}
        pattern = scan_pattern(self.prefix)
        try:
            for client in self._all_nodes():
                keys = list(client.scan_iter(match=pattern, count=1000))
                if not keys:
                    continue
                pipe = client.pipeline(transaction=False)
                for k in keys:
                    pipe.type(k)
                for k, t in zip(keys, pipe.execute()):
                    name = name_from_data_key(self.prefix, k.decode("utf-8", "surrogateescape"))
                    if name is None:
                        continue
                    t = t.decode() if isinstance(t, bytes) else str(t)
                    if t == "string":
                        found[name] = "counter"
                    elif t == "hash":
                        found[name] = "keyed"
        except UNAVAILABLE as exc:
            raise self._unavailable("listing names", exc) from exc
        return dict(sorted(found.items()))

    def read_all(self, kinds: Mapping[str, str]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """The values of the given names (counters and keyed counters), pipelined per node."""
        counters: dict[str, int] = {}
        keyed: dict[str, dict[str, int]] = {}
        by_node: dict[int, tuple[Any, list[str]]] = {}
        try:
            for name in kinds:
                client = self._node_client(data_key(self.prefix, name))
                by_node.setdefault(id(client), (client, []))[1].append(name)
            for client, names in by_node.values():
                pipe = client.pipeline(transaction=False)
                for name in names:
                    dkey = data_key(self.prefix, name)
                    if kinds[name] == "keyed":
                        pipe.hgetall(dkey)
                    else:
                        pipe.get(dkey)
                for name, raw in zip(names, pipe.execute(raise_on_error=False)):
                    dkey = data_key(self.prefix, name)
                    if isinstance(raw, BaseException):
                        if isinstance(raw, UNAVAILABLE):
                            raise raw
                        raise CorruptStoreError(f"{self.url}: reading {name!r}: {raw}")
                    if kinds[name] == "keyed":
                        keyed[name] = {
                            k.decode("utf-8", "surrogateescape"): self._int(v, f"{dkey} field {k!r}")
                            for k, v in raw.items()
                        }
                    else:
                        counters[name] = self._int(raw, dkey)
        except UNAVAILABLE as exc:
            raise self._unavailable("reading", exc) from exc
        return counters, keyed

    # -- reset, destroy --------------------------------------------------------

    @staticmethod
    def new_reset_id() -> str:
        return uuid.uuid4().hex

    def reset(self, writer_id: object, rid: str, name: str, mode: str, key: str | None = None) -> Any:
        """Take a count (mode ``c``), a keyed counter (``h``) or one key (``f``) atomically.

        Idempotent per ``rid``: sent again after a lost reply it returns the
        same result and takes nothing more.  Returns an int, or for ``h`` a
        dict of ints.
        """
        writer = self.writer_name(writer_id)
        keys = [data_key(self.prefix, name), reset_key(self.prefix, writer, name)]
        args = [mode, rid, str(self.options.writer_ttl_ms)]
        if key is not None:
            args.append(key)
        (raw,) = self._run(_RESET_SHA, RESET_LUA, [(keys, args)], f"reset of {name!r}")
        if mode == "h":
            it = iter(raw or [])
            return {
                (k.decode("utf-8", "surrogateescape") if isinstance(k, bytes) else str(k)): self._int(
                    v, keys[0]
                )
                for k, v in zip(it, it)
            }
        return self._int(raw, keys[0])

    def delete_all(self) -> int:
        """Delete every key of the store (counts and bookkeeping); how many."""
        deleted = 0
        escaped = scan_pattern(self.prefix)[: -len("\\{*")]
        try:
            for client in self._all_nodes():
                for pattern in (escaped + "\\{*", escaped + "~*"):
                    batch: list[bytes] = []
                    for k in client.scan_iter(match=pattern, count=1000):
                        batch.append(k)
                        if len(batch) >= 500:
                            deleted += self._delete(client, batch)
                            batch = []
                    if batch:
                        deleted += self._delete(client, batch)
        except UNAVAILABLE as exc:
            raise self._unavailable("destroy", exc) from exc
        return deleted

    def _delete(self, client: Any, keys: Iterable[bytes]) -> int:
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.delete(k)
        return sum(int(n) for n in pipe.execute())
