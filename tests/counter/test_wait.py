"""Counter.wait_until(target, timeout=None): block until value() >= target.

Threads are ordered with events and barriers.  Before an update that should
wake a waiter, the test first makes sure the waiter is really blocked inside
wait_until (its thread's Python frame sits on the call, see
``wait_blocked``), so the wake-up path is what runs, not the early return.
Join timeouts are generous liveness limits (a waiter that is never woken
would otherwise hang the suite); nothing here measures speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _support import INT64_MAX, INT64_MIN

import tallies

LIVENESS = 5.0  # seconds: only ever reached when something is broken


class Waiter:
    """A thread calling counter.wait_until(target, timeout) and keeping what it returned."""

    def __init__(self, counter: Any, target: int, timeout: float | None = None) -> None:
        self.counter = counter
        self.target = target
        self.timeout = timeout
        self.result: Any = None
        self.error: BaseException | None = None
        self.seen_on_return: int | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.counter.wait_until(self.target, self.timeout)  # WAIT CALL
            self.seen_on_return = self.counter.value()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def outcome(self) -> Any:
        """Wait (liveness only) for the thread to return; its result."""
        assert self.done.wait(LIVENESS), f"waiter for {self.target} was never woken"
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result


_WAIT_LINE = next(
    i
    for i, line in enumerate(Path(__file__).read_text().splitlines(), start=1)
    if line.rstrip().endswith("# WAIT CALL")
)


def in_wait_until(thread: threading.Thread) -> bool:
    """True if ``thread`` is inside (or entering) the wait_until call of Waiter._run."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code is Waiter._run.__code__:
            return frame.f_lineno == _WAIT_LINE
        frame = frame.f_back
    return False


def wait_blocked(*waiters: Waiter) -> None:
    """Return once every waiter's thread has sat in wait_until for several polls in a row."""
    deadline = time.monotonic() + LIVENESS
    streak = 0
    while streak < 5:
        assert time.monotonic() < deadline, "a waiter never reached wait_until"
        for w in waiters:
            if w.done.is_set():  # it returned (or raised) instead of blocking
                result = w.outcome()
                pytest.fail(f"wait_until({w.target}) returned {result!r} without waiting")
        if all(in_wait_until(w.thread) and not w.done.is_set() for w in waiters):
            streak += 1
        else:
            streak = 0
        time.sleep(0.002)


def release(counter: Any, waiters: list[Waiter]) -> None:
    """Cleanup after a failed assertion: push the counter up so no thread stays blocked."""
    counter.set(INT64_MAX)
    for w in waiters:
        w.done.wait(LIVENESS)


# ---- no waiting ------------------------------------------------------------------------


def test_already_satisfied_returns_true_at_once(impl: ModuleType) -> None:
    c = impl.Counter(5)
    assert c.wait_until(5) is True
    assert c.wait_until(-100) is True
    assert c.wait_until(INT64_MIN) is True
    assert c.wait_until(5, timeout=0) is True
    assert c.wait_until(target=4, timeout=1e9) is True
    assert c.wait_until(3, timeout=float("inf")) is True
    assert c.value() == 5


def test_timeout_zero_does_not_block(impl: ModuleType) -> None:
    c = impl.Counter(0)
    assert c.wait_until(1, timeout=0) is False
    assert c.wait_until(1, 0.0) is False
    assert c.wait_until(INT64_MAX, timeout=0) is False
    assert c.value() == 0


def test_timeout_elapses_and_returns_false(impl: ModuleType) -> None:
    c = impl.Counter(0)
    start = time.monotonic()
    result = c.wait_until(1, timeout=0.05)
    waited = time.monotonic() - start
    assert result is False  # a bool, not a duration or None
    assert waited >= 0.045  # semantics, not speed: it did not give up early
    assert c.value() == 0
    c.increment()
    assert c.wait_until(1, timeout=0.05) is True


def test_no_waiter_is_left_behind_after_timeouts(impl: ModuleType) -> None:
    """Timed-out waiters unlink themselves: later updates must not touch them."""
    c = impl.Counter(0)
    waiters = [Waiter(c, t, timeout=0.02) for t in range(1, 9)]
    assert [w.outcome() for w in waiters] == [False] * 8
    for _ in range(20):  # crosses every abandoned target
        c.increment()
    assert c.value() == 20
    late = Waiter(c, 25)
    wait_blocked(late)
    c.add(5)
    assert late.outcome() is True


# ---- woken by other threads --------------------------------------------------------


def test_woken_by_increments_from_another_thread(impl: ModuleType) -> None:
    c = impl.Counter(0)
    w = Waiter(c, 1000)
    wait_blocked(w)
    go = threading.Event()

    def producer() -> None:
        go.wait()
        for _ in range(1000):
            c.increment()

    t = threading.Thread(target=producer)
    t.start()
    go.set()
    assert w.outcome() is True
    assert w.seen_on_return is not None and w.seen_on_return >= 1000
    t.join()
    assert c.value() == 1000


def test_a_waiter_with_a_timeout_is_woken_before_it(impl: ModuleType) -> None:
    c = impl.Counter(0)
    w = Waiter(c, 3, timeout=3600)
    wait_blocked(w)
    c.increment(3)
    assert w.outcome() is True


@pytest.mark.parametrize("timeout", [float("inf"), 1e10, 2.0**62])
def test_huge_timeouts_mean_wait(impl: ModuleType, timeout: float) -> None:
    c = impl.Counter(0)
    w = Waiter(c, 1, timeout=timeout)
    wait_blocked(w)  # re-raises what the waiter raised if it did not wait
    c.increment()
    assert w.outcome() is True


def test_many_waiters_each_woken_exactly_when_reached(impl: ModuleType) -> None:
    c = impl.Counter(0)
    targets = [1, 2, 2, 3, 5, 8, 8, 13]
    waiters = [Waiter(c, t) for t in targets]
    try:
        wait_blocked(*waiters)
        for value in range(1, 14):
            for w in waiters:  # nobody may wake before its target is reached
                if w.target >= value:
                    assert not w.done.is_set(), f"waiter for {w.target} woke at {value - 1}"
            c.increment()
            for w in waiters:
                if w.target == value:
                    assert w.outcome() is True
        assert all(w.done.is_set() for w in waiters)
    finally:
        release(c, waiters)


def _by_set(c: Any, target: int) -> None:
    c.set(target)


def _by_add(c: Any, target: int) -> None:
    assert c.add(target - c.value()) == target


def _by_iadd(c: Any, target: int) -> None:
    x = c
    x += target - c.value()


def _by_isub(c: Any, target: int) -> None:
    x = c
    x -= c.value() - target


def _by_decrement_negative(c: Any, target: int) -> None:
    c.decrement(c.value() - target)


def _by_compare_and_set(c: Any, target: int) -> None:
    assert c.compare_and_set(c.value(), target) is True


def _by_reset(c: Any, target: int) -> None:
    assert target == 0
    c.reset()


@pytest.mark.parametrize(
    "update",
    [
        _by_set,
        _by_add,
        _by_iadd,
        _by_isub,
        _by_decrement_negative,
        _by_compare_and_set,
        _by_reset,
    ],
    ids=lambda f: f.__name__.removeprefix("_by_"),
)
def test_woken_by_every_update_that_reaches_the_target(impl: ModuleType, update: Any) -> None:
    # Start below the target; reset() can only ever reach a target of 0 (from below).
    target = 0 if update is _by_reset else 50
    c = impl.Counter(-10)
    w = Waiter(c, target)
    try:
        wait_blocked(w)
        update(c, target)
        assert c.value() == target
        assert w.outcome() is True
    finally:
        release(c, [w])


def test_an_update_below_the_target_does_not_wake(impl: ModuleType) -> None:
    c = impl.Counter(0)
    w = Waiter(c, 10)
    try:
        wait_blocked(w)
        c.set(9)
        c.add(-5)
        c.increment(5)
        wait_blocked(w)  # still waiting: fails if the waiter returned
        c.increment()  # 10: reached
        assert w.outcome() is True
    finally:
        release(c, [w])
    c2 = impl.Counter(0)
    late = Waiter(c2, 100, timeout=0.05)
    c2.set(99)
    assert late.outcome() is False


# ---- a real SIGINT ---------------------------------------------------------------------

_SIGINT_SCRIPT = textwrap.dedent(
    """
    import importlib, signal, sys, threading, time

    # A parent that ignores SIGINT (a job started in the background by a
    # non-interactive shell: CI runners, nohup) passes that on, and Python then
    # never raises KeyboardInterrupt: give the child Python's own handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    impl = importlib.import_module(sys.argv[1])
    c = impl.Counter(0)
    main = threading.main_thread()
    call_line = []

    def main_is_waiting():
        frame = sys._current_frames().get(main.ident)
        while frame is not None and frame.f_back is not None:
            frame = frame.f_back          # the outermost frame: this script
        return bool(call_line) and frame is not None and frame.f_lineno == call_line[0]

    def interrupter():
        streak = 0
        deadline = time.monotonic() + 20
        while streak < 10 and time.monotonic() < deadline:
            streak = streak + 1 if main_is_waiting() else 0
            time.sleep(0.005)
        signal.pthread_kill(main.ident, signal.SIGINT)

    helper = threading.Thread(target=interrupter)
    helper.start()
    try:
        call_line.append(sys._getframe().f_lineno + 1)
        c.wait_until(5)
    except KeyboardInterrupt:
        print("KeyboardInterrupt")
    else:
        print("returned without an interrupt")
    helper.join()

    # The interrupted waiter is gone: updates crossing its target work ...
    c.increment(3)
    c.increment(10)
    assert c.value() == 13, c.value()
    # ... and a later wait works, woken by another thread.
    woke = threading.Event()

    def later():
        woke.set() if c.wait_until(20) else None

    t = threading.Thread(target=later)
    t.start()
    c.add(7)
    t.join(20)
    assert woke.is_set(), "a later waiter was not woken"
    assert c.wait_until(0, timeout=0) is True
    print("counter still works:", c.value())
    """
)


def test_sigint_interrupts_a_waiter_and_leaves_the_counter_usable(impl: ModuleType) -> None:
    src = str(Path(tallies.__file__).resolve().parents[1])  # the folder holding tallies
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _SIGINT_SCRIPT, impl.__name__],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert proc.stdout.splitlines() == ["KeyboardInterrupt", "counter still works: 20"], output
