"""Properties of redis://, checked with hypothesis against a real redis-server:
the apply script's int64 arithmetic is Python's, or a refusal that writes
nothing; a batch's plan covers every delta exactly once in single-slot calls;
a store driven by random operations reads back what a plain model says."""

from __future__ import annotations

from typing import Any

import pytest
from _redis_support import RedisServer, unique_prefix
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tallies
from tallies.stores.writebehind import Batch

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
int64 = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(-(10**16), 10**16),
    st.integers(INT64_MAX - 10**6, INT64_MAX),
    st.integers(INT64_MIN, INT64_MIN + 10**6),
    st.sampled_from([0, 1, -1, 10**15 - 1, 10**15, -(10**15), 2**53, -(2**53)]),
)
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def r(redis_server: RedisServer) -> Any:
    client = redis_server.client()
    yield client
    client.close()


@SETTINGS
@given(current=int64, delta=int64, keyed=st.booleans())
def test_script_arithmetic_is_exact_int64(r: Any, current: int, delta: int, keyed: bool) -> None:
    import redis

    from tallies.stores._redis_lua import APPLY_LUA

    p = unique_prefix("m")
    key = f"{p}{{x}}"
    if keyed:
        r.hset(key, "f", current)
        args = ["1", "0", "60000", "h", "1", "f", str(delta)]
    else:
        r.set(key, current)
        args = ["1", "0", "60000", "c", str(delta)]
    script = r.register_script(APPLY_LUA)
    fits = INT64_MIN <= current + delta <= INT64_MAX
    try:
        reply = script(keys=[f"{p}~w:w", key], args=args)
    except redis.ResponseError as exc:
        assert not fits and "overflow" in str(exc)
        assert r.get(f"{p}~w:w") is None
    else:
        assert fits and reply in (b"ok", b"big")
    got = int(r.hget(key, "f") if keyed else r.get(key))
    assert got == (current + delta if fits else current)
    r.delete(key, f"{p}~w:w")


names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=6)
deltas = st.integers(-(10**6), 10**6)


@SETTINGS
@given(
    counters=st.dictionaries(names, deltas, max_size=30),
    keyed=st.dictionaries(names, st.dictionaries(names, deltas, max_size=20), max_size=5),
    size=st.integers(1, 9),
    cluster=st.booleans(),
)
def test_plan_covers_every_delta_once_in_single_slot_calls(
    redis_server: RedisServer,
    counters: dict[str, int],
    keyed: dict[str, dict[str, int]],
    size: int,
    cluster: bool,
) -> None:
    from redis.crc import key_slot

    from tallies.stores._redis_backend import RedisBackend, parse_redis_url

    keyed = {n: m for n, m in keyed.items() if n not in counters and not n.startswith("}")}
    counters = {n: d for n, d in counters.items() if not n.startswith("}")}
    url = redis_server.url("plan:", batch=str(size))
    be = RedisBackend(parse_redis_url(tallies.stores.parse_url(url)), url)
    be.options = be.options.__class__(**{**be.options.__dict__, "cluster": cluster})
    batch = Batch(7, counters, keyed)
    calls = be.plan("w", batch)
    assert calls == be.plan("w", Batch(7, dict(reversed(counters.items())), keyed))
    seen: dict[tuple[str, str | None], int] = {}
    parts: dict[str, list[int]] = {}
    for c in calls:
        assert 1 <= len(c.fields) <= size
        for name, key, d in c.fields:
            assert (name, key) not in seen
            seen[(name, key)] = d
        parts.setdefault(c.wkey, []).append(c.part)
        if cluster:
            assert len({key_slot(k) for k in c.keys}) == 1
    for ps in parts.values():
        assert ps == list(range(len(ps)))
    want = {(n, None): d for n, d in counters.items() if d}
    # a key's delta of 0 is planned too: the key is then listed, at 0 (docs/contract.md)
    want.update({(n, k): d for n, m in keyed.items() for k, d in m.items()})
    assert seen == want
    be.close()


@SETTINGS
@given(
    fields=st.dictionaries(names, st.tuples(st.one_of(st.none(), int64), int64), min_size=1),
)
def test_script_sums_fields_there_and_fields_not_there_in_one_call(
    r: Any, fields: dict[str, tuple[int | None, int]]
) -> None:
    """One part adds to fields already in the hash (HINCRBY) and sets the
    ones that are not (one HSET): either way the field ends at current +
    delta, exactly, or the part is refused and writes nothing."""
    import redis

    from tallies.stores._redis_lua import APPLY_LUA

    p = unique_prefix("m")
    key = f"{p}{{x}}"
    before = {f: c for f, (c, _) in fields.items() if c is not None}
    if before:
        r.hset(key, mapping=before)
    args = ["1", "0", "60000", "h", str(len(fields))]
    for f, (_, d) in fields.items():
        args += [f, str(d)]
    fits = all(INT64_MIN <= (c or 0) + d <= INT64_MAX for c, d in fields.values())
    try:
        r.register_script(APPLY_LUA)(keys=[f"{p}~w:w", key], args=args)
    except redis.ResponseError as exc:
        assert not fits and "overflow" in str(exc)
        after = {k.decode(): int(v) for k, v in r.hgetall(key).items()}
        assert after == before and r.get(f"{p}~w:w") is None
    else:
        assert fits
        after = {k.decode(): int(v) for k, v in r.hgetall(key).items()}
        assert after == {f: (c or 0) + d for f, (c, d) in fields.items()}


@SETTINGS
@given(
    fields=st.dictionaries(names, int64, min_size=1),
    keys=st.lists(st.binary(max_size=8), max_size=3),
)
def test_packed_script_call_is_what_redis_py_sends(
    fields: dict[str, int], keys: list[bytes]
) -> None:
    """A keyed counter's fields, packed by the flush as one RESP fragment,
    give the bytes redis-py's own packer gives for the same EVALSHA (UTF-8
    field names of any length, int64 deltas)."""
    import redis

    from tallies.stores._redis_backend import _argv, _Fields, _pack_evalsha

    conn: Any = redis.Connection()
    args = [
        b"7",
        b"0",
        b"60000",
        b"h",
        b"%d" % len(fields),
        _Fields(list(fields), list(fields.values())),
    ]
    ours = _pack_evalsha(conn.encoder.encode, b"f" * 40, keys, args)
    theirs = b"".join(conn.pack_command("EVALSHA", b"f" * 40, len(keys), *keys, *_argv(args)))
    assert ours == theirs


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["inc", "dec", "kinc", "flush", "reset", "kreset", "read"]),
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 1000),
        ),
        max_size=40,
    )
)
def test_store_matches_a_model(redis_server: RedisServer, r: Any, ops: list[Any]) -> None:
    prefix = unique_prefix("s")
    url = redis_server.url(prefix, flush="3600", batch="2")
    model_c: dict[str, int] = {}
    model_k: dict[str, int] = {}
    with tallies.open(url) as store:
        for op, name, n in ops:
            if op == "inc":
                store.counter(name).increment(n)
                model_c[name] = model_c.get(name, 0) + n
            elif op == "dec":
                store.counter(name).decrement(n)
                model_c[name] = model_c.get(name, 0) - n
            elif op == "kinc":
                store.keyed("k").increment(name, n)
                model_k[name] = model_k.get(name, 0) + n
            elif op == "flush":
                store.flush()
            elif op == "reset":
                assert store.counter(name).reset() == model_c.pop(name, 0)
            elif op == "kreset":
                assert store.keyed("k").reset(name) == model_k.pop(name, 0)
            else:
                assert store.counter(name).value() == model_c.get(name, 0)
                assert store.keyed("k").value(name) == model_k.get(name, 0)
    for name in "abc":
        assert int(r.get(f"{prefix}{{{name}}}") or 0) == model_c.get(name, 0)
    stored = {k.decode(): int(v) for k, v in r.hgetall(f"{prefix}{{k}}").items()}
    assert {k: v for k, v in stored.items() if v} == {k: v for k, v in model_k.items() if v}
    tallies.destroy(url)
