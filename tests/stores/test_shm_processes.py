"""shm:// across processes: fork, spawn, forkserver, pools, unrelated commands,
exactness under mixed operations, a writer killed with SIGKILL, and folds
interrupted by death at every step."""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import random
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
from _shm_support import SHM_DIR, new_url, run_python

import tallies
from tallies.stores import _shm_segment as segment_mod
from tallies.stores import shm as shm_mod

KEYS = ["a", "b", "c", "d"]


def _base(url: str) -> str:
    return url.partition("?")[0]


def _fork(fn: Any) -> int:
    """Run fn() in a forked child that then exits at once (0 only if fn returned); its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def _fork_and_wait(fn: Any) -> int:
    """Run fn() in a forked child that then exits at once; its exit code."""
    pid = _fork(fn)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)  # hung (a deadlock): report it as a failure
    os.waitpid(pid, 0)
    return -signal.SIGKILL


# ---- start methods ------------------------------------------------------------


def _increment_by_url(url: str, n: int, out: Any) -> None:
    store = tallies.open(url)
    c = store.counter("hits")
    for _ in range(n):
        c.increment()
    k = store.keyed("by")
    k.increment(str(os.getpid()), n)
    mine = [sl for sl in store.info()["slabs"] if sl["mine"]]
    out.put((os.getpid(), mine[0]["slab"], mine[0]["pid"]))


def _increment_pickled(counter: Any, n: int, out: Any) -> None:
    for _ in range(n):
        counter.increment()
    out.put(os.getpid())


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_start_methods(shm_url: str, method: str) -> None:
    ctx = mp.get_context(method)
    with tallies.open(shm_url) as s:
        c = s.counter("hits")
        c.increment(1000)  # the parent owns a slab before the children start
        parent_slab = [sl["slab"] for sl in s.info()["slabs"] if sl["mine"]]
        out = ctx.Queue()
        procs = [ctx.Process(target=_increment_by_url, args=(shm_url, 2000, out)) for _ in range(3)]
        procs.append(ctx.Process(target=_increment_pickled, args=(c, 500, out)))
        for p in procs:
            p.start()
        reports = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert c.value() == 1000 + 3 * 2000 + 500
        slabs = [r for r in reports if isinstance(r, tuple)]
        # every child wrote to its OWN slab, recorded with its own pid
        assert all(pid == owner for pid, _, owner in slabs)
        # (a child may reuse the slab of a sibling that died before it started)
        assert all(slab not in parent_slab for _, slab, _ in slabs)
        assert s.keyed("by").snapshot() == collections.Counter(
            {str(pid): 2000 for pid, _, _ in slabs}
        )
        s.fold()  # whatever the children's own claims did not fold yet
        assert [sl["mine"] for sl in s.info()["slabs"]] == [True]
        assert c.value() == 7500


def test_fork_child_writes_its_own_slab_with_inherited_objects(shm_url: str) -> None:
    with tallies.open(shm_url) as s:
        c, k = s.counter("x"), s.keyed("k")
        c.increment()
        k.increment("p")
        parent = s.info()["slabs"]

        def child() -> None:
            c.increment(10)  # an object made before fork()
            k.increment("p", 10)
            mine = [sl for sl in s.info()["slabs"] if sl["mine"]]
            assert mine[0]["pid"] == os.getpid()
            assert mine[0]["slab"] != parent[0]["slab"]

        assert _fork_and_wait(child) == 0
        assert c.value() == 11 and k["p"] == 11
        slab = [sl for sl in s.info()["slabs"] if not sl["mine"]]
        assert len(slab) == 1 and not slab[0]["alive"]


def test_fork_while_another_thread_holds_the_segment_lock(shm_url: str) -> None:
    with tallies.open(shm_url) as s:
        c = s.counter("x")
        seg = s._seg
        held, release = threading.Event(), threading.Event()
        released_at: list[float] = []

        def holder() -> None:
            with seg.locked():
                held.set()
                release.wait(0.3)
            released_at.append(time.monotonic())

        t = threading.Thread(target=holder)
        t.start()
        held.wait(10)
        try:
            # the child inherits the thread lock held by a thread it does not
            # have; it must get a fresh one (or it would wait forever), then
            # wait only for the parent's fcntl lock, released after 0.3 s
            t0 = time.monotonic()
            assert _fork_and_wait(lambda: c.increment(5)) == 0
            t1 = time.monotonic()
            assert t1 - t0 < 10
        finally:
            release.set()
            t.join()
        # the fork happened while the lock was held, and the child's first
        # write (its slab claim, under the lock) could finish only after it
        assert t0 < released_at[0] <= t1
        assert c.value() == 5


def _pool_job(url: str, n: int) -> int:
    store = tallies.open(url)
    store.counter("jobs").increment(n)
    store.keyed("per").increment("all", 1)
    return os.getpid()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_executor(shm_url: str, method: str) -> None:
    with ProcessPoolExecutor(max_workers=3, mp_context=mp.get_context(method)) as ex:
        pids = list(ex.map(_pool_job, [shm_url] * 12, range(1, 13)))
    with tallies.open(shm_url) as s:
        assert s.counter("jobs").value() == sum(range(1, 13))
        assert s.keyed("per")["all"] == 12
        assert 1 <= len(set(pids)) <= 3
        s.fold()
        assert s.info()["slabs"] == []  # the pool's workers have exited: folded
        assert s.counter("jobs").value() == 78


def test_two_unrelated_python_commands(shm_url: str) -> None:
    code = (
        "import sys, tallies\n"
        f"s = tallies.open({shm_url!r})\n"
        "c = s.counter('hits'); inc = c.increment\n"
        "for _ in range(50000): inc()\n"
        "s.keyed('who').increment(sys.argv[0] if len(sys.argv) > 1 else 'cmd', 1)\n"
    )
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [shm_mod.__file__.rsplit("/tallies/", 1)[0], env.get("PYTHONPATH", "")]
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    assert [p.wait(60) for p in procs] == [0, 0]
    r = run_python(f"import tallies; print(tallies.open({shm_url!r}).counter('hits').value())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "100000"
    with tallies.open(shm_url) as s:
        assert s.counter("hits").value() == 100000
        assert s.keyed("who")["cmd"] == 2


def test_segment_survives_the_exit_of_its_creator() -> None:
    """No resource tracker: the creating process exits, the segment and its
    counts stay (multiprocessing.shared_memory would unlink it before 3.13)."""
    url = new_url()
    try:
        r = run_python(
            "import tallies, multiprocessing\n"
            f"s = tallies.open({url!r})\n"
            "s.counter('left').increment(7)\n"
            "print(s.path)\n"
        )
        assert r.returncode == 0, r.stderr
        path = r.stdout.strip()
        assert os.path.exists(path)
        r2 = run_python(
            f"import tallies; print(tallies.open({url!r}, create=False).counter('left').value())"
        )
        assert r2.returncode == 0, r2.stderr
        assert r2.stdout.strip() == "7"
        assert os.path.exists(path)
    finally:
        tallies.destroy(url)


def _create_at_once(url: str, n: int, out: Any, links: Any, barrier: Any) -> None:
    """_increment_by_url, but the segment file is linked into place only once
    every process has built its own (each one found no segment), and whether
    this process's link won is reported."""
    real_link = os.link

    def link(src: Any, dst: Any) -> None:
        barrier.wait(30)
        try:
            real_link(src, dst)
        except FileExistsError:
            links.put("lost")
            raise
        links.put("won")

    os.link = link  # this child only
    _increment_by_url(url, n, out)


def test_concurrent_creation_agrees_on_one_segment() -> None:
    """Six processes create the same segment at the same moment (forced: each
    builds its file, then all link at once): one link wins, five find the
    winner's segment and use it."""
    url = new_url("?names=8&keys=8&slabs=8")
    try:
        ctx = mp.get_context("fork")
        out, links, barrier = ctx.Queue(), ctx.Queue(), ctx.Barrier(6)
        procs = [
            ctx.Process(target=_create_at_once, args=(url, 100, out, links, barrier))
            for _ in range(6)
        ]
        for p in procs:
            p.start()
        for _ in procs:
            out.get(timeout=60)
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert sorted(links.get(timeout=10) for _ in procs) == ["lost"] * 5 + ["won"]
        with tallies.open(url) as s:
            assert s.counter("hits").value() == 600
        leftovers = [f for f in os.listdir(SHM_DIR) if f.endswith(".tmp")]
        assert leftovers == []
    finally:
        tallies.destroy(_base(url))


# ---- exactness under mixed operations ------------------------------------------


def _mixed_worker(url: str, seed: int, threads: int, ops: int, out: Any) -> None:
    store = tallies.open(url)
    c, k = store.counter("c"), store.keyed("k")
    ledgers: list[dict[str, Any]] = []

    def run(tseed: int) -> None:
        rng = random.Random(tseed)
        led: dict[str, Any] = {
            "net": 0,
            "reset": 0,
            "knet": collections.Counter(),
            "kreset": collections.Counter(),
        }
        for _ in range(ops):
            r = rng.random()
            n = rng.randint(1, 5)
            key = rng.choice(KEYS)
            if r < 0.40:
                c.increment(n)
                led["net"] += n
            elif r < 0.55:
                c.decrement(n)
                led["net"] -= n
            elif r < 0.80:
                k.increment(key, n)
                led["knet"][key] += n
            elif r < 0.90:
                k.decrement(key, n)
                led["knet"][key] -= n
            elif r < 0.94:
                c.value()
                store.snapshot()
            elif r < 0.97:
                led["reset"] += c.reset()
            elif r < 0.99:
                led["kreset"][key] += k.reset(key)
            else:
                led["kreset"].update(k.reset())
        ledgers.append(led)

    ts = [threading.Thread(target=run, args=(seed * 100 + i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    total: dict[str, Any] = {
        "net": sum(x["net"] for x in ledgers),
        "reset": sum(x["reset"] for x in ledgers),
        "knet": sum((x["knet"] for x in ledgers), collections.Counter()),
        "kreset": sum((x["kreset"] for x in ledgers), collections.Counter()),
    }
    # Counter addition drops non-positive counts: keep them all
    total["knet"] = {key: sum(x["knet"][key] for x in ledgers) for key in KEYS}
    total["kreset"] = {key: sum(x["kreset"][key] for x in ledgers) for key in KEYS}
    out.put(total)


def _churn_worker(url: str, children: int, out: Any) -> None:
    """Short-lived writers that die while others fold their slabs."""
    store = tallies.open(url)
    c, k = store.counter("c"), store.keyed("k")

    def child() -> None:
        for _ in range(100):
            c.increment()
        k.increment("a", 3)

    for _ in range(children):
        # a child that failed would leave the ledger short: its exit code says so
        assert _fork_and_wait(child) == 0
        store.fold()
    out.put(
        {
            "net": 100 * children,
            "reset": 0,
            "knet": {"a": 3 * children, "b": 0, "c": 0, "d": 0},
            "kreset": dict.fromkeys(KEYS, 0),
        }
    )


def test_exact_across_processes_and_threads_with_mixed_operations() -> None:
    """Model: a ledger per thread.  For the counter and for every key,
    final value + everything reset() returned == increments - decrements."""
    url = new_url("?names=8&keys=16&slabs=16")
    try:
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        procs = [
            ctx.Process(target=_mixed_worker, args=(url, seed, 3, 6000, out)) for seed in range(4)
        ]
        procs.append(ctx.Process(target=_churn_worker, args=(url, 15, out)))
        for p in procs:
            p.start()
        with tallies.open(url) as s:
            reads = 0
            while any(p.is_alive() for p in procs) and reads < 2000:
                s.snapshot()  # readers never fail while folds and resets run
                reads += 1
            ledgers = [out.get(timeout=120) for _ in procs]
            for p in procs:
                p.join(60)
                assert p.exitcode == 0
            net = sum(x["net"] for x in ledgers)
            reset = sum(x["reset"] for x in ledgers)
            assert reset != 0 and any(x["kreset"][key] for x in ledgers for key in KEYS)
            assert s.counter("c").value() + reset == net
            k = s.keyed("k")
            for key in KEYS:
                knet = sum(x["knet"][key] for x in ledgers)
                kreset = sum(x["kreset"][key] for x in ledgers)
                assert k.value(key) + kreset == knet, key
            before = s.snapshot()
            s.fold()
            assert s.info()["slabs"] == []  # every writer is dead and folded
            assert s.snapshot() == before  # folding changes no count
    finally:
        tallies.destroy(_base(url))


# ---- a writer killed with SIGKILL -----------------------------------------------


def _victim(url: str, ledger: Any) -> None:
    c = tallies.open(url).counter("hits")
    inc = c.increment
    i = 0
    while True:
        inc()
        i += 1
        ledger.value = i  # after increment() returned


def _steady(url: str, killed: Any, after: int, out: Any) -> None:
    c = tallies.open(url).counter("hits")
    done = 0
    while not killed.is_set():
        c.increment()
        done += 1
    for _ in range(after):  # the others go on after the kill
        c.increment()
    out.put(done + after)


def test_a_writer_killed_mid_loop_loses_nothing_that_returned(shm_url: str) -> None:
    ctx = mp.get_context("fork")
    ledger = ctx.RawValue("q", 0)
    killed = ctx.Event()
    out = ctx.Queue()
    s = tallies.open(shm_url)  # opened first: only s.fold() below folds anything
    c = s.counter("hits")
    victim = ctx.Process(target=_victim, args=(shm_url, ledger))
    steady = [ctx.Process(target=_steady, args=(shm_url, killed, 20000, out)) for _ in range(2)]
    for p in [victim, *steady]:
        p.start()
    deadline = time.monotonic() + 30
    # all three writers hold their slabs, and the victim is well into its loop
    while (ledger.value < 50000 or len(s.info()["slabs"]) < 3) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    assert victim.exitcode == -signal.SIGKILL
    returned = ledger.value
    assert returned >= 50000
    c.value()  # the segment stays readable right away
    assert [sl["alive"] for sl in s.info()["slabs"] if sl["pid"] == victim.pid] == [False]
    killed.set()
    steady_total = sum(out.get(timeout=60) for _ in steady)
    for p in steady:
        p.join(30)
        assert p.exitcode == 0
    total = c.value()
    assert total - steady_total in (returned, returned + 1)  # at most the one in flight
    assert s.fold() == 3  # the victim's slab and the two that exited normally
    assert s.info()["slabs"] == []  # all freed
    assert c.value() == total  # folding changed nothing
    s.close()


# ---- folds interrupted by death --------------------------------------------------

FOLD_CODE = "import tallies; s = tallies.open({url!r}); print(s.fold())"


def _dead_writers(s: tallies.Store) -> dict[str, Any]:
    """Two writers, alive at the same time (so each claims its own slab), then dead."""
    c, b, k = s.counter("a"), s.counter("b"), s.keyed("k")
    s.names()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def w1() -> None:
        c.increment(3)
        b.decrement(2)
        k.increment("x", 5)
        os.write(ready_w, b"x")  # w1 holds its slab now...
        os.read(go_r, 1)  # ...and keeps it (alive) until w2 has written

    def w2() -> None:
        c.increment(4)
        k.increment("y", 7)
        k.increment("x", -1)

    pid1 = _fork(w1)
    assert os.read(ready_r, 1) == b"x"
    assert _fork_and_wait(w2) == 0
    os.write(go_w, b"x")
    assert os.waitpid(pid1, 0)[1] == 0
    for fd in (ready_r, ready_w, go_r, go_w):
        os.close(fd)
    assert len(s.info()["slabs"]) == 2
    snap = s.snapshot()
    assert snap == {"counters": {"a": 7, "b": -2}, "keyed": {"k": {"x": 4, "y": 7}}}
    return dict(snap)


@pytest.mark.parametrize(
    "crash",
    [
        "fold-marked",
        "fold-journaled",
        "fold-journaled:4",
        "fold-archived",
        "fold-archived:3",
        "fold-zeroed",
        "fold-zeroed:5",
        "fold-cell-done:2",
        "fold-freed",
    ],
)
def test_a_fold_interrupted_by_death_is_completed_exactly_once(shm_url: str, crash: str) -> None:
    with tallies.open(shm_url) as s:
        expected = _dead_writers(s)
        r = run_python(FOLD_CODE.format(url=shm_url), env={"TALLIES_SHM_CRASH": crash})
        assert r.returncode == segment_mod.CRASH_EXIT, (
            r.returncode,
            r.stderr,
        )  # it did die mid-fold
        assert s.snapshot() == expected  # read right after the death: nothing lost or doubled
        s.fold()
        assert s.info()["slabs"] == []
        assert s.snapshot() == expected
        seg = s._seg
        assert seg.c.load(segment_mod.J_STATE) == 0 and seg.c.load(segment_mod.SEQ) % 2 == 0
        r = run_python(FOLD_CODE.format(url=shm_url))
        assert r.returncode == 0 and r.stdout.strip() == "0"
        assert s.snapshot() == expected


def test_recovery_interrupted_by_death_is_redone_exactly_once(shm_url: str) -> None:
    with tallies.open(shm_url) as s:
        expected = _dead_writers(s)
        r = run_python(FOLD_CODE.format(url=shm_url), env={"TALLIES_SHM_CRASH": "fold-archived:2"})
        assert r.returncode == segment_mod.CRASH_EXIT
        # the next process dies too, in the middle of redoing the journal
        r = run_python(FOLD_CODE.format(url=shm_url), env={"TALLIES_SHM_CRASH": "recover-archived"})
        assert r.returncode == segment_mod.CRASH_EXIT
        # and the one after dies in the fold that recovery resumes
        r = run_python(FOLD_CODE.format(url=shm_url), env={"TALLIES_SHM_CRASH": "fold-zeroed"})
        assert r.returncode == segment_mod.CRASH_EXIT
        assert s.snapshot() == expected
        # Of the two dead writers' slabs, the second process's recovery
        # finished the first; the third died folding the other, which is
        # still listed, and this fold frees exactly it.
        assert [sl["alive"] for sl in s.info()["slabs"]] == [False]
        assert s.fold() == 1
        assert s.info()["slabs"] == []
        assert s.snapshot() == expected


def test_a_reader_during_an_interrupted_fold_waits_for_recovery(shm_url: str) -> None:
    with tallies.open(shm_url) as s:
        _dead_writers(s)
        r = run_python(FOLD_CODE.format(url=shm_url), env={"TALLIES_SHM_CRASH": "fold-archived"})
        assert r.returncode == segment_mod.CRASH_EXIT
        seg = s._seg
        assert seg.c.load(segment_mod.SEQ) % 2 == 1  # left odd by the dead folder
        assert seg.c.sum(0) is None  # the lock-free read refuses...
        assert s.counter("a").value() == 7  # ...so value() recovers under the lock
        assert seg.c.load(segment_mod.SEQ) % 2 == 0


def test_death_while_claiming_a_slab_or_registering_a_name(shm_url: str) -> None:
    with tallies.open(shm_url) as s:
        s.counter("first").increment()
        r = run_python(
            f"import tallies; tallies.open({shm_url!r}).counter('first').increment()",
            env={"TALLIES_SHM_CRASH": "bind-owner-written"},
        )
        assert r.returncode == segment_mod.CRASH_EXIT
        assert [sl["mine"] for sl in s.info()["slabs"]] == [True]  # no half-claimed slab
        r = run_python(
            f"import tallies; tallies.open({shm_url!r}).counter('ghost')",
            env={"TALLIES_SHM_CRASH": "register-entry-written"},
        )
        assert r.returncode == segment_mod.CRASH_EXIT
        assert s.names() == ["first"]  # the half-registered name is not visible
        s.counter("real").increment(2)  # and its entry is reused
        assert s.names() == ["first", "real"]
        assert s.snapshot()["counters"] == {"first": 1, "real": 2}


# ---- death in the middle of a new key's lock-free insert (_c/_shmkeys.h) -------

INSERT_CODE = """
import tallies
k = tallies.open({url!r}).keyed("k")
for i in range(10):
    k.increment(f"key{{i}}", i + 1)
"""


@pytest.mark.parametrize(
    ("crash", "published"),
    [
        ("key-claimed:5", False),  # entry and heap bytes claimed, nothing written
        ("key-written:5", False),  # entry written, not yet in the hash
        ("key-published:5", True),  # in the hash, its entry not yet marked published
    ],
)
def test_death_mid_insert_leaves_the_key_absent_or_complete(
    shm_url: str, crash: str, published: bool
) -> None:
    """A writer dies inserting its 5th new key (key4), at each step of the
    insert: key4 is then absent, or present at 0 and findable by every
    process; never torn, never twice; every count before it exact after the
    fold; the segment takes new keys (and key4 again) as before."""
    with tallies.open(shm_url) as s:
        k = s.keyed("k")
        k.increment("before", 7)
        r = run_python(INSERT_CODE.format(url=shm_url), env={"TALLIES_SHM_CRASH": crash})
        assert r.returncode == segment_mod.CRASH_EXIT, (r.returncode, r.stderr)
        expected = {"before": 7, "key0": 1, "key1": 2, "key2": 3, "key3": 4}
        if published:
            expected["key4"] = 0
        assert dict(k.snapshot()) == expected
        assert ("key4" in k) == published
        assert s.fold() == 1
        assert dict(k.snapshot()) == expected
        # key4 again, from this process and from another: one key, exact counts
        k.increment("key4", 10)
        r = run_python(
            f"import tallies; k = tallies.open({shm_url!r}).keyed('k'); "
            "k.increment('key4', 100); k.increment('after'); print(sorted(k.keys()))"
        )
        assert r.returncode == 0, r.stderr
        keys = sorted([*expected, "after"] + ([] if published else ["key4"]))
        assert r.stdout.strip() == repr(keys)
        assert k.keys().count("key4") == 1
        assert dict(k.snapshot()) == {**expected, "key4": 110, "after": 1}
        assert s.fold() == 1
        assert dict(k.snapshot()) == {**expected, "key4": 110, "after": 1}


# ---- the hot path takes no lock; dead writers do not fill the segment ----------


def _bound_writer(url: str, ready: Any, go: Any, n: int) -> None:
    s = tallies.open(url)
    c, k = s.counter("x"), s.keyed("k")
    c.increment()  # claims this process's slab (under the lock) ...
    k.increment("a")  # ... and registers the key
    ready.set()
    go.wait(30)
    for _ in range(n):  # ... after which no update needs the lock
        c.increment()
        k.increment("a")
        c.decrement(2)


def test_bound_writers_never_wait_for_the_segment_lock(shm_url: str) -> None:
    ctx = mp.get_context("fork")
    ready, go = ctx.Event(), ctx.Event()
    with tallies.open(shm_url) as s:
        child = ctx.Process(target=_bound_writer, args=(shm_url, ready, go, 20000))
        child.start()
        assert ready.wait(30)
        with s._seg.locked():  # held by this process for the child's whole loop
            go.set()
            child.join(30)
            assert child.exitcode == 0  # it finished while the lock was held
        assert s.counter("x").value() == 1 - 20000
        assert s.keyed("k")["a"] == 20001


def test_dead_writers_do_not_fill_the_segment() -> None:
    url = new_url("?names=2&keys=2&slabs=2")
    try:
        with tallies.open(url) as s:
            c = s.counter("x")
            for i in range(10):  # ten writers, one after another, in two slabs
                assert _fork_and_wait(lambda i=i: c.increment(i)) == 0
            assert c.value() == sum(range(10))
            assert len(s.info()["slabs"]) == 1  # each claim folded the one before
            s.fold()
            assert s.info()["slabs"] == [] and c.value() == 45
    finally:
        tallies.destroy(_base(url))
