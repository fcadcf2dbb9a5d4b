"""Rates in an ``shm://`` segment: every process on the machine counts into one rate.

Design (the ring is the in-process one of ``_c/_ring.h``, one per writer slab)
=============================================================================

Buckets are aligned on the system-wide monotonic clock, which every process on
a Linux machine shares: the bucket of an instant is ``ns // res_ns``
(``CLOCK_MONOTONIC_COARSE`` when the resolution is at least 10x its
granularity, as in-process, else ``CLOCK_MONOTONIC``).

Each rate owns ``nb + 2`` ring units (16 bytes each) in *every* writer slab's
rate region (``Layout.ring_off``)::

    +0  seq     odd while this slab's owner rewrites a mark
    +8  total   this slab's events (the owner's lock-free atomic adds)
    +16 latest  the newest bucket + 1 (0: none yet)
    +24 base    the total at the last reset() (written by reset, under the lock)
    +32 marks   nb x (bucket + 1, total before the bucket's first event)

Only the process that owns a slab writes its ring (seq, total, latest, marks),
so an increment is one atomic add to its own total, plus, once per bucket, a
mark (under the process's segment thread lock).  A reader sums every slab:
``total - base`` for ``total()``, and for a window the slab's events since the
earliest marked bucket in the window (or since the reset, whichever is later:
a mark of a bucket after the reset's bucket is later, any other is earlier).
That is exact per bucket, lock-free, and needs no fold: a dead process's ring
stays where it is, its events keep counting until they leave the window (and
in ``total()`` for good), and the next process that claims the slab simply
continues the ring.

Readers never wait for a writer.  ``seq`` is odd while the owner rewrites a
mark: it stores the mark's total, then its bucket, then ``latest``.  A reader
loads ``seq`` *before* it reads the clock, so a mark being written (for a
bucket S the writer took from the same clock, earlier) is at most the reader's
current bucket; the ring slot it overwrites held bucket S - nb or older, which
is below every window the reader can ask for (at most ``nb`` buckets ending at
the current one).  The reader then reads ``latest``, the marks of its window,
and the total last: if ``latest`` is not yet S, the mark is not looked at; if
it is, the mark was complete before ``latest`` moved.  It then checks that
``seq`` has not moved (a new mark started or finished meanwhile: read again,
with a fresh clock).  So a writer stopped in the middle of a mark (SIGSTOP, a
debugger, a frozen container) or killed there changes nothing for readers:
their counts are exact per bucket (the stopped writer has not counted anything
in its new bucket yet).  The slab's next owner finishes the odd ``seq`` of a
dead one before its first mark.

``reset()`` runs under the segment lock inside the header's sequence bracket
(like counter resets): it records the current bucket and, per slab, moves
``base`` to ``total`` (one atomic read each), returning the sum it moved.  Each
increment lands in exactly one reset() result or in a later total().

Capacity: ``?buckets=N`` (default 4096) ring units per slab, fixed at creation;
a rate takes ``nb + 2``, each key of a keyed rate too (keys are never removed,
like keyed counters' keys).  Names of rates count against ``?names=`` and keys
of keyed rates against ``?keys=``.  This is Python over the segment's atomic
primitives: an increment costs about a microsecond, not the in-process ~20 ns.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, SupportsIndex

from .._common import (
    COARSE_GRANULARITY_NS,
    MAX_BUCKETS,
    _RateSettings,
    _Spec,
    most_common,
    to_int64,
)
from .base import CorruptSegmentError, check_key

if TYPE_CHECKING:
    from ._shm_segment import _Segment

__all__ = ["ShmKeyedRate", "ShmRate"]


class _Ring:
    """One ring (a rate, or one key of a keyed rate) in every slab."""

    __slots__ = ("_boundary", "_clk", "_now", "cell", "nb", "res_ns", "seg", "unit", "window_ns")

    def __init__(self, seg: _Segment, unit: int, nb: int, res_ns: int, window_ns: int) -> None:
        self.seg = seg
        self.unit = unit
        self.nb = nb
        self.res_ns = res_ns
        self.window_ns = window_ns
        coarse = 0 < COARSE_GRANULARITY_NS * 10 <= res_ns
        self._clk: int = (
            getattr(time, "CLOCK_MONOTONIC_COARSE", time.CLOCK_MONOTONIC)
            if coarse
            else time.CLOCK_MONOTONIC
        )
        self._boundary: dict[int, int] = {}  # slab -> first ns after its newest bucket
        # the clock in ns (settable, so that tests can drive it)
        self._now: Callable[[], int] = functools.partial(time.clock_gettime_ns, self._clk)
        self.cell: Any = None  # the C rate whose hot path this ring's is

    @property
    def now(self) -> Callable[[], int]:
        return self._now

    @now.setter
    def now(self, clock: Callable[[], int]) -> None:
        self._now = clock
        if self.cell is not None:
            self.cell.clock = clock  # the C increment reads the same clock

    def rotate(self, s: int, off: int, ns: int) -> int:
        """The C increment's slow path: mark a newer bucket; the new boundary."""
        self._rotate(s, off, ns)
        return self._boundary[s]

    def add(self, delta: int, n: int, op: str, what: str) -> None:
        seg, c = self.seg, self.seg.c
        s = c.bound_slab()
        if s < 0:
            seg._bind()
            s = c.bound_slab()
        off = seg.L.ring_off(s, self.unit)
        ns = self.now()
        if ns >= self._boundary.get(s, -1):
            self._rotate(s, off, ns)
        try:
            c.add(off + 8, delta)
        except OverflowError:
            raise OverflowError(
                f"{op}({n}) would move this process's share of {what} outside the signed "
                "64-bit range; nothing was changed"
            ) from None

    def _rotate(self, s: int, off: int, ns: int) -> None:
        from ._shm_segment import _crash_point

        c = self.seg.c
        slot = ns // self.res_ns
        with self.seg.tlock:  # the threads of this process, which owns slab s
            if c.load(off) % 2:
                c.add(off, 1)  # a dead former owner of the slab stopped mid-mark
            latest = c.load(off + 16) - 1
            if slot > latest:
                c.add(off, 1)
                m = off + 32 + (slot % self.nb) * 16
                c.store(m + 8, c.load(off + 8))
                _crash_point("rate-mark")  # tests stop or kill the writer here
                c.store(m, slot + 1)
                c.store(off + 16, slot + 1)
                c.add(off, 1)
                latest = slot
            self._boundary[s] = (latest + 1) * self.res_ns

    def read(self, w_ns: int, reset_slot: int) -> tuple[int, int]:
        """(events in the window, total since the last reset), over every slab.

        Lock-free and never waits for a writer (see the module doc): each
        slab's ``seq`` is loaded before the clock is read."""
        c, L = self.seg.c, self.seg.L
        offs = [L.ring_off(s, self.unit) for s in range(L.slabs_cap)]
        seqs = [c.load(off) for off in offs]
        ns = self.now()
        count = total = 0
        for off, seq in zip(offs, seqs, strict=True):
            while True:
                latest = c.load(off + 16) - 1
                base = c.load(off + 24)
                b = None
                cur = ns // self.res_ns
                j = max(min((ns - w_ns) // self.res_ns + 1, cur), cur - self.nb + 1)
                if latest >= j:
                    b = base
                    for k in range(max(j, latest - self.nb + 1), latest + 1):
                        m = off + 32 + (k % self.nb) * 16
                        if c.load(m) == k + 1:
                            if k > reset_slot:
                                b = c.load(m + 8)
                            break
                t = c.load(off + 8)
                again = c.load(off)
                if again == seq:
                    count += 0 if b is None else t - b
                    total += t - base
                    break
                seq = again  # a mark started or ended meanwhile: read this slab again
                ns = self.now()
        return count, total


def _rebuild_rate(url: str, name: str, keyed: bool, window: float, resolution: float) -> Any:
    """Unpickle a rate: the same rate of the same segment, in this process."""
    from . import open as open_store

    store = open_store(url)
    if keyed:
        return store.keyed_rate(name, window, resolution)
    return store.rate(name, window, resolution)


class Named:
    """What every ``shm://`` counter and rate holds: its segment, its name and
    its store's URL; ``name`` is read-only."""

    __slots__ = ()
    _seg: _Segment
    _name: str
    _url: str

    @property
    def name(self) -> str:
        return self._name


class _RateBase(Named, _RateSettings):
    _idx: int

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by URL and name, like shm:// counters: a worker process (a
        ProcessPoolExecutor, multiprocessing) gets the same shared rate.  The
        window and resolution are the normalised ones, which round-trip exactly."""
        keyed = isinstance(self, ShmKeyedRate)
        return (_rebuild_rate, (self._url, self._name, keyed, self.window, self.resolution))

    def _reset_slot(self) -> int:
        return self._seg.c.load(self._seg.L.rmeta(self._idx) + 32) - 1

    def _w_ns(self, window: object, fname: str) -> tuple[float, int]:
        return self._sp.width(window, fname)

    def _bracketed(self, ring: _Ring, w_ns: int) -> tuple[int, int]:
        """A read that no reset() runs through (the header sequence word)."""
        from ._shm_segment import SEQ

        seg = self._seg
        for _ in range(100):
            seq = seg.c.load(SEQ)
            if seq % 2 == 0:
                got = ring.read(w_ns, self._reset_slot())
                if seg.c.load(SEQ) == seq:
                    return got
            time.sleep(0)
        with seg.locked():
            return ring.read(w_ns, self._reset_slot())


class ShmRate(_RateBase):
    """A rate shared by every process that opens the segment (the RateCounter API)."""

    __slots__ = ("_idx", "_name", "_ring", "_seg", "_sp", "_url")

    def __init__(self, seg: _Segment, idx: int, name: str, url: str, sp: _Spec) -> None:
        self._seg, self._idx, self._name, self._url, self._sp = seg, idx, name, url, sp
        unit = check_unit(seg, seg.c.load(seg.L.rmeta(idx) + 24), sp.nb, f"rate {name!r}")
        self._ring = _Ring(seg, unit, sp.nb, sp.res_ns, sp.window_ns)
        if hasattr(self, "_setup"):  # the C type (see the end of this module)
            self._ring.cell = self
            L = seg.L
            self._setup(
                seg.c, L.rates_off, L.rate_slab_bytes, unit * 16, sp.res_ns, self._ring.rotate
            )

    def increment(self, n: SupportsIndex = 1) -> None:
        v = to_int64(n, "increment")
        self._ring.add(v, v, "increment", f"the rate {self._name!r}")

    def decrement(self, n: SupportsIndex = 1) -> None:
        v = to_int64(n, "decrement")
        self._ring.add(-v, v, "decrement", f"the rate {self._name!r}")

    def count(self, window: float | None = None) -> int:
        _, w_ns = self._w_ns(window, "count")
        return self._bracketed(self._ring, w_ns)[0]

    def per_second(self, window: float | None = None) -> float:
        w, w_ns = self._w_ns(window, "per_second")
        return self._bracketed(self._ring, w_ns)[0] / w

    def total(self) -> int:
        return self._bracketed(self._ring, self._sp.window_ns)[1]

    def reset(self) -> int:
        """Take the total of every process and start the window again."""
        seg, L = self._seg, self._seg.L
        with seg.locked():
            seg._begin()
            try:
                slot = self._ring.now() // self._sp.res_ns
                seg.c.store(L.rmeta(self._idx) + 32, slot + 1)
                taken = 0
                for s in range(L.slabs_cap):
                    off = L.ring_off(s, self._ring.unit)
                    t = seg.c.load(off + 8)
                    taken += t - seg.c.exchange(off + 24, t)
                return taken
            finally:
                seg._end()

    def __repr__(self) -> str:
        return f"ShmRate({self._name!r}, {self._sp.repr_args()}, total={self.total()})"


class ShmKeyedRate(_RateBase):
    """A keyed rate shared by every process (str keys; keys are never removed)."""

    __slots__ = ("_idx", "_name", "_rings", "_seg", "_sp", "_url")

    def __init__(self, seg: _Segment, idx: int, name: str, url: str, sp: _Spec) -> None:
        self._seg, self._idx, self._name, self._url, self._sp = seg, idx, name, url, sp
        self._rings: dict[str, _Ring] = {}

    def _ring_at(self, cell: int) -> _Ring:
        L = self._seg.L
        unit = self._seg.key_ring(cell)
        check_unit(self._seg, unit, self._sp.nb, f"key entry {cell - L.names_cap}")
        return _Ring(self._seg, unit, self._sp.nb, self._sp.res_ns, self._sp.window_ns)

    def _ring(self, key: object, fname: str, create: bool) -> _Ring | None:
        if not isinstance(key, str):
            raise TypeError(f"{fname}() key must be a str, not {type(key).__name__!r}")
        ring = self._rings.get(key)
        if ring is None:
            key = check_key(key)  # the key rule every store shares
            seg = self._seg
            cell = seg.register_key(self._idx, key) if create else seg.find_key(self._idx, key)
            if cell is None:
                return None
            ring = self._rings[key] = self._ring_at(cell)
        return ring

    def increment(self, key: str, n: SupportsIndex = 1) -> None:
        v = to_int64(n, "increment")
        ring = self._ring(key, "increment", True)
        assert ring is not None
        ring.add(v, v, "increment", f"the key {key!r}")

    def decrement(self, key: str, n: SupportsIndex = 1) -> None:
        v = to_int64(n, "decrement")
        ring = self._ring(key, "decrement", True)
        assert ring is not None
        ring.add(-v, v, "decrement", f"the key {key!r}")

    def count(self, key: str, window: float | None = None) -> int:
        _, w_ns = self._w_ns(window, "count")
        ring = self._ring(key, "count", False)
        return 0 if ring is None else self._bracketed(ring, w_ns)[0]

    def per_second(self, key: str, window: float | None = None) -> float:
        w, w_ns = self._w_ns(window, "per_second")
        ring = self._ring(key, "per_second", False)
        return 0.0 if ring is None else self._bracketed(ring, w_ns)[0] / w

    def snapshot(self, window: float | None = None) -> dict[str, int]:
        """Every key with a non-zero count in the window."""
        _, w_ns = self._w_ns(window, "snapshot")
        self._seg.refresh()
        out: dict[str, int] = {}
        for key, cell in list(self._seg.keys.get(self._idx, {}).items()):
            ring = self._rings.get(key)
            if ring is None:
                ring = self._rings[key] = self._ring_at(cell)
            c = self._bracketed(ring, w_ns)[0]
            if c:
                out[key] = c
        return out

    most_common = most_common

    def keys(self) -> list[str]:
        self._seg.refresh()
        return list(self._seg.keys.get(self._idx, {}))

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        return f"ShmKeyedRate({self._name!r}, {self._sp.repr_args()}, keys={len(self)})"


class UnusableRateError(CorruptSegmentError):
    """A rate whose stored ring is too short for its window: created by a
    tallies that did not yet normalise window and resolution (0.1.0 computed the
    bucket count from the floats and the width from rounded nanoseconds).  Only
    that rate is unusable; ``snapshot()`` leaves it out with a warning."""


def spec_from_meta(seg: _Segment, idx: int, kind_name: str, name: str) -> _Spec:
    """The window and resolution a rate was created with (read back from its
    meta entry, checked: a damaged entry is a CorruptSegmentError).

    The ring keeps the bucket count it was created with (``nb``, its
    geometry); any count from ``ceil(window_ns / res_ns)`` up covers the window
    exactly.  A shorter one (written by the old float rule) cannot: that rate
    raises :class:`UnusableRateError`, naming it."""
    c, m = seg.c, seg.L.rmeta(idx)
    nb, res_ns, window_ns = c.load(m), c.load(m + 8), c.load(m + 16)
    try:
        sp = _Spec.from_ns(kind_name, window_ns, res_ns)
    except ValueError:
        sp = None
    if sp is None or not 1 <= nb <= MAX_BUCKETS:
        raise CorruptSegmentError(f"{seg.path}: the rate meta of name entry {idx} is corrupt")
    if nb < sp.nb:
        raise UnusableRateError(
            f"shm://{seg.name}: the rate {name!r} was created by an older tallies with "
            f"{nb} buckets of {res_ns} ns, too few for its window of {window_ns} ns "
            f"({sp.nb} buckets); it cannot count its window. The rest of the segment "
            "is readable; destroy the segment (tallies.destroy) to use this name again"
        )
    sp.nb = nb
    return sp


def check_unit(seg: _Segment, unit: int, nb: int, where: str) -> int:
    if not 0 <= unit <= seg.L.buckets_cap - nb - 2:
        raise CorruptSegmentError(f"{seg.path}: the ring of {where} is outside the rate region")
    return unit


def _install() -> None:
    """Make ``ShmRate`` the extension's rate type (increment in C), with the
    methods above installed on it; shm:// needs the extension anyway."""
    global ShmRate
    try:
        from .._impl import native  # type: ignore[import-not-found, unused-ignore]
    except ImportError:  # a tallies without the one extension: Python increments
        return
    if native is None or not hasattr(native, "ShmRate"):
        return
    t = native.ShmRate
    for klass in reversed(ShmRate.__mro__[:-1]):
        for attr, value in klass.__dict__.items():
            if attr in ("__slots__", "__dict__", "__weakref__", "__module__", "__doc__"):
                continue
            if attr in ("increment", "decrement") or attr.startswith("__slotnames"):
                continue
            if type(value).__name__ == "member_descriptor":  # a slot of the Python class
                continue
            setattr(t, attr, value)
    ShmRate = t  # type: ignore[misc, assignment]


_install()
