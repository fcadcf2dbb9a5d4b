"""The contract, keyed counters: docs/contract.md, "Keyed counters", "Keys"
and "Zero counts and reset()".  Every test runs on every store."""

from __future__ import annotations

import collections

import pytest
from _contract import another_writer, facts
from _support import INT64_MAX

import tallies


def test_the_shared_api(store_url: str) -> None:
    with tallies.open(store_url) as s:
        kc = s.keyed("status")
        assert s.keyed("status") is kc
        kc.increment("200")
        kc.increment("200", 4)
        kc.decrement("500", 2)
        kc["404"] += 3
        kc["404"] -= 1
        kc.update({"200": 1, "301": 2})
        kc.update(["301", "404"])
        kc.update(**{"418": 1})
        kc.subtract({"418": 1})
        kc.subtract(["301"])
        want = {"200": 6, "500": -2, "404": 3, "301": 2, "418": 0}
        for _ in range(2):  # before and after a flush
            assert dict(kc.snapshot()) == want
            assert kc.value("200") == kc["200"] == 6 and kc["never"] == 0
            assert isinstance(kc["200"], int)
            assert kc.get("404") == 3 and kc.get("never") is None and kc.get("never", 7) == 7
            assert "418" in kc and "never" not in kc and 404 not in kc
            assert len(kc) == 5 and set(kc) == set(want) and set(kc.keys()) == set(want)
            assert sorted(kc.values()) == sorted(want.values())
            assert sorted(kc.items()) == sorted(want.items())
            assert kc.total() == sum(want.values())
            assert [v for _, v in kc.most_common()] == [6, 3, 2, 0, -2]
            assert kc.most_common(1) == [("200", 6)]
            assert s.snapshot()["keyed"] == {"status": want}
            s.flush()


def test_keys_at_zero_stay_listed_and_reset_returns_every_key(store_url: str) -> None:
    with tallies.open(store_url) as s:
        kc = s.keyed("k")
        kc.increment("a", 1)
        kc.increment("b", 2)
        kc.decrement("b", 2)
        kc.increment("c", 0)
        s.flush()
        kc.increment("d", 5)  # pending only on a write-behind store
        taken = kc.reset()
        assert type(taken) is collections.Counter
        assert dict(taken) == {"a": 1, "b": 0, "c": 0, "d": 5}
        assert dict(kc.snapshot()) == {"a": 0, "b": 0, "c": 0, "d": 0}
        s.flush()
        assert dict(kc.snapshot()) == {"a": 0, "b": 0, "c": 0, "d": 0}
        assert kc.reset("a") == 0 and kc.reset("never") == 0
        assert "never" not in kc
        kc.increment("a", 3)
        assert kc.reset("a") == 3 and kc["a"] == 0 and "a" in kc
        s.flush()
        assert s.snapshot()["keyed"] == {"k": {"a": 0, "b": 0, "c": 0, "d": 0}}
    with tallies.open(another_writer(store_url)) as s:  # what another process reads
        assert dict(s.keyed("k").snapshot()) == {"a": 0, "b": 0, "c": 0, "d": 0}


def test_an_empty_keyed_counter_is_listed(store_url: str) -> None:
    with tallies.open(store_url) as s:
        s.keyed("empty")
        assert s.snapshot()["keyed"] == {"empty": {}}
        assert s.names() == ["empty"]
        assert len(s.keyed("empty")) == 0 and s.keyed("empty").total() == 0


@pytest.mark.parametrize(
    ("key", "error"),
    [
        (404, TypeError),
        (b"x", TypeError),
        (None, TypeError),
        (("a",), TypeError),
        ("", ValueError),
        ("a\x00b", ValueError),
        ("\ud800", ValueError),
        ("x" * 1025, ValueError),
        ("é" * 513, ValueError),
    ],
)
def test_bad_keys_raise_and_change_nothing(store_url: str, key: object, error: type) -> None:
    with tallies.open(store_url) as s:
        kc = s.keyed("k")
        kc.increment("ok")
        with pytest.raises(error):
            kc.increment(key)  # type: ignore[arg-type]
        with pytest.raises(error):
            kc.decrement(key)  # type: ignore[arg-type]
        with pytest.raises(error):  # the key is refused, whatever the amount
            kc.decrement(key, -(2**63))  # type: ignore[arg-type]
        with pytest.raises(error):
            kc.update({key: 1, "ok": 1})
        with pytest.raises(error):
            kc.value(key)  # type: ignore[arg-type]
        if key is not None:  # reset(None) is reset(): every key
            with pytest.raises(error):
                kc.reset(key)  # type: ignore[arg-type]
        assert key not in kc
        s.flush()
        assert dict(kc.snapshot()) == {"ok": 1}


def test_keys_may_hold_any_text(store_url: str) -> None:
    longest = "x" * facts(store_url).key_max_bytes
    odd = ["{", "}", "}a", "{x}", " ", "é✓", "a:b", "*", "\n", longest]
    with tallies.open(store_url) as s:
        kc = s.keyed("k")
        for key in odd:
            kc.increment(key, 2)
        s.flush()
        assert dict(kc.snapshot()) == dict.fromkeys(odd, 2)
    if facts(store_url).key_max_bytes < 1024:  # shm:// holds 224 bytes a key
        with tallies.open(store_url) as s, pytest.raises(ValueError, match="the limit is 224"):
            s.keyed("k").increment(longest + "x")


def test_plain_assignment(store_url: str) -> None:
    """``kc[key] = v`` is memory://'s alone (the in-process KeyedCounter):
    elsewhere it is refused, since it cannot be atomic with other
    processes' updates.  ``kc[key] += n`` works everywhere."""
    with tallies.open(store_url) as s:
        kc = s.keyed("k")
        kc["a"] += 2
        if facts(store_url).whole_counter_api:
            kc["a"] = 5
            assert kc["a"] == 5
        else:
            with pytest.raises(TypeError, match="no plain assignment"):
                kc["a"] = 5
            with pytest.raises(TypeError, match="no plain assignment"):
                kc["a"] = kc["a"]
            assert kc["a"] == 2


def test_keyed_int64(store_url: str) -> None:
    with tallies.open(store_url) as s:
        kc = s.keyed("k")
        kc.increment("a", INT64_MAX)
        s.flush()
        if facts(store_url).buffered:
            kc.increment("a")
            with pytest.raises(OverflowError):
                s.flush()
            kc.decrement("a")
            s.flush()
        else:
            with pytest.raises(OverflowError):
                kc.increment("a")
            with pytest.raises(OverflowError):
                kc["a"] += 1
        assert kc["a"] == INT64_MAX


def test_a_snapshot_is_exact_while_another_thread_flushes(store_url: str) -> None:
    """stored + pending, exactly: a snapshot taken while another thread
    flushes (a batch in flight, just committed, or not yet taken) counts
    every increment made before it once, never twice, never missing."""
    import random
    import threading

    rng = random.Random(19)
    model: dict[str, int] = {}
    stop = threading.Event()
    with tallies.open(store_url) as s:
        kc = s.keyed("ev")

        def flusher() -> None:
            while not stop.is_set():
                s.flush()

        t = threading.Thread(target=flusher)
        t.start()
        try:
            for _ in range(25):
                for _ in range(100):
                    k, n = f"k{rng.randrange(300)}", rng.randrange(-3, 6)
                    kc.increment(k, n)
                    model[k] = model.get(k, 0) + n
                assert dict(kc.snapshot()) == model
                assert s.snapshot()["keyed"]["ev"] == model
        finally:
            stop.set()
            t.join()
        assert dict(kc.snapshot()) == model
