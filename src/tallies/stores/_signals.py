"""Flush every open write-behind store when SIGTERM or SIGINT ends the process.

Why
---
``docker stop``, Kubernetes, systemd and most process managers stop a process
with SIGTERM.  Python's default disposition for SIGTERM ends the process at
once, without ``atexit``: every write-behind store (``sqlite://``,
``redis://``) loses what it had not flushed yet, up to one flush interval of
counts per process, per deploy.  SIGINT's default handler raises
KeyboardInterrupt wherever the main thread is, a flush included.

What
----
When a write-behind store opens in the main thread, :func:`install` looks at
SIGTERM and SIGINT.  A signal whose handler is still Python's default
(``SIG_DFL`` for SIGTERM, ``signal.default_int_handler`` for SIGINT) gets
:func:`_on_signal`; any other handler (one the application installed:
gunicorn, uvicorn, celery, asyncio's ``add_signal_handler``; or ``SIG_IGN``)
is left alone: those exit normally, and the exit flush runs.  When the signal
comes:

1. If the main thread was stopped inside tallies' own code (a flush, a
   ``reset()``, a key's first update: it may hold a store's locks), the
   handler returns at once and acts when that code returns to the caller
   (a ``'return'`` trace hook on the outermost tallies frame, set with
   ``sys.settrace`` for the main thread only and removed at once), or when
   the store's ``timeout`` has passed, whichever is first.  So the final
   flush never waits for a lock the interrupted main thread holds (no
   deadlock), and a KeyboardInterrupt is never raised inside a flush (it
   comes out of the tallies call, after the call's work is done).
2. Every open write-behind store is flushed by the helper thread while the
   main thread waits, at most the largest ``timeout`` of the open stores.
   A flush that fails or does not finish in time is logged (logger
   ``tallies.stores``); what it held is lost, as it would have been.
3. SIGTERM: the default disposition is restored and the signal raised again,
   so the process ends by SIGTERM as before (status 143 in a shell, -15 from
   ``subprocess``): a supervisor sees no difference.  SIGINT:
   ``signal.default_int_handler`` raises KeyboardInterrupt, as before (an
   uncaught one ends the process by SIGINT after the exit hooks, status 130);
   the handler stays, so a program that catches it and goes on flushes again
   on the next Ctrl-C.

So one signal costs the time of one flush (at most ``timeout`` seconds, twice
that when the main thread is itself in a flush that Redis does not answer).
A second signal while the first one is handled is ignored (the first one
ends the process, or raises, within that bound).

The helper thread is started with the handler (never from inside it: a
thread started in a signal handler could wait for a lock of ``threading``
that the interrupted main thread holds) and again in a forked child, which
inherits the handler.  A store opened in another thread installs nothing
(only the main thread may set handlers); the handler, once installed,
flushes every open store, whichever thread opened it.  When the last store
closes, the defaults come back (if the handler is still the one installed).

A SIGTERM the main thread never sees
-----------------------------------
CPython runs a Python handler only when the main thread next runs bytecode.
The C handler that records the signal interrupts a blocking call (EINTR), and
the call then runs the handler; but a signal that lands after the main thread
last looked and just before it blocks (``multiprocessing``'s ``SemLock``
between its ``sem_trywait`` and its ``sem_wait``: an idle ``Pool`` worker) is
recorded and never acted on, and ``Pool.terminate()`` then waits for that
worker forever.  SIG_DFL had no such window: tallies must not add one.  So on
Linux the handler comes with a watcher: the process's wakeup fd
(``signal.set_wakeup_fd``, only where the application has set none; the
defaults come back with the handler) is a datagram socket whose other end a
tallies thread reads, with the sender's pid (``SO_PASSCRED``: a fork child
writes to the inherited socket until its own is set up, and its signal is
not ours).  When a SIGTERM arrives and the handler has not started within
``KICK_AFTER`` seconds, the watcher sends SIGTERM to the main thread again
(``pthread_kill``: the blocking call returns EINTR and runs the handler),
``KICKS`` times; a spare one is harmless (the handler, already running or
waiting for tallies' code to return, ignores it).  If the handler still has
not run (a C extension that retries its call without looking for signals),
the watcher flushes every open store itself, bounded as above, and ends the
process by SIGTERM (the main thread, should it run the handler then, waits
for that).  So the worst case is 2.1 s more than the bound above.  SIGINT is
never sent twice (each one raises); a SIGTERM that comes while SIGINT's flush
runs ends the process after that flush instead of the KeyboardInterrupt.  The
wakeup fd is looked at only when the SIGTERM handler is installed (setting it
for a moment is the only way to read it); asyncio's loop replaces it with its
own while it has signal handlers and unsets it after (the watcher is then off
until the handler is installed again); ``trio.run()`` warns that it found one
set (``TALLIES_SIGNAL_FLUSH=INT`` or an application handler avoids that).

Turning it off
--------------
``TALLIES_SIGNAL_FLUSH=0`` in the environment (read when a store opens):
no handler is installed.  ``TALLIES_SIGNAL_FLUSH=TERM`` (or ``INT``) limits
it to that signal; ``1`` or unset means both.  It is an environment variable
and not a URL parameter because a signal handler belongs to the process, not
to one store.  An application can also install its own handler, before or
after opening a store; tallies never replaces one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["ENV", "install", "installed", "keep_signals_off_this_thread", "release", "wanted"]

log = logging.getLogger("tallies.stores")

ENV = "TALLIES_SIGNAL_FLUSH"
_NAMES = {"TERM": signal.SIGTERM, "INT": signal.SIGINT}
_DEFAULTS: dict[int, Any] = {
    signal.SIGTERM: signal.SIG_DFL,
    signal.SIGINT: signal.default_int_handler,
}
#: Used for a store whose backend does not say its timeout.
DEFAULT_TIMEOUT = 5.0
#: Modules whose code may hold a store's locks (the main thread stopped there
#: makes the handler wait for it to leave).
_OWN_CODE = ("tallies.stores.", "tallies._pure", "tallies.counter", "tallies.keyed")

_installed: set[int] = set()
#: signal -> the number of its deferral, while it waits for the main thread to
#: leave tallies' code (a deadline acts only on the deferral it was set for)
_deferred: dict[int, int] = {}
_deferrals = 0
_forced: set[int] = set()  # deferred too long: act wherever the main thread is
_busy = False  # the final flush is running (a nested signal returns at once)
_term_waiting = False  # a SIGTERM came during SIGINT's flush: the process ends after it
_dying = False  # the watcher flushes and ends the process: the main thread must not go on
_we_trace = False  # sys.settrace was set by a deferral (main thread only)
#: jobs for the helper thread: (when, job); when 0: at once
_jobs: queue.SimpleQueue[tuple[float, Callable[[], None]]] = queue.SimpleQueue()
_worker_pid = 0
#: How long the watcher waits for the handler of a SIGTERM it saw arrive before
#: it sends the signal to the main thread again, and how many times it does so
#: before it ends the process itself.
KICK_AFTER = 0.1
KICKS = 20
#: how many times :func:`_on_signal` was entered, per signal (main thread only)
_calls: dict[int, int] = {signal.SIGTERM: 0, signal.SIGINT: 0}
#: this process's watcher: (the socket it reads, the wakeup fd's socket)
_wake: tuple[Any, Any] | None = None


def wanted() -> tuple[signal.Signals, ...]:
    """The signals to flush on, from ``TALLIES_SIGNAL_FLUSH`` (default: both)."""
    raw = os.environ.get(ENV)
    if raw is None:
        return (signal.SIGTERM, signal.SIGINT)
    text = raw.strip().upper()
    if text in ("1", "YES", "ON", "TRUE"):
        return (signal.SIGTERM, signal.SIGINT)
    if text in ("0", "NO", "OFF", "FALSE", "NONE"):
        return ()
    parts = [p.strip() for p in text.split(",")]
    parts = [p[3:] if p.startswith("SIG") else p for p in parts]
    if not parts or any(p not in _NAMES for p in parts):
        raise ValueError(
            f"{ENV}={raw!r}: expected 1 (flush on SIGTERM and SIGINT, the default), "
            "0 (never), or TERM, INT or TERM,INT"
        )
    return tuple(dict.fromkeys(_NAMES[p] for p in parts))


def installed() -> frozenset[int]:
    """The signals whose handler is tallies' right now (tests, tools)."""
    return frozenset(s for s in _installed if signal.getsignal(s) is _on_signal)


def install() -> None:
    """Install the flush handler for each wanted signal whose handler is
    Python's default; only in the main thread.  ValueError for a bad
    ``TALLIES_SIGNAL_FLUSH``."""
    sigs = wanted()
    if not sigs or threading.current_thread() is not threading.main_thread():
        return
    watch = False
    for sig in sigs:
        current = signal.getsignal(sig)
        if current is not _on_signal:
            if current is not _DEFAULTS[sig]:
                continue
            try:
                signal.signal(sig, _on_signal)
            except ValueError:  # not the main interpreter
                return
            watch = watch or sig == signal.SIGTERM
        _installed.add(sig)  # (again, if something else put the handler back)
        _start_worker()
    if watch:  # (not on every open: each look at the wakeup fd sets it for a moment)
        _watch_wakeups()


def release() -> None:
    """The last open store closed: give the defaults back (main thread only,
    and only where the handler is still ours)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in list(_installed):
        if signal.getsignal(sig) is _on_signal:
            signal.signal(sig, _DEFAULTS[sig])
        _installed.discard(sig)
    _unset_wakeup_fd()


def keep_signals_off_this_thread() -> None:
    """Block SIGTERM and SIGINT in the calling thread (tallies' own threads:
    the flushers, the helper).  The kernel then delivers them to the main
    thread, whose blocking call they interrupt so that the handler runs at
    once; delivered to a background thread, they would wait until the main
    thread next runs Python code, which a main thread blocked on a lock
    (``multiprocessing.Pool``'s idle workers) may never do."""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no pthread_sigmask
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))


def start_without_signals(thread: threading.Thread) -> None:
    """Start one of tallies' threads with SIGTERM and SIGINT blocked from its
    first instruction: a new thread inherits the mask of the thread that starts
    it, so they are blocked here around ``start()`` and the caller's mask is
    restored after.  (Blocking them only inside the new thread leaves a window,
    before it gets there, in which the kernel may hand it a signal meant for
    the main thread; a signal that arrives while they are blocked here stays
    pending and goes to the main thread when they are unblocked.)"""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask
        thread.start()
        return
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---- the helper thread -----------------------------------------------------------


def _start_worker() -> None:
    global _worker_pid
    if _worker_pid == os.getpid():
        return
    _worker_pid = os.getpid()
    start_without_signals(
        threading.Thread(target=_work, args=(_jobs,), name="tallies-signals", daemon=True)
    )


def _work(jobs: queue.SimpleQueue[tuple[float, Callable[[], None]]]) -> None:
    """Run each job when it is due (timers and flushes share this one thread,
    which never runs inside a signal handler)."""
    keep_signals_off_this_thread()
    timers: list[tuple[float, Callable[[], None]]] = []
    while True:
        wait = None
        if timers:
            wait = max(0.0, min(t for t, _ in timers) - time.monotonic())
        with contextlib.suppress(queue.Empty):
            timers.append(jobs.get(timeout=wait))
        now = time.monotonic()
        due = [tj for tj in timers if tj[0] <= now]
        timers = [tj for tj in timers if tj[0] > now]
        for _, job in sorted(due, key=lambda tj: tj[0]):
            try:
                job()
            except Exception:  # pragma: no cover - each job catches its own
                log.exception("tallies: signal helper failed")


def _after_fork_in_child() -> None:
    global _jobs, _worker_pid, _busy, _wake, _term_waiting, _dying
    _jobs = queue.SimpleQueue()
    _deferred.clear()
    _forced.clear()
    _busy = _term_waiting = _dying = False
    _worker_pid = 0
    inherited, _wake = _wake, None
    if inherited is not None:  # the parent's socket: this child needs its own
        watched = _unset_wakeup_fd(inherited)
        for sock in inherited:
            sock.close()
        if watched and signal.getsignal(signal.SIGTERM) is _on_signal:
            _watch_wakeups()
    if any(signal.getsignal(s) is _on_signal for s in _DEFAULTS):
        _start_worker()  # the child inherits the handler, not the thread


# ---- the watcher: a SIGTERM whose handler never runs --------------------------------


def _watch_wakeups() -> None:
    """Main thread: make this process's wakeup fd a socket that the watcher
    reads, unless the application has set one (asyncio's stays)."""
    global _wake
    try:
        import socket
        import struct

        kinds = (socket.SOL_SOCKET, socket.SO_PASSCRED, socket.SCM_CREDENTIALS)
        room = socket.CMSG_SPACE(struct.calcsize("3i"))  # struct ucred
    except (ImportError, AttributeError):  # not Linux: no sender's pid to check
        return
    if _wake is None:
        try:
            reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            reader.setsockopt(kinds[0], kinds[1], 1)
            writer.setblocking(False)
        except OSError:
            return
        _wake = (reader, writer)
        start_without_signals(
            threading.Thread(
                target=_watch, args=(reader, kinds, room), name="tallies-signals-watch", daemon=True
            )
        )
    fd = _wake[1].fileno()
    try:
        before = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
        if before not in (-1, fd):
            signal.set_wakeup_fd(before)  # the application's: it stays
    except (ValueError, OSError):  # not the main thread or interpreter
        return


def _unset_wakeup_fd(wake: tuple[Any, Any] | None = None) -> bool:
    """Main thread: the wakeup fd back to none if it is the watcher's socket
    (True then)."""
    wake = wake or _wake
    if wake is None:
        return False
    fd: int = wake[1].fileno()
    try:
        before: int = signal.set_wakeup_fd(-1)
        if before != fd:
            signal.set_wakeup_fd(before)
    except (ValueError, OSError):
        return False
    return before == fd


def _watch(reader: Any, kinds: tuple[int, int, int], room: int) -> None:
    """Read the signals the C handler wrote; see each SIGTERM handled."""
    import struct

    keep_signals_off_this_thread()
    level, _, creds = kinds
    while True:
        try:
            data, extra, _, _ = reader.recvmsg(16, room)
        except InterruptedError:  # pragma: no cover - the signals are blocked here
            continue
        except OSError:  # closed
            return
        sender = next(
            (
                struct.unpack("i", raw[:4])[0]
                for lv, kind, raw in extra
                if (lv, kind) == (level, creds)
            ),
            None,
        )
        if sender == os.getpid() and signal.SIGTERM in data:
            _see_it_handled(signal.SIGTERM, _calls[signal.SIGTERM])


def _see_it_handled(signum: int, before: int) -> None:
    """Watcher: ``signum`` arrived when the handler had been entered
    ``before`` times.  Send it to the main thread again until the handler
    runs; if it never does, flush and end the process from here."""
    main = threading.main_thread().ident
    for kick in range(KICKS + 1):
        time.sleep(KICK_AFTER)
        if _calls[signum] != before or _in_hand(signum):
            # Handled (``before`` may have been read after the handler ran: it
            # is then flushing, or waiting for tallies' code to return, and a
            # kick would only interrupt that), or no longer ours to act on.
            return
        if kick < KICKS and main is not None:
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_kill(main, signum)
    global _busy, _dying
    if _busy:
        return  # pragma: no cover - the handler is running after all
    _busy = _dying = True
    name = signal.Signals(signum).name
    log.error(
        "tallies: the main thread did not run the %s handler within %.1f s; "
        "flushing from tallies' watcher thread",
        name,
        KICK_AFTER * (KICKS + 1),
    )
    stores = _open_stores()
    if stores:
        _flush_all(stores, max(_timeout(wb) for wb in stores), name)
    _die_from_here(signum)


def _in_hand(signum: int) -> bool:
    """The handler is at work on ``signum`` (flushing, or deferred and not yet
    forced), or it is not ours any more."""
    if signal.getsignal(signum) is not _on_signal:
        return True
    return _busy or (signum in _deferred and signum not in _forced)


def _die_from_here(signum: int) -> None:
    """End the process by ``signum`` from a thread that is not the main
    thread (which alone may call ``signal.signal``): the C library's
    ``signal()`` sets the default disposition, then the signal is raised."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None)
        libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
        libc.signal.restype = ctypes.c_void_p
        libc.signal(signum, None)  # SIG_DFL
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        signal.raise_signal(signum)
    os._exit(128 + signum)  # pragma: no cover - no ctypes


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---- the handler -----------------------------------------------------------------


def _outermost_own_frame(frame: FrameType | None) -> FrameType | None:
    """The outermost frame of tallies' code in the main thread's stack, if any."""
    outer = None
    f = frame
    while f is not None:
        name = f.f_globals.get("__name__")
        if isinstance(name, str) and name.startswith(_OWN_CODE) and name != __name__:
            outer = f
        f = f.f_back
    return outer


_live: dict[int, Any] = {}
"""writebehind.py's registry of open stores, handed over by ``stores_from``
(this module does not import writebehind: writebehind imports it)."""


def _plain_flush(wb: Any) -> None:
    wb.flush()


#: How one store is flushed before the process ends (writebehind's
#: ``final_flush``: a file replaced while open is reopened and flushed).
_final_flush: Callable[[Any], None] = _plain_flush


def stores_from(live: dict[int, Any], final_flush: Callable[[Any], None] | None = None) -> None:
    """Where the open write-behind stores are registered (writebehind's
    ``_live``), and how each one is flushed last (``final_flush``)."""
    global _live, _final_flush
    _live = live
    if final_flush is not None:
        _final_flush = final_flush


def _open_stores() -> list[Any]:
    """The open write-behind stores.  Read without ``_live_lock``: the main
    thread may be stopped holding it, and copying a dict's values is one
    step for the interpreter (a lock of the dict's own on free-threaded
    builds)."""
    return list(_live.values())


def _timeout(wb: Any) -> float:
    t = getattr(wb, "timeout", None)
    return float(t) if isinstance(t, (int, float)) and t > 0 else DEFAULT_TIMEOUT


def _no_call_trace(frame: FrameType, event: str, arg: Any) -> None:
    """The global trace function while a deferral waits: traces no new frame
    (it only turns tracing on, so that the hooked frame's return is seen)."""
    return None


def _stop_tracing() -> None:
    global _we_trace
    if _we_trace:
        _we_trace = False
        sys.settrace(None)


def _defer(signum: int, outer: FrameType, budget: float) -> None:
    """Act on ``signum`` when ``outer`` returns (or at the deadline)."""
    global _we_trace, _deferrals
    chained = [outer.f_trace]  # a debugger's or coverage's, still called

    def on_return(frame: FrameType, event: str, arg: Any) -> Any:
        if chained[0] is not None:
            chained[0] = chained[0](frame, event, arg)
        if event == "return" and frame is outer:
            _stop_tracing()
            if _deferred.get(signum) == token:
                _finish(signum, frame)  # may raise KeyboardInterrupt or end the process
        return on_return

    outer.f_trace = on_return
    if chained[0] is None:
        outer.f_trace_lines = False
    if sys.gettrace() is None:
        sys.settrace(_no_call_trace)
        _we_trace = True
    _deferrals += 1
    token = _deferred[signum] = _deferrals
    main = threading.main_thread().ident

    def deadline() -> None:
        if _deferred.get(signum) == token and main is not None:
            _forced.add(signum)
            if signum == signal.SIGTERM and _wake is not None:
                # the watcher sends it, and again if the main thread is blocked
                with contextlib.suppress(OSError):
                    _wake[1].send(bytes([signum]))
                    return
            with contextlib.suppress(OSError, ValueError):  # the main thread is gone
                signal.pthread_kill(main, signum)

    _jobs.put((time.monotonic() + budget, deadline))


def _flush_all(stores: list[Any], budget: float, signame: str) -> None:
    """Flush ``stores`` on the helper thread; wait at most ``budget`` seconds."""
    done = threading.Event()
    left = list(stores)  # not flushed yet (the helper removes each one it is done with)

    def flush() -> None:
        try:
            for wb in stores:
                try:
                    _final_flush(wb)
                except Exception as exc:
                    log.error(
                        "tallies: flush of %s on %s failed; its unflushed deltas are lost: %s",
                        wb.shown,
                        signame,
                        exc,
                    )
                left.remove(wb)
        finally:
            done.set()

    _jobs.put((0.0, flush))
    if not done.wait(budget):
        for wb in list(left):
            log.error(
                "tallies: flush of %s on %s did not finish within %.1f s; "
                "its unflushed deltas are lost",
                wb.shown,
                signame,
                budget,
            )


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM / SIGINT: flush every open store, then do what the default does."""
    global _term_waiting
    _calls[signum] = _calls.get(signum, 0) + 1  # (the watcher sees it handled)
    if _dying:  # the watcher is flushing and ending the process: wait for it
        while True:
            time.sleep(3600)
    if _busy:
        # a second signal while the first one's flush runs: that one ends the
        # process, or raises KeyboardInterrupt, after which a SIGTERM still ends it
        _term_waiting = _term_waiting or signum == signal.SIGTERM
        return
    if signum in _forced:
        _forced.discard(signum)
    elif signum in _deferred:
        return  # already waiting for the main thread to leave tallies' code
    else:
        stores = _open_stores()
        outer = _outermost_own_frame(frame) if stores else None
        if outer is not None:
            _defer(signum, outer, max(_timeout(wb) for wb in stores))
            return
    _finish(signum, frame)


def _finish(signum: int, frame: FrameType | None) -> None:
    """Flush every open store (bounded), then end the process by ``signum``
    (SIGTERM) or raise KeyboardInterrupt (SIGINT).  Main thread."""
    global _busy
    _deferred.pop(signum, None)
    _stop_tracing()
    stores = _open_stores()
    if stores:
        _busy = True
        try:
            budget = max(_timeout(wb) for wb in stores)
            _flush_all(stores, budget, signal.Signals(signum).name)
        finally:
            _busy = False
    if signum == signal.SIGINT and not _term_waiting:
        signal.default_int_handler(signum, frame)  # KeyboardInterrupt
        return  # pragma: no cover - it always raises
    _die(signal.SIGTERM)


def _die(signum: int) -> None:
    """End the process by ``signum`` with its default disposition."""
    with contextlib.suppress(OSError, ValueError):
        signal.signal(signum, signal.SIG_DFL)
        _installed.discard(signum)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    signal.raise_signal(signum)
    os.kill(os.getpid(), signum)  # pragma: no cover - raise_signal did not end it
    os._exit(128 + signum)  # pragma: no cover
