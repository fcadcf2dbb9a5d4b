"""SIGTERM and SIGINT flush every open write-behind store, and the process
still ends the way it would have (``stores/_signals.py``).

Real processes, as deployments stop them: a long flush interval (nothing is
flushed on its own), a signal, then the counts are read from the SQLite file,
with plain Redis commands or with plain SQL (each test with a scope runs on
sqlite://, redis:// and postgresql://). A handler the application installed
stays and is the one called; ``TALLIES_SIGNAL_FLUSH=0`` turns the flush off; a
fork child and ``multiprocessing.Pool`` workers (which ``Pool.__exit__`` stops
with SIGTERM) flush too; the main thread stopped inside a flush neither
deadlocks the handler nor loses its batch; an unresponsive Redis delays the
end by at most the store's timeout."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _postgres_support import PostgresServer, unique_schema
from _redis_support import RedisServer, need_redis, unique_prefix

import tallies
from tallies.stores import _signals, writebehind

# ---- where the counts land: one file, or one Redis prefix -------------------------


@dataclass
class Scope:
    """A store URL (flush interval one hour) and how to read what it stored."""

    name: str
    url: str
    counter: Callable[[str], int]
    keyed: Callable[[str], dict[str, int]]


def _sqlite_scope(tmp_path: Path) -> Scope:
    db = tmp_path / "signals.db"

    def rows(sql: str, *args: str) -> list[tuple[Any, ...]]:
        if not db.exists():
            return []
        con = sqlite3.connect(db)
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # no table yet: nothing was flushed
            return []
        finally:
            con.close()

    def counter(name: str) -> int:
        r = rows("select value from counters where name = ?", name)
        return int(r[0][0]) if r else 0

    def keyed(name: str) -> dict[str, int]:
        return {k: int(v) for k, v in rows("select key, value from keyed where name = ?", name)}

    return Scope("sqlite", f"sqlite:///{db}?flush=3600", counter, keyed)


def _redis_scope(server: RedisServer, **params: str) -> Scope:
    prefix = unique_prefix("sig")
    client = server.client()

    def counter(name: str) -> int:
        return int(client.get(f"{prefix}{{{name}}}") or 0)

    def keyed(name: str) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in client.hgetall(f"{prefix}{{{name}}}").items()}

    return Scope("redis", server.url(prefix, flush="3600", **params), counter, keyed)


def _postgres_scope(server: PostgresServer) -> Scope:
    schema = unique_schema("sig")

    def rows(query: str, name: str) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            return server.sql(query.format(schema=schema), name)
        except psycopg.errors.UndefinedTable:  # the writer has not created the schema yet
            return []

    def counter(name: str) -> int:
        r = rows("SELECT value FROM {schema}.counters WHERE name = %s", name)
        return int(r[0][0]) if r else 0

    def keyed(name: str) -> dict[str, int]:
        return dict(rows("SELECT key, value FROM {schema}.keyed WHERE name = %s", name))

    return Scope("postgresql", server.url(schema=schema, flush="3600"), counter, keyed)


@pytest.fixture(params=["sqlite", "redis", "postgresql"])
def scope(request: pytest.FixtureRequest, tmp_path: Path) -> Scope:
    if request.param == "sqlite":
        return _sqlite_scope(tmp_path)
    if request.param == "postgresql":
        return _postgres_scope(request.getfixturevalue("postgres_server"))
    server: RedisServer = request.getfixturevalue("redis_server")
    return _redis_scope(server)


# ---- a writer process ------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import os, signal, sys, time
    import tallies

    url, mode = sys.argv[1], sys.argv[2]

    def user_handler(signum, frame):
        # os.write, not print: the signal may land inside print("ready"), and a
        # print from the handler would re-enter stdout's buffer (RuntimeError on 3.14)
        os.write(1, f"user handler {signum}\\n".encode())
        sys.exit(3)

    if mode == "user-before":
        signal.signal(signal.SIGTERM, user_handler)
    store = tallies.open(url)
    if mode == "user-after":
        signal.signal(signal.SIGTERM, user_handler)
    c = store.counter("n")
    kc = store.keyed("k")
    for i in range(1000):
        c.increment()
        kc.increment("a", 2)
    h = signal.getsignal(signal.SIGTERM)
    print("handler", "SIG_DFL" if h is signal.SIG_DFL else h.__name__, flush=True)
    if mode == "catch-int":
        try:
            print("ready", flush=True)
            time.sleep(120)
        except KeyboardInterrupt:
            print("caught", flush=True)
            time.sleep(120)  # still alive: the flush happened in the handler, not at exit
    print("ready", flush=True)
    time.sleep(120)
    """
)


def start_writer(url: str, mode: str = "plain", env: dict[str, str] | None = None) -> Any:
    return start_writer_code(WRITER, url, mode, env=env)


def start_writer_code(code: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """``python -c code args...``, pipes for its output, with
    ``TALLIES_SIGNAL_FLUSH`` unset and ``env`` added to the environment."""
    full = dict(os.environ)
    full.pop(_signals.ENV, None)
    full.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
    )


def read_until(p: Any, word: str) -> list[str]:
    lines = []
    while True:
        line = p.stdout.readline()
        assert line, f"writer ended before {word!r}: {lines} {p.stderr.read()}"
        lines.append(line.strip())
        if line.strip() == word:
            return lines


def finish(p: Any, timeout: float = 30) -> tuple[int, str]:
    """Wait for the writer's end: (returncode, stdout + stderr left)."""
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out + err


# ---- SIGTERM ---------------------------------------------------------------------


def test_sigterm_flushes_and_the_process_still_dies_by_sigterm(scope: Scope) -> None:
    p = start_writer(scope.url)
    assert "handler _on_signal" in read_until(p, "ready")
    assert scope.counter("n") == 0  # nothing flushed on its own (flush=3600)
    p.send_signal(signal.SIGTERM)
    rc, err = finish(p)
    assert rc == -signal.SIGTERM, err  # a shell reports 143, as without tallies
    assert scope.counter("n") == 1000
    assert scope.keyed("k") == {"a": 2000}


def test_sigterm_with_the_flush_turned_off_loses_the_unflushed_counts(scope: Scope) -> None:
    """TALLIES_SIGNAL_FLUSH=0: no handler; the process dies as Python's default
    makes it (what every write-behind store did before)."""
    p = start_writer(scope.url, env={_signals.ENV: "0"})
    assert "handler SIG_DFL" in read_until(p, "ready")
    p.send_signal(signal.SIGTERM)
    rc, _ = finish(p)
    assert rc == -signal.SIGTERM
    assert scope.counter("n") == 0


@pytest.mark.parametrize("when", ["user-before", "user-after"])
def test_a_handler_the_application_installed_stays_and_is_called(scope: Scope, when: str) -> None:
    """Before the store opens, tallies leaves it in place; after, it replaces
    tallies' own.  Either way the application's handler runs, exits normally,
    and the exit flush keeps the counts."""
    p = start_writer(scope.url, when)
    assert "handler user_handler" in read_until(p, "ready")
    p.send_signal(signal.SIGTERM)
    rc, err = finish(p)
    assert rc == 3, err
    assert scope.counter("n") == 1000
    assert scope.keyed("k") == {"a": 2000}


# ---- SIGINT ----------------------------------------------------------------------


def test_sigint_flushes_then_raises_keyboard_interrupt(scope: Scope) -> None:
    p = start_writer(scope.url, "catch-int")
    read_until(p, "ready")
    p.send_signal(signal.SIGINT)
    read_until(p, "caught")  # KeyboardInterrupt, as before
    assert p.poll() is None  # alive: no exit flush has run
    assert scope.counter("n") == 1000
    assert scope.keyed("k") == {"a": 2000}
    p.kill()
    finish(p)


def test_an_uncaught_keyboard_interrupt_still_ends_the_process_by_sigint(scope: Scope) -> None:
    p = start_writer(scope.url)
    read_until(p, "ready")
    p.send_signal(signal.SIGINT)
    rc, err = finish(p)
    assert rc == -signal.SIGINT, err  # a shell reports 130
    assert "KeyboardInterrupt" in err
    assert scope.counter("n") == 1000


INTERRUPTED = textwrap.dedent(
    """
    import sys, time
    import tallies

    store = tallies.open(sys.argv[1])
    kc = store.keyed("k")
    hit, i = [], 0
    print("ready", flush=True)
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        try:
            while time.monotonic() < deadline:
                key = i  # key = i; i += 1 has no point where a signal handler runs
                i += 1
                kc.increment(f"k{key}")
                store.flush()
        except KeyboardInterrupt:
            hit.append(key)  # its increment may or may not have happened; never reused
    store.close()
    print(len(hit), ",".join(map(str, hit)), i, flush=True)
    """
)


def test_keyboard_interrupts_never_land_inside_a_flush(tmp_path: Path) -> None:
    """Ctrl-C 40 times at random moments into a main thread that does little
    but flush (pure-Python core: the flush is Python code).  Every increment
    that returned is stored exactly once: a KeyboardInterrupt raised inside
    the flush could drop deltas it had taken from the cells."""
    scope = _sqlite_scope(tmp_path)
    p = start_writer_code(INTERRUPTED, scope.url, env={"TALLIES_PURE": "1"})
    read_until(p, "ready")
    for _ in range(40):
        time.sleep(0.02 + (os.getpid() + _) % 7 * 0.01)
        p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    nhit, hits, tried = out.split()
    hit = {int(h) for h in hits.split(",") if h}
    stored = scope.keyed("k")
    assert int(nhit) >= 20  # the interrupts did land
    assert all(v == 1 for v in stored.values())  # nothing twice
    returned = [i for i in range(int(tried)) if i not in hit]
    assert [i for i in returned if f"k{i}" not in stored] == []  # nothing that returned was lost
    assert set(stored) <= {f"k{i}" for i in range(int(tried))}


# ---- fork, multiprocessing ---------------------------------------------------------


def _forked_writer(url: str, ready: Any) -> None:
    store = tallies.open(url)
    store.counter("n").increment(500)
    ready.set()
    time.sleep(120)


def test_a_fork_child_flushes_on_sigterm(scope: Scope) -> None:
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_forked_writer, args=(scope.url, ready))
    p.start()
    assert ready.wait(30)
    p.terminate()  # SIGTERM
    p.join(30)
    assert p.exitcode == -signal.SIGTERM
    assert scope.counter("n") == 500


_pool_store: Any = None


def _pool_init(url: str) -> None:
    global _pool_store
    _pool_store = tallies.open(url)


def _pool_task(i: int) -> int:
    _pool_store.counter("n").increment(i)
    _pool_store.keyed("k").increment(str(i % 3))
    return i


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_multiprocessing_pool_left_by_its_with_block_loses_nothing(
    scope: Scope, method: str
) -> None:
    """``Pool.__exit__`` calls ``terminate()``: SIGTERM to every worker, which
    skips every exit hook.  The handler flushes each worker's store first."""
    with mp.get_context(method).Pool(2, initializer=_pool_init, initargs=(scope.url,)) as pool:
        assert sum(pool.map(_pool_task, range(200))) == sum(range(200))
    assert scope.counter("n") == sum(range(200))
    assert sum(scope.keyed("k").values()) == 200


# ---- a SIGTERM the main thread never sees -------------------------------------------

UNSEEN = textwrap.dedent(
    """
    import multiprocessing as mp, os, signal, sys, threading, time
    import tallies
    from tallies.stores import _signals

    url, how, kicks = sys.argv[1], sys.argv[2], int(sys.argv[3])
    _signals.KICKS = kicks

    def writer():
        store = tallies.open(url)
        store.counter("n").increment(7)
        if how == "restarted":
            # SA_RESTART: the kernel restarts read() after the C handler, so
            # the Python handler never runs (as in a C extension that retries)
            signal.siginterrupt(signal.SIGTERM, False)
            r, w = os.pipe()
            print("ready", flush=True)
            os.read(r, 1)
        # The main thread waits in SemLock.acquire (sem_wait), as an idle Pool
        # worker does.  The SIGTERM goes to another thread, so sem_wait is never
        # interrupted: what a SIGTERM landing between the main thread's last
        # look at its signals and sem_wait leaves (the C handler has recorded
        # it; the Python handler waits for bytecode the main thread never runs).
        lock = mp.get_context("fork").Lock()
        lock.acquire()

        def elsewhere():
            time.sleep(0.5)  # the main thread is in sem_wait by now
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            time.sleep(120)

        threading.Thread(target=elsewhere, daemon=True).start()
        lock.acquire()

    if how == "forked":  # a fork child of a process with a store open
        tallies.open(url).counter("parent").increment()
        pid = os.fork()
        if pid == 0:
            writer()
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), flush=True)
        print("parent alive", flush=True)
    else:
        writer()
    """
)


def _unseen(url: str, how: str, kicks: int) -> Any:
    return start_writer_code(UNSEEN, url, how, str(kicks))


@pytest.mark.parametrize("how", ["blocked", "forked"])
def test_a_sigterm_the_main_thread_never_saw_still_flushes_and_ends_it(
    tmp_path: Path, how: str
) -> None:
    """The watcher sees the SIGTERM arrive (the wakeup fd), sees the handler
    not run, and sends the signal to the main thread again: sem_wait returns
    EINTR and the handler flushes and ends the process by SIGTERM.  (Before
    the watcher this process waited forever: ``with Pool() as pool:`` hung.)
    Kicks enough for 20 s: the fallback below is not what ends it.  A fork
    child has a watcher of its own, and its SIGTERM is never taken for the
    parent's."""
    scope = _sqlite_scope(tmp_path)
    p = _unseen(scope.url, how, 200)
    rc, out = finish(p)
    assert "did not run the SIGTERM handler" not in out
    if how == "forked":
        assert rc == 0, out
        assert "child -15" in out and "parent alive" in out, out
        assert scope.counter("parent") == 1  # the parent's exit flush
    else:
        assert rc == -signal.SIGTERM, out
    assert scope.counter("n") == 7


def _wait_until_reading_a_pipe(pid: int) -> None:
    """Until the process's main thread sleeps in read() on a pipe (its
    kernel wait channel), 10 s at most; where the kernel does not say, 1 s."""
    wchan = Path(f"/proc/{pid}/wchan")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            where = wchan.read_text()
        except OSError:
            where = ""
        if "pipe_read" in where:
            return
        if where in ("", "0") and time.monotonic() > deadline - 9:
            time.sleep(1)  # no wait channel shown here
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never blocked in read(): {where!r}")


def test_a_sigterm_whose_handler_never_runs_is_flushed_by_the_watcher(tmp_path: Path) -> None:
    """A main thread whose blocking call the kernel restarts (SA_RESTART)
    never runs the handler, however often the signal is sent again: after
    ``KICKS`` tries the watcher flushes every store and ends the process by
    SIGTERM itself, as SIG_DFL would have ended it (without the flush)."""
    scope = _sqlite_scope(tmp_path)
    p = _unseen(scope.url, "restarted", 3)
    read_until(p, "ready")
    _wait_until_reading_a_pipe(p.pid)
    p.send_signal(signal.SIGTERM)
    rc, out = finish(p)
    assert rc == -signal.SIGTERM, out
    assert "did not run the SIGTERM handler within 0.4 s" in out
    assert scope.counter("n") == 7


FOREIGN_BYTE = textwrap.dedent(
    """
    import os, subprocess, sys, time
    import tallies
    from tallies.stores import _signals

    store = tallies.open(sys.argv[1])
    store.counter("n").increment(5)
    fd = _signals._wake[1].fileno()
    # another process holding the wakeup socket (as a fork child does until
    # its own is set up) reports a SIGTERM of its own
    subprocess.run(
        [sys.executable, "-c", f"import os; os.write({fd}, bytes([15]))"],
        pass_fds=[fd],
        check=True,
    )
    time.sleep(1.5)  # the watcher would have sent SIGTERM to this process by now
    print("alive", flush=True)
    """
)


def test_a_sigterm_reported_by_another_process_is_not_taken_for_ours(tmp_path: Path) -> None:
    """The watcher acts only on what this process's C handler wrote (the
    sender's pid, SO_PASSCRED): a byte written by a child holding the
    inherited socket must not make it send SIGTERM to its own main thread."""
    scope = _sqlite_scope(tmp_path)
    p = start_writer_code(FOREIGN_BYTE, scope.url)
    rc, out = finish(p)
    assert rc == 0, out
    assert "alive" in out
    assert scope.counter("n") == 5  # the exit flush


DEFERRED = textwrap.dedent(
    """
    import os, signal, sys, time
    import tallies

    real_kill = signal.pthread_kill

    def counted_kill(thread, signum):
        os.write(2, b"kick\\n")
        real_kill(thread, signum)

    signal.pthread_kill = counted_kill
    store = tallies.open(sys.argv[1])
    store.counter("n").increment(9)
    # Python code the handler takes for tallies' own (a module under
    # tallies.stores): it defers until this returns, 1.5 s later.
    scope = {"__name__": "tallies.stores.busy", "time": time}
    body = "    t = time.monotonic()\\n    while time.monotonic() - t < 1.5: pass"
    exec("def busy():\\n" + body, scope)
    print("ready", flush=True)
    scope["busy"]()
    print("returned", flush=True)
    """
)


def test_the_watcher_leaves_a_deferred_handler_alone(tmp_path: Path) -> None:
    """The handler ran and waits for tallies' code to return: the watcher,
    which may see the signal's byte after the handler ran, must not send
    SIGTERM again (each one would interrupt that code, for up to the
    store's timeout)."""
    scope = _sqlite_scope(tmp_path)
    p = start_writer_code(DEFERRED, scope.url)
    read_until(p, "ready")
    p.send_signal(signal.SIGTERM)
    rc, out = finish(p)
    assert rc == -signal.SIGTERM, out
    assert "kick" not in out
    assert "returned" not in out  # acted on as busy() returned
    assert scope.counter("n") == 9


def test_a_sigterm_during_sigints_flush_still_ends_the_process(tmp_path: Path) -> None:
    """Ctrl-C's flush waits for SQLite's write lock; a SIGTERM comes then.
    The flush completes and the process ends by SIGTERM: the program's
    ``except KeyboardInterrupt`` never gets to keep it alive."""
    scope = _sqlite_scope(tmp_path)
    tallies.open(scope.url).close()  # create the file
    db = scope.url[len("sqlite:///") :].partition("?")[0]
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        p = start_writer(scope.url.replace("flush=3600", "flush=3600&timeout=8"), "catch-int")
        read_until(p, "ready")
        p.send_signal(signal.SIGINT)
        time.sleep(0.5)  # SIGINT's flush now waits for the write lock
        p.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert p.poll() is None  # still flushing
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    rc, out = finish(p)
    assert rc == -signal.SIGTERM, out
    assert "caught" not in out
    assert scope.counter("n") == 1000


# ---- the main thread stopped inside a flush ----------------------------------------

MID_FLUSH = textwrap.dedent(
    """
    import sys, threading, time
    import tallies

    store = tallies.open(sys.argv[1])
    c = store.counter("n")
    c.increment(1000)
    print("flushing", flush=True)
    store.flush()  # waits for the lock the test holds
    print("flushed", flush=True)  # not reached: the signal is acted on as flush() returns
    time.sleep(120)
    """
)


def test_sigterm_while_the_main_thread_waits_inside_a_flush(tmp_path: Path) -> None:
    """The main thread is in ``flush()`` (holding the store's flush lock,
    waiting for SQLite's write lock) when SIGTERM comes: the handler lets that
    flush finish instead of waiting for its lock (a deadlock) or giving up
    (a loss), then flushes what came after and ends the process by SIGTERM."""
    scope = _sqlite_scope(tmp_path)
    tallies.open(scope.url).close()  # create the file
    db = scope.url[len("sqlite:///") :].partition("?")[0]
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        p = start_writer_code(MID_FLUSH, scope.url.replace("flush=3600", "flush=3600&timeout=8"))
        read_until(p, "flushing")
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert p.poll() is None  # the handler waits for the flush, not the reverse
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    t0 = time.monotonic()
    rc, err = finish(p)
    assert rc == -signal.SIGTERM, err
    assert time.monotonic() - t0 < 5
    assert "flushed" not in err  # ended as flush() returned, before the next line
    assert scope.counter("n") == 1000


HOLDS_LIVE_LOCK = textwrap.dedent(
    """
    import sys, time
    import tallies
    from tallies.stores import writebehind

    store = tallies.open(sys.argv[1])
    store.counter("n").increment(1000)
    with writebehind._live_lock:  # as close() holds it for a moment
        print("flushing", flush=True)
        time.sleep(120)
    """
)


def test_sigterm_while_the_main_thread_holds_the_registry_lock(tmp_path: Path) -> None:
    """The handler finds the open stores without the lock that registers
    them (the main thread may be stopped holding it, in ``close()``)."""
    scope = _sqlite_scope(tmp_path)
    p = start_writer_code(HOLDS_LIVE_LOCK, scope.url)
    read_until(p, "flushing")
    p.send_signal(signal.SIGTERM)
    rc, err = finish(p)
    assert rc == -signal.SIGTERM, err
    assert scope.counter("n") == 1000


def test_sigterm_with_redis_not_answering_ends_within_the_timeout(tmp_path: Path) -> None:
    """redis-server stopped (SIGSTOP: connections hang, nothing refuses): the
    flush on SIGTERM gives up after ``timeout`` and the process still ends by
    SIGTERM.  The counts were only in its memory: lost, and the log says so."""
    need_redis()
    server = RedisServer(tmp_path / "stopped").start()
    try:
        scope = _redis_scope(server, timeout="1")
        p = start_writer(scope.url)
        read_until(p, "ready")
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            rc, err = finish(p)
            took = time.monotonic() - t0
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert rc == -signal.SIGTERM, err
        assert 0.9 < took < 3.5  # one timeout (1 s) for the flush, plus start-up noise
        assert "flush of redis://" in err and "lost" in err
        assert scope.counter("n") == 0
    finally:
        server.stop()


# ---- where the handler is installed, and where not --------------------------------


@pytest.fixture
def defaults() -> Iterator[None]:
    """Run with Python's default SIGTERM / SIGINT handlers; restore them after."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    installed = set(_signals._installed)
    wakeup = signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    signal.set_wakeup_fd(wakeup)
    _signals._installed.clear()
    _signals._installed.update(installed)


def test_installed_while_a_store_is_open_and_the_defaults_come_back(
    tmp_path: Path, defaults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(_signals.ENV, raising=False)
    # Only this test's stores count: one an earlier test left open (a close
    # that failed under load stays open, by design) must not keep the handlers.
    monkeypatch.setattr(writebehind, "_live", {})
    a = tallies.open(f"sqlite:///{tmp_path / 'a.db'}")
    b = tallies.open(f"sqlite:///{tmp_path / 'b.db'}")
    assert _signals.installed() == {signal.SIGTERM, signal.SIGINT}
    a.close()
    assert _signals.installed() == {signal.SIGTERM, signal.SIGINT}  # b is still open
    b.close()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


def test_the_watcher_s_wakeup_fd_is_set_with_the_handler_and_unset_with_it(
    tmp_path: Path, defaults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(_signals.ENV, raising=False)
    monkeypatch.setattr(writebehind, "_live", {})
    store = tallies.open(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        assert _signals._wake is not None
        assert _wakeup_fd() == _signals._wake[1].fileno()
    finally:
        store.close()
    assert _wakeup_fd() == -1


def test_an_application_s_wakeup_fd_stays(
    tmp_path: Path, defaults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio's loop (``add_signal_handler``) sets its own wakeup fd; tallies
    never replaces it, and never unsets it on close."""
    monkeypatch.delenv(_signals.ENV, raising=False)
    monkeypatch.setattr(writebehind, "_live", {})
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        signal.set_wakeup_fd(w)
        store = tallies.open(f"sqlite:///{tmp_path / 'a.db'}")
        try:
            assert _signals.installed() == {signal.SIGTERM, signal.SIGINT}
            assert _wakeup_fd() == w
        finally:
            store.close()
        assert _wakeup_fd() == w
    finally:
        signal.set_wakeup_fd(-1)
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", set()), ("TERM", {signal.SIGTERM}), ("SIGINT", {signal.SIGINT}), ("1", None)],
)
def test_the_environment_variable_chooses_the_signals(
    tmp_path: Path,
    defaults: None,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    expected: set[int] | None,
) -> None:
    monkeypatch.setenv(_signals.ENV, value)
    store = tallies.open(f"sqlite:///{tmp_path / 'e.db'}")
    want = {signal.SIGTERM, signal.SIGINT} if expected is None else expected
    try:
        assert _signals.installed() == want
    finally:
        store.close()


def test_a_bad_environment_value_is_refused_and_installs_nothing(
    tmp_path: Path, defaults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_signals.ENV, "TERM,HUP")
    with pytest.raises(ValueError, match=r"TALLIES_SIGNAL_FLUSH='TERM,HUP': expected 1 .*TERM"):
        tallies.open(f"sqlite:///{tmp_path / 'bad.db'}")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ignored_or_custom_handlers_are_left_alone(
    tmp_path: Path, defaults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(_signals.ENV, raising=False)

    def mine(signum: int, frame: object) -> None:
        raise AssertionError("not called here")

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, mine)
    store = tallies.open(f"sqlite:///{tmp_path / 'i.db'}")
    try:
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        store.close()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is mine


def test_a_store_opened_in_another_thread_installs_nothing(
    tmp_path: Path, defaults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the main thread may set handlers (documented: such a store is
    flushed on a signal only once a store opened in the main thread has
    installed the handler)."""
    monkeypatch.delenv(_signals.ENV, raising=False)
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(tallies.open(f"sqlite:///{tmp_path / 't.db'}")))
    t.start()
    t.join()
    try:
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        got[0].close()


def _blocked(native_id: int) -> int:
    """The signal mask of one of this process's threads (from /proc)."""
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("SigBlk:")).split()[1], 16)


def test_tallies_threads_leave_sigterm_and_sigint_to_the_main_thread(
    tmp_path: Path, defaults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal the kernel hands to a background thread runs its Python
    handler only when the main thread next runs Python code: an idle
    ``Pool`` worker, blocked on a lock, would never end.  So tallies' flusher
    and helper threads block both signals."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("no /proc/self/task here to read thread signal masks from")
    monkeypatch.delenv(_signals.ENV, raising=False)
    store = tallies.open(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        ours = [
            t
            for t in threading.enumerate()
            if t.name.startswith(("tallies-flush", "tallies-signals")) and t.native_id
        ]
        names = {t.name.split()[0] for t in ours}
        assert names == {"tallies-flush", "tallies-signals", "tallies-signals-watch"}
        both = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
        for t in ours:
            assert t.native_id is not None
            assert _blocked(t.native_id) & both == both, t.name
        assert _blocked(threading.get_native_id()) & both == 0  # the main thread takes them
    finally:
        store.close()


def test_the_postgresql_watchdog_thread_leaves_them_to_the_main_thread_too(
    postgres_server: PostgresServer, defaults: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """postgresql:// has one more thread of its own (the watchdog that ends a
    call whose reply never comes): it blocks both signals as well."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("no /proc/self/task here to read thread signal masks from")
    monkeypatch.delenv(_signals.ENV, raising=False)
    store = tallies.open(postgres_server.url(schema=unique_schema("sigw")))
    try:
        store.counter("n").increment()
        store.flush()  # a call to the server: the watchdog thread runs from now on
        (watchdog,) = [t for t in threading.enumerate() if t.name == "tallies-pg-watchdog"]
        assert watchdog.native_id is not None
        both = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
        assert _blocked(watchdog.native_id) & both == both
    finally:
        store.close()


def test_tallies_threads_have_the_signals_blocked_from_their_first_instruction() -> None:
    """Blocking them inside the new thread leaves a window before it gets
    there, in which the kernel may hand it a SIGTERM meant for the main thread
    (an idle Pool worker would then never end).  The thread is started with
    them blocked, so it inherits the mask; the starting thread's mask is as
    before."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("no /proc/self/task here to read thread signal masks from")
    both = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
    seen: list[int] = []

    def first() -> None:  # the first thing the thread does: read its own mask
        seen.append(_blocked(threading.get_native_id()))

    before = _blocked(threading.get_native_id())
    t = threading.Thread(target=first)
    _signals.start_without_signals(t)
    t.join()
    assert seen[0] & both == both
    assert _blocked(threading.get_native_id()) == before
