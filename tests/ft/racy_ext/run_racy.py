"""Drive racy.hammer from two threads at once (TSan negative control)."""

import sys
import threading

import racy

assert not sys._is_gil_enabled(), "GIL got enabled; the race would be hidden"
N = 200_000
barrier = threading.Barrier(2)


def work():
    barrier.wait()
    racy.hammer(N)


threads = [threading.Thread(target=work) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"counter={racy.value()} expected={2 * N}")
