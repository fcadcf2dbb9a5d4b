"""The contract, limiters: ``store.limiter(name, limit, per)`` on every store
(``tallies.stores._limiter`` has the promise).  Every test runs on every store
of ``_contract.STORES``."""

from __future__ import annotations

import time

import pytest
from _contract import another_writer, facts

import tallies


def test_admits_up_to_the_limit_then_refuses(store_url: str) -> None:
    with tallies.open(store_url) as s:
        lim = s.limiter("api", 5, 60)
        assert s.limiter("api", 5, 60) is lim
        assert (lim.name, lim.limit, lim.per, lim.resolution) == ("api", 5, 60.0, 1.0)
        assert lim.remaining() == 5 and lim.reset_after() == 0.0
        assert [lim.hit() for _ in range(7)] == [True] * 5 + [False] * 2
        assert lim.remaining() == 0 and not lim.test()
        assert 59.0 < lim.reset_after() <= 61.0
        assert lim.hit("alice", 3) and lim.test("alice", 2) and not lim.test("alice", 3)
        assert not lim.hit("alice", 3)  # refused: counts nothing
        assert lim.remaining("alice") == 2
        assert lim.hit("alice", 2) and not lim.hit("alice")
        assert not lim.hit("bob", 6)  # more than the limit: never admitted
        assert lim.remaining("bob") == 5


def test_reset_forgets_a_key(store_url: str) -> None:
    with tallies.open(store_url) as s:
        lim = s.limiter("r", 3, 60)
        assert lim.hit("k", 3) and not lim.hit("k")
        assert lim.reset("k") == 3
        assert lim.remaining("k") == 3 and lim.hit("k")


def test_capacity_returns_after_the_window(store_url: str) -> None:
    with tallies.open(store_url) as s:
        lim = s.limiter("short", 2, 0.3, resolution=0.05)
        # both units in one call, so in one bucket: two hits could straddle a bucket edge on a
        # loaded machine, and then the oldest unit's expiry frees only one
        t0 = time.monotonic()
        assert lim.hit(n=2) and not lim.hit()
        wait = lim.reset_after()
        # the units stop counting 0.3-0.35 s after the hit: less what the calls took
        # (three round trips to a server on a loaded machine can take 50 ms)
        assert 0.3 - (time.monotonic() - t0) < wait <= 0.36
        time.sleep(wait + 0.02)
        assert lim.remaining() == 2 and lim.hit()


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((0, 60), {}, ValueError, "limit must be > 0"),
        ((-1, 60), {}, ValueError, "limit must be > 0"),
        ((2**63, 60), {}, OverflowError, "above the signed 64-bit range"),
        ((1.5, 60), {}, TypeError, "limit must be an integer"),
        ((True, 60), {}, TypeError, "limit must be an integer"),
        ((10, 0), {}, ValueError, "per must be"),
        ((10, -5), {}, ValueError, "per must be"),
        ((10, float("inf")), {}, ValueError, "per must be"),
        ((10, "60"), {}, TypeError, "per must be a number"),
        ((10, 1e-9), {}, ValueError, "finer than"),
        ((10, 60), {"resolution": 1e-9}, ValueError, "finer than"),
        ((10, 60), {"resolution": 120}, ValueError, "longer than per"),
        ((10, 60), {"resolution": 0.001}, ValueError, "slots"),
    ],
)
def test_bad_limiters_are_refused(
    store_url: str, args: tuple[object, ...], kwargs: dict[str, object], error: type, match: str
) -> None:
    with tallies.open(store_url) as s:
        with pytest.raises(error, match=match):
            s.limiter("bad", *args, **kwargs)  # type: ignore[arg-type]
        assert s.limiter("bad", 3, 60).remaining() == 3  # nothing was created


def test_bad_hits_count_nothing(store_url: str) -> None:
    with tallies.open(store_url) as s:
        lim = s.limiter("h", 5, 60)
        assert lim.hit("k")
        for call, error in [
            (lambda: lim.hit("k", 0), ValueError),
            (lambda: lim.hit("k", -2), ValueError),
            (lambda: lim.hit("k", 1.0), TypeError),
            (lambda: lim.hit("k", 2**63), OverflowError),
            (lambda: lim.hit(42), TypeError),
            (lambda: lim.hit(b"k"), TypeError),
            (lambda: lim.hit(""), ValueError),
            (lambda: lim.test("k", 0), ValueError),
            (lambda: lim.remaining(7), TypeError),
        ]:
            with pytest.raises(error):
                call()
        assert lim.remaining("k") == 4


def test_one_name_one_limit(store_url: str) -> None:
    with tallies.open(store_url) as s:
        s.limiter("api", 10, 60)
        with pytest.raises(ValueError, match="api"):
            s.limiter("api", 20, 60)
        with pytest.raises(ValueError, match="api"):
            s.limiter("api", 10, 30)


def test_every_writer_shares_the_limit(store_url: str) -> None:
    if not facts(store_url).shared:
        pytest.skip("memory:// is one process's store: no other writer shares it")
    with tallies.open(store_url) as a, tallies.open(another_writer(store_url)) as b:
        la, lb = a.limiter("shared", 10, 60), b.limiter("shared", 10, 60)
        admitted = 0
        for i in range(30):
            admitted += (la if i % 2 else lb).hit("k")
        assert admitted <= 10
        # leases given back on close: then every unit is either used or free
        b.close()
        la.give_back() if hasattr(la, "give_back") else None
        assert admitted + la.remaining("k") == 10
