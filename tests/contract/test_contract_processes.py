"""The contract, processes: docs/contract.md, "Processes".  Every test runs on
every store that processes share (memory:// lives in one process: its counts
are not there for another process to see, by definition)."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import threading
from typing import Any

import pytest
from _contract import facts
from _shm_support import SRC

import tallies

N = 300

_store: Any = None
_url = ""


def _shared_only(url: str) -> None:
    if not facts(url).shared:
        pytest.skip("memory:// counts live in one process; no other process can see them")


def _lazy_work(args: tuple[str, int]) -> int:
    """A pool task that opens the store on first use and never closes it."""
    global _store, _url
    url, i = args
    if _store is None or _url != url:
        _store, _url = tallies.open(url), url
    _store.counter("tasks").increment()
    _store.keyed("by_rest").increment(str(i % 3))
    return i


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_with_pool_as_pool_is_exact(store_url: str, method: str) -> None:
    """``with multiprocessing.Pool() as pool: pool.map(work, ...)``: the pool's
    exit terminates its workers with SIGTERM, and every count they made is
    there (issue 24, 2: 0 of 1000 landed on sqlite and on redis with fork)."""
    _shared_only(store_url)
    with mp.get_context(method).Pool(2) as pool:
        done = pool.map(_lazy_work, [(store_url, i) for i in range(N)])
    assert sorted(done) == list(range(N))
    with tallies.open(store_url) as s:
        assert s.counter("tasks").value() == N
        assert dict(s.keyed("by_rest").snapshot()) == {"0": N // 3, "1": N // 3, "2": N // 3}


def _child_counts(url: str) -> None:
    with tallies.open(url) as s:
        s.counter("n").increment(2)


def test_a_forked_child_counts_into_the_same_store(store_url: str) -> None:
    _shared_only(store_url)
    with tallies.open(store_url) as s:
        s.counter("n").increment(5)  # pending in the parent: the child does not flush it
        p = mp.get_context("fork").Process(target=_child_counts, args=(store_url,))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert s.counter("n").value() == 7
    with tallies.open(store_url) as s:
        assert s.counter("n").value() == 7


def test_exit_flushes_what_was_not_flushed(store_url: str) -> None:
    _shared_only(store_url)
    code = (
        "import tallies, sys\n"
        "s = tallies.open(sys.argv[1])\n"
        "s.counter('n').increment(4)\n"
        "s.keyed('k').increment('x', 2)\n"
    )  # no flush, no close: the interpreter's exit must flush
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", code, store_url], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    with tallies.open(store_url) as s:
        assert s.counter("n").value() == 4 and s.keyed("k")["x"] == 2


def test_a_pickled_counter_counts_into_its_store(store_url: str) -> None:
    """Shared stores pickle counters by URL and name: unpickled anywhere they
    count into the same store; in a process where the store is open they are
    that store's counters (one store per URL per process)."""
    _shared_only(store_url)
    with tallies.open(store_url) as s:
        c, kc = s.counter("n"), s.keyed("k")
        c.increment(2)
        c2, kc2 = pickle.loads(pickle.dumps(c)), pickle.loads(pickle.dumps(kc))
        c2.increment(3)
        kc2.increment("x")
        assert c.value() == 5 and kc["x"] == 1
        with mp.get_context("spawn").Pool(1) as pool:
            pool.map(_increment_pickled, [(c, kc)] * 3)
        assert c.value() == 8 and kc["x"] == 4


def _increment_pickled(pair: tuple[Any, Any]) -> None:
    c, kc = pair
    c.increment()
    kc.increment("x")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def test_unpickling_opens_nothing_new(store_url: str) -> None:
    """Unpickling (or copying) a counter 200 times opens no store, thread or
    descriptor each time (issue 24, 8: 200 loads left 200 threads and 800
    descriptors)."""
    _shared_only(store_url)
    with tallies.open(store_url) as s:
        c, kc = s.counter("n"), s.keyed("k")
        data = pickle.dumps(c), pickle.dumps(kc)
        pickle.loads(data[0]), pickle.loads(data[1])  # a first one may open what it needs
        threads, fds = threading.active_count(), _open_fds()
        for _ in range(200):
            pickle.loads(data[0]).increment()
            pickle.loads(data[1]).increment("x")
        assert threading.active_count() == threads
        assert _open_fds() <= fds + 2
        assert c.value() == 200 and kc["x"] == 200
