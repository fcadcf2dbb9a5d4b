"""redis:// on a real redis-server (127.0.0.1, a free port): the API, the key
layout other clients read, URLs, errors, and the Lua scripts' refusals."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
from _redis_support import RedisServer, unique_prefix

import tallies
from tallies.stores.base import (
    CorruptStoreError,
    CountOverflowError,
    FlushError,
    StoreNotFoundError,
    StoreURL,
)

INT64_MAX = 2**63 - 1


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    return redis_server.url(unique_prefix(), flush="60")


@pytest.fixture
def r(redis_server: RedisServer) -> Any:
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture(params=["hscan", "script"])
def page_form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How a snapshot's pages travel (_redis_backend._scan_hash): plain
    HSCAN (where hiredis parses replies) or the scan script's JSON (redis-py's
    own parser, a cluster); each test runs both, whichever parser is here."""
    from tallies.stores import _redis_backend

    plain = request.param == "hscan"
    monkeypatch.setattr(_redis_backend, "_parses_in_c", lambda conn: plain)
    return str(request.param)


def prefix_of(url: str) -> str:
    return tallies.stores.parse_url(url).params["prefix"]


def test_counts_are_plain_redis_integers_and_hashes(url: str, r: Any) -> None:
    p = prefix_of(url)
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
        assert r.get(f"{p}{{requests}}") is None  # nothing sent yet: write-behind
        assert c.value() == 1007
        assert kc.value("404") == -2
        store.flush()
        assert r.get(f"{p}{{requests}}") == b"1007"
        assert r.hgetall(f"{p}{{status}}") == {
            b"200": b"7",
            b"404": b"-2",
            "héllo ✓".encode(): b"1",
        }
        assert r.type(f"{p}{{status}}") == b"hash"
        assert c.value() == 1007  # nothing pending now, nothing counted twice
        assert store.names() == ["requests", "status"]
        assert store.snapshot() == {
            "counters": {"requests": 1007},
            "keyed": {"status": {"200": 7, "404": -2, "héllo ✓": 1}},
        }


def test_other_clients_writes_are_read_back(url: str, r: Any) -> None:
    p = prefix_of(url)
    r.incrby(f"{p}{{jobs}}", 40)
    r.hincrby(f"{p}{{by_queue}}", "mail", 5)
    with tallies.open(url) as store:
        jobs = store.counter("jobs")
        jobs.increment(2)
        assert jobs.value() == 42
        assert store.keyed("by_queue").value("mail") == 5
        store.flush()
    assert r.get(f"{p}{{jobs}}") == b"42"


def test_writer_bookkeeping_expires(redis_server: RedisServer, r: Any) -> None:
    url = redis_server.url(unique_prefix(), flush="60", writer_ttl="600")
    p = prefix_of(url)
    with tallies.open(url) as store:
        store.counter("a").increment()
        store.flush()
        wkeys = r.keys(f"{p}~w*")
        assert len(wkeys) == 1
        ttl = r.pttl(wkeys[0])
        assert 0 < ttl <= 600_000
        assert r.get(wkeys[0]).decode().startswith("1:")


@pytest.mark.parametrize("ttl", ["1", "599.9"])
def test_a_writer_ttl_shorter_than_the_retry_horizon_is_refused(
    redis_server: RedisServer, ttl: str
) -> None:
    """Below 600 s (20 x the flusher's longest back-off) a lost reply could be
    retried after its writer record expired, and counted twice."""
    url = redis_server.url(unique_prefix(), writer_ttl=ttl)
    with pytest.raises(ValueError, match=r"writer_ttl=.* is outside \[600, "):
        tallies.open(url)


def test_reset_is_atomic_and_returns_stored_plus_pending(url: str, r: Any) -> None:
    p = prefix_of(url)
    with tallies.open(url) as store:
        c = store.counter("c")
        kc = store.keyed("k")
        c.increment(5)
        kc.increment("x", 2)
        kc.increment("y", 3)
        store.flush()
        r.incrby(f"{p}{{c}}", 100)  # another writer
        c.increment(1)  # pending
        assert c.reset() == 106
        assert c.value() == 0
        assert r.get(f"{p}{{c}}") == b"0"
        kc.increment("x")
        assert kc.reset("x") == 3
        assert kc.reset() == {"x": 0, "y": 3}
        store.flush()
        assert r.hgetall(f"{p}{{k}}") == {b"x": b"0", b"y": b"0"}  # zeroed, still listed


def test_names_are_checked(url: str) -> None:
    with tallies.open(url) as store:
        for bad, exc in [
            ("", ValueError),
            ("}x", ValueError),
            ("a\x00", ValueError),
            (3, TypeError),
        ]:
            with pytest.raises(exc):
                store.counter(bad)  # type: ignore[arg-type]
            with pytest.raises(exc):
                store.keyed(bad)  # type: ignore[arg-type]
        assert store.counter("x}") is store.counter("x}")  # '}' later in a name is fine


def test_kinds_clash(url: str, r: Any) -> None:
    p = prefix_of(url)
    r.hset(f"{p}{{h}}", "a", 1)
    r.set(f"{p}{{s}}", 1)
    with tallies.open(url) as store:
        with pytest.raises(ValueError, match="keyed counter"):
            store.counter("h")
        with pytest.raises(ValueError, match="a counter"):
            store.keyed("s")


def test_foreign_values_are_refused_and_nothing_is_written(url: str, r: Any) -> None:
    p = prefix_of(url)
    r.set(f"{p}{{bad}}", "not a number")
    r.lpush(f"{p}{{list}}", "x")
    with tallies.open(url) as store:
        good = store.counter("good")
        bad = store.counter("bad")
        good.increment(3)
        bad.increment(1)
        with pytest.raises(FlushError) as info:
            store.flush()
        assert isinstance(info.value.__cause__, CorruptStoreError)
        # one script call holds both: refused whole, nothing written
        assert r.get(f"{p}{{good}}") is None
        assert r.get(f"{p}{{bad}}") == b"not a number"
        r.set(f"{p}{{bad}}", 10)
        store.flush()  # the same batch, retried, now applies once
        assert r.get(f"{p}{{good}}") == b"3"
        assert r.get(f"{p}{{bad}}") == b"11"
        with pytest.raises(CorruptStoreError, match="list"):
            store._wb._be().kind_of("list")


def test_overflow_is_refused_before_any_write(url: str, r: Any) -> None:
    p = prefix_of(url)
    r.set(f"{p}{{big}}", INT64_MAX - 1)
    with tallies.open(url) as store:
        big = store.counter("big")
        other = store.counter("other")
        big.increment(5)
        other.increment(1)
        with pytest.raises(CountOverflowError) as info:
            store.flush()
        assert info.value.items == [("big", None)]
        # the rest of the batch went through; the overflowing delta is held
        assert r.get(f"{p}{{other}}") == b"1"
        assert r.get(f"{p}{{big}}") == str(INT64_MAX - 1).encode()
        assert big.value() == INT64_MAX - 1 + 5
        big.decrement(10)
        store.flush()
        assert r.get(f"{p}{{big}}") == str(INT64_MAX - 6).encode()


def test_overflow_precheck_with_many_parts(redis_server: RedisServer, r: Any) -> None:
    """A batch of several parts, a count near the edge already seen: checked
    whole before sending, refused whole (CountOverflowError, nothing applied)."""
    url = redis_server.url(unique_prefix(), flush="60", batch="3")
    p = prefix_of(url)
    r.hset(f"{p}{{k}}", "z", -(2**63) + 1)
    with tallies.open(url) as store:
        kc = store.keyed("k")
        assert kc.value("z") == -(2**63) + 1  # this store has now seen a count near the edge
        for i in range(10):
            kc.increment(f"a{i}")
        kc.decrement("z", 2)
        with pytest.raises(CountOverflowError) as info:
            store.flush()
        assert info.value.items == [("k", "z")]
        got = {k.decode(): int(v) for k, v in r.hgetall(f"{p}{{k}}").items()}
        assert got == {**{f"a{i}": 1 for i in range(10)}, "z": -(2**63) + 1}
        kc.increment("z", 2)  # the held -2 cancelled: the final flush has nothing to refuse


def test_overflow_in_a_later_part_keeps_the_batch_in_flight(
    redis_server: RedisServer, r: Any
) -> None:
    """Not checked beforehand (no count near the edge seen yet): the parts
    before the refused one are applied, so the batch stays in flight and is
    retried; once the count is back in range it completes, each part once."""
    url = redis_server.url(unique_prefix(), flush="60", batch="3")
    p = prefix_of(url)
    with tallies.open(url) as store:
        kc = store.keyed("k")
        for i in range(10):
            kc.increment(f"a{i}")
        kc.decrement("z", 2)
        r.hset(f"{p}{{k}}", "z", -(2**63) + 1)  # another client, unseen by this store
        with pytest.raises(FlushError, match="in flight"):
            store.flush()
        got = {k.decode(): int(v) for k, v in r.hgetall(f"{p}{{k}}").items()}
        assert got == {**{f"a{i}": 1 for i in range(9)}, "z": -(2**63) + 1}
        assert kc.value("a0") == 1 and kc.value("a9") == 1  # exact while in flight
        r.hset(f"{p}{{k}}", "z", 0)
        store.flush()
        got = {k.decode(): int(v) for k, v in r.hgetall(f"{p}{{k}}").items()}
        assert got == {**{f"a{i}": 1 for i in range(10)}, "z": -2}


def test_big_flush_is_cut_into_parts_each_applied_once(redis_server: RedisServer, r: Any) -> None:
    url = redis_server.url(unique_prefix(), flush="60", batch="7")
    p = prefix_of(url)
    with tallies.open(url) as store:
        kc = store.keyed("k")
        cs = [store.counter(f"c{i}") for i in range(30)]
        for i in range(100):
            kc.increment(f"key{i}", i + 1)
        for i, c in enumerate(cs):
            c.increment(i)
        be = store._wb._be()
        calls = be.plan(store.writer_id, _batch(1, {f"c{i}": i for i in range(1, 30)}, {}))
        assert len(calls) == 5 and all(len(c.fields) <= 7 for c in calls)
        store.flush()
        assert r.get(f"{p}~w:{store.writer_id}").decode().endswith(":18")  # 129 fields / 7
        assert {k.decode(): int(v) for k, v in r.hgetall(f"{p}{{k}}").items()} == {
            f"key{i}": i + 1 for i in range(100)
        }
        assert [int(r.get(f"{p}{{c{i}}}")) for i in range(30)] == list(range(30))


def _batch(seq: int, counters: dict[str, int], keyed: dict[str, dict[str, int]]) -> Any:
    from tallies.stores.writebehind import Batch

    return Batch(seq, counters, keyed)


def test_a_batch_sent_twice_is_applied_once(url: str, r: Any) -> None:
    """The backend protocol itself: apply(writer, batch) is idempotent per seq,
    and parts apply strictly in order (a later part alone is refused)."""
    p = prefix_of(url)
    with tallies.open(url) as store:
        be = store._wb._be()
        b1 = _batch(1, {"x": 5}, {"h": {"a": 1, "b": 2}})
        be.apply("w1", b1)
        be.apply("w1", b1)
        be.apply("w1", _batch(1, {"x": 5}, {}))  # any content: seq 1 is done
        assert r.get(f"{p}{{x}}") == b"5"
        be.apply("w1", _batch(2, {"x": 1}, {}))
        be.apply("w2", _batch(1, {"x": 10}, {}))
        assert r.get(f"{p}{{x}}") == b"16"
        assert r.hgetall(f"{p}{{h}}") == {b"a": b"1", b"b": b"2"}
        import redis

        script = r.register_script(tallies.stores._redis_lua.APPLY_LUA)
        with pytest.raises(redis.ResponseError, match="gap"):
            script(keys=[f"{p}~w:w1", f"{p}{{x}}"], args=["3", "1", "1000", "c", "1"])
        assert r.get(f"{p}{{x}}") == b"16"


@pytest.mark.parametrize(
    "args",
    [
        ["1", "0", "1000", "c", "1.5"],
        ["1", "0", "1000", "c", "007"],
        ["1", "0", "1000", "c", str(2**63)],
        ["1", "0", "1000", "c", "-0"],
        ["1", "0", "1000", "c"],
        ["1", "0", "1000", "c", "1", "extra"],
        ["1", "0", "1000", "h", "2", "f", "1"],
        ["1", "0", "1000", "h", "1", "f", "x"],
        ["x", "0", "1000", "c", "1"],
        ["1", "0", "0", "c", "1"],
        ["1", "0", "1000", "z", "1"],
    ],
)
def test_the_apply_script_validates_everything_before_writing(
    url: str, r: Any, args: list[str]
) -> None:
    import redis

    from tallies.stores._redis_lua import APPLY_LUA

    p = prefix_of(url)
    script = r.register_script(APPLY_LUA)
    keys = [f"{p}~w:w", f"{p}{{x}}"]
    r.set(f"{p}{{x}}", 1)
    with pytest.raises(redis.ResponseError, match="TALLIES bad call"):
        script(keys=keys, args=args)
    assert r.get(f"{p}{{x}}") == b"1"
    assert r.get(f"{p}~w:w") is None


def test_the_apply_script_is_all_or_nothing_on_refusal(url: str, r: Any) -> None:
    import redis

    from tallies.stores._redis_lua import APPLY_LUA

    p = prefix_of(url)
    script = r.register_script(APPLY_LUA)
    r.hset(f"{p}{{h}}", "edge", INT64_MAX)
    keys = [f"{p}~w:w", f"{p}{{a}}", f"{p}{{h}}"]
    args = ["1", "0", "1000", "c", "5", "h", "2", "ok", "1", "edge", "1"]
    with pytest.raises(redis.ResponseError, match="overflow"):
        script(keys=keys, args=args)
    assert r.get(f"{p}{{a}}") is None
    assert r.hgetall(f"{p}{{h}}") == {b"edge": str(INT64_MAX).encode()}
    assert r.get(f"{p}~w:w") is None


def test_open_create_false_and_destroy(url: str, r: Any) -> None:
    with pytest.raises(StoreNotFoundError):
        tallies.open(url, create=False)
    with tallies.open(url) as store:
        store.counter("a").increment()
        store.keyed("b").increment("k")
    with tallies.open(url, create=False) as store:
        assert store.counter("a").value() == 1
    p = prefix_of(url)
    r.set("unrelated", 1)
    assert r.keys(f"{p}*")
    assert tallies.destroy(url) is True
    assert r.keys(f"{p}*") == []
    assert r.get("unrelated") == b"1"
    assert tallies.destroy(url) is False


def test_tallies_show(url: str) -> None:
    with tallies.open(url) as store:
        store.counter("requests").increment(12)
        store.keyed("status").increment("200", 10)
    out = subprocess.run(
        [sys.executable, "-m", "tallies", "show", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "requests" in out and "12" in out and "200" in out and "10" in out
    bad = subprocess.run(
        [sys.executable, "-m", "tallies", "show", url.replace("prefix=", "prefix=nope")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2  # a user's mistake, as in serve and watch (issue 24, 9)
    assert "Traceback" not in bad.stderr
    assert "no keys under the prefix" in bad.stderr


def test_urls() -> None:
    from tallies.stores._redis_backend import parse_redis_url

    def parse(url: str) -> Any:
        return parse_redis_url(tallies.stores.parse_url(url))

    o = parse("redis://user:p%40ss@example.org:6380/3?prefix=app:&timeout=0.5&batch=50")
    assert (o.host, o.port, o.db, o.username, o.password) == (
        "example.org",
        6380,
        3,
        "user",
        "p@ss",
    )
    assert (o.prefix, o.timeout, o.batch, o.cluster, o.tls) == ("app:", 0.5, 50, False, False)
    o = parse("redis://localhost")
    assert (o.port, o.db, o.prefix) == (6379, 0, "tallies:")
    o = parse("rediss://h:1/0?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem")
    assert o.tls and dict(o.ssl) == {"ssl_cert_reqs": "none", "ssl_ca_certs": "/ca.pem"}
    assert parse("redis+cluster://h:7000").cluster
    assert parse("rediss+cluster://h:7000").tls
    for bad, msg in [
        ("redis://h/x", "database"),
        ("redis+cluster://h/1", "database 0"),
        ("redis://h?prefix=a{b", "prefix"),
        ("redis://h?timeout=abc", "timeout"),
        ("redis://h?batch=0", "batch"),
        ("redis://?prefix=a", "no host"),
        ("redis://h?ssl_ca_certs=x", "rediss"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse(bad)
    with pytest.raises(ValueError, match="unknown parameter"):
        tallies.open("redis://127.0.0.1:1/0?nope=1")
    with pytest.raises(ValueError, match="flush"):
        tallies.open("redis://127.0.0.1:1/0?flush=-1")


def test_tls_options_reach_the_client() -> None:
    from tallies.stores._redis_backend import RedisBackend, parse_redis_url

    url = "rediss://127.0.0.1:1/0?ssl_cert_reqs=none&timeout=0.2"
    be = RedisBackend(parse_redis_url(tallies.stores.parse_url(url)), url)
    kw = be._client.connection_pool.connection_kwargs
    assert kw["ssl_cert_reqs"] == "none"
    assert be._client.connection_pool.connection_class.__name__ == "SSLConnection"
    be.close()


def test_unreachable_server_is_a_clear_store_error() -> None:
    from _redis_support import free_port

    from tallies.stores.base import StoreUnavailableError

    with pytest.raises(StoreUnavailableError, match="did not answer"):
        tallies.open(f"redis://127.0.0.1:{free_port()}/0?timeout=0.5")


def test_missing_redis_py_is_a_clear_error() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["redis"] = None
        import tallies
        from tallies.stores.redis import RedisMissingError
        try:
            tallies.open("redis://127.0.0.1:6379/0")
        except RedisMissingError as exc:
            assert isinstance(exc, tallies.StoreError) and isinstance(exc, ImportError)
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "pip install tallies[redis]" in out


def test_scheme_aliases() -> None:
    from tallies.stores import schemes

    assert {"redis", "rediss", "redis+cluster"} <= set(schemes())
    assert tallies.stores._store_class(StoreURL("rediss://h", "rediss", "h")).scheme == "redis"


def test_aopen_and_aflush(url: str, r: Any) -> None:
    import asyncio

    p = prefix_of(url)

    async def main() -> None:
        async with tallies.aopen(url) as store:
            store.counter("async").increment(3)
            await store.aflush()
            assert r.get(f"{p}{{async}}") == b"3"
            store.counter("async").increment(1)
        assert r.get(f"{p}{{async}}") == b"4"  # the close in aopen flushed

    asyncio.run(main())


def test_unreachable_cluster_is_a_clear_store_error() -> None:
    from _redis_support import free_port

    from tallies.stores.base import StoreUnavailableError

    with pytest.raises(StoreUnavailableError, match="did not answer"):
        tallies.open(f"redis+cluster://127.0.0.1:{free_port()}?timeout=0.5")


def test_scripts_are_loaded_again_after_script_flush(url: str, r: Any) -> None:
    p = prefix_of(url)
    with tallies.open(url) as store:
        c = store.counter("n")
        c.increment(2)
        store.flush()
        r.script_flush()  # as after a restart or a failover: NOSCRIPT next time
        c.increment(3)
        store.flush()
        assert r.get(f"{p}{{n}}") == b"5"
        r.script_flush()
        assert c.reset() == 5
        assert r.get(f"{p}{{n}}") == b"0"


def test_a_flush_of_many_calls_survives_a_connection_the_server_closed(url: str, r: Any) -> None:
    """A flush of several script calls (packed by tallies, sent on a pooled
    connection: _redis_backend._pipelined) whose connection the server closed
    since the last flush goes through on a new connection, and every key is
    counted once."""
    p = prefix_of(url)
    keys = [f"k{i}" for i in range(25)]
    with tallies.open(url + "&batch=4") as store:
        kc = store.keyed("ev")
        for k in keys:
            kc.increment(k)
        store.flush()
        for _ in range(2):
            assert r.client_kill_filter(_type="normal", skipme=True) >= 1
            for k in keys:
                kc.increment(k, 2)
            store.flush()
        assert r.hgetall(f"{p}{{ev}}") == {k.encode(): b"5" for k in keys}
        assert kc.snapshot() == dict.fromkeys(keys, 5)


def test_a_big_keyed_counter_is_read_a_page_at_a_time(url: str, r: Any, page_form: str) -> None:
    """A keyed counter's snapshot reads its hash a page per HSCAN (plain, or
    in the scan script, each page one JSON string): Redis is never blocked
    for the whole hash, and every key comes back exactly, however it is
    spelt (issue 19)."""
    from tallies.stores import _redis_backend

    p = prefix_of(url)
    odd = ['a"b', "c\\d", "e/f", "ü€😀", "tab\tx", "\x01\x7f", "[1]", "{x}", "0", " "]
    keys = odd + [f"k{i}" for i in range(3 * _redis_backend.SCAN_COUNT)]
    want = {k: i - 100 for i, k in enumerate(keys)}
    other = {f"other{i}": -i for i in range(300)}  # written by another client
    r.hset(f"{p}{{events}}", mapping={k: v for k, v in other.items()})
    with tallies.open(url) as store:
        kc = store.keyed("events")
        for k, v in want.items():
            kc.increment(k, v)
        store.flush()
        kc.increment("k7", 1000)  # pending
        r.config_resetstat()
        snap = kc.snapshot()
        calls = r.info("commandstats")
        assert dict(snap) == {**want, **other, "k7": want["k7"] + 1000}
        assert store.snapshot()["keyed"]["events"] == dict(snap)
        assert "cmdstat_hgetall" not in calls
        pages = len(want) // _redis_backend.SCAN_COUNT
        assert calls["cmdstat_hscan"]["calls"] >= pages
        scripted = calls.get("cmdstat_evalsha", {"calls": 0})["calls"]
        assert scripted >= pages if page_form == "script" else scripted == 0


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def test_a_hash_page_is_field_count_pairs_decoded_in_one_go() -> None:
    """scan.lua's page (cjson's text of HSCAN's flat array) read back as
    (fields, counts): keys however spelt, counts as text, a field that is not
    UTF-8 as every other read of Redis spells it (surrogateescape)."""
    from tallies.stores._redis_backend import hash_page

    assert hash_page(b"[]") == ([], [])
    page = b'["a\\"b","9223372036854775807","\\u00fc\\/\\t","-9223372036854775808","\xff\xfe","-1"]'
    assert hash_page(page) == (
        ['a"b', "\u00fc/\t", "\udcff\udcfe"],
        [str(INT64_MAX), str(INT64_MIN), "-1"],
    )
    for bad in (b'["k"]', b'{"k": "1"}', b"[1", b""):
        with pytest.raises(ValueError):
            hash_page(bad)


def test_a_plain_hscan_page_is_field_count_pairs_decoded_in_one_go() -> None:
    """HSCAN's flat list of bytes read back as (fields, counts): fields
    decoded as every other read of Redis decodes them, also one with a NUL
    in it (another client's: the joined text then splits into more parts)."""
    from tallies.stores._redis_backend import hash_page

    assert hash_page([]) == ([], [])
    page = [b'a"b', b"9223372036854775807", b"\xc3\xbc/\t", b"-9", b"\xff\xfe", b"-1"]
    assert hash_page(page) == (['a"b', "\u00fc/\t", "\udcff\udcfe"], [page[1], b"-9", b"-1"])
    assert hash_page([b"a\0b", b"1", b"", b"2", b"\0", b"3"]) == (
        ["a\x00b", "", "\x00"],
        [b"1", b"2", b"3"],
    )
    with pytest.raises(ValueError, match="3 parts"):
        hash_page([b"k", b"1", b"j"])


def test_pages_are_plain_hscan_where_hiredis_parses_replies() -> None:
    """The scan script is only needed where redis-py's own parser reads the
    replies (about 1 us a field); with hiredis a page is a plain HSCAN."""
    pytest.importorskip("hiredis", reason="hiredis has no wheel for this Python")
    from redis.connection import Connection

    from tallies.stores._redis_backend import _parses_in_c

    try:  # redis-py's own parser
        from redis._parsers import _RESP2Parser as own
    except ImportError:  # redis-py 4
        from redis.connection import PythonParser as own  # type: ignore[attr-defined,no-redef]

    assert _parses_in_c(Connection())  # redis-py's default where hiredis is installed
    assert not _parses_in_c(Connection(parser_class=own))


def _pages_of(monkeypatch: pytest.MonkeyPatch, size: int, between: Any = None) -> list[int]:
    """Make snapshots read ``size`` fields a page; ``between(page_number)``
    runs after each page arrived (the next page's call already sent).
    Returns the list of page numbers seen (one list for all reads)."""
    from tallies.stores import _redis_backend

    monkeypatch.setattr(_redis_backend, "SCAN_COUNT", size)
    real = _redis_backend.hash_page
    seen: list[int] = []

    def hooked(page: bytes) -> tuple[list[str], list[str]]:
        seen.append(len(seen))
        if between is not None:
            between(len(seen) - 1)
        return real(page)

    monkeypatch.setattr(_redis_backend, "hash_page", hooked)
    return seen


def test_a_snapshot_is_exact_at_the_int64_bounds_and_for_any_key(
    url: str, r: Any, monkeypatch: pytest.MonkeyPatch, page_form: str
) -> None:
    """Stored counts at both int64 bounds, negative counts, keys of every
    kind (and a field written by another client that is not UTF-8), read a
    few fields a page, plus this process's pending deltas: exact."""
    p = prefix_of(url)
    pages = _pages_of(monkeypatch, 20)
    keys = [" ", "ü€😀", "\x01\x7f", "a\r\nb", "\\", '"', "{x}", "[1]", "0"]
    want = {k: -i - 1 for i, k in enumerate(keys)}
    want |= {"max": INT64_MAX, "min": INT64_MIN}
    want |= {f"f{i}": i for i in range(600)}  # over 512 fields: a hash table, not a listpack
    with tallies.open(url) as store:
        kc = store.keyed("ev")
        assert kc.snapshot() == {} and pages == [0]  # no hash: one empty page
        for k, v in want.items():
            kc.increment(k, v)
        store.flush()
        r.hset(f"{p}{{ev}}", b"\xff\xfe", 7)  # another client's field
        want["\udcff\udcfe"] = 7
        kc.increment("new", -5)  # pending only
        kc.increment(keys[0], 3)  # stored + pending
        want["new"] = -5
        want[keys[0]] += 3
        assert dict(kc.snapshot()) == want
        assert store.snapshot()["keyed"]["ev"] == want
        assert len(pages) > 1 + 2 * (len(want) // 40)  # read a page at a time
        assert kc["max"] == INT64_MAX and kc["min"] == INT64_MIN


def test_a_hash_that_changes_between_pages_is_read_as_hscan_promises(
    url: str, r: Any, monkeypatch: pytest.MonkeyPatch, page_form: str
) -> None:
    """Another client changes the hash while a snapshot reads it a page at a
    time: every field there from start to end is listed, with its count
    before or after the change; this process's own counts are exact."""
    p = prefix_of(url)
    dkey = f"{p}{{ev}}"
    keys = [f"k{i}" for i in range(600)]  # over 512 fields: pages

    def meddle(page: int) -> None:
        if page == 2:
            r.hincrby(dkey, "k0", 1000)
            r.hincrby(dkey, "k599", 1000)
            r.hset(dkey, mapping={f"late{i}": 1 for i in range(50)})

    with tallies.open(url) as store:
        kc = store.keyed("ev")
        for k in keys:
            kc.increment(k, 2)
        store.flush()
        for k in keys:
            kc.increment(k)  # pending: 3 each, stored 2
        pages = _pages_of(monkeypatch, 50, meddle)
        snap = kc.snapshot()
        assert len(pages) > 10
        assert set(keys) <= set(snap) <= set(keys) | {f"late{i}" for i in range(50)}
        assert snap["k0"] in (3, 1003) and snap["k599"] in (3, 1003)
        assert all(snap[k] == 3 for k in keys[1:599])
        assert all(snap[k] == 1 for k in snap if k.startswith("late"))
        monkeypatch.undo()
        assert kc.snapshot() == {
            **dict.fromkeys(keys, 3),
            "k0": 1003,
            "k599": 1003,
            **{f"late{i}": 1 for i in range(50)},
        }


def test_a_snapshot_survives_a_script_flush_and_a_killed_connection_between_pages(
    url: str, r: Any, monkeypatch: pytest.MonkeyPatch, page_form: str
) -> None:
    """The next page's call is sent before the current page is decoded: a
    NOSCRIPT (scripts flushed, as after a restart) is answered by loading the
    script and asking for the same page again, a connection the server
    closed by retrying that page on a new one; nothing is missed."""
    keys = {f"k{i}": i for i in range(600)}  # over 512 fields: pages

    def trouble(page: int) -> None:
        if page == 1:
            r.script_flush()
        if page == 3:
            r.script_flush()
            assert r.client_kill_filter(_type="normal", skipme=True) >= 1

    with tallies.open(url) as store:
        kc = store.keyed("ev")
        for k, v in keys.items():
            kc.increment(k, v)
        store.flush()
        pages = _pages_of(monkeypatch, 50, trouble)
        assert kc.snapshot() == keys
        assert len(pages) > 10
        kc.increment("k1")
        assert kc.snapshot() == keys | {"k1": 2}


def test_a_bad_count_mid_scan_is_a_clear_error_and_the_next_read_is_exact(
    url: str, r: Any, monkeypatch: pytest.MonkeyPatch, page_form: str
) -> None:
    """A field that is not a count stops the snapshot with CorruptStoreError
    naming it, although the next page's call was already sent: that reply is
    never read as the answer to a later command."""
    p = prefix_of(url)
    keys = {f"k{i}": i for i in range(600)}  # over 512 fields: pages
    with tallies.open(url) as store:
        kc = store.keyed("ev")
        for k, v in keys.items():
            kc.increment(k, v)
        store.flush()
        r.hset(f"{p}{{ev}}", mapping=dict.fromkeys(keys, "many"))  # the first page is bad
        pages = _pages_of(monkeypatch, 50)
        with pytest.raises(CorruptStoreError, match=r"field 'k\d+' holds 'many', not an integer"):
            kc.snapshot()
        assert pages == [0]  # stopped there, the second page's call sent
        r.hset(f"{p}{{ev}}", mapping=keys)
        assert kc["k7"] == 7 and kc.value("k59") == 59
        assert kc.snapshot() == keys
