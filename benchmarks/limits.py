"""``tallies bench --limits``: limiters and durable rates (issue 20).

It starts its own ``redis-server`` (``servers.RedisServer``) and PostgreSQL
server (``servers.PostgresServer``) and uses a temporary SQLite file and
``shm://`` segment; a store it cannot open makes its rows say "not measured"
and why.

* ``Limiter.hit()`` on ``memory://``, ``shm://``, ``redis://`` and
  ``postgresql://`` (with a lease: a limit no run reaches, so leases grow to
  their largest and one hit in thousands goes to the server), each statement
  50 times a loop over locals
  (``harness.per_call``), ratios per round against ``Counter.increment()``;
  printed beside one redis-py round trip per hit: ``limits``' own
  ``FixedWindowRateLimiter`` over its Redis storage.
* A rate's ``increment()`` on ``shm://``, ``sqlite://``, ``redis://`` and
  ``postgresql://`` against ``Counter.increment()``.
* ``limits``' ``FixedWindowRateLimiter`` and ``MovingWindowRateLimiter``, ns
  per ``hit``, over the tallies storage (``tallies+memory``, ``+shm``,
  ``+sqlite``, ``+redis``) and over limits' ``memory://`` and ``redis://``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tallies

from .harness import Row, Target, per_call, per_call_rows
from .servers import PostgresServer, RedisServer

__all__ = ["run"]

UNROLL = 50
FLOOR = "Counter.increment()"
PART_HIT = "limiters: 1 thread, ns per hit"
PART_RATE = "durable rates: 1 thread, ns per increment"
PART_LIMITS = "limits package: ns per hit"
HIT_MEMORY, HIT_REDIS, RATE_INC = 3.0, 5.0, 1.6
BIG = 2**50  # a limit no run reaches: every hit is admitted (redis:// counts to 2**53)


@contextlib.contextmanager
def _redis() -> Iterator[RedisServer | None]:
    if shutil.which("redis-server") is None:
        yield None
        return
    try:
        import redis  # noqa: F401
    except ImportError:
        yield None
        return
    d = Path(tempfile.mkdtemp(prefix="tallies-bench-limits-"))
    server = RedisServer(d).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def _postgres() -> Iterator[PostgresServer | str]:
    """A PostgreSQL server, or why there is none."""
    from .postgres_store import why_not

    why = why_not()
    if why is not None:
        yield why
        return
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


def _missing(part: str, name: str, why: str) -> Row:
    return Row(part, name, None, "ns", target="", verdict="", data={"why": why})


def run(quick: bool) -> list[Row]:
    rounds, loops = (3, 200) if quick else (15, None)
    tmp = Path(tempfile.mkdtemp(prefix="tallies-bench-limits-"))
    shm_url = f"shm://bench-limits-{os.getpid()}-{secrets.token_hex(3)}"
    stores: list[Any] = []
    try:
        with _redis() as server, _postgres() as pg:
            try:
                return _run(quick, rounds, loops, tmp, shm_url, server, pg, stores)
            finally:  # while the server is still there: their final flushes land
                for s in stores:
                    with contextlib.suppress(Exception):
                        s.close()
    finally:
        with contextlib.suppress(Exception):
            tallies.destroy(shm_url)
        shutil.rmtree(tmp, ignore_errors=True)


def _run(
    quick: bool,
    rounds: int,
    loops: int | None,
    tmp: Path,
    shm_url: str,
    server: RedisServer | None,
    pg: PostgresServer | str,
    stores: list[Any],
) -> list[Row]:
    def opened(url: str) -> Any:
        s = tallies.open(url)
        stores.append(s)
        return s

    redis_url = server.url("bench-limits:", flush="1") if server is not None else None
    pg_url = pg.url(schema="bench_limits", flush="1") if not isinstance(pg, str) else None
    absent = {  # a row of a store without a server: why (by the URL's scheme)
        "redis": "not measured: redis-server or redis-py missing",
        "postgresql": pg if isinstance(pg, str) else "",
    }
    env: dict[str, object] = {"c": tallies.Counter()}
    stmts = {FLOOR: "c.increment()"}
    why: dict[str, str] = {}
    hits = {
        "memory:// Limiter.hit()": ("lm", "memory://"),
        "shm:// Limiter.hit()": ("ls", shm_url),
        "redis:// Limiter.hit(), with a lease": ("lr", redis_url),
        "postgresql:// Limiter.hit(), with a lease": ("lp", pg_url),
    }
    for name, (var, url) in hits.items():
        if url is None:
            why[name] = absent[name.split(":")[0]]
            continue
        try:
            lim = opened(url).limiter("bench", BIG, 60)
            lim.hit()
        except Exception as exc:
            why[name] = f"not measured: {type(exc).__name__}: {exc}"
            continue
        env[var] = lim
        stmts[name] = f"{var}.hit()"
    limits_peer = None
    if redis_url is not None:
        try:
            from limits import parse
            from limits.storage import storage_from_string
            from limits.strategies import FixedWindowRateLimiter

            assert server is not None
            limits_peer = FixedWindowRateLimiter(
                storage_from_string(f"redis://127.0.0.1:{server.port}/1")
            )
            env["fw"], env["item"] = limits_peer, parse(f"{BIG}/minute")
            stmts["limits FixedWindow over its redis:// (1 round trip)"] = "fw.hit(item)"
        except ImportError:
            why["limits FixedWindow over its redis:// (1 round trip)"] = "limits not installed"
    rates = {
        "shm:// rate.increment()": ("rm", shm_url),
        "sqlite:// rate.increment()": ("rs", f"sqlite:///{tmp}/bench.db?flush=1"),
        "redis:// rate.increment()": ("rr", redis_url),
        "postgresql:// rate.increment()": ("rp", pg_url),
    }
    for name, (var, url) in rates.items():
        if url is None:
            why[name] = absent[name.split(":")[0]]
            continue
        env[var] = opened(url).rate("bench", 60, 1)
        stmts[name] = f"{var}.increment()"
    cases = {name: (stmt, env) for name, stmt in stmts.items()}
    timed = per_call(cases, rounds=rounds, unroll=UNROLL, loops=loops)
    rows = per_call_rows(PART_HIT, timed, FLOOR)
    for name, row in rows.items():
        if name in rates:
            row.part = PART_RATE
        if row.of == "floor":
            row.of = FLOOR
    for name, err in timed.errors.items():
        why[name] = f"not measured: {err}"
    targets = {
        "memory:// Limiter.hit()": HIT_MEMORY,
        "shm:// Limiter.hit()": HIT_MEMORY,
        "redis:// Limiter.hit(), with a lease": HIT_REDIS,
        "postgresql:// Limiter.hit(), with a lease": HIT_REDIS,
        "shm:// rate.increment()": RATE_INC,
        "sqlite:// rate.increment()": RATE_INC,
        "redis:// rate.increment()": RATE_INC,
        "postgresql:// rate.increment()": RATE_INC,
    }
    out = list(rows.values())
    for name, limit in targets.items():
        target = Target("<=", limit, of=FLOOR)
        if name in rows:
            rows[name].of = FLOOR
            rows[name].judge(target, rows[name].ratio)
        else:
            part = PART_RATE if name in rates else PART_HIT
            out.append(Row(part, name).judge(target, None, why.get(name, "not measured")))
    return out + _limits_rows(rounds, loops, tmp, shm_url, server, redis_url)


def _limits_rows(
    rounds: int,
    loops: int | None,
    tmp: Path,
    shm_url: str,
    server: RedisServer | None,
    redis_url: str | None,
) -> list[Row]:
    try:
        from limits import parse
        from limits.storage import storage_from_string
        from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

        import tallies.limits
    except ImportError as exc:
        return [Row(PART_LIMITS, "limits", data={"why": f"not measured: {exc}"})]
    uris = {
        "limits memory://": "memory://",
        "tallies+memory://": "tallies+memory://",
        "tallies+shm://": "tallies+" + shm_url,
        "tallies+sqlite://": f"tallies+sqlite:///{tmp}/limits.db",
    }
    if server is not None and redis_url is not None:
        uris["limits redis://"] = f"redis://127.0.0.1:{server.port}/2"
        uris["tallies+redis://"] = "tallies+" + redis_url
    item = parse(f"{BIG}/minute")
    env: dict[str, object] = {"item": item, "c": tallies.Counter()}
    stmts = {FLOOR: "c.increment()"}
    missing: list[Row] = []
    for label, uri in uris.items():
        try:
            st = storage_from_string(uri)
        except Exception as exc:  # a store that cannot open here: its row says why
            missing.append(Row(PART_LIMITS, f"{label} (not measured: {exc!r:.60})"))
            continue
        for strat, cls in (
            ("FixedWindow", FixedWindowRateLimiter),
            ("MovingWindow", MovingWindowRateLimiter),
        ):
            var = f"v{len(env)}"
            env[var] = cls(st)
            stmts[f"{strat} over {label}"] = f"{var}.hit(item, {strat!r})"
    cases = {name: (stmt, env) for name, stmt in stmts.items()}
    timed = per_call(cases, rounds=max(3, rounds // 3), unroll=4, loops=loops)
    rows = per_call_rows(PART_LIMITS, timed, FLOOR)
    for row in rows.values():
        row.of = FLOOR if row.of == "floor" else row.of
    out = [r for n, r in rows.items() if n != FLOOR]
    for name, err in timed.errors.items():
        out.append(Row(PART_LIMITS, f"{name} (not measured: {err[:60]})"))
    return out + missing
