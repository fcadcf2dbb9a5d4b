"""The one helper for tests that run threads at once (counter/, keyed/, rates/,
ft/, stores/): threads released together by a barrier, every failure re-raised,
and, with a GIL, the interpreter switching threads as often as it can."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

__all__ = ["interleaving", "run_threads"]


@contextmanager
def interleaving() -> Iterator[None]:
    """With a GIL, switch threads as often as the interpreter can (every
    microsecond); on a free-threaded build the threads run at once anyway."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(n: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(0..n-1)`` in ``n`` threads released by one barrier, switching
    often; returns their results in order and re-raises the first failure of
    any of them (a thread's failure must fail the test)."""
    barrier = threading.Barrier(n)
    results: list[T | None] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    with interleaving():
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]
