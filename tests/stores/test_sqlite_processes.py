"""sqlite:// across real processes: many writers with threads, SIGKILL after a
flush and with write-through, a kill at each step of a flush, fork with
unflushed deltas, spawn, ProcessPoolExecutor, and the flush at interpreter
exit."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from _shm_support import SRC, run_python

import tallies


def url_of(path: Path, params: str = "") -> str:
    return f"sqlite:///{path}{params}"


def raw(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def stored_counter(db: Path, name: str) -> int:
    rows = raw(db, f"select value from counters where name = '{name}'")
    return int(rows[0][0]) if rows else 0


# ---- many processes x threads, mixed operations --------------------------------


def _mixed_worker(url: str, seed: int, q: Any) -> None:
    """2 threads of mixed updates, flushes and resets; reports its ledger:
    what it added and what its resets took."""
    store = tallies.open(url)
    added = {"n": 0, "k": 0}
    taken = {"n": 0, "k": 0}
    lock = threading.Lock()

    def work(tid: int) -> None:
        rng = random.Random(seed * 100 + tid)
        c = store.counter("n")
        kc = store.keyed("k")
        a_n = a_k = t_n = t_k = 0
        for i in range(3000):
            r = rng.random()
            if r < 0.5:
                c.increment()
                a_n += 1
            elif r < 0.6:
                c.decrement(2)
                a_n -= 2
            elif r < 0.9:
                key = f"key{rng.randrange(8)}"
                kc.increment(key, 3)
                a_k += 3
            elif r < 0.995:
                if i % 7 == 0:
                    store.flush()
            elif r < 0.998:
                t_n += c.reset()
            else:
                t_k += sum(kc.reset().values())
        with lock:
            added["n"] += a_n
            added["k"] += a_k
            taken["n"] += t_n
            taken["k"] += t_k

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    q.put((added, taken))


def test_processes_and_threads_exact_after_reopen(tmp_path: Path) -> None:
    db = tmp_path / "mixed.db"
    url = url_of(db, "?flush=0.005")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_mixed_worker, args=(url, seed, q)) for seed in range(4)]
    for p in procs:
        p.start()
    ledgers = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    added = {k: sum(a[k] for a, _ in ledgers) for k in ("n", "k")}
    taken = {k: sum(t[k] for _, t in ledgers) for k in ("n", "k")}
    # A new, unrelated process reads the file.
    proc = run_python(
        "import tallies, json\n"
        f"s = tallies.open({url!r}, create=False)\n"
        "print(json.dumps([s.counter('n').value(), sum(s.keyed('k').snapshot().values())]))"
    )
    assert proc.returncode == 0, proc.stderr
    n, k = eval(proc.stdout)
    assert n + taken["n"] == added["n"]
    assert k + taken["k"] == added["k"]
    assert stored_counter(db, "n") == n


# ---- SIGKILL ----------------------------------------------------------------------


def _child(code: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = dict(os.environ)
    full["PYTHONPATH"] = SRC + os.pathsep + full.get("PYTHONPATH", "")
    full.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-u", "-c", textwrap.dedent(code)],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_after_flush_loses_nothing_flushed(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    p = _child(
        f"""
        import tallies
        s = tallies.open({url_of(db, "?flush=3600")!r})
        c = s.counter("n")
        kc = s.keyed("k")
        for i in range(10000):
            c.increment()
            kc.increment(str(i % 10))
        s.flush()
        for i in range(500):  # never flushed: only in this process's memory
            c.increment()
        print("flushed", flush=True)
        import time
        time.sleep(60)
        """
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "flushed"
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    assert stored_counter(db, "n") == 10000
    assert raw(db, "select sum(value) from keyed") == [(10000,)]
    with tallies.open(url_of(db)) as s:
        assert s.counter("n").value() == 10000


def test_write_through_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "wt.db"
    p = _child(
        f"""
        import tallies
        s = tallies.open({url_of(db, "?flush=0")!r})
        c = s.counter("n")
        i = 0
        while True:
            c.increment()
            i += 1
            print(i, flush=True)
        """
    )
    assert p.stdout is not None
    acked = 0
    while acked < 300:
        acked = int(p.stdout.readline())
    p.send_signal(signal.SIGKILL)
    for line in p.stdout:  # acknowledgements already written before the kill
        if line.strip():
            acked = int(line)
    p.wait(30)
    got = stored_counter(db, "n")
    assert acked <= got <= acked + 1  # at most the one call in flight


@pytest.mark.parametrize(
    ("point", "landed"),
    [("before-begin", False), ("before-commit", False), ("after-commit", True)],
)
def test_kill_at_each_step_of_a_flush(tmp_path: Path, point: str, landed: bool) -> None:
    """Killed at a step of its second flush: what was committed is there
    exactly once, the rest (only in the dead process's memory) is not, and
    the file works on: a new writer's flush adds exactly its own."""
    db = tmp_path / "crash.db"
    url = url_of(db, "?flush=3600")
    p = _child(
        f"""
        import os, tallies
        s = tallies.open({url!r})
        c = s.counter("n")
        kc = s.keyed("k")
        c.increment(5)
        kc.increment("a", 1)
        s.flush()
        c.increment(7)
        kc.increment("a", 2)
        kc.increment("b", 3)
        os.environ["TALLIES_SQLITE_CRASH"] = {point!r}
        s.flush()
        print("not killed")
        """
    )
    out, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, (out, err)
    expected_n = 12 if landed else 5
    expected_k = {"a": 3, "b": 3} if landed else {"a": 1}
    assert stored_counter(db, "n") == expected_n
    assert dict(raw(db, "select key, value from keyed")) == expected_k
    assert raw(db, "pragma integrity_check") == [("ok",)]
    with tallies.open(url) as s:
        assert s.counter("n").value() == expected_n
        s.counter("n").increment(1)
        s.keyed("k").increment("a")
    assert stored_counter(db, "n") == expected_n + 1
    assert dict(raw(db, "select key, value from keyed"))["a"] == expected_k["a"] + 1


def test_kill_after_commit_then_retry_in_a_live_process_not_doubled(tmp_path: Path) -> None:
    """The lost-reply case in a live process: the commit happened, the
    caller saw an error; the retry of the same batch is recognised."""
    db = tmp_path / "retry.db"
    code = f"""
        import os, tallies
        s = tallies.open({url_of(db, "?flush=3600")!r})
        c = s.counter("n")
        c.increment(9)
        os.environ["TALLIES_SQLITE_FAIL"] = "after-commit"
        try:
            s.flush()
        except tallies.FlushError:
            print("failed after commit")
        del os.environ["TALLIES_SQLITE_FAIL"]
        s.close()
        """
    proc = run_python(textwrap.dedent(code))
    assert proc.returncode == 0, proc.stderr
    assert "failed after commit" in proc.stdout
    assert stored_counter(db, "n") == 9


# ---- fork, spawn, pools, exit -----------------------------------------------------


# The store's flusher is a thread: CPython 3.12+ warns on any fork() then.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_child_does_not_flush_the_parents_deltas(tmp_path: Path) -> None:
    db = tmp_path / "fork.db"
    store = tallies.open(url_of(db, "?flush=3600"))
    c = store.counter("n")
    kc = store.keyed("k")
    c.increment(5)
    kc.increment("x", 5)
    parent_writer = store.writer_id  # type: ignore[attr-defined]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert c.value() == 0  # the parent's pending deltas are not the child's
            c.increment(3)
            kc.increment("x", 3)
            os.write(w, store.writer_id.encode())  # type: ignore[attr-defined]
            store.close()
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    child_writer = os.read(r, 200).decode()
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_writer and child_writer != parent_writer
    assert stored_counter(db, "n") == 3
    assert c.value() == 8  # stored 3 + the parent's own pending 5
    store.close()
    assert stored_counter(db, "n") == 8
    assert raw(db, "select value from keyed") == [(8,)]


def _mp_target(url: str, n: int) -> None:
    store = tallies.open(url)
    c = store.counter("n")
    for _ in range(n):
        c.increment()
    # no close(), no flush(): the exit of the process must flush


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_children_flush_at_exit(tmp_path: Path, method: str) -> None:
    db = tmp_path / f"{method}.db"
    url = url_of(db, "?flush=3600")
    ctx = mp.get_context(method)
    procs = [ctx.Process(target=_mp_target, args=(url, 1000)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert stored_counter(db, "n") == 2000


_pool_store: Any = None


def _pool_init(url: str) -> None:
    global _pool_store
    _pool_store = tallies.open(url)


def _pool_task(i: int) -> int:
    _pool_store.counter("n").increment(i)
    _pool_store.keyed("k").increment(str(i % 3))
    return i


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_executor(tmp_path: Path, method: str) -> None:
    db = tmp_path / f"pool-{method}.db"
    url = url_of(db, "?flush=3600")
    with ProcessPoolExecutor(
        2, mp_context=mp.get_context(method), initializer=_pool_init, initargs=(url,)
    ) as ex:
        assert sum(ex.map(_pool_task, range(200))) == sum(range(200))
    assert stored_counter(db, "n") == sum(range(200))
    assert raw(db, "select sum(value) from keyed") == [(200,)]


def test_interpreter_exit_flushes(tmp_path: Path) -> None:
    db = tmp_path / "exit.db"
    proc = run_python(
        "import tallies\n"
        f"s = tallies.open({url_of(db, '?flush=3600')!r})\n"
        "s.counter('n').increment(41)\n"
        "s.keyed('k').increment('x')\n"
        "raise SystemExit(0)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert stored_counter(db, "n") == 41
    assert raw(db, "select key, value from keyed") == [("x", 1)]


def test_background_flusher_writes_on_the_interval(tmp_path: Path) -> None:
    db = tmp_path / "bg.db"
    with tallies.open(url_of(db, "?flush=0.05")) as s:
        s.counter("n").increment(6)
        deadline = time.monotonic() + 10
        while stored_counter(db, "n") != 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stored_counter(db, "n") == 6


def _race_worker(url: str, n: int, barrier: Any, out: Any) -> None:
    store = tallies.open(url)
    c = store.counter("hits")  # also opens the reader connection
    s = store.keyed("k")
    s.snapshot()
    barrier.wait()
    for _ in range(n):
        c.increment()
    store.close()
    out.put(os.getpid())


def test_processes_creating_and_closing_together_lose_nothing(tmp_path: Path) -> None:
    """Regression: processes that create the file at the same instant and
    close together, each with a writer and a reader connection.  (Two bugs
    lost whole commits here: a -wal next to a still-empty new database is
    deleted by SQLite, and a stray open()/close() of the database file drops
    this process's POSIX locks, letting another process reset the WAL.)"""
    ctx = mp.get_context("fork")
    for round_no in range(4):
        db = tmp_path / f"race{round_no}.db"
        url = url_of(db, "?flush=3600")
        barrier = ctx.Barrier(4)
        q = ctx.Queue()
        procs = [ctx.Process(target=_race_worker, args=(url, 20000, barrier, q)) for _ in range(4)]
        for p in procs:
            p.start()
        for _ in procs:
            q.get(timeout=60)
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert stored_counter(db, "hits") == 80000
