"""KeyedCounter and the stores' counters with threads that really run at the same time.

KeyedCounter: inserts, increments, decrements, ``kc[k] += n``, pops, resets of one
key and of all keys, and iteration/snapshots, all at once from every thread on a
key space small enough that keys are removed and re-inserted all the time.  Each
thread's ledger of what it added and what its pops and resets took must balance
key by key:

    count left + everything taken == everything added

Stores: every store's counters and keyed counters (memory://, shm://, and the
write-behind sqlite:// and redis://, against a real file and a real
redis-server) are hammered the same way through ``tallies.open(url)``
(``STORE_URLS``), half the threads through a second store object on the same
URL; both are flushed before the ledgers are checked.
"""

from __future__ import annotations

import collections
import functools
import random
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _ft_stress import ROUNDS, THREADS, Deadline, ops, together
from _redis_support import unique_prefix
from _shm_support import new_url

import tallies
import tallies.keyed
from tallies import _pure_keyed


def _c_keyed() -> Any:
    if tallies.keyed.IMPLEMENTATION != "c":
        pytest.fail("the C extension tallies._tallies is not built")
    return tallies.keyed.KeyedCounter


@pytest.fixture(params=["c", "python"])
def KC(request: pytest.FixtureRequest) -> Any:
    return _c_keyed() if request.param == "c" else _pure_keyed.KeyedCounter


def _keyed_workload(kc: Any, seed: int, n: int, keys: list[Any]) -> None:
    """Run the mixed workload on ``kc`` and check the ledgers key by key."""
    deadline = Deadline()

    def work(t: int) -> tuple[collections.Counter[Any], collections.Counter[Any], int]:
        rng = random.Random(seed * 104729 + t)
        added: collections.Counter[Any] = collections.Counter()
        taken: collections.Counter[Any] = collections.Counter()
        reads = 0
        for i in range(n):
            if i % 128 == 0 and deadline.expired():
                break
            key = rng.choice(keys)
            m = rng.randint(1, 9)
            r = rng.random()
            if r < 0.30:
                kc.increment(key, m)
                added[key] += m
            elif r < 0.40:
                kc.decrement(key, m)
                added[key] -= m
            elif r < 0.50:
                kc[key] += m
                added[key] += m
            elif r < 0.56:
                kc.update({key: m})
                added[key] += m
            elif r < 0.66:
                taken[key] += kc.pop(key, 0)  # removes the key: the next update re-inserts it
            elif r < 0.74:
                taken[key] += kc.reset(key)
            elif r < 0.76:
                taken.update(kc.reset())
            elif r < 0.86:
                for k, v in kc.items():  # iteration while keys come and go
                    assert type(v) is int and k in keys
                    reads += 1
            elif r < 0.93:
                snap = kc.snapshot()
                assert set(snap) <= set(keys)
                reads += len(snap)
            else:
                _ = kc.value(key), kc.get(key), key in kc, len(kc), kc.total()
                reads += 1
        return added, taken, reads

    results = together(THREADS, work)
    for k in keys:
        added = sum(a[k] for a, _, _ in results)
        taken = sum(t[k] for _, t, _ in results)
        assert kc.value(k) + taken == added, k
    assert set(kc) <= set(keys)


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_keyed_every_mutator_balances_key_by_key(KC: Any, round_: int) -> None:
    """Twelve str keys (on GIL builds the C core starts in small mode with these)."""
    n = ops(20_000 if KC is not _pure_keyed.KeyedCounter else 4_000)
    _keyed_workload(KC(), round_, n, [f"k{i}" for i in range(12)])


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_keyed_mixed_keys_balance_key_by_key(KC: Any, round_: int) -> None:
    """int, str, tuple and frozenset keys: everything in cells from the start."""
    n = ops(20_000 if KC is not _pure_keyed.KeyedCounter else 4_000)
    keys: list[Any] = [*range(4), "a", "b", ("t", 1), frozenset({1, 2})]
    _keyed_workload(KC(), round_ + 100, n, keys)


def test_keyed_inserts_of_fresh_keys_from_every_thread(KC: Any) -> None:
    """Every thread inserts keys nobody else has used and keys everybody uses, at once:
    no insert is lost, no key appears twice."""
    kc = KC()
    n = ops(5_000 if KC is not _pure_keyed.KeyedCounter else 1_000)

    def work(t: int) -> None:
        for i in range(n):
            kc.increment((t, i))
            kc.increment(i % 50)

    together(THREADS, work)
    assert len(kc) == THREADS * n + min(50, n)
    assert kc.total() == 2 * THREADS * n
    assert all(kc.value((t, i)) == 1 for t in range(THREADS) for i in range(0, n, 97))


# ---------------------------------------------------------------- stores


@pytest.fixture
def shm_store_url() -> Iterator[str]:
    url = new_url("?names=64&keys=1024&slabs=16")
    yield url
    tallies.destroy(url)


@pytest.fixture
def memory_url() -> Iterator[str]:
    url = f"memory://ft{secrets.token_hex(6)}"  # a named store: two handles share it
    yield url
    tallies.destroy(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path}/ft.db"
    yield url
    tallies.destroy(url)


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    url: str = redis_server.url(unique_prefix("ft"))
    return url


#: Fixtures that each yield the URL of a fresh store under stress.  A new store adds
#: its own here; the write-behind ones (sqlite://, redis://) are flushed before the
#: ledgers are checked.
STORE_URLS = ["memory_url", "shm_store_url", "sqlite_url", "redis_url"]


@pytest.fixture(params=STORE_URLS)
def store_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(request.param)
    return url


def _open_pair(url: str) -> tuple[Any, Any]:
    """Two store objects on one URL: half the threads use each."""
    return tallies.open(url), tallies.open(url)


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_store_counters_balance(store_url: str, round_: int) -> None:
    """increment, decrement, += and reset on one named counter from every thread,
    half of them through a second store object on the same URL."""
    a, b = _open_pair(store_url)
    n = ops(10_000)
    deadline = Deadline()

    def work(t: int) -> tuple[int, int]:
        c = (a if t % 2 else b).counter("hits")
        rng = random.Random(round_ * 31 + t)
        applied = taken = 0
        for i in range(n):
            if i % 128 == 0 and deadline.expired():
                break
            m = rng.randint(1, 9)
            r = rng.random()
            if r < 0.5:
                c.increment(m)
                applied += m
            elif r < 0.7:
                c.decrement(m)
                applied -= m
            elif r < 0.95:
                c.increment()
                applied += 1
            else:
                taken += c.reset()
        return applied, taken

    try:
        results = together(THREADS, work)
        a.flush()
        b.flush()
        applied = sum(x for x, _ in results)
        taken = sum(y for _, y in results)
        assert a.counter("hits").value() + taken == applied
        assert b.counter("hits").value() + taken == applied
    finally:
        a.close()
        b.close()


def test_store_keyed_counters_balance(store_url: str) -> None:
    """increment, decrement and reset(key) on a store's keyed counter from every thread."""
    a, b = _open_pair(store_url)
    n = ops(5_000)
    keys = [f"k{i}" for i in range(8)]

    def work(t: int) -> tuple[collections.Counter[str], collections.Counter[str]]:
        kc = (a if t % 2 else b).keyed("events")
        rng = random.Random(t)
        added: collections.Counter[str] = collections.Counter()
        taken: collections.Counter[str] = collections.Counter()
        for _ in range(n):
            key = rng.choice(keys)
            r = rng.random()
            if r < 0.7:
                kc.increment(key)
                added[key] += 1
            elif r < 0.9:
                kc.decrement(key, 2)
                added[key] -= 2
            else:
                taken[key] += kc.reset(key)
        return added, taken

    try:
        results = together(THREADS, work)
        a.flush()
        b.flush()
        kc = a.keyed("events")
        for k in keys:
            added = sum(x[k] for x, _ in results)
            taken = sum(y[k] for _, y in results)
            assert kc.value(k) + taken == added, k
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("kind", ["counter", "keyed"])
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_closing_a_write_behind_store_while_threads_count(
    sqlite_url: str, round_: int, kind: str
) -> None:
    """close() during increments: every increment either raised ValueError (the
    store was closed) or is in the file afterwards, none lost, none doubled
    (the free-threaded close protocol in _c/buffered.c, and for a keyed
    counter's key already counted in _c/keyed.c; with a GIL the C method is
    one step).  Each thread counts its successes; a fresh store reads them.
    The counting threads go on until close() stops them (asserted: each was
    cut short by ValueError), so the close always lands among increments."""
    store = tallies.open(sqlite_url)
    counter = store.counter("hits")
    kc = store.keyed("hits by key")
    kc.increment("counted", 0)  # counted: its updates below never leave C
    started = [0] * THREADS
    stopped = [False] * THREADS
    n = 50 * ops(200_000)  # a bound only: close() comes long before

    def work(t: int) -> int:
        if t == 0:  # the closer: lets the others get going, then closes
            while sum(started) < THREADS - 1:
                pass
            for _ in range(2_000):
                pass
            store.close()
            return 0
        inc = counter.increment if kind == "counter" else functools.partial(kc.increment, "counted")
        done = 0
        started[t] = 1
        try:
            for _ in range(n):
                inc()
                done += 1
        except ValueError as exc:
            assert "closed" in str(exc)
            stopped[t] = True
        return done

    done = together(THREADS, work)
    assert stopped[1:] == [True] * (THREADS - 1)
    with pytest.raises(ValueError, match="closed"):
        counter.increment()
    with pytest.raises(ValueError, match="closed"):
        kc.increment("counted")
    again = tallies.open(sqlite_url)
    try:
        if kind == "counter":
            assert counter.closed
            assert again.counter("hits").value() == sum(done)
        else:
            assert again.keyed("hits by key").snapshot() == {"counted": sum(done)}
    finally:
        again.close()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_write_behind_keys_first_used_while_other_threads_count_them(
    sqlite_url: str, round_: int
) -> None:
    """Every thread counts the same fresh keys in the same order, so that a key's
    first use (Python: checked and inserted under the store's lock) runs while
    other threads already update it in C (_c/keyed.c, once it is in the cells),
    and thread 0 also flushes now and then: exact totals key by key, each key
    listed once."""
    store = tallies.open(f"{sqlite_url}?flush=3600")
    kc = store.keyed("events")
    n = ops(12_000)
    keys = [f"r{round_}-k{i}" for i in range(n // 6 + 1)]
    deadline = Deadline()

    def work(t: int) -> collections.Counter[str]:
        mine: collections.Counter[str] = collections.Counter()
        for i in range(n):
            if i % 128 == 0 and deadline.expired():
                break
            key = keys[i // 6]
            if i % 3 == t % 3:
                kc.decrement(key)
                mine[key] -= 1
            else:
                kc.increment(key, 2)
                mine[key] += 2
            if t == 0 and i % 500 == 499:
                store.flush()
        return mine

    try:
        results = together(THREADS, work)
        store.flush()
        expected = sum(results, collections.Counter())
        again = tallies.open(sqlite_url)
        try:
            assert again.keyed("events").snapshot() == {k: expected[k] for k in expected}
        finally:
            again.close()
    finally:
        store.close()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_shm_keys_first_used_by_every_thread_at_once(shm_store_url: str, round_: int) -> None:
    """Every thread counts the same fresh shm:// keys, each through its own str
    objects and in its own order, so that the process's key -> cell cache
    (_c/_shmcache.h) is filled and grown by several threads at once while
    others look keys up in it (by an object it holds and by an equal one):
    exact totals key by key, each key listed once."""
    kc = tallies.open(shm_store_url).keyed("events")
    texts = [f"r{round_}-k{i}" for i in range(600)]

    def work(t: int) -> collections.Counter[str]:
        order = list(range(len(texts)))
        random.Random(t).shuffle(order)
        mine: collections.Counter[str] = collections.Counter()
        for i in order + order:
            key = texts[i] if t % 2 else "".join(["r", texts[i][1:]])
            kc.increment(key, t + 1)
            mine[texts[i]] += t + 1
        return mine

    results = together(THREADS, work)
    expected = sum(results, collections.Counter())
    assert kc.snapshot() == expected
    assert sorted(kc.keys()) == sorted(texts)
