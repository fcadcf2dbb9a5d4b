"""The demo's process part: the seed's work done by processes, with one live progress bar.

The same number of increments as the thread part (threads x increments) is
split into chunks that ``ProcessPoolExecutor`` workers run; every worker
increments one ``shm://`` counter, and the parent draws a single progress bar
(``tallies.progress``) that follows the shared count while the workers are
inside their chunks: the case tqdm and rich cannot show without a queue.  For
contrast, the same processes do ``v.value += 1`` on a
``multiprocessing.Value(lock=False)``, which loses updates for real.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import tallies

__all__ = ["run"]


def _count_chunk(url: str, n: int) -> int:
    with tallies.open(url) as store:
        counter = store.counter("tasks")
        for _ in range(n):
            counter.increment()
    return n


def _unsafe_worker(value: Any, n: int, start: Any) -> None:
    start.wait()
    for _ in range(n):
        value.value += 1


def _unsafe(processes: int, total: int) -> tuple[int, float]:
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
    value = ctx.Value("q", 0, lock=False)
    start = ctx.Barrier(processes + 1)
    share, extra = divmod(total, processes)
    procs = [
        ctx.Process(target=_unsafe_worker, args=(value, share + (i < extra), start))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    return int(value.value), time.perf_counter() - t0


def run(processes: int, total: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (name, expected, final, lost, seconds, safe) and notes for this part."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    final, seconds = _unsafe(processes, total)
    rows.append(
        {
            "name": "multiprocessing.Value(lock=False), v.value += 1",
            "expected": total,
            "final": final,
            "lost": total - final,
            "seconds": seconds,
            "safe": False,
        }
    )
    url = f"shm://tallies-demo-{os.getpid()}-{secrets.token_hex(4)}"
    chunks = max(processes * 4, 1)
    size, extra = divmod(total, chunks)
    try:
        with tallies.open(url) as store:
            counter = store.counter("tasks")
            t0 = time.perf_counter()
            with (
                tallies.progress(
                    counter, total=total, desc=f"{processes} processes, one shm:// counter"
                ),
                ProcessPoolExecutor(max_workers=processes) as pool,
            ):
                sizes = [size + (i < extra) for i in range(chunks)]
                done = sum(pool.map(_count_chunk, [url] * chunks, sizes))
            seconds = time.perf_counter() - t0
            final = counter.value()
    except (RuntimeError, OSError) as exc:  # shm:// without the C core, no /dev/shm
        notes.append(f"The shm:// run could not start here: {exc}")
        return rows, notes
    finally:
        tallies.destroy(url)
    rows.append(
        {
            "name": f"tallies shm:// counter, {processes} processes",
            "expected": total,
            "final": final,
            "lost": total - final,
            "seconds": seconds,
            "safe": True,
        }
    )
    unsafe_lost = rows[0]["lost"]
    if unsafe_lost:
        notes.append(
            f"{processes} processes doing `v.value += 1` on one multiprocessing.Value without its"
            f" lock lost {unsafe_lost:,} of {total:,} updates: processes run at the same time"
            " on different cores, and two that read the same value both write value + 1."
        )
    else:
        notes.append(
            "The unlocked multiprocessing.Value happened to lose nothing in this run (timing"
            " luck, e.g. on one core); it is not process-safe."
        )
    state = (
        f"exactly {final:,}"
        if final == total == done
        else f"{final:,} (expected {total:,}; a bug, please report it)"
    )
    notes.append(
        f"ProcessPoolExecutor workers ran {chunks} chunks of about {size:,} increments into one"
        f" shm:// counter, which ended at {state}; the progress bar on stderr"
        " (tallies.progress) followed the shared count while every worker was inside its"
        " chunk, polling value() with no queue and no cost to the workers."
    )
    return rows, notes
