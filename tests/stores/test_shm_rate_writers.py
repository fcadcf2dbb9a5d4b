"""shm:// rates and their writers: a writer stopped inside a bucket mark blocks no reader;
rates and keyed rates travel to worker processes by pickle, like counters."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest
from _shm_support import SRC, new_url

import tallies


@pytest.fixture
def url() -> Iterator[str]:
    u = new_url("?names=8&keys=16&slabs=4&buckets=4096")
    yield u
    tallies.destroy(u.partition("?")[0])


def _wait_stopped(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
        if done:
            assert os.WIFSTOPPED(status), f"the writer ended instead: status {status}"
            return
        time.sleep(0.005)
    raise AssertionError("the writer never stopped at its hook")


WRITER = """
import sys, time, tallies
with tallies.open({url!r}) as s:
    r = s.rate("r", window=60.0, resolution=0.05)
    r.increment(5)                 # its first bucket mark (arrival 1 at the hook)
    time.sleep(0.12)               # a later bucket
    r.increment(2)                 # its second mark: SIGSTOP inside it (arrival 2)
    print("resumed", flush=True)
"""


def test_a_writer_stopped_inside_a_bucket_mark_blocks_no_reader(url: str) -> None:
    """The writer stops itself (SIGSTOP, as a debugger or a frozen container would)
    after it made its ring's seq odd and wrote the mark's total, before the mark's
    bucket and ``latest``: the torn state is observed, and every reader, here and
    in an unrelated process, still reads exactly and at once (before: TimeoutError
    "slab N's rate ring stays busy" from count(), total() and snapshot())."""
    env = dict(os.environ, TALLIES_SHM_STOP="rate-mark:2")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(url=url)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        _wait_stopped(proc.pid)
        with tallies.open(url) as s:
            r = s.rate("r", window=60.0, resolution=0.05)
            seg = s._seg  # type: ignore[attr-defined]
            (slab,) = [x["slab"] for x in s.info()["slabs"] if x["pid"] == proc.pid]
            off = seg.L.ring_off(slab, r._ring.unit)
            assert seg.c.load(off) % 2 == 1  # observed: stopped in the middle of a mark
            latest = seg.c.load(off + 16) - 1
            torn = [
                k
                for k in range(latest + 1, latest + 40)
                if seg.c.load(off + 32 + (k % r.buckets) * 16 + 8) == 5
                and seg.c.load(off + 32 + (k % r.buckets) * 16) != k + 1
            ]
            assert torn, "the new mark's total is written, its bucket not yet"
            started = time.monotonic()
            assert r.count() == 5 and r.total() == 5 and r.per_second() == 5 / 60
            assert s.snapshot()["rates"]["r"] == {
                "window": 60.0,
                "resolution": 0.05,
                "count": 5,
                "per_second": 5 / 60,
                "total": 5,
            }
            r.increment(3)  # this process writes its own slab meanwhile
            assert r.count() == 8
            assert time.monotonic() - started < 0.25  # no waiting on the stopped writer
            shown = subprocess.run(
                [sys.executable, "-m", "tallies", "show", url.partition("?")[0]],
                env=env | {"TALLIES_SHM_STOP": ""},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert shown.returncode == 0, shown.stderr
            assert "r" in shown.stdout and "8" in shown.stdout
            assert seg.c.load(off) % 2 == 1  # still stopped: nobody waited for it
            os.kill(proc.pid, signal.SIGCONT)
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0 and out.strip() == "resumed"
            assert seg.c.load(off) % 2 == 0
            assert r.count() == 10 and r.total() == 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _count_in_worker(rate: object) -> int:
    rate.increment(3)  # type: ignore[attr-defined]
    return os.getpid()


def _key_in_worker(rate: object) -> int:
    rate.increment("w", 2)  # type: ignore[attr-defined]
    return os.getpid()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_rates_and_keyed_rates_go_to_worker_processes_by_pickle(url: str, method: str) -> None:
    """``ProcessPoolExecutor().map(work, [store.rate("r")])`` works, as it does for
    shm:// counters (before: "cannot pickle 'mmap.mmap' object")."""
    with tallies.open(url) as s:
        r = s.rate("r", window=1 / 3, resolution=1 / 3000)  # normalised values round-trip
        k = s.keyed_rate("k", window=30.0, resolution=0.5)
        again = pickle.loads(pickle.dumps(r))
        assert (again.window, again.resolution, again.buckets) == (
            r.window,
            r.resolution,
            r.buckets,
        )
        ctx = mp.get_context(method)
        with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
            pids = list(ex.map(_count_in_worker, [r] * 4))
            kpids = list(ex.map(_key_in_worker, [k] * 3))
        assert os.getpid() not in pids + kpids
        assert r.total() == 12 and k.snapshot() == {"w": 6}
