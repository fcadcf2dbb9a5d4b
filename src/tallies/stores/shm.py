"""``shm://NAME``: counters in shared memory, exact across processes, lock-free writes.

Design (read this before the code; the hot path is in ``tallies/_c/shm.c``)
=========================================================================

The segment
-----------
``shm://app`` is one file, ``/dev/shm/tallies.app`` on Linux (the directory
can be moved with ``TALLIES_SHM_DIR``), mapped ``MAP_SHARED`` by every process
that opens the URL.  We open and ``mmap`` it ourselves rather than use
``multiprocessing.shared_memory``: before Python 3.13 every process that
attaches a ``SharedMemory`` registers it with multiprocessing's resource
tracker, which *unlinks* it when that process exits, destroying a segment that
other processes still use.  A plain file has no tracker: it lives until
``tallies.destroy("shm://app")`` (or a reboot), and counts of processes that
have exited stay counted.

A new segment is built under a temporary name (``os.open`` with
``O_CREAT | O_EXCL``, mode 0600, every byte allocated with ``posix_fallocate``
so a full /dev/shm is an error now instead of a SIGBUS later), its header is
written, and only then is it ``link()``-ed to its final name.  So nobody ever
sees a half-written header, and two processes creating at once agree on one
segment (the loser of the ``link`` race opens the winner's).

Layout (all integers int64 in native byte order; sections page-aligned)::

    header      magic "TALLYSHM", byte-order word, layout version, the
                capacities and every section offset (checked on open),
                then mutable words on their own cache lines: names_used,
                keys_used, the fold sequence, the fold journal
    names       names_cap entries of 256 bytes: state, kind (counter or
                keyed), length, UTF-8 name (at most 224 bytes)
    key hash    a power of two >= 2 * keys_cap of uint32 slots: entry + 1
                and a 7-bit hash tag (``_c/_shmkeys.h``)
    keys        keys_cap entries of 32 bytes: state, owning name, length
                (| ring unit + 1 << 32 for keyed rates), heap offset
    slab descs  slabs_cap entries of 64 bytes: state (FREE, LIVE, FOLDING),
                owner pid, owner start time
    archive     ncells int64 cells: counts folded out of dead writers' slabs
    slabs       slabs_cap slabs of ncells int64 cells, each padded to 128 bytes
    rate meta   names_cap entries of 64 bytes: a rate's buckets, resolution and
                window in ns, its ring unit, the bucket of its last reset + 1
    rate rings  slabs_cap regions of buckets_cap 16-byte ring units (layout
                version 2; see ``_shm_rates.py``, which owns this part)
    key heap    keys_cap * 224 bytes: the keys' UTF-8, 8-aligned
    page bitmap one bit per page of the file: allocated (version 3)

The file is sparse (``ftruncate``; version 3): the header, the name
directory, the slab descriptors and the rate meta are allocated when it is
made, everything else page by page before its first write (``Segment.reserve``
in C: ``posix_fallocate``, then the page's bit), so memory grows with the keys
and with the processes that count them, a full file system is a
CapacityError from the call that needed the page, never a SIGBUS, and a
generous ``keys=`` costs nothing until used.

``ncells = names_cap + keys_cap``: name ``i`` owns cell ``i`` in every slab
and in the archive, key entry ``j`` owns cell ``names_cap + j``.  The value of
a cell is the archive's plus every non-FREE slab's (``Segment.sum`` in ``_c/shm.c``).

Directories are append-only.  A key is inserted without the lock, by the C
increment itself: claim an entry (CAS on ``keys_used``) and heap bytes, write
them, then publish with one CAS on an empty hash slot; a racing insert of the
same key finds the winner and abandons its entry.  ``_c/_shmkeys.h`` says why
a writer killed at any step leaves the key absent or complete.  A name (and a
keyed rate's key, whose ring is allocated first) is registered under the
segment lock:
the entry is written, its state set to 1 (a release store), then
``names_used``/``keys_used`` is bumped (another release store).  Readers load
the count (acquire) and read only entries below it, so they never see a
half-written entry; an entry left half-written by a process that died is
above the count and is overwritten by the next registration.  Every process
caches what it has read, so lookups are dict hits after the first; and a
keyed counter's increment of a key this process has used finds its cell in a
C table of str -> cell (``_c/_shmcache.h``: one probe, no int object), then
does the atomic add.

Slabs and their owners
----------------------
A process claims a slab on its first write (``_Segment._bind``, called from C
when the process has none): it reuses a LIVE slab that already records its
own (pid, start time), else it takes a FREE one and writes pid, start time
(field 22 of ``/proc/<pid>/stat``: a reused pid has a different start time),
then state LIVE.  From then on its writers add to their own cells with an
atomic checked add and no lock.  After ``fork()`` the child forgets the slab
(``os.register_at_fork``), so its first write claims its own: counters
inherited from the parent keep working and never touch the parent's slab.
This costs the hot path nothing: the "no slab yet" test is the same NULL
check that makes the first write claim a slab.  (The alternative, comparing
getpid() on every write, is a system call since glibc 2.25 stopped caching
the pid: 132 ns measured here, six times a whole shm:// increment.)

A slab whose owner is dead (no such process, a zombie, or a pid now used by a
process with another start time) is *folded*: its counts move to the archive
and it becomes FREE.  Folds happen when a process claims a slab, when a store
is opened, and on ``ShmStore.fold()``.  All processes sharing a segment must
see the same pids (one pid namespace); a writer in another pid namespace
would be taken for dead.

The lock, and the fold protocol
-------------------------------
Everything except writes and reads happens under the segment lock: an
exclusive ``fcntl.lockf`` on the segment file (the kernel releases it when
the holder dies, so a dead holder never blocks anyone), plus a thread lock
because POSIX record locks are per process.  Whoever takes the lock first runs
recovery, which finishes whatever a dead holder left half done.

A fold (and a reset) first makes the header's sequence word odd, and makes
it even again when done.  A fold marks the slab FOLDING, then moves each
non-zero cell ``v`` with a journal in the header:

    1. journal := (slab, cell, old archive value, v); journal state := 1
    2. archive[cell] := old + v
    3. slab[cell] := 0
    4. journal state := 0

and finally marks the slab FREE.  Recovery, on finding journal state 1, sets
``archive[cell] := old + v`` and ``slab[cell] := 0`` again: absolute stores,
not additions, so redoing them after a death at any step gives the same
result, exactly once (nobody else writes a dead slab, and the archive is
written only under the lock).  Recovery then folds any slab still FOLDING
(cells already moved are 0 and are skipped) and makes the sequence even.
A count is therefore never lost and never counted twice.  A cell whose fold
would overflow the archive's int64 stays in its slab, which stays FOLDING and
keeps being summed; nothing is lost, the slab is only not reused.

What a read guarantees
----------------------
``value()`` sums with acquire loads between two loads of the sequence and
retries if it changed; if a fold or reset is running (or died), it takes the
lock, which runs recovery, and sums there.  So folds and resets are never seen
half done.  Increments that happen during a read may or may not be in it (it
is not a snapshot of concurrent writes); once writers are quiescent, reads are
exact.  ``reset()`` exchanges every cell of the counter with 0 under the lock:
each increment lands either in what reset() returns or in a later value.

Limits: capacities are fixed at creation (``?names=&keys=&slabs=&buckets=``) and
running out raises :class:`CapacityError` before anything is written; keys
and names are never removed (``reset`` zeroes them).  A file is validated on
open (size, magic, byte order, version, capacities, offsets); a file that
another process truncates *after* we mapped it would still fault, as any
shared mapping would.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any, ClassVar, SupportsIndex

from .._impl import native as _shm  # the extension, even under TALLIES_PURE=1
from ._keyed import StoreKeyedMixin
from ._shm_rates import Named, UnusableRateError
from ._shm_segment import (  # the segment itself (and names tests and _shm_rates use)
    DEFAULT_KEYS,
    DEFAULT_NAMES,
    DEFAULT_SLABS,
    KIND_COUNTER,
    KIND_KEYED,
    KIND_KEYED_RATE,
    KIND_NAMES,
    KIND_RATE,
    LIMITS,
    _open_segment,
    _parse_caps,
    _Segment,
    check_segment_name,
    segment_dir,
    segment_path,
)
from .base import (
    Snapshot,
    Store,
    StoreURL,
    check_key,
    counter_name,
    rate_mismatch,
)

log = logging.getLogger("tallies.stores")

__all__ = [
    "DEFAULT_KEYS",
    "DEFAULT_NAMES",
    "DEFAULT_SLABS",
    "STORE",
    "ShmCounter",
    "ShmKeyedCounter",
    "ShmStore",
    "segment_dir",
    "segment_path",
]

# ---- the user-facing objects ------------------------------------------------


def _need_c() -> None:
    if _shm is None:
        raise RuntimeError(
            "shm:// needs the tallies C extension (tallies._tallies), which was not "
            "built here; reinstall with a C compiler (TALLIES_REQUIRE_C=1 to see why)"
        )


def _rebuild_counter(url: str, name: str) -> ShmCounter:
    from . import open as open_store

    store = open_store(url)
    assert isinstance(store, ShmStore)
    return store.counter(name)


def _rebuild_keyed(url: str, name: str) -> ShmKeyedCounter:
    from . import open as open_store

    store = open_store(url)
    assert isinstance(store, ShmStore)
    return store.keyed(name)


if _shm is not None:
    _CellBase: Any = _shm.Cell
    _KeyedBase: Any = _shm.KeyedCells
else:  # pragma: no cover - without the C extension nothing below is reachable
    _CellBase = _KeyedBase = object


class ShmCounter(Named, _CellBase):  # type: ignore[misc]
    """A counter in shared memory: the in-process ``Counter`` API across processes.

    ``increment``/``decrement`` (and ``+=``/``-=``) are lock-free atomic adds
    to this process's own cell.  ``value()`` sums every process's cell exactly
    (as a Python int); it is not a snapshot of concurrent increments.
    ``reset()`` takes every cell atomically: each increment lands either in
    its result or in a later value.  An update that would move this
    process's own cell outside the int64 range raises OverflowError and
    changes nothing.
    """

    __slots__ = ("_name", "_seg", "_url")

    def value(self) -> int:
        """The sum over every process (exact; not a snapshot of concurrent writes)."""
        return self._seg.sum(self.cell)

    def reset(self) -> int:
        """Set to 0 and return what was taken, every process's cell atomically."""
        return self._seg.take([self.cell])[0]

    def set(self, v: SupportsIndex) -> None:
        """Make the value ``v``: reset() then add v, under the segment lock.
        Increments by other processes during the call land before or after."""
        from .._common import to_int64

        self._seg.put(self.cell, to_int64(v, "set"))

    def __int__(self) -> int:
        return self.value()

    def __repr__(self) -> str:
        return f"ShmCounter({self._name!r}, {self.value()})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_counter, (self._url, self._name))


class ShmKeyedCounter(Named, StoreKeyedMixin, _KeyedBase):  # type: ignore[misc]
    """A keyed counter in shared memory (str keys); the keyed API every store
    shares (``_keyed.StoreKeyedMixin``: ``kc[key] += n``, ``get``, ``update``,
    ``most_common`` ...).

    ``increment(key, n=1)``/``decrement(key, n=1)`` are lock-free, a key's
    first update included (it inserts the key into the segment's key
    directory in C; only a process's first write takes the segment lock, to
    claim its slab).  A key is never removed: ``reset(key)`` zeroes it.  Keys
    follow the rule every store shares (``base.check_key``, checked in C with
    the same words), and hold at most 224 bytes of UTF-8 here.
    """

    __slots__ = ("_idx", "_name", "_seg", "_url")

    _idx: int

    def _cell(self, key: object, fname: str) -> int | None:
        if not isinstance(key, str):
            raise TypeError(f"{fname}() key must be a str, not {type(key).__name__!r}")
        check_key(key)
        cell: int | None = self.lookup(key)  # C: the cache is not writable from Python
        return cell

    def value(self, key: str) -> int:
        """The count of ``key`` summed over every process (0 if never counted)."""
        cell = self._cell(key, "value")
        return 0 if cell is None else self._seg.sum(cell)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._all()

    def _all(self) -> dict[str, int]:
        self._seg.refresh()
        return dict(self._seg.keys.get(self._idx, {}))

    def keys(self) -> list[str]:
        """Every key counted so far (in any process), in first-use order."""
        return list(self._all())

    def items(self) -> list[tuple[str, int]]:
        return list(self.snapshot().items())

    def snapshot(self) -> collections.Counter[str]:
        """Every key's count (keys at 0 included), read together."""
        cells = self._all()
        vals = self._seg.sum_many(list(cells.values()))
        return collections.Counter(dict(zip(cells, vals, strict=True)))

    def reset(self, key: str | None = None) -> Any:
        """``reset(key) -> int``: zero one key, return what it held.
        ``reset() -> collections.Counter``: zero every key, return what each held."""
        if key is not None:
            cell = self._cell(key, "reset")
            return 0 if cell is None else self._seg.take([cell])[0]
        cells = self._all()
        return collections.Counter(
            dict(zip(cells, self._seg.take(list(cells.values())), strict=True))
        )

    def __len__(self) -> int:
        return len(self._all())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"ShmKeyedCounter({self._name!r}, {dict(self.snapshot())!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_keyed, (self._url, self._name))


class ShmStore(Store):
    """Counters in a shared-memory segment: see the module docstring."""

    scheme: ClassVar[str] = "shm"
    PARAMS: ClassVar[frozenset[str]] = frozenset(LIMITS) | {"limiter_keys"}
    LIMITER_RESOLUTION_NS = 1_000

    def __init__(self, url: StoreURL, seg: _Segment) -> None:
        super().__init__(url)
        self._seg = seg
        self._objects: dict[str, Any] = {}
        self._rates: dict[str, Any] = {}  # ShmRate / ShmKeyedRate by name
        self._limiters: dict[str, Any] = {}  # ShmLimiter by name
        self._lock = threading.Lock()

    @classmethod
    def open_url(cls, url: StoreURL, *, create: bool = True) -> ShmStore:
        url.reject_unknown(cls.PARAMS)
        name = check_segment_name(url.target)
        caps = _parse_caps(url)
        _need_c()
        return cls(url, _open_segment(name, caps, create))

    @classmethod
    def destroy_url(cls, url: StoreURL) -> bool:
        from . import _shm_limits

        path = segment_path(url.target)
        _shm_limits.destroy(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

    @property
    def path(self) -> str:
        """The segment file."""
        return self._seg.path

    def _limiter_keys(self) -> int:
        from ._shm_limits import DEFAULT_KEYS, KEYS_RANGE

        raw = self._url.params.get("limiter_keys")
        if raw is None:
            return DEFAULT_KEYS
        lo, hi = KEYS_RANGE
        if not raw.isdigit() or not lo <= int(raw) <= hi:
            raise ValueError(f"{self._url.shown!r}: limiter_keys={raw!r} is outside {lo}..{hi}")
        return int(raw)

    def limiter(self, name: str, limit: int, per: float, *, resolution: float | None = None) -> Any:
        """The limiter called ``name``, shared by every process of the machine:
        one entry per key in the segment's limiter table, decided under that
        entry's lock (see ``tallies.stores._limiter`` and ``_shm_limits``)."""
        from . import _shm_limits
        from ._limiter import limit_spec

        self._check_open()
        spec = limit_spec(name, limit, per, resolution, self.LIMITER_RESOLUTION_NS, "shm://")
        with self._lock:
            lim = self._limiters.get(spec.name)
            if lim is None:
                lim = _shm_limits.limiter(self._seg.path, self._limiter_keys(), spec)
                self._limiters[spec.name] = lim
        if lim.spec != spec:
            raise ValueError(f"{spec.name!r} is {lim!r} in this store, not as asked")
        return lim

    def _fixed_windows(self, name: str) -> Any:
        from . import _shm_limits

        self._check_open()
        return _shm_limits.fixed_windows(self._seg.path, self._limiter_keys(), counter_name(name))

    def _get(self, name: str, kind: int) -> Any:
        self._check_open()
        obj = self._objects.get(name)
        if obj is not None and isinstance(obj, ShmCounter) == (kind == KIND_COUNTER):
            return obj
        counter_name(name)
        with self._lock:
            obj = self._objects.get(name)
            if obj is None:
                idx = self._seg.register_name(name, kind)
                if kind == KIND_COUNTER:
                    obj = ShmCounter(self._seg.c, idx)
                else:
                    seg, owner = self._seg, idx

                    def register(key: object) -> int:  # (unused: owner= inserts in C)
                        return seg.register_key(owner, check_key(key))

                    # New keys are inserted by the C increment itself, lock-free.
                    obj = ShmKeyedCounter(self._seg.c, register, owner=owner)
                    obj._idx = idx
                obj._seg = self._seg
                obj._name = name
                obj._url = self._url.raw
                self._objects[name] = obj
            elif isinstance(obj, ShmCounter) != (kind == KIND_COUNTER):
                what = "a counter" if isinstance(obj, ShmCounter) else "a keyed counter"
                raise ValueError(f"{name!r} is {what} in {self._url.shown}")
        return obj

    def counter(self, name: str) -> ShmCounter:
        """The shared counter called ``name`` (registered on first use)."""
        obj: ShmCounter = self._get(name, KIND_COUNTER)
        return obj

    def keyed(self, name: str) -> ShmKeyedCounter:
        """The shared keyed counter called ``name`` (registered on first use)."""
        obj: ShmKeyedCounter = self._get(name, KIND_KEYED)
        return obj

    def rate(self, name: str, window: float = 60.0, resolution: float = 1.0) -> Any:
        """The shared rate called ``name`` (see ``tallies/stores/_shm_rates.py``);
        window and resolution are fixed by its first use, in any process."""
        return self._get_rate(name, KIND_RATE, window, resolution)

    def keyed_rate(self, name: str, window: float = 60.0, resolution: float = 1.0) -> Any:
        """The shared keyed rate called ``name`` (str keys, never removed)."""
        return self._get_rate(name, KIND_KEYED_RATE, window, resolution)

    def _get_rate(self, name: str, kind: int, window: float, resolution: float) -> Any:
        from .._common import _Spec
        from ._shm_rates import ShmRate

        self._check_open()
        what = "RateCounter" if kind == KIND_RATE else "KeyedRateCounter"
        sp = _Spec(what, window, resolution, None)
        counter_name(name)
        with self._lock:
            obj = self._rates.get(name)
            if obj is None:
                seg = self._seg
                idx = seg.register_name(name, kind, (sp.nb, sp.res_ns, sp.window_ns))
                obj = self._rates[name] = self._rate_at(idx, name, kind)
        if isinstance(obj, ShmRate) != (kind == KIND_RATE):
            raise ValueError(
                f"{name!r} is {KIND_NAMES[KIND_KEYED_RATE if kind == KIND_RATE else KIND_RATE]}"
                f" in shm://{self._seg.name}"
            )
        if (obj._sp.window_ns, obj._sp.res_ns) != (sp.window_ns, sp.res_ns):
            raise rate_mismatch(name, obj, sp, self._url.shown)
        return obj

    def names(self) -> list[str]:
        """Every name, sorted."""
        self._check_open()
        self._seg.refresh()
        return sorted(name for name, _ in self._seg.names)

    def snapshot(self) -> Snapshot:
        """Every count; one stable read of the whole segment (folds and resets
        are never seen half done; concurrent increments may or may not be in)."""
        self._check_open()
        seg = self._seg
        seg.refresh()
        names = list(seg.names)
        keys = {
            idx: dict(seg.keys.get(idx, {}))
            for idx, (_, kind) in enumerate(names)
            if kind == KIND_KEYED
        }
        cells: list[int] = []
        for idx, (_, kind) in enumerate(names):
            if kind == KIND_COUNTER:
                cells.append(idx)
            elif kind == KIND_KEYED:
                cells.extend(keys[idx].values())
        vals = iter(seg.sum_many(cells))
        out: Snapshot = {"counters": {}, "keyed": {}}
        order = sorted(range(len(names)), key=lambda i: names[i][0])
        got: dict[int, Any] = {}
        rates: dict[str, Any] = {}
        for idx, (_, kind) in enumerate(names):
            if kind == KIND_COUNTER:
                got[idx] = next(vals)
            elif kind == KIND_KEYED:
                got[idx] = {key: next(vals) for key in keys[idx]}
        for idx in order:  # sorted by name
            name, kind = names[idx]
            if kind == KIND_COUNTER:
                out["counters"][name] = got[idx]
            elif kind == KIND_KEYED:
                out["keyed"][name] = got[idx]
            else:
                try:
                    rates[name] = self._rate_at(idx, name, kind)
                except UnusableRateError as exc:  # only that rate: see spec_from_meta
                    log.warning("tallies: %s (left out of the snapshot)", exc)
        if rates:
            from ._rates import snapshot_rates

            snapshot_rates(out, rates)
        return out

    def _rate_at(self, idx: int, name: str, kind: int) -> Any:
        """The rate object for entry idx, with the window it was created with."""
        from ._shm_rates import ShmKeyedRate, ShmRate, spec_from_meta

        obj = self._rates.get(name)
        if obj is None:
            what = "RateCounter" if kind == KIND_RATE else "KeyedRateCounter"
            sp = spec_from_meta(self._seg, idx, what, name)
            cls = ShmRate if kind == KIND_RATE else ShmKeyedRate
            obj = cls(self._seg, idx, name, self._url.raw, sp)
        return obj

    def fold(self) -> int:
        """Fold the slabs of dead processes into the archive now; how many."""
        self._check_open()
        with self._seg.locked():
            return self._seg.reap()

    def info(self) -> dict[str, Any]:
        """Capacities, usage and the writer slabs in use (for tests and tools)."""
        self._check_open()
        seg = self._seg
        n_names, n_keys = seg._used()
        return {
            "path": seg.path,
            "bytes": seg.L.total,
            "names": n_names,
            "names_cap": seg.L.names_cap,
            "keys": n_keys,
            "keys_cap": seg.L.keys_cap,
            "slabs_cap": seg.L.slabs_cap,
            "slabs": seg.slabs(),
        }

    def _release(self) -> None:
        self._objects.clear()
        self._rates.clear()


STORE = ShmStore
