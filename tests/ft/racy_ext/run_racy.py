"""Drive racy.hammer from two threads at once (the ThreadSanitizer negative control).

TSan reports a race between two accesses that no synchronisation orders.  If
one thread finished before the other started (a loaded machine), the
interpreter's own locks between them can order the accesses and hide the
race; so the threads hammer in rounds until updates were lost in LOSSY
rounds, which proves that they ran at the same time (at most ROUNDS rounds).
One overlapping round was not always enough for TSan to report (1 run in 3
here under heavy load): its shadow memory keeps a few accesses per word.
"""

import sys
import threading

import racy

assert not sys._is_gil_enabled(), "GIL got enabled; the race would be hidden"
N = 200_000
ROUNDS = 100
LOSSY = 5
expected = 0
rounds = lossy = 0


def work(barrier: threading.Barrier) -> None:
    barrier.wait()
    racy.hammer(N)


while rounds < ROUNDS:
    rounds += 1
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=work, args=(barrier,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected += 2 * N
    if racy.value() < expected:
        lossy += 1
        expected = racy.value()  # count the losses of each round afresh
        if lossy == LOSSY:
            break
print(f"rounds={rounds}, {lossy} of them lost updates")
