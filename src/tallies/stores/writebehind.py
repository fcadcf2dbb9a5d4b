"""Write-behind counters: local cells, a backend, and an exactly-once flush.

Shared by the durable scopes (``sqlite://``; ``redis://`` reuses it).  A scope
provides a :class:`Backend`; this module provides everything else: the
counter objects users hold, the flush protocol, the background flusher, fork
and exit handling.

Design (read this before the code)
==================================

Increments
----------
``store.counter(name)`` is a ``BufferedCounter`` (``_c/buffered.c``, in the
extension ``tallies._tallies``): ShardedCounter's striped cells updated by ShardedCounter's
own code, plus a reference to its owner.  An increment adds to a local cell
and does nothing else: no I/O, no lock, no Python-level code, and it cannot
fail because of the backend (only for the core's own reasons: a non-int
amount, or a *pending* delta leaving int64).  It is a C type of its own, not
a Python subclass of ShardedCounter, because CPython specialises a C method
call only for the method's exact type (a subclass costs ~9 ns more per call);
without the C core ``PyBufferedCounter`` (a subclass) does the same job.
``store.keyed(name)`` is a :class:`BufferedKeyedCounter`
whose pending deltas live in a ``tallies.KeyedCounter``; a key's first use
checks it (str, at most 1024 UTF-8 bytes, see ``check_key``), later uses are a
set lookup plus the core's increment.

The batch, and exactly once
---------------------------
A flush takes the deltas out of the cells (the core's atomic ``reset()`` /
``_drain()``: every increment lands in exactly one batch or stays for the
next) and builds a :class:`Batch` numbered with this writer's NEXT sequence
number.  The batch is "in flight" until the backend has acknowledged it.  The
backend's ``apply(writer_id, batch)`` applies it atomically together with the
record ``writers[writer_id] = seq``; a batch whose seq is not above the
recorded one has been applied already and is acknowledged without applying
it again.  So:

* on success the batch is done and the seq advances;
* on ANY failure (the outcome is unknown: the commit may have happened and
  only its reply was lost) the batch stays in flight, and the next flush
  retries THE SAME batch (same seq, same deltas) before it takes new deltas.
  A failed batch is never merged back into the cells under a new seq: that
  is exactly where double counting hides.  New increments meanwhile simply
  accumulate in the cells.
* the only failure whose outcome is known is :class:`CountOverflowError`:
  the backend raises it from inside its transaction, before recording the
  seq, when a stored count would leave int64.  Then nothing was applied, so
  the offending deltas move to a local "held" map (still counted by
  ``value()``, merged into every later batch, so the error repeats on each
  flush until a decrement or a ``reset()`` brings the count back in range:
  never lost, never a busy loop), and the rest of the batch is sent again
  under the same seq (safe: that seq was not recorded).

``reset()`` is a "take": it first settles the in-flight batch, takes this
process's pending delta for the target out of the cells, and asks the backend
``take(writer_id, seq, target)`` to read and zero the stored value and record
the seq, in one transaction; the result is stored + pending.  A take is never
retried (its result could not be recomputed): if it fails, its batch stays in
flight and the next flush settles it with ``fence(writer_id, seq)``, which
atomically reports whether the seq was recorded and, if not, records it so
that a late copy can never apply.  If the take happened, its pending delta was
consumed by it (the failed ``reset()`` call lost its return value, as the
error says); if not, the delta goes back to "held" and is flushed normally.

Reads: read-your-writes, exactly
--------------------------------
``value()`` = stored value + this process's pending delta (cells + held +
batches not yet visible in the stored value).  The backend returns, in the
same consistent read, the writer's recorded seq ``S``; a batch (in flight, or
one of the last committed ones kept in a short history) is added iff its
seq > ``S``.  So a batch is counted once whether the read happened before or
after its commit, and a batch whose reply was lost but which did commit is
not counted twice.  If the history no longer reaches back to ``S`` (a very
slow read), the read is retried, finally under the flush lock.  Reads never
wait for a flush's I/O except in that last case.

The flusher, close, exit, fork
------------------------------
Each store has one daemon thread that flushes every ``interval`` seconds; on
failure it logs a warning through ``logging`` (logger ``tallies.stores``) and
backs off (doubling, at most 30 s); it never drops anything.  ``flush()``
raises :class:`FlushError` (``__cause__``: the backend's error) and keeps the
deltas.  ``close()`` flushes; if that final flush fails it raises and the
deltas stay queued: the flusher keeps retrying and interpreter exit tries
once more.  Updates after ``close()`` raise ValueError (closed counters
change class; an update racing with ``close()`` lands in the final flush or
raises).  Interpreter exit (``atexit``, and multiprocessing's exit hook in
fork/forkserver children, which leave through ``os._exit``) flushes every
open store.  So do SIGTERM and SIGINT while their handlers are Python's
defaults (``_signals.py``: the process still ends by the signal).

``fork()``: ``os.register_at_fork`` takes every store's flush lock and state
lock before the fork (so no flush is half done in the child's copy) and
releases them in the parent.  The child gets fresh locks, zeroes the cells it
inherited (those deltas belong to the parent, which flushes them), drops the
in-flight batch and the history, takes a new writer id (seq from 0), drops
the parent's backend connection without closing it, and starts its own
flusher.

A new durable scope
-------------------
Implement :class:`Backend` (every method atomic on the backend; reads
consistent with the writer's recorded seq); in the Store's ``open_url``
open and validate one backend, then ``WriteBehind(backend, connect,
interval=..., url=url.raw)`` (``connect`` makes a fresh backend after fork);
delegate ``counter``/``keyed``/``names``/``snapshot``/``flush``/``close`` to
it.  ``SqliteStore`` in ``sqlite.py`` is the example;
``tests/stores/test_writebehind.py`` has a dict backend with fault injection.
Errors for the scope to raise are in ``base.py`` (StoreUnavailableError,
FlushError, CountOverflowError, CorruptStoreError); ``tallies.aopen`` and
``Store.aflush`` work for every scope.

Writer bookkeeping
------------------
Backends keep ``writer_id -> (last seq, last seen)``.  Entries not seen for
more than :data:`PRUNE_AFTER` seconds (one day) are deleted by the next
``apply`` of any writer.  Consequence, documented: a batch whose commit
succeeded but whose writer did not learn it, and which is then retried only
after more than a day of uninterrupted failures, would be applied again.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import secrets
import socket
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, SupportsIndex

from .._impl import BufferedCounter as _CBufferedCounter
from .._impl import ShardedCounter
from ..keyed import IMPLEMENTATION as _KEYED_IMPLEMENTATION
from ..keyed import KeyedCounter
from . import _signals
from ._redact import redact_url
from .base import CountOverflowError, FlushError, Snapshot, StoreError, check_name

__all__ = [
    "PRUNE_AFTER",
    "Backend",
    "Batch",
    "BufferedCounter",
    "BufferedKeyedCounter",
    "Kind",
    "PyBufferedCounter",
    "Query",
    "Read",
    "Target",
    "WriteBehind",
    "check_key",
]

log = logging.getLogger("tallies.stores")

Kind = Literal["counter", "keyed"]
PRUNE_AFTER = 86400.0
"""Seconds after which a writer's bookkeeping entry may be pruned."""
KEY_MAX_BYTES = 1024
MAX_BACKOFF = 30.0
HISTORY = 16


def check_key(key: object) -> str:
    """A keyed counter's key: a str of 1..1024 UTF-8 bytes without NUL."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, not {type(key).__name__!r}")
    return check_name(str.__str__(key), "key", max_bytes=KEY_MAX_BYTES)


# ---- what travels to a backend -------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a reset takes: a counter, a keyed counter (key None) or one key."""

    kind: Kind
    name: str
    key: str | None = None


@dataclass
class Batch:
    """Deltas numbered by the writer's sequence.  ``names`` are names this
    writer has not yet seen registered (with their kind).  ``take`` marks a
    reset: then the deltas are this process's pending part of the target,
    returned to the caller and not applied by the backend."""

    seq: int
    counters: dict[str, int] = field(default_factory=dict)
    keyed: dict[str, dict[str, int]] = field(default_factory=dict)
    names: dict[str, Kind] = field(default_factory=dict)
    take: Target | None = None

    def has_deltas(self) -> bool:
        return bool(self.counters) or any(self.keyed.values())

    def describe(self) -> str:
        n = len(self.counters) + sum(len(m) for m in self.keyed.values())
        return f"batch {self.seq} ({n} delta(s))"


@dataclass(frozen=True)
class Query:
    """What to read: counter names, keyed names (every key), single keys.
    ``None`` means every name of that kind."""

    counters: Sequence[str] | None = ()
    keyed: Sequence[str] | None = ()
    keys: Sequence[tuple[str, str]] = ()


@dataclass
class Read:
    """A consistent read: ``seq`` is the writer's recorded sequence number in
    the same snapshot as the values (0 when the writer has no entry)."""

    seq: int
    counters: dict[str, int] = field(default_factory=dict)
    keyed: dict[str, dict[str, int]] = field(default_factory=dict)


class Backend(Protocol):
    """What a durable scope implements.  Every method is atomic on the
    backend; any exception means "outcome unknown" except where stated."""

    def apply(self, writer_id: str, batch: Batch) -> None:
        """Atomically: if ``batch.seq`` <= the writer's recorded seq, only
        refresh its last-seen time (already applied); else register
        ``batch.names``, add every delta, record (seq, now), and prune writer
        entries not seen for more than PRUNE_AFTER seconds.  If a stored count
        would leave int64, raise :class:`CountOverflowError` listing every
        offending (name, key) with NOTHING applied and the seq not recorded
        (the one failure with a known outcome)."""

    def take(self, writer_id: str, seq: int, target: Target) -> int | dict[str, int]:
        """Atomically read and zero ``target`` (a keyed name: every key) and
        record the seq; return what was stored (0 / {} when absent)."""

    def fence(self, writer_id: str, seq: int) -> bool:
        """Atomically: True if ``seq`` <= the recorded seq; else record it
        (so it can never apply later) and return False."""

    def read(self, writer_id: str, query: Query) -> Read:
        """The queried values and the writer's recorded seq, consistently."""

    def names(self) -> list[tuple[str, Kind]]:
        """Every registered name with its kind, in registration order."""

    def kind_of(self, name: str) -> Kind | None:
        """The kind a name is registered with, or None."""

    def close(self) -> None:
        """Release connections (never called on a connection inherited
        across fork)."""


# ---- the objects users hold ----------------------------------------------------


def _rebuild(url: str, name: str, kind: Kind) -> Any:
    from . import open as open_store

    store = open_store(url)
    return store.counter(name) if kind == "counter" else store.keyed(name)


class BufferedCounter(Protocol):
    """What ``store.counter(name)`` returns in a write-behind store:
    ``increment``/``decrement``/``+=``/``-=`` add to this process's local
    cells (no I/O); ``value()`` is the stored value plus this process's
    unflushed delta; ``reset()`` zeroes both in one backend transaction and
    returns what they held.  The flusher uses ``_take()`` (the cells'
    atomic exchange with 0) and ``_pending()``; ``_close()`` makes updates
    raise ValueError."""

    @property
    def name(self) -> str: ...
    def increment(self, n: SupportsIndex = 1) -> None: ...
    def decrement(self, n: SupportsIndex = 1) -> None: ...
    def value(self) -> int: ...
    def reset(self) -> int: ...
    def _take(self) -> int: ...
    def _pending(self) -> int: ...
    def _close(self) -> None: ...


class PyBufferedCounter(ShardedCounter):
    """The pure-Python BufferedCounter (the C one is ``_c/buffered.c``): a
    subclass of the core's ShardedCounter, used when the C extension is not
    built or TALLIES_PURE=1.  Same behaviour; a call through a Python
    subclass of a C type costs CPython about 9 ns more."""

    __slots__ = ("_guard", "_name", "_wb")

    _wb: Any
    _name: str
    _guard: threading.Lock

    def __new__(cls, owner: Any, name: str, write_through: bool = False) -> PyBufferedCounter:
        if write_through:
            cls = _PyWriteThroughCounter
        return super().__new__(cls)

    def __init__(self, owner: Any, name: str, write_through: bool = False) -> None:
        super().__init__()
        self._wb = owner
        self._name = name
        self._guard = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def closed(self) -> bool:
        return False

    def value(self) -> int:
        v: int = self._wb._cell_value(self._name)
        return v

    def reset(self) -> int:
        v: int = self._wb._cell_reset(self._name)
        return v

    _take = ShardedCounter.reset
    _pending = ShardedCounter.value

    # The closed check and the update under one lock that _close() takes
    # too: an update racing with close() lands before the final flush's
    # drain or raises.  (The pure core's update is Python code, so a thread
    # can stop between the method lookup and the add; the C type needs no
    # lock, the GIL makes its check-and-add one step.)
    def _guarded(self, update: Callable[[Any, SupportsIndex], Any], n: SupportsIndex) -> None:
        with self._guard:
            if type(self) is _PyClosedCounter:
                raise ValueError(f"counter {self._name!r}: its store is closed")
            update(self, n)

    def increment(self, n: SupportsIndex = 1) -> None:
        self._guarded(ShardedCounter.increment, n)

    def decrement(self, n: SupportsIndex = 1) -> None:
        self._guarded(ShardedCounter.decrement, n)

    def __iadd__(self, n: SupportsIndex) -> PyBufferedCounter:
        self._guarded(ShardedCounter.__iadd__, n)
        return self

    def __isub__(self, n: SupportsIndex) -> PyBufferedCounter:
        self._guarded(ShardedCounter.__isub__, n)
        return self

    def _close(self) -> None:
        with self._guard:
            self.__class__ = _PyClosedCounter

    def __int__(self) -> int:
        return self.value()

    def __repr__(self) -> str:
        return f"BufferedCounter({self._name!r}, {self.value()})"

    def __reduce__(self) -> tuple[Any, ...]:
        r: tuple[Any, ...] = self._wb._cell_reduce(self._name)
        return r


class _PyWriteThroughCounter(PyBufferedCounter):
    """``flush=0``: every update returns after its flush committed."""

    __slots__ = ()

    def increment(self, n: SupportsIndex = 1) -> None:
        super().increment(n)
        self._wb.flush()

    def decrement(self, n: SupportsIndex = 1) -> None:
        super().decrement(n)
        self._wb.flush()

    def __iadd__(self, n: SupportsIndex) -> _PyWriteThroughCounter:
        self.increment(n)
        return self

    def __isub__(self, n: SupportsIndex) -> _PyWriteThroughCounter:
        self.decrement(n)
        return self


class _PyClosedCounter(PyBufferedCounter):
    """What a counter becomes when its store closes."""

    __slots__ = ()

    def _closed(self, *args: object) -> Any:
        raise ValueError(f"counter {self._name!r}: its store is closed")

    increment = decrement = _closed  # type: ignore[assignment]
    value = reset = _closed

    @property
    def closed(self) -> bool:
        return True

    def __iadd__(self, n: SupportsIndex) -> _PyClosedCounter:
        return self._closed()  # type: ignore[no-any-return]

    __isub__ = __iadd__

    def __repr__(self) -> str:
        return f"BufferedCounter({self._name!r}, closed)"


def _counter_class() -> Callable[..., BufferedCounter]:
    """The C BufferedCounter when the C core is in use, else the Python one."""
    if _CBufferedCounter is not None:
        return _CBufferedCounter  # type: ignore[no-any-return]
    return PyBufferedCounter


class BufferedKeyedCounter:
    """A durable keyed counter (str keys): ``increment(key, n=1)``,
    ``decrement``, ``value(key)``, ``kc[key]``, ``keys()``, ``items()``,
    ``snapshot()``, ``reset(key=None)``, ``len``, ``in``, iteration.  Updates
    go to a local ``tallies.KeyedCounter``; reads add the stored counts."""

    __slots__ = ("__weakref__", "_cells", "_closed", "_known", "_name", "_wb")

    def __init__(self, wb: WriteBehind, name: str) -> None:
        self._wb = wb
        self._name = name
        self._cells = KeyedCounter()
        self._known: set[str] | frozenset[str] = set()
        self._closed = False

    @property
    def name(self) -> str:
        return self._name

    def _closed_error(self) -> ValueError:
        return ValueError(f"keyed counter {self._name!r}: its store {self._wb.shown!r} is closed")

    def _first_use(self, key: object, n: SupportsIndex, sub: bool) -> None:
        """A key's first update, under the state lock: close() marks the
        counter closed under that lock before its final flush drains the
        cells, so this update either lands before the drain or raises (a
        thread could otherwise stop between the check and the update and add
        to cells nobody flushes any more).  The pure-Python core's update is
        Python code itself, so then every update takes this path."""
        if self._closed:
            raise self._closed_error()
        k = check_key(key)
        with self._wb._state:
            if self._closed:
                raise self._closed_error()
            if sub:
                self._cells.decrement(k, n)
            else:
                self._cells.increment(k, n)
            if _KEYED_IMPLEMENTATION == "c":
                self._known.add(k)  # type: ignore[union-attr]

    def increment(self, key: str, n: SupportsIndex = 1) -> None:
        """Add ``n`` to ``key``'s count (a local cell; no I/O)."""
        if key not in self._known:
            self._first_use(key, n, False)
            return
        self._cells.increment(key, n)

    def decrement(self, key: str, n: SupportsIndex = 1) -> None:
        """Subtract ``n`` from ``key``'s count (a local cell; no I/O)."""
        if key not in self._known:
            self._first_use(key, n, True)
            return
        self._cells.decrement(key, n)

    def value(self, key: str) -> int:
        """Stored count + this process's pending delta (0 if never counted)."""
        return self._wb.value_key(self._name, check_key(key))

    def __getitem__(self, key: str) -> int:
        return self.value(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.snapshot()

    def snapshot(self) -> collections.Counter[str]:
        """Every key's count (stored + pending; keys at 0 included)."""
        return collections.Counter(self._wb.value_keyed(self._name))

    def keys(self) -> list[str]:
        return list(self.snapshot())

    def items(self) -> list[tuple[str, int]]:
        return list(self.snapshot().items())

    def reset(self, key: str | None = None) -> Any:
        """``reset(key) -> int`` or ``reset() -> collections.Counter``: zero the
        stored counts and this process's pending deltas in one transaction."""
        if key is None:
            v = self._wb.take(Target("keyed", self._name))
            assert isinstance(v, dict)
            return collections.Counter(v)
        return self._wb.take(Target("keyed", self._name, check_key(key)))

    def __len__(self) -> int:
        return len(self.snapshot())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __repr__(self) -> str:
        if self._closed:
            return f"{type(self).__name__}({self._name!r}, closed)"
        return f"{type(self).__name__}({self._name!r}, {dict(self.snapshot())!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._wb.url, self._name, "keyed"))


class _WriteThroughKeyed(BufferedKeyedCounter):
    """``flush=0``: every update returns after its flush committed."""

    __slots__ = ()

    def increment(self, key: str, n: SupportsIndex = 1) -> None:
        super().increment(key, n)
        self._wb.flush()

    def decrement(self, key: str, n: SupportsIndex = 1) -> None:
        super().decrement(key, n)
        self._wb.flush()


# ---- the machinery -------------------------------------------------------------


def new_writer_id() -> str:
    """host:pid:random, unique per process (and per fork)."""
    host = socket.gethostname().split(".")[0][:40] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(6)}"


def _add_into(dst: dict[str, int], src: Mapping[str, int]) -> None:
    for k, v in src.items():
        t = dst.get(k, 0) + v
        if t:
            dst[k] = t
        else:
            dst.pop(k, None)


class WriteBehind:
    """The local side of a write-behind store (see the module docstring).

    ``backend`` is the connection opened (and validated) by the store;
    ``connect`` makes a new one (used after fork).  ``interval`` is the
    flusher's period in seconds; 0 means write-through (every update flushes
    before it returns; the flusher then only retries failures, every second).
    """

    def __init__(
        self,
        backend: Backend,
        connect: Callable[[], Backend],
        *,
        interval: float,
        url: str,
    ) -> None:
        self.url = url  # to reopen (pickles); messages and logs show self.shown
        self.shown = redact_url(url)
        self.interval = interval
        self.write_through = interval == 0
        self.writer_id = new_writer_id()
        self._backend: Backend | None = backend
        self._connect = connect
        self._be_lock = threading.Lock()
        self._pid = os.getpid()
        self._seq = 0
        self._flush_lock = threading.Lock()
        self._state = threading.Lock()
        self._counters: dict[str, BufferedCounter] = {}
        self._make_counter = _counter_class()
        self._keyed: dict[str, BufferedKeyedCounter] = {}
        self._kinds: dict[str, Kind] = {}
        self._registered: set[str] = set()
        self._held_c: dict[str, int] = {}
        self._held_k: dict[str, dict[str, int]] = {}
        self._inflight: Batch | None = None
        self._history: collections.deque[Batch] = collections.deque()
        self._known_from = 1
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        #: seconds one backend call may take (bounds the flush on SIGTERM/SIGINT)
        self.timeout = float(getattr(backend, "timeout", _signals.DEFAULT_TIMEOUT))
        _signals.install()  # flush on SIGTERM / SIGINT (see _signals.py)
        _ensure_exit_hook()
        with _live_lock:
            _live[id(self)] = self
        self._start_flusher()

    # -- objects -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"the store {self.shown!r} is closed")

    def _kind_clash(self, name: str, kind: Kind) -> None:
        have = self._kinds.get(name) or self._be().kind_of(name)
        if have is not None and have != kind:
            what = "a counter" if have == "counter" else "a keyed counter"
            raise ValueError(f"{name!r} is {what} in {self.shown}")

    def counter(self, name: str) -> BufferedCounter:
        c = self._counters.get(name)
        if c is not None:
            return c
        self._check_open()
        check_name(name)
        self._kind_clash(name, "counter")
        with self._state:
            c = self._counters.get(name)
            if c is None:
                c = self._make_counter(self, name, self.write_through)
                self._counters[name] = c
                self._kinds[name] = "counter"
        return c

    def keyed(self, name: str) -> BufferedKeyedCounter:
        kc = self._keyed.get(name)
        if kc is not None:
            return kc
        self._check_open()
        check_name(name)
        self._kind_clash(name, "keyed")
        with self._state:
            kc = self._keyed.get(name)
            if kc is None:
                cls = _WriteThroughKeyed if self.write_through else BufferedKeyedCounter
                kc = self._keyed[name] = cls(self, name)
                self._kinds[name] = "keyed"
        return kc

    def names(self) -> list[str]:
        out = [n for n, _ in self._be().names()]
        seen = set(out)
        with self._state:
            out.extend(n for n in self._kinds if n not in seen)
        return out

    # -- the backend connection -------------------------------------------------

    def _be(self) -> Backend:
        be = self._backend
        if be is None:
            with self._be_lock:
                be = self._backend
                if be is None:
                    be = self._backend = self._connect()
        return be

    # -- flush ---------------------------------------------------------------------

    def flush(self) -> None:
        """Settle the in-flight batch, then send every pending delta.
        Raises FlushError (deltas kept) or CountOverflowError (the rest sent)."""
        with self._flush_lock:
            self._settle()
            batch = self._build()
            if batch is not None:
                self._send(batch)

    def _build(self) -> Batch | None:
        with self._state:
            counters: dict[str, int] = {}
            for name, c in self._counters.items():
                d = c._take()
                if d:
                    counters[name] = d
            _add_into(counters, self._held_c)
            self._held_c = {}
            keyed: dict[str, dict[str, int]] = {}
            for name, kc in self._keyed.items():
                m = {k: v for k, v in kc._cells._drain() if v}
                held = self._held_k.get(name)
                if held:
                    _add_into(m, held)
                if m:
                    keyed[name] = m
            self._held_k = {}
            names = {n: k for n, k in self._kinds.items() if n not in self._registered}
            if not (counters or keyed or names):
                return None
            self._seq += 1
            batch = Batch(self._seq, counters, keyed, names)
            self._inflight = batch
            return batch

    def _send(self, batch: Batch) -> None:
        overflow: CountOverflowError | None = None
        for _ in range(4):
            try:
                self._be().apply(self.writer_id, batch)
            except CountOverflowError as exc:
                # Known outcome: nothing applied, seq not recorded.  Hold the
                # offending deltas; send the rest under the same seq.
                overflow = exc
                with self._state:
                    rest = self._hold(batch, set(exc.items))
                    self._inflight = rest
                if rest is None:
                    raise
                batch = rest
                continue
            except Exception as exc:
                raise FlushError(
                    f"{self.shown}: flush failed: {type(exc).__name__}: {exc}; "
                    f"{batch.describe()} is kept and retried first by the next flush"
                ) from exc
            with self._state:
                self._committed(batch)
            if overflow is not None:
                raise overflow
            return
        raise FlushError(f"{self.shown}: flush kept meeting overflows; {batch.describe()} is kept")

    def _hold(self, batch: Batch, bad: set[tuple[str, str | None]]) -> Batch | None:
        """Move the deltas named in ``bad`` to the held maps (caller holds
        _state); return the rest of the batch (same seq), or None if empty."""
        rest = Batch(batch.seq, names=dict(batch.names))
        for name, d in batch.counters.items():
            if (name, None) in bad:
                _add_into(self._held_c, {name: d})
            else:
                rest.counters[name] = d
        for name, m in batch.keyed.items():
            keep = {}
            for key, d in m.items():
                if (name, key) in bad:
                    _add_into(self._held_k.setdefault(name, {}), {key: d})
                else:
                    keep[key] = d
            if keep:
                rest.keyed[name] = keep
        if not (rest.has_deltas() or rest.names):
            return None
        return rest

    def _committed(self, batch: Batch) -> None:
        """The backend has ``batch`` (caller holds _state)."""
        if self._inflight is batch:
            self._inflight = None
        self._registered.update(batch.names)
        if batch.has_deltas():
            self._history.append(batch)
            while len(self._history) > HISTORY:
                self._known_from = self._history.popleft().seq + 1

    def _settle(self) -> None:
        """Resolve the in-flight batch (caller holds _flush_lock)."""
        batch = self._inflight
        if batch is None:
            return
        if batch.take is None:
            self._send(batch)
            return
        try:
            applied = self._be().fence(self.writer_id, batch.seq)
        except Exception as exc:
            raise FlushError(
                f"{self.shown}: cannot settle the reset of {batch.take.name!r} "
                f"({type(exc).__name__}: {exc}); its pending delta is kept"
            ) from exc
        with self._state:
            if applied:
                self._committed(batch)
            else:
                self._inflight = None
                _add_into(self._held_c, batch.counters)
                for name, m in batch.keyed.items():
                    _add_into(self._held_k.setdefault(name, {}), m)

    # -- what the counter objects call --------------------------------------------

    def _cell_value(self, name: str) -> int:
        return self.value_counter(name)

    def _cell_reset(self, name: str) -> int:
        v = self.take(Target("counter", name))
        assert isinstance(v, int)
        return v

    def _cell_reduce(self, name: str) -> tuple[Any, ...]:
        return (_rebuild, (self.url, name, "counter"))

    # -- reset (take) --------------------------------------------------------------

    def take(self, target: Target) -> int | dict[str, int]:
        self._check_open()
        with self._flush_lock:
            self._settle()
            with self._state:
                batch = Batch(self._seq + 1, take=target)
                name = target.name
                if target.kind == "counter":
                    c = self._counters.get(name)
                    d = (c._take() if c is not None else 0) + self._held_c.pop(name, 0)
                    if d:
                        batch.counters[name] = d
                else:
                    kc = self._keyed.get(name)
                    held = self._held_k.get(name, {})
                    m: dict[str, int] = {}
                    if target.key is None:
                        if kc is not None:
                            m = {k: v for k, v in kc._cells._drain() if v}
                        _add_into(m, held)
                        self._held_k.pop(name, None)
                    else:
                        v = kc._cells._reset_key(target.key) if kc is not None else 0
                        v += held.pop(target.key, 0)
                        if v:
                            m[target.key] = v
                    if m:
                        batch.keyed[name] = m
                self._seq = batch.seq
                self._inflight = batch
            try:
                stored = self._be().take(self.writer_id, batch.seq, target)
            except Exception as exc:
                raise FlushError(
                    f"{self.shown}: reset of {name!r} failed ({type(exc).__name__}: {exc}); "
                    "whether it happened is settled by the next flush (if it did not, "
                    "this process's pending delta is kept; if it did, this call's "
                    "result is lost)"
                ) from exc
            with self._state:
                self._committed(batch)
        if isinstance(stored, dict):
            out = dict(stored)
            _add_into(out, batch.keyed.get(name, {}))
            for k in stored:
                out.setdefault(k, 0)
            return out
        if target.kind == "keyed":
            assert target.key is not None
            return stored + batch.keyed.get(name, {}).get(target.key, 0)
        return stored + batch.counters.get(name, 0)

    # -- reads -----------------------------------------------------------------------

    def _unseen(self, seq: int) -> Iterator[Batch]:
        """Batches this process sent that a read at recorded seq ``seq`` does
        not include (caller holds _state)."""
        if self._inflight is not None and self._inflight.seq > seq:
            yield self._inflight
        for b in self._history:
            if b.seq > seq:
                yield b

    def _read(self, query: Query, local: Callable[[Read], Any]) -> Any:
        self._check_open()
        for _ in range(8):
            r = self._be().read(self.writer_id, query)
            with self._state:
                if r.seq + 1 >= self._known_from:
                    return local(r)
        with self._flush_lock:  # none of our batches can commit meanwhile
            r = self._be().read(self.writer_id, query)
            with self._state:
                return local(r)

    def _pending_counter(self, name: str, seq: int) -> int:
        total = self._held_c.get(name, 0)
        c = self._counters.get(name)
        if c is not None:
            total += c._pending()
        for b in self._unseen(seq):
            total += b.counters.get(name, 0)
        return total

    def _pending_keyed(self, name: str, seq: int) -> dict[str, int]:
        out: dict[str, int] = {}
        kc = self._keyed.get(name)
        if kc is not None:
            for k, v in kc._cells._items():
                out[k] = out.get(k, 0) + v
        for k, v in self._held_k.get(name, {}).items():
            out[k] = out.get(k, 0) + v
        for b in self._unseen(seq):
            for k, v in b.keyed.get(name, {}).items():
                out[k] = out.get(k, 0) + v
        return out

    def value_counter(self, name: str) -> int:
        def local(r: Read) -> int:
            return r.counters.get(name, 0) + self._pending_counter(name, r.seq)

        v: int = self._read(Query(counters=(name,)), local)
        return v

    def value_key(self, name: str, key: str) -> int:
        def local(r: Read) -> int:
            stored = r.keyed.get(name, {}).get(key, 0)
            return stored + self._pending_keyed(name, r.seq).get(key, 0)

        v: int = self._read(Query(keys=((name, key),)), local)
        return v

    def value_keyed(self, name: str) -> dict[str, int]:
        def local(r: Read) -> dict[str, int]:
            out = dict(r.keyed.get(name, {}))
            for k, v in self._pending_keyed(name, r.seq).items():
                out[k] = out.get(k, 0) + v
            return out

        v: dict[str, int] = self._read(Query(keyed=(name,)), local)
        return v

    def snapshot(self) -> Snapshot:
        def local(r: Read) -> Snapshot:
            counters = dict(r.counters)
            keyed = {n: dict(m) for n, m in r.keyed.items()}
            for name, kind in self._kinds.items():
                if kind == "counter":
                    counters[name] = counters.get(name, 0) + self._pending_counter(name, r.seq)
                else:
                    m = keyed.setdefault(name, {})
                    for k, v in self._pending_keyed(name, r.seq).items():
                        m[k] = m.get(k, 0) + v
            for name, d in self._held_c.items():  # held for names not opened here
                if name not in self._kinds:
                    counters[name] = counters.get(name, 0) + d
            return {"counters": counters, "keyed": keyed}

        snap: Snapshot = self._read(Query(counters=None, keyed=None), local)
        names = [n for n, _ in self._be().names()]
        order = {n: i for i, n in enumerate(names)}
        end = len(order)
        for section in ("counters", "keyed"):
            d: dict[str, Any] = snap[section]
            items = sorted(d.items(), key=lambda kv: order.get(kv[0], end))
            d.clear()
            d.update(items)
        return snap

    def pending(self) -> dict[str, Any]:
        """This process's deltas not yet acknowledged by the backend (tests, tools)."""
        with self._state:
            return {
                "writer_id": self.writer_id,
                "seq": self._seq,
                "in_flight": self._inflight.describe() if self._inflight else None,
                "held": {"counters": dict(self._held_c), "keyed": dict(self._held_k)},
            }

    # -- the flusher -------------------------------------------------------------

    def _start_flusher(self) -> None:
        ref = weakref.ref(self)
        t = threading.Thread(
            target=_flusher, args=(ref, self._stop), name=f"tallies-flush {self.shown}", daemon=True
        )
        self._thread = t
        _signals.start_without_signals(t)

    def _background_flush(self) -> bool:
        """One background attempt; False on failure (logged)."""
        if not self._flush_lock.acquire(blocking=False):
            return True  # someone is flushing right now
        try:
            self._settle()
            batch = self._build()
            if batch is not None:
                self._send(batch)
        except StoreError as exc:
            self.failures += 1
            log.warning(
                "tallies: background flush of %s failed (%d in a row): %s",
                self.shown,
                self.failures,
                exc,
            )
            return False
        except Exception:
            self.failures += 1
            log.exception("tallies: background flush of %s failed unexpectedly", self.shown)
            return False
        finally:
            self._flush_lock.release()
        if self.failures:
            log.warning("tallies: flushes of %s succeed again", self.shown)
            self.failures = 0
        return True

    def close(self) -> None:
        """Flush and stop; if the final flush fails, raise and keep retrying
        in the background (and at exit)."""
        if self._closed:
            return
        with self._state:
            for c in self._counters.values():
                c._close()
            for kc in self._keyed.values():
                kc._closed = True
                kc._known = frozenset()
        self.flush()  # raises on failure: stays live, the flusher keeps retrying
        self._closed = True
        self._stop.set()
        with _live_lock:
            _live.pop(id(self), None)
            last = not _live
        if last:
            _signals.release()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)
        be, self._backend = self._backend, None
        if be is not None and self._pid == os.getpid():
            be.close()

    # -- fork --------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        self._flush_lock = threading.Lock()
        self._state = threading.Lock()
        for c in self._counters.values():
            c._take()  # the parent's pending deltas: the parent flushes them
        for kc in self._keyed.values():
            kc._cells._drain()
        self._held_c = {}
        self._held_k = {}
        self._inflight = None
        self._history.clear()
        self._known_from = 1
        self._seq = 0
        self._registered = set()
        self.writer_id = new_writer_id()
        if self._backend is not None:
            _inherited.append(self._backend)  # never closed nor used here
            self._backend = None
        self._pid = os.getpid()
        self._be_lock = threading.Lock()
        self.failures = 0
        self._stop = threading.Event()
        self._start_flusher()


def _flusher(ref: weakref.ref[WriteBehind], stop: threading.Event) -> None:
    _signals.keep_signals_off_this_thread()
    wb = ref()
    if wb is None:
        return
    base = wb.interval if wb.interval > 0 else 1.0
    del wb
    delay = base
    while not stop.wait(delay):
        wb = ref()
        if wb is None or _exiting:
            return
        ok = wb._background_flush()
        delay = base if ok else min(max(delay * 2, base), MAX_BACKOFF)
        del wb


# ---- process-wide hooks ----------------------------------------------------------

_live: dict[int, WriteBehind] = {}  # open stores: strong refs (pending deltas live here)
_live_lock = threading.Lock()
_signals.stores_from(_live)  # the signal flush reads it (_signals.py)
_fork_lock = threading.Lock()
_held_for_fork: list[WriteBehind] = []
_inherited: list[Backend] = []
_exiting = False


def _before_fork() -> None:
    _fork_lock.acquire()
    _ensure_exit_hook()
    _live_lock.acquire()
    held = sorted(_live.values(), key=id)
    for wb in held:
        wb._flush_lock.acquire()
        wb._state.acquire()
    _held_for_fork[:] = held


def _after_fork_in_parent() -> None:
    for wb in reversed(_held_for_fork):
        wb._state.release()
        wb._flush_lock.release()
    _held_for_fork.clear()
    _live_lock.release()
    _fork_lock.release()


def _after_fork_in_child() -> None:
    global _live_lock, _fork_lock
    _live_lock = threading.Lock()
    _fork_lock = threading.Lock()
    _held_for_fork.clear()
    for wb in list(_live.values()):
        wb._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


def flush_all() -> None:
    """Flush every open write-behind store (at exit); log failures."""
    with _live_lock:
        stores = list(_live.values())
    for wb in stores:
        try:
            wb.flush()
        except Exception as exc:
            log.error(
                "tallies: final flush of %s failed; its unflushed deltas are lost: %s",
                wb.shown,
                exc,
            )


def _at_exit() -> None:
    global _exiting
    flush_all()
    _exiting = True


atexit.register(_at_exit)


class _Anchor:
    """Keeps the multiprocessing after-fork registration alive."""


_anchor = _Anchor()
_mp_hooked = False
_mp_finalizer_pid = 0


def _ensure_exit_hook() -> None:
    """Make multiprocessing's exit path flush too.  Children started by fork or
    forkserver leave with ``os._exit`` (no atexit) after running
    multiprocessing's finalizers; register one in this process (once per pid),
    and an after-fork hook so that forked children register theirs after
    multiprocessing clears the inherited ones."""
    global _mp_hooked, _mp_finalizer_pid
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    if not _mp_hooked:
        _mp_hooked = True
        util.register_after_fork(_anchor, _mp_after_fork)
    if _mp_finalizer_pid != os.getpid():
        _mp_finalizer_pid = os.getpid()
        util.Finalize(None, flush_all, exitpriority=100)


def _mp_after_fork(_: object) -> None:
    global _mp_finalizer_pid
    _mp_finalizer_pid = 0
    _ensure_exit_hook()
