"""Write-behind stores: local cells, a backend, and an exactly-once flush.

The durable scopes (``sqlite://``, ``redis://``) are :class:`WriteBehindStore`
subclasses: a scope declares its URL parameters and opens a
:class:`~tallies.stores._protocol.Backend`; this module provides everything
else: the store object, the counter objects users hold, the flush protocol,
the background flusher, close, fork and exit handling.  The flush path goes
one way down: store -> :class:`WriteBehind` -> backend, and the backend
knows only the types of ``_protocol.py``.

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
checks it (``base.check_key``: the key rule every store shares) and inserts
it under the state lock, in Python; later uses never leave C: with the C
core the class is a C type (``_c/keyed.c``, for the same exact-type reason:
a Python class that held the bound C methods cost 1.7x) whose ``increment``
/ ``decrement`` add to the cell of a key already in the cells and call the
Python first use for anything else, with this module's Python methods
installed on it (``_c_class``).  Its ``collections.Counter``-like API
(``kc[k] += n``, ``get``, ``update``, ``most_common`` ...) is
``_keyed.StoreKeyedMixin``, shared with ``shm://``.

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
* two failures have a known outcome, raised by the backend from inside its
  transaction before it records the seq, so nothing was applied:
  :class:`CountOverflowError` (a stored count would leave int64) and
  :class:`KindClashError` (a name of the batch is registered with the other
  kind: two processes first used one name both ways).  The offending deltas
  leave the batch and the rest is sent again under the same seq (safe: that
  seq was not recorded).  An overflowing delta goes to a local "held" map
  (still counted by ``value()``, merged into every later batch, so the error
  repeats on each flush until a decrement or a ``reset()`` brings the count
  back in range: never lost, never a busy loop).  A clashing name's deltas
  are set aside for good (``pending()["set_aside"]``), the name is marked
  clashed in this process: its later deltas are set aside by every flush
  without another error, and reading it raises KindClashError.  Either way
  ``flush()`` raises ONE error after the rest has landed, composed here so
  that it reads the same on every store: what was not applied and why, and
  that every other delta of the flush was applied.

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

Keys at 0 (the contract: a key that has been counted stays listed, at 0
after a reset): the cells never lose a key and keep insertion order, so the
keys first counted since the last batch are the cells' last ones, and each
keyed counter remembers only how many keys went into a batch before
(``_sent``: one int, no per-key record); the next batch carries every key
from there on even when its delta is 0, so the backend lists it too.  Every
other key of a batch has a delta that is not 0: a flush takes from the cells
only the counts that are not 0 and the new keys (the core's
``_nonzero(take=True, since=_sent)``: one pass in C, one dict), so its cost
follows the keys counted since the last flush, not every key ever counted.
Backends zero keys on reset and never delete them.

Write-through (``flush=0``)
---------------------------
Every update is one flush that carries it: the counter objects are then
Python objects (:class:`WriteThroughCounter`, :class:`WriteThroughKeyed`)
whose update adds to the cells and flushes under the flush lock, in one step
for the other write-through updates.  An update that raises was not applied:
if the flush refuses its delta (CountOverflowError, KindClashError) the delta
is taken back out of the held / set-aside maps before the error is raised;
an overflow of another count (an earlier update's) does not make this one
raise.  Only FlushError (the backend did not answer) leaves the delta queued:
it is written by a later flush, exactly once, so the update must not be
retried.  (Write-through is I/O per update: the Python objects cost nothing
measurable there.)

Reads: read-your-writes, exactly
--------------------------------
``value()`` = stored value + this process's pending delta (cells + held +
batches not yet visible in the stored value).  The backend returns, in the
same consistent read, the writer's recorded seq ``S``; a batch (in flight, or
one of the last committed ones kept in a short history) is added iff its
seq > ``S``.  So a batch is counted once whether the read happened before or
after its commit, and a batch whose reply was lost but which did commit is
not counted twice.  If the history no longer reaches back to ``S`` (a very
slow read), the read is retried, finally under the flush lock.  The history
is kept only while a read is in flight: a read that begins after a batch's
commit was acknowledged sees it in the backend (every backend reads where it
commits), so with no read in flight a committed batch is dropped at once
(``_known_from`` moves past it) and the local state after a flush of a
million keys is the cells, not the cells and a copy of the batch.  Reads never
wait for a flush's I/O except in that last case.  A read of one key costs
the same whatever the number of keys: the backend reads that key (one SQL
statement, one Redis round trip) and the pending part is that key's cell,
held delta and batch entries, each looked up by key (``_pending_key``).

One store per URL per process
-----------------------------
``tallies.open(url)`` of a URL that is already open in this process (same
backing store, same parameters) returns a new handle on the SAME
:class:`WriteBehind`: one writer, one flusher, one connection, and every
handle reads what any of them counted.  Unpickling a counter attaches to it
too (or opens it once, for good, if it is not open).  The write-behind closes
when the last handle that ``open()`` returned is closed.

The flusher, close, exit, fork
------------------------------
Each store has one daemon thread that flushes every ``interval`` seconds; on
failure it logs a warning through ``logging`` (logger ``tallies.stores``) and
backs off (doubling, at most 30 s); it never drops anything.  ``flush()``
raises :class:`FlushError` (``__cause__``: the backend's error) and keeps the
deltas.  ``close()`` closes every counter (updates raise ValueError from then
on: closed counters change class; an update racing with ``close()`` lands in
the final flush or raises) and flushes; the store refuses calls from then on.
If that final flush fails ``close()`` raises and the deltas stay queued: the
flusher keeps retrying, ``close()`` or ``flush()`` called again try again,
and interpreter exit tries once more.  Interpreter exit (``atexit``, and
multiprocessing's exit hook in fork/forkserver children, which leave through
``os._exit``) flushes every open store; a failure that says the next attempt
reconnects (a file replaced while open) is retried once there.  So do
SIGTERM and SIGINT while their handlers are Python's defaults
(``_signals.py``: the process still ends by the signal); that is also what
keeps ``with multiprocessing.Pool() as pool:`` exact, whose exit stops the
workers with SIGTERM.

``fork()``: ``os.register_at_fork`` takes every store's flush lock and state
lock before the fork (so no flush is half done in the child's copy) and
releases them in the parent.  The child gets fresh locks, zeroes the cells it
inherited (those deltas belong to the parent, which flushes them), drops the
in-flight batch and the history, takes a new writer id (seq from 0), drops
the parent's backend connection without closing it, and starts its own
flusher.

A new durable scope
-------------------
Subclass :class:`WriteBehindStore`: ``PARAMS`` (its URL parameters,
``_params.FLUSH`` among them), ``backend_options(url, values)`` (a hashable
description of the backing store and its options: equal options mean the
same store) and ``connect(url, options, create, first)`` (a new
:class:`Backend`; ``first`` when the store is being opened: validate it, and
refuse a missing one unless ``create``); ``destroy_url``.  Implement the
``Backend`` protocol (``_protocol.py``; every method atomic on the backend;
reads consistent with the writer's recorded seq).  ``sqlite.py`` is the
example; ``tests/stores/test_writebehind.py`` has a dict backend with fault
injection, and adding the scheme to ``STORES`` in
``tests/contract/_contract.py`` runs the store contract suite on it
(docs/contract.md is what it checks).

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
import operator
import os
import secrets
import socket
import sys
import threading
import types
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, SupportsIndex

from .._common import add_into as _add_into
from .._common import sum_into
from .._impl import IMPLEMENTATION as _IMPLEMENTATION
from .._impl import BufferedCounter as _CBufferedCounter
from .._impl import BufferedKeyedCounter as _CBufferedKeyed
from .._impl import ShardedCounter
from ..keyed import KeyedCounter
from . import _signals, _wbrates
from ._keyed import StoreKeyedMixin
from ._params import Param, parse
from ._protocol import (
    INT64_MAX,
    INT64_MIN,
    MAX_BACKOFF,
    PRUNE_AFTER,
    Backend,
    Batch,
    Kind,
    Query,
    RateKind,
    Read,
    Target,
    set_apart,
)
from ._redact import redact_url
from .base import (
    KEY_MAX_BYTES,
    CountOverflowError,
    FlushError,
    KindClashError,
    Snapshot,
    Store,
    StoreError,
    StoreURL,
    check_key,
    check_open,
    counter_name,
)

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "KEY_MAX_BYTES",
    "MAX_BACKOFF",
    "PRUNE_AFTER",
    "Backend",
    "Batch",
    "BufferedCounter",
    "BufferedKeyedCounter",
    "Kind",
    "PyBufferedCounter",
    "PyBufferedKeyedCounter",
    "Query",
    "Read",
    "Target",
    "WriteBehind",
    "WriteBehindStore",
    "WriteThroughCounter",
    "WriteThroughKeyed",
    "check_key",
]

log = logging.getLogger("tallies.stores")

HISTORY = 16


def _what(name: str, key: str | None) -> str:
    return repr(name) if key is None else f"{name}[{key!r}]"


def _shown(items: list[tuple[str, str | None]]) -> str:
    shown = ", ".join(_what(n, k) for n, k in items[:5])
    return shown + (f" and {len(items) - 5} more" if len(items) > 5 else "")


# ---- the objects users hold ----------------------------------------------------


def _store_of(url: str) -> Any:
    """Unpickling: the store of ``url`` open in this process (one store per
    URL per process), opened once if it is not."""
    from . import _store_class, parse_url

    parsed = parse_url(url)
    cls = _store_class(parsed)
    if issubclass(cls, WriteBehindStore):
        return cls._attach(parsed, create=True, owned=False)
    return cls.open_url(parsed)  # pragma: no cover - they come from write-behind stores


def _rebuild(url: str, name: str, kind: Kind) -> Any:
    """Unpickling a counter: from the store of ``url`` (``_store_of``)."""
    store = _store_of(url)
    return store.counter(name) if kind == "counter" else store.keyed(name)


def _rebuild_rate(url: str, name: str, kind: str, window: float, resolution: float) -> Any:
    """Unpickling a rate or keyed rate: as ``_rebuild``."""
    store = _store_of(url)
    if kind == "rate":
        return store.rate(name, window, resolution)
    return store.keyed_rate(name, window, resolution)


_wbrates.rebuild_rate = _rebuild_rate  # the rates' __reduce__ (no import back)


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

    def __new__(cls, owner: Any, name: str) -> PyBufferedCounter:
        return super().__new__(cls)

    def __init__(self, owner: Any, name: str) -> None:
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


class WriteThroughCounter:
    """``store.counter(name)`` of a write-through store (``flush=0``): every
    update returns after the flush carrying it committed; an update that
    raises was not applied (except FlushError: see the module docstring).
    Its pending delta (only while a flush is failing) lives in a buffered
    counter, ``_cells``."""

    __slots__ = ("__weakref__", "_cells", "_name", "_wb")

    def __init__(self, wb: WriteBehind, name: str) -> None:
        self._wb = wb
        self._name = name
        self._cells: BufferedCounter = wb._make_counter(wb, name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def closed(self) -> bool:
        return bool(getattr(self._cells, "closed", False))

    def increment(self, n: SupportsIndex = 1) -> None:
        self._wb._write_through(self._cells.increment, self._name, None, n, 1)

    def decrement(self, n: SupportsIndex = 1) -> None:
        self._wb._write_through(self._cells.decrement, self._name, None, n, -1)

    def __iadd__(self, n: SupportsIndex) -> WriteThroughCounter:
        self.increment(n)
        return self

    def __isub__(self, n: SupportsIndex) -> WriteThroughCounter:
        self.decrement(n)
        return self

    def value(self) -> int:
        if self.closed:
            raise ValueError(f"counter {self._name!r}: its store is closed")
        return self._wb._cell_value(self._name)

    def reset(self) -> int:
        if self.closed:
            raise ValueError(f"counter {self._name!r}: its store is closed")
        return self._wb._cell_reset(self._name)

    def _take(self) -> int:
        return self._cells._take()

    def _pending(self) -> int:
        return self._cells._pending()

    def _close(self) -> None:
        self._cells._close()

    def __int__(self) -> int:
        return self.value()

    def __repr__(self) -> str:
        if self.closed:
            return f"WriteThroughCounter({self._name!r}, closed)"
        return f"WriteThroughCounter({self._name!r}, {self.value()})"

    def __reduce__(self) -> tuple[Any, ...]:
        return self._wb._cell_reduce(self._name)


class BufferedKeyedCounter(StoreKeyedMixin):
    """A durable keyed counter (str keys): ``increment(key, n=1)``,
    ``decrement``, ``value(key)``, ``kc[key]``, ``kc[key] += n``, ``get``,
    ``keys()``, ``items()``, ``snapshot()``, ``most_common``, ``total``,
    ``update``, ``subtract``, ``reset(key=None)``, ``len``, ``in``,
    iteration.  Updates go to a local ``tallies.KeyedCounter``; reads add the
    stored counts.

    With the C core the class is ``_c/keyed.c``'s type of the same name with
    these methods installed on it (``_c_class``), except ``increment`` and
    ``decrement``: its own, which add to the cell of a key already counted
    without leaving C and call ``_first_increment`` / ``_first_decrement``
    for anything else."""

    __slots__ = ("__weakref__", "_cells", "_closed", "_name", "_sent", "_wb")

    def __init__(self, wb: WriteBehind, name: str) -> None:
        self._wb = wb
        self._name = name
        self._cells = KeyedCounter()
        # the cells' first _sent keys have been in a batch; those after them
        # have not (see the module docstring)
        self._sent = 0
        self._closed = False
        self._open_gate(self._cells, self._first_increment, self._first_decrement)

    def _open_gate(
        self, cells: KeyedCounter, inc: Callable[..., None], dec: Callable[..., None]
    ) -> None:
        """The C type's: updates of the keys in ``cells`` add there, others call
        ``inc`` / ``dec``.  Without the C core every update is the Python one."""

    def _close_gate(self) -> None:
        """The C type's: every later update calls ``_first_increment`` /
        ``_first_decrement`` (which raise: closed), once the updates that got
        through have added."""

    @property
    def name(self) -> str:
        return self._name

    def _closed_error(self) -> ValueError:
        return ValueError(f"keyed counter {self._name!r}: its store {self._wb.shown!r} is closed")

    def _first_use(self, key: object, n: SupportsIndex, sub: bool) -> None:
        """An update that the C increment does not take (a key's first use;
        every update without the C core), under the state lock: close() marks
        the counter closed (and closes the gate) under that lock before its
        final flush drains the cells, so this update either lands before the
        drain or raises (a thread could otherwise stop between the check and
        the update and add to cells nobody flushes any more)."""
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

    def increment(self, key: str, n: SupportsIndex = 1) -> None:
        """Add ``n`` to ``key``'s count (a local cell; no I/O)."""
        self._first_use(key, n, False)

    def decrement(self, key: str, n: SupportsIndex = 1) -> None:
        """Subtract ``n`` from ``key``'s count (a local cell; no I/O)."""
        self._first_use(key, n, True)

    _first_increment = increment  # the C type's fallbacks
    _first_decrement = decrement

    def value(self, key: str) -> int:
        """Stored count + this process's pending delta (0 if never counted)."""
        return self._wb.value_key(self._name, check_key(key))

    def snapshot(self) -> collections.Counter[str]:
        """Every key's count (stored + pending; keys at 0 included)."""
        return collections.Counter(self._wb.value_keyed(self._name))

    def reset(self, key: str | None = None) -> Any:
        """``reset(key) -> int`` or ``reset() -> collections.Counter``: zero the
        stored counts and this process's pending deltas in one transaction
        (the keys stay listed, at 0)."""
        if self._closed:
            raise self._closed_error()
        if key is None:
            v = self._wb.take(Target("keyed", self._name))
            assert isinstance(v, dict)
            return collections.Counter(v)
        return self._wb.take(Target("keyed", self._name, check_key(key)))

    def __repr__(self) -> str:
        if self._closed:
            return f"{type(self).__name__}({self._name!r}, closed)"
        return f"{type(self).__name__}({self._name!r}, {dict(self.snapshot())!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._wb.url, self._name, "keyed"))


_NOT_INSTALLED = frozenset(
    {"__module__", "__qualname__", "__slots__", "__dict__", "__weakref__", "__annotations__"}
)


def _c_class(cls: type, ctype: type) -> type:
    """``ctype`` (a C type with ``increment``, ``decrement``, ``_open_gate``
    and ``_close_gate`` of its own) with every other method of ``cls`` and
    its bases installed on it: the class users get (see
    BufferedKeyedCounter)."""
    own = set(vars(ctype)) - {"__doc__"}
    for klass in reversed(cls.__mro__[:-1]):
        for name, attr in vars(klass).items():
            if name in own or name in _NOT_INSTALLED or name.startswith("__static"):
                continue
            if isinstance(attr, (types.MemberDescriptorType, types.GetSetDescriptorType)):
                continue  # cls's __slots__: the C type keeps them in its __dict__
            setattr(ctype, name, attr)
    return ctype


#: The Python class itself (the pure core's; the tests run both).
PyBufferedKeyedCounter = BufferedKeyedCounter
if not TYPE_CHECKING and _CBufferedKeyed is not None and _IMPLEMENTATION == "c":
    BufferedKeyedCounter = _c_class(BufferedKeyedCounter, _CBufferedKeyed)


class WriteThroughKeyed(BufferedKeyedCounter):
    """``store.keyed(name)`` of a write-through store (``flush=0``): every
    update returns after the flush carrying it committed; an update that
    raises was not applied (except FlushError)."""

    __slots__ = ()

    def _open_gate(
        self, cells: KeyedCounter, inc: Callable[..., None], dec: Callable[..., None]
    ) -> None:
        """Its increment/decrement (below) flush every update: no gate."""

    def _update(self, key: object, n: SupportsIndex, sign: int) -> None:
        if self._closed:
            raise self._closed_error()
        k = check_key(key)
        add = self._cells.increment if sign > 0 else self._cells.decrement

        def update(amount: SupportsIndex) -> None:
            if self._closed:
                raise self._closed_error()
            add(k, amount)  # under the flush lock, as every batch is built

        self._wb._write_through(update, self._name, k, n, sign)

    def increment(self, key: str, n: SupportsIndex = 1) -> None:
        self._update(key, n, 1)

    def decrement(self, key: str, n: SupportsIndex = 1) -> None:
        self._update(key, n, -1)


# ---- the machinery -------------------------------------------------------------


def new_writer_id() -> str:
    """host:pid:random, unique per process (and per fork)."""
    host = socket.gethostname().split(".")[0][:40] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(6)}"


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
        self.handles = 0  # open handles that tallies.open() returned (WriteBehindStore)
        self._backend: Backend | None = backend
        self._connect = connect
        self._be_lock = threading.Lock()
        self._pid = os.getpid()
        self._seq = 0
        self._flush_lock = threading.Lock()
        self._state = threading.Lock()
        self._counters: dict[str, Any] = {}
        self._make_counter = _counter_class()
        self._keyed: dict[str, BufferedKeyedCounter] = {}
        self._kinds: dict[str, Kind] = {}
        self._registered: set[str] = set()
        self._held_c: dict[str, int] = {}
        self._held_k: dict[str, dict[str, int]] = {}
        # rates (see _wbrates.py): objects by name, held bucket deltas
        self._rates: dict[str, Any] = {}
        self._held_r: dict[str, dict[int, int]] = {}
        self._held_kr: dict[str, dict[str, dict[int, int]]] = {}
        self._limiters: dict[str, Any] = {}  # _limiter.LeaseLimiter by name
        self._clashed: dict[str, tuple[Kind, str]] = {}  # name -> (our kind, the message)
        self._aside_c: dict[str, int] = {}
        self._aside_k: dict[str, dict[str, int]] = {}
        self._inflight: Batch | None = None
        self._history: collections.deque[Batch] = collections.deque()
        self._known_from = 1
        self._readers = 0  # reads in flight (see the module docstring)
        self._closing = False  # close() began: counters refuse updates
        self._closed = False  # close() finished: the final flush succeeded
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

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def closing(self) -> bool:
        return self._closing

    # -- objects -----------------------------------------------------------------

    def _check_open(self) -> None:
        check_open(self._closing, self.shown)

    def _kind_clash(self, name: str, kind: Kind) -> None:
        r = self._rates.get(name)
        rk = r.spec.kind if r is not None else None
        if rk is None and hasattr(self._be(), "rate_spec"):
            spec = self._be().rate_spec(name)  # type: ignore[attr-defined]
            rk = spec.kind if spec is not None else None
        if rk is not None:
            what = "a rate" if rk == "rate" else "a keyed rate"
            raise ValueError(f"{name!r} is {what} in {self.shown}")
        have = self._kinds.get(name) or self._be().kind_of(name)
        if have is not None and have != kind:
            what = "a counter" if have == "counter" else "a keyed counter"
            raise ValueError(f"{name!r} is {what} in {self.shown}")

    def counter(self, name: str) -> Any:
        c = self._counters.get(name)
        return c if c is not None else self._first_use(name, "counter")

    def keyed(self, name: str) -> BufferedKeyedCounter:
        kc = self._keyed.get(name)
        return kc if kc is not None else self._first_use(name, "keyed")

    def _first_use(self, name: str, kind: Kind) -> Any:
        """The counter or keyed counter ``name``, made on its first use here."""
        self._check_open()
        counter_name(name)
        self._kind_clash(name, kind)
        objects: dict[str, Any] = self._counters if kind == "counter" else self._keyed
        with self._state:
            obj = objects.get(name)
            if obj is None:
                if kind == "keyed":
                    cls = WriteThroughKeyed if self.write_through else BufferedKeyedCounter
                    obj = cls(self, name)
                elif self.write_through:
                    obj = WriteThroughCounter(self, name)
                else:
                    obj = self._make_counter(self, name)
                objects[name] = obj
                self._kinds[name] = kind
        return obj

    def rate(self, name: str, kind: RateKind, window: object, resolution: object) -> Any:
        """The rate (or keyed rate) called ``name`` (see ``_wbrates.py``)."""
        r = self._rates.get(name)
        if r is None:
            self._check_open()
            counter_name(name)
            r = _wbrates.open_rate(self, name, kind, window, resolution)
        return _wbrates.check_same(self, r, kind, window, resolution)

    def rate_read(self, rate: Any, lo: int, hi: int) -> tuple[int, int]:
        """(events in buckets lo..hi, total) of a plain rate: stored + pending."""
        q = _wbrates.query(rate, lo, hi)

        def local(r: Read) -> tuple[int, int]:
            total, stored = _wbrates.stored(r, rate.name)
            buckets = dict(stored.get("", {}))
            pend = _wbrates.pending_plain(self, rate, r.seq)
            _add_into(buckets, pend)
            return _wbrates.sum_buckets(buckets, lo, hi), total + sum(pend.values())

        out: tuple[int, int] = self._read(Query(rates=(q,)), local)
        return out

    def keyed_rate_read(self, rate: Any, lo: int, hi: int, key: str | None) -> dict[str, int]:
        """Every key's (or ``key``'s) events in buckets lo..hi: stored + pending."""
        q = _wbrates.query(rate, lo, hi, key)

        def local(r: Read) -> dict[str, int]:
            _, stored = _wbrates.stored(r, rate.name)
            merged = {k: dict(b) for k, b in stored.items()}
            for k, b in _wbrates.pending_keyed(self, rate, r.seq).items():
                if key is None or k == key:
                    _add_into(merged.setdefault(k, {}), b)
            return {k: _wbrates.sum_buckets(b, lo, hi) for k, b in sorted(merged.items())}

        out: dict[str, int] = self._read(Query(rates=(q,)), local)
        return out

    def rate_write_through(self, update: Callable[[], None]) -> None:
        """A rate update of a write-through store: add, then flush, under the
        flush lock (FlushError: the delta stays queued, written once later)."""
        with self._flush_lock:
            update()
            self._flush_locked()

    def rate_take(self, rate: Any) -> int:
        v = self.take(Target("rate", rate.name))
        assert isinstance(v, int)
        return v

    def limiter(self, name: str, limit: int, per: float, resolution: float | None) -> Any:
        """The limiter called ``name`` (leases: see ``_limiter.py``)."""
        from ._limiter import LeaseLimiter, limit_spec

        self._check_open()
        be = self._be()
        if not hasattr(be, "limit_acquire"):
            from .base import LimitersUnsupportedError

            raise LimitersUnsupportedError(f"{self.shown}: this store has no limiters")
        min_res = int(getattr(be, "LIMITER_RESOLUTION_NS", 1_000_000))
        spec = limit_spec(name, limit, per, resolution, min_res, self.shown)
        lim = self._limiters.get(spec.name)
        if lim is None:
            stored = be.register_limiter(spec)  # type: ignore[attr-defined]
            if stored != spec:
                have = LeaseLimiter(stored, self._be, self.shown)
                have.close()
                raise ValueError(f"{spec.name!r} is {have!r} in {self.shown}, not as asked")
            with self._state:
                lim = self._limiters.get(spec.name)
                if lim is None:
                    lim = self._limiters[spec.name] = LeaseLimiter(spec, self._be, self.shown)
        if lim.spec != spec:
            raise ValueError(f"{spec.name!r} is {lim!r} in {self.shown}, not as asked")
        return lim

    def names(self) -> list[str]:
        """Every name: registered in the backend, and this process's own (sorted)."""
        self._check_open()
        out = {n for n, _ in self._be().names()}
        out.update(_wbrates.stored_rate_specs(self))
        with self._state:
            out.update(n for n in self._kinds if n not in self._clashed)
            out.update(self._rates)
        return sorted(out)

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
        """Settle the in-flight batch, then send every pending delta.  Raises
        FlushError (deltas kept), or, once everything else has landed,
        CountOverflowError / KindClashError naming what was not applied."""
        if self._closed:
            return  # the final flush succeeded: nothing can be pending
        with self._flush_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        known = self._settle()
        batch = self._build()
        if batch is not None:
            known += self._send(batch)
        if known:
            raise self._known_error(known)

    def _known_error(self, known: list[StoreError]) -> StoreError:
        """One error for the refusals of one flush, worded the same on every
        store: what was not applied, why, where it is, and that everything
        else was applied."""
        over = [it for e in known if isinstance(e, CountOverflowError) for it in e.items]
        clash = [it for e in known if isinstance(e, KindClashError) for it in e.items]
        over = list(dict.fromkeys(over))
        clash = list(dict.fromkeys(clash))
        parts = []
        if over:
            parts.append(
                f"adding the pending delta would move {_shown(over)} outside the signed "
                "64-bit range: not applied, held (still in value()) and tried again by "
                "every later flush"
            )
        if clash:
            parts.append(
                "; ".join(self._clashed[n][1] for n, _ in clash if n in self._clashed)
                or f"{_shown(clash)}: registered with the other kind"
            )
        message = f"{self.shown}: flush: " + "; ".join(parts)
        message += "; every other delta of this flush was applied"
        if over:
            return CountOverflowError(message, over)
        return KindClashError(message, clash)

    def _build(self) -> Batch | None:
        with self._state:
            counters: dict[str, int] = {}
            for name, c in self._counters.items():
                d = c._take()
                if d:
                    if name in self._clashed:
                        _add_into(self._aside_c, {name: d})
                    else:
                        counters[name] = d
            _add_into(counters, self._held_c)
            self._held_c = {}
            keyed: dict[str, dict[str, int]] = {}
            for name, kc in self._keyed.items():
                # in the cells' order (first use), which SQLite's index takes far
                # better than a hash order (many times faster at a million new keys)
                m = kc._cells._nonzero(True, kc._sent)
                # no key inserted meanwhile: a first use holds _state, a write-through
                # update the flush lock
                kc._sent = len(kc._cells)
                held = self._held_k.get(name)
                if held:
                    for k, v in held.items():
                        m[k] = m.get(k, 0) + v
                if name in self._clashed:
                    _add_into(self._aside_k.setdefault(name, {}), m)
                elif m:
                    keyed[name] = m
            self._held_k = {}
            names = {
                n: k
                for n, k in self._kinds.items()
                if n not in self._registered and n not in self._clashed
            }
            rates, keyed_rates, specs = _wbrates.drain(self)
            if not (counters or keyed or names or rates or keyed_rates):
                return None
            self._seq += 1
            batch = Batch(self._seq, counters, keyed, names)
            batch.rates, batch.keyed_rates, batch.rate_specs = rates, keyed_rates, specs
            self._inflight = batch
            return batch

    def _send(self, batch: Batch) -> list[StoreError]:
        """Apply ``batch``; the refusals with a known outcome (their deltas
        held or set aside, the rest applied) are returned, any other failure
        raises FlushError (the batch stays in flight)."""
        known: list[StoreError] = []
        for _ in range(4):
            try:
                self._be().apply(self.writer_id, batch)
            except (CountOverflowError, KindClashError) as exc:
                # Known outcome: nothing applied, seq not recorded.  Hold or set
                # aside the offending deltas; send the rest under the same seq.
                with self._state:
                    if isinstance(exc, KindClashError):
                        rest = self._set_aside(batch, exc)
                    else:
                        rest = self._hold(batch, set(exc.items))
                    self._inflight = rest
                known.append(exc)
                if rest is None:
                    return known
                batch = rest
                continue
            except Exception as exc:
                before = ""
                if known:
                    before = f" (before that: {self._known_error(known)})"
                raise FlushError(
                    f"{self.shown}: flush failed: {type(exc).__name__}: {exc}; "
                    f"{batch.describe()} is kept and retried first by the next flush{before}"
                ) from exc
            with self._state:
                self._committed(batch)
            return known
        raise FlushError(f"{self.shown}: flush kept meeting refusals; {batch.describe()} is kept")

    def _hold(self, batch: Batch, bad: set[tuple[str, str | None]]) -> Batch | None:
        """Move the deltas named in ``bad`` to the held maps (caller holds
        _state); return the rest of the batch (same seq), or None if empty."""
        rest = Batch(batch.seq, names=dict(batch.names))
        _wbrates.hold(self, batch, rest, bad)

        def held(name: str, key: str | None, d: int) -> None:
            if key is None:
                _add_into(self._held_c, {name: d})
            else:
                held = self._held_k.setdefault(name, {})
                held[key] = held.get(key, 0) + d

        rest.counters, rest.keyed = set_apart(bad, batch.counters, batch.keyed, held)
        if not (rest.has_deltas() or rest.names):
            return None
        return rest

    def _set_aside(self, batch: Batch, exc: KindClashError) -> Batch | None:
        """A clash: set the named names' deltas aside for good, mark them
        clashed (caller holds _state); return the rest (same seq) or None."""
        names = {n for n, _ in exc.items}
        for name in names:
            ours = self._kinds.get(name, "keyed" if name in batch.keyed else "counter")
            theirs = "a keyed counter" if ours == "counter" else "a counter"
            aside_c = batch.counters.get(name, 0) + self._held_c.pop(name, 0)
            aside_k = dict(batch.keyed.get(name, {}))
            for k, v in self._held_k.pop(name, {}).items():
                aside_k[k] = aside_k.get(k, 0) + v
            n = (1 if aside_c else 0) + sum(1 for v in aside_k.values() if v)
            ours_what = "counter" if ours == "counter" else "keyed counter"
            message = (
                f"{name!r} is {theirs} in the store (another process used the name first): "
                f"this process's {ours_what} {name!r} cannot be stored; its {n} unflushed "
                "delta(s) are set aside (pending()['set_aside']) and so will be its later "
                "ones, and reading it raises"
            )
            self._clashed[name] = (ours, message)
            if aside_c:
                _add_into(self._aside_c, {name: aside_c})
            if aside_k:
                _add_into(self._aside_k.setdefault(name, {}), aside_k)
        rest = Batch(batch.seq, names={n: k for n, k in batch.names.items() if n not in names})
        rest.counters = {n: d for n, d in batch.counters.items() if n not in names}
        rest.keyed = {n: m for n, m in batch.keyed.items() if n not in names}
        rest.rates, rest.keyed_rates = batch.rates, batch.keyed_rates
        rest.rate_specs = batch.rate_specs
        if not (rest.has_deltas() or rest.names):
            return None
        return rest

    def _committed(self, batch: Batch) -> None:
        """The backend has ``batch`` (caller holds _state)."""
        if self._inflight is batch:
            self._inflight = None
        self._registered.update(batch.names)
        if batch.has_deltas():
            if not self._readers:  # every later read sees it: nothing to keep
                self._known_from = batch.seq + 1
                return
            self._history.append(batch)
            while len(self._history) > HISTORY:
                self._known_from = self._history.popleft().seq + 1

    def _settle(self) -> list[StoreError]:
        """Resolve the in-flight batch (caller holds _flush_lock)."""
        batch = self._inflight
        if batch is None:
            return []
        if batch.take is None:
            return self._send(batch)
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
                _wbrates.hold_all(self, batch)
        return []

    # -- write-through -------------------------------------------------------------

    def _write_through(
        self,
        update: Callable[[SupportsIndex], Any],
        name: str,
        key: str | None,
        n: SupportsIndex,
        sign: int,
    ) -> None:
        """One write-through update: add ``n`` to the cells and flush, under
        the flush lock.  If the flush refuses this update's delta, take it
        back out (it was not applied) and raise."""
        with self._flush_lock:
            update(n)  # the checks (type, int64, closed) raise before anything changed
            try:
                self._flush_locked()
            except (CountOverflowError, KindClashError) as exc:
                item = (name, key)
                if item not in exc.items:
                    return  # this update landed; the refusal was an earlier one's
                self._unhold(item, sign * operator.index(n), isinstance(exc, KindClashError))
                if isinstance(exc, KindClashError):
                    raise KindClashError(
                        f"{self.shown}: {self._clashed[name][1]}; this update was not applied",
                        [item],
                    ) from None
                op = "increment" if sign > 0 else "decrement"
                raise CountOverflowError(
                    f"{self.shown}: {op}({operator.index(n)}) would move {_what(name, key)} "
                    "outside the signed 64-bit range; this update was not applied",
                    [item],
                ) from None

    def _unhold(self, item: tuple[str, str | None], delta: int, clash: bool) -> None:
        name, key = item
        with self._state:
            if key is None:
                _add_into(self._aside_c if clash else self._held_c, {name: -delta})
            else:
                maps = self._aside_k if clash else self._held_k
                m = maps.setdefault(name, {})
                m[key] = m.get(key, 0) - delta
                if not m[key]:
                    del m[key]
                if not m:
                    maps.pop(name, None)

    # -- what the counter objects call --------------------------------------------

    def _cell_value(self, name: str) -> int:
        return self.value_counter(name)

    def _cell_reset(self, name: str) -> int:
        v = self.take(Target("counter", name))
        assert isinstance(v, int)
        return v

    def _cell_reduce(self, name: str) -> tuple[Any, ...]:
        return (_rebuild, (self.url, name, "counter"))

    def _check_clash(self, name: str) -> None:
        clash = self._clashed.get(name)
        if clash is not None:
            raise KindClashError(f"{self.shown}: {clash[1]}", [(name, None)])

    # -- reset (take) --------------------------------------------------------------

    def take(self, target: Target) -> int | dict[str, int]:
        self._check_open()
        self._check_clash(target.name)
        with self._flush_lock:
            self._settle()
            with self._state:
                batch = Batch(self._seq + 1, take=target)
                name = target.name
                keys: list[str] = []  # every key the result lists
                if target.kind == "counter":
                    c = self._counters.get(name)
                    d = (c._take() if c is not None else 0) + self._held_c.pop(name, 0)
                    if d:
                        batch.counters[name] = d
                elif target.kind == "rate":
                    _wbrates.take_pending(self, batch, name)
                else:
                    kc = self._keyed.get(name)
                    held = self._held_k.get(name, {})
                    m: dict[str, int] = {}
                    if target.key is None:
                        if kc is not None:
                            for k, v in kc._cells._drain():
                                keys.append(k)
                                if v:
                                    m[k] = v
                        for k, v in held.items():
                            m[k] = m.get(k, 0) + v
                        keys.extend(held)
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
            for k, v in batch.keyed.get(name, {}).items():
                out[k] = out.get(k, 0) + v
            for k in keys:
                out.setdefault(k, 0)
            return out
        if target.kind == "keyed":
            assert target.key is not None
            return stored + batch.keyed.get(name, {}).get(target.key, 0)
        if target.kind == "rate":
            return stored + sum(batch.rates.get(name, {}).values())
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
        with self._state:
            self._readers += 1  # from here on, commits are kept in the history
        try:
            for _ in range(8):
                r = self._be().read(self.writer_id, query)
                with self._state:
                    if r.seq + 1 >= self._known_from:
                        return local(r)
            with self._flush_lock:  # none of our batches can commit meanwhile
                r = self._be().read(self.writer_id, query)
                with self._state:
                    return local(r)
        finally:
            with self._state:
                self._readers -= 1
                if not self._readers and self._history:  # the last read out
                    self._known_from = self._history[-1].seq + 1
                    self._history.clear()

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
            # the keys not in a batch yet even at 0 (one the backend lists is its to list)
            out = kc._cells._nonzero(False, kc._sent)
        sum_into(out, self._held_k.get(name, {}))
        for b in self._unseen(seq):
            sum_into(out, b.keyed.get(name, {}))
        return out

    def _pending_key(self, name: str, key: str, seq: int) -> int:
        """One key's pending delta: its cell, its held delta and the unseen
        batches' (each a dict lookup: O(1) in the number of keys; caller
        holds _state)."""
        total = 0
        kc = self._keyed.get(name)
        if kc is not None:
            total = kc._cells.value(key)
        held = self._held_k.get(name)
        if held:
            total += held.get(key, 0)
        for b in self._unseen(seq):
            m = b.keyed.get(name)
            if m:
                total += m.get(key, 0)
        return total

    def value_counter(self, name: str) -> int:
        self._check_clash(name)

        def local(r: Read) -> int:
            return r.counters.get(name, 0) + self._pending_counter(name, r.seq)

        v: int = self._read(Query(counters=(name,)), local)
        return v

    def value_key(self, name: str, key: str) -> int:
        self._check_clash(name)

        def local(r: Read) -> int:
            return r.keyed.get(name, {}).get(key, 0) + self._pending_key(name, key, r.seq)

        v: int = self._read(Query(keys=((name, key),)), local)
        return v

    def value_keyed(self, name: str) -> dict[str, int]:
        self._check_clash(name)

        def local(r: Read) -> dict[str, int]:
            # the read's own dict: no copy
            return sum_into(r.keyed.get(name, {}), self._pending_keyed(name, r.seq))

        v: dict[str, int] = self._read(Query(keyed=(name,)), local)
        return v

    def snapshot(self) -> Snapshot:
        """Every stored count plus this process's pending deltas, names sorted."""

        def local(r: Read) -> Snapshot:
            counters = r.counters  # the read's own dicts: no copy
            keyed = r.keyed
            for name, kind in self._kinds.items():
                if name in self._clashed:
                    continue
                if kind == "counter":
                    counters[name] = counters.get(name, 0) + self._pending_counter(name, r.seq)
                else:
                    sum_into(keyed.setdefault(name, {}), self._pending_keyed(name, r.seq))
            for name, d in self._held_c.items():  # held for names not opened here
                if name not in self._kinds:
                    counters[name] = counters.get(name, 0) + d
            return {
                "counters": dict(sorted(counters.items())),
                "keyed": dict(sorted(keyed.items())),
            }

        snap: Snapshot = self._read(Query(counters=None, keyed=None), local)
        _wbrates.snapshot(self, snap)
        return snap

    def pending(self) -> dict[str, Any]:
        """This process's deltas not yet acknowledged by the backend, and the
        deltas set aside by a kind clash (tests, tools)."""
        with self._state:
            return {
                "writer_id": self.writer_id,
                "seq": self._seq,
                "in_flight": self._inflight.describe() if self._inflight else None,
                "held": self._held_report(),
                "set_aside": {
                    "counters": dict(self._aside_c),
                    "keyed": {n: dict(m) for n, m in self._aside_k.items()},
                },
            }

    def _held_report(self) -> dict[str, Any]:
        held: dict[str, Any] = {"counters": dict(self._held_c), "keyed": dict(self._held_k)}
        if self._held_r:  # rates' sections only when a rate holds something
            held["rates"] = {n: dict(m) for n, m in self._held_r.items()}
        if self._held_kr:
            held["keyed_rates"] = {
                n: {k: dict(b) for k, b in m.items()} for n, m in self._held_kr.items()
            }
        return held

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
            self._flush_locked()
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
        """Close every counter, flush, stop.  If the final flush fails, raise;
        the deltas stay queued (retried in the background, by a later
        ``close()`` or ``flush()``, and at exit)."""
        if self._closed:
            return
        for lim in list(self._limiters.values()):
            lim.close()  # gives unused leases back while the backend is there
        with self._state:
            self._closing = True
            for c in self._counters.values():
                c._close()
            for kc in self._keyed.values():
                kc._closed = True
                kc._close_gate()  # waits for the updates that got through
            for r in self._rates.values():
                r._close()
        self.flush()  # raises on failure: the flusher keeps retrying
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
            kc._cells._nonzero(True, len(kc._cells))
        for r in self._rates.values():
            r._forked()
        self._held_c = {}
        self._held_k = {}
        self._held_r = {}
        self._held_kr = {}
        self._aside_c = {}
        self._aside_k = {}
        self._inflight = None
        self._history.clear()
        self._known_from = 1
        self._readers = 0
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


# ---- the store --------------------------------------------------------------------

_engines: dict[Hashable, WriteBehind] = {}  # (store class, options) -> the open write-behind
_engines_lock = threading.RLock()


class WriteBehindStore(Store):
    """The base of the write-behind scopes (``sqlite://``, ``redis://``): a
    handle on the one :class:`WriteBehind` of its URL in this process.

    A scope declares ``PARAMS`` (its URL parameters, ``_params.FLUSH`` among
    them) and implements ``backend_options`` and ``connect`` (see the module
    docstring, "A new durable scope")."""

    PARAMS: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, url: StoreURL, wb: WriteBehind, options: Hashable, owned: bool) -> None:
        super().__init__(url)
        self._wb = wb
        self._options = options
        self._owned = owned

    # -- what a scope implements -----------------------------------------------------

    @classmethod
    def params(cls) -> tuple[Param, ...]:
        """The URL parameters (a scope may compute them on first use)."""
        return cls.PARAMS

    @classmethod
    def backend_options(cls, url: StoreURL, values: dict[str, Any]) -> Hashable:
        """What the URL says about the backing store (``values``: the typed
        parameters): equal options are the same store."""
        raise NotImplementedError

    @classmethod
    def connect(cls, url: StoreURL, options: Any, create: bool, first: bool) -> Backend:
        """A new backend connection; ``first``: the store is being opened."""
        raise NotImplementedError

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open_url(cls, url: StoreURL, *, create: bool = True) -> WriteBehindStore:
        return cls._attach(url, create=create, owned=True)

    @classmethod
    def _attach(cls, url: StoreURL, *, create: bool, owned: bool) -> WriteBehindStore:
        values = parse(url, cls.params())
        interval = float(values["flush"])
        options = cls.backend_options(url, values)
        key = (cls, options, interval)
        with _engines_lock:
            wb = _engines.get(key)
            if wb is None or wb.closing:
                backend = cls.connect(url, options, create, True)

                def reconnect() -> Backend:
                    return cls.connect(url, options, create, False)

                wb = WriteBehind(backend, reconnect, interval=interval, url=url.raw)
                _engines[key] = wb
            if owned:
                wb.handles += 1
        return cls(url, wb, options, owned)

    # -- the Store interface -----------------------------------------------------------

    @property
    def writer_id(self) -> str:
        return str(self._wb.writer_id)

    def counter(self, name: str) -> Any:
        """The counter called ``name`` (write-behind; see the scope's docs)."""
        self._check_open()
        return self._wb.counter(counter_name(name))

    def keyed(self, name: str) -> BufferedKeyedCounter:
        """The keyed counter called ``name`` (str keys)."""
        self._check_open()
        return self._wb.keyed(counter_name(name))

    def rate(self, name: str, window: float = 60.0, resolution: float = 1.0) -> Any:
        """The rate called ``name``: every writer's events in the last
        ``window`` seconds, in wall-clock buckets of ``resolution`` (fixed by
        its first use in the store; see ``tallies.stores._wbrates``)."""
        self._check_open()
        return self._wb.rate(counter_name(name), "rate", window, resolution)

    def keyed_rate(self, name: str, window: float = 60.0, resolution: float = 1.0) -> Any:
        """The keyed rate called ``name`` (str keys)."""
        self._check_open()
        return self._wb.rate(counter_name(name), "keyed_rate", window, resolution)

    def limiter(self, name: str, limit: int, per: float, *, resolution: float | None = None) -> Any:
        """The limiter called ``name``: at most ``limit`` units in any ``per``
        seconds across every writer of the store, decided locally from
        leases (see ``tallies.stores._limiter``)."""
        self._check_open()
        return self._wb.limiter(name, limit, per, resolution)

    def _fixed_windows(self, name: str) -> Any:
        from ._limiter import BackendWindows

        self._check_open()
        return BackendWindows(self._wb._be, counter_name(name), self._wb.shown)

    def names(self) -> list[str]:
        """Every name in the store and this process's own, sorted."""
        self._check_open()
        return self._wb.names()

    def snapshot(self) -> Snapshot:
        """Every stored count plus this process's pending deltas."""
        self._check_open()
        return self._wb.snapshot()

    def flush(self) -> None:
        """Send every pending delta now (FlushError if that fails: the deltas
        are kept and retried, exactly once).  After ``close()``: delivers what
        a failed final flush left, else does nothing."""
        if self._closed and self._wb.closed:
            return
        self._wb.flush()

    def pending(self) -> dict[str, Any]:
        """This process's unacknowledged state (writer id, seq, in-flight
        batch, held and set-aside deltas)."""
        return self._wb.pending()

    def close(self) -> None:
        """Flush and close.  The last handle's close() closes the counters
        (their updates raise ValueError).  If the final flush fails it raises
        FlushError; the deltas stay queued (retried in the background, by
        ``close()`` or ``flush()`` called again, and at exit)."""
        if self._closed:
            if self._owned and self._wb.closing and not self._wb.closed:
                self._close_engine()
            return
        self._closed = True
        last = False
        if self._owned:
            with _engines_lock:
                self._wb.handles -= 1
                last = self._wb.handles == 0
        if last:
            self._close_engine()
        else:
            self._wb.flush()

    def _close_engine(self) -> None:
        wb = self._wb
        wb.close()
        with _engines_lock:
            for key, other in list(_engines.items()):
                if other is wb:
                    del _engines[key]

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self._url.shown!r} {state}>"


# ---- process-wide hooks ----------------------------------------------------------

_live: dict[int, WriteBehind] = {}  # open stores: strong refs (pending deltas live here)
_live_lock = threading.Lock()
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
    global _live_lock, _fork_lock, _engines_lock
    _live_lock = threading.Lock()
    _fork_lock = threading.Lock()
    _engines_lock = threading.RLock()
    _held_for_fork.clear()
    for wb in list(_live.values()):
        wb._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


def _retry_now(exc: BaseException) -> bool:
    """Whether a failed flush says that the very next attempt reconnects
    (a file removed or replaced while open)."""
    cause = exc.__cause__
    return bool(getattr(cause, "retry_now", False) or getattr(exc, "retry_now", False))


def final_flush(wb: WriteBehind) -> None:
    """The last flush of ``wb`` before the process ends (at exit, and on
    SIGTERM/SIGINT: ``_signals`` calls it): ``flush()``, and once more at once
    when the failure says that the next attempt reconnects."""
    try:
        wb.flush()
    except Exception as exc:
        if not _retry_now(exc):
            raise
        wb.flush()


_signals.stores_from(_live, final_flush)  # the signal flush reads them (_signals.py)


def flush_all() -> None:
    """Flush every open write-behind store (at exit); log failures."""
    with _live_lock:
        stores = list(_live.values())
    for wb in stores:
        try:
            final_flush(wb)
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
