"""Types of ``tallies._tallies``, the one compiled extension of tallies (``_c/``).

Private: ``tallies._impl`` takes every type from here (or from the pure
fallback) and the public modules re-export them.  ``Counter`` and
``ShardedCounter`` are ``tallies.Counter`` and ``tallies.ShardedCounter``;
``KeyedCounter`` is the very class users get as ``tallies.KeyedCounter``
(``tallies.keyed`` installs the collections.Counter API of
``tallies.keyed.api`` on it at import; each key's int64 count is stored inline
in the counter's own hash table); ``RateCounter`` and ``KeyedRateCounter``
are the rates (``_c/_ring.h`` is the design); ``Segment``, ``Cell`` and
``KeyedCells`` are the hot path of ``shm://`` (``tallies/stores/shm.py``);
``BufferedCounter`` is the counter of the write-behind stores
(``tallies/stores/writebehind.py``).
"""

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, SupportsIndex, TypeVar, type_check_only

FREE_THREADED_BUILD: int
"""1 when this extension was compiled for a free-threaded (no-GIL) CPython."""
CPU_SLOTS: int
"""How many striped cells a ShardedCounter allocates when it inflates."""
SHARES_CONTENDED: int
"""1 on free-threaded 3.13: a contended ShardedCounter, or a KeyedCounter that
threads update at once, stops being refcounted (_c/_shared.h, _c/keyed.c)."""
CPYTHON_INTERNALS: str
"""The CPython internals compiled in, comma-separated ("" for none): _c/_internals.h."""
ENTRY_SIZE: int
"""Bytes per entry of a KeyedCounter table whose keys are all str (other keys:
8 more, for the hash); the index adds 1 to 8 bytes per slot, as a dict's does."""
HOT_SLOTS: int
"""Hot cells a contended key inflates into (free-threaded builds; 0 with a GIL)."""
MAX_BUCKETS: int
"""The most buckets one rate ring may have (window / resolution)."""
COARSE_GRANULARITY_NS: int
"""clock_getres(CLOCK_MONOTONIC_COARSE) in ns, or -1 when there is none."""
SLAB_FREE: int
"""The state of a shm:// slab that no process owns."""
LINE: int
"""Bytes a shm:// slab is padded to (two cache lines)."""

# ---- Counter, ShardedCounter (_c/counter.c) ------------------------------------

_A = TypeVar("_A", bound=_Adder)

@type_check_only
class _Adder:
    """The updates Counter, ShardedCounter and BufferedCounter share (a name
    of this stub only, as every ``@type_check_only`` class here: each C type
    defines these methods itself)."""

    def increment(self, n: SupportsIndex = 1) -> None:
        """Add ``n`` (default 1)."""
    def decrement(self, n: SupportsIndex = 1) -> None:
        """Subtract ``n`` (default 1)."""
    def __iadd__(self: _A, n: SupportsIndex) -> _A:
        """``c += n``: an atomic ``increment(n)``."""
    def __isub__(self: _A, n: SupportsIndex) -> _A:
        """``c -= n``: an atomic ``decrement(n)``."""
    def __int__(self) -> int: ...

@type_check_only
class _Striped(_Adder):
    """What ShardedCounter and BufferedCounter, the striped counters, add
    (likewise only a name of this stub)."""

    @property
    def inflated(self) -> bool:
        """True once contention made the counter allocate its striped cells."""

def _shared_remaining() -> int:
    """How many more contended ShardedCounters may become immortal (0 where not 3.13t)."""

class Counter(_Adder):
    """An exact signed 64-bit counter that many threads may update at once.

    Every method is atomic: no update is ever lost, under the GIL or without
    it.  Values stay in [-2**63, 2**63 - 1]: an update that would leave that
    range raises OverflowError and changes nothing.  Amounts may be any object
    with ``__index__``; anything else raises TypeError and changes nothing.
    An update is a release and ``value()`` an acquire: a thread that sees a
    count also sees what the counting threads did before they counted.
    """

    def __init__(self, initial: SupportsIndex = 0) -> None: ...
    def add(self, n: SupportsIndex) -> int:
        """Add ``n`` and return the value it produced (fetch-and-add)."""
    def value(self) -> int:
        """The current value."""
    def reset(self) -> int:
        """Set the value to 0 and return the value it replaced, in one atomic step:
        an increment lands either in the returned value or after the reset."""
    def set(self, v: SupportsIndex) -> None:
        """Set the value to ``v``."""
    def compare_and_set(self, expected: SupportsIndex, new: SupportsIndex) -> bool:
        """Set the value to ``new`` only if it is ``expected``; True if it was set."""
    def wait_until(self, target: SupportsIndex, timeout: float | None = None) -> bool:
        """Block until ``value() >= target``; return False if ``timeout`` seconds
        pass first.  Costs the updating threads nothing while nobody waits."""

class ShardedCounter(_Striped):
    """A contention-adaptive striped counter (the design of Java's LongAdder).

    It starts as one cell.  The first update that finds another thread
    updating at the same instant allocates padded per-CPU cells, and updates
    spread over them from then on.  Under a GIL that never happens, and the
    counter costs what a ``Counter`` costs.

    ``value()`` sums the cells one by one: it is **not a snapshot** while other
    threads update (an update during the sum may or may not be in it); it is
    exact once they stop.  ``reset()`` exchanges every cell with 0, so each
    update is counted in exactly one ``reset()`` result or in a later
    ``value()``.  Each cell is checked against the int64 range on its own.
    """

    def __init__(self, initial: SupportsIndex = 0) -> None: ...
    def value(self) -> int:
        """The sum of the cells (not a snapshot while others update)."""
    def reset(self) -> int:
        """Zero every cell and return the sum of what was taken."""

# ---- KeyedCounter (_c/keyed.c) -------------------------------------------------

def _keyed_shared_remaining() -> int:
    """How many more KeyedCounters may become immortal (0 where not 3.13t)."""

def _keyed_shared_bytes() -> tuple[int, int]:
    """(kept, budget): bytes of the tables of the immortal KeyedCounters, and the
    budget past which no more become immortal ((0, 0) where not 3.13t)."""

def _hot_keys(kc: KeyedCounter, /) -> int:
    """How many keys of kc's table have hot cells (always 0 with a GIL)."""

class Count(int):
    """What kc[key] returns: an int that remembers (counter, key, value read)."""

    @property
    def _tag(self) -> tuple[Any, Any, int]: ...

def _make_count(counter: Any, key: Any, v: int, /) -> Count:
    """A Count of v read from counter's key (internal)."""

class KeyedCounter:
    """Exact int64 counts by key.  Every method is atomic for its key."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any: ...
    def increment(self, key: Hashable, /, n: SupportsIndex = 1) -> None:
        """Add ``n`` (default 1) to key's count, inserting the key at 0 first
        when absent.  Overflow raises OverflowError and changes nothing."""
    def decrement(self, key: Hashable, /, n: SupportsIndex = 1) -> None:
        """Subtract ``n`` (default 1) from key's count."""
    def value(self, key: Hashable, /) -> int:
        """Key's count; 0 when absent (the key is not inserted)."""
    def pop(self, key: Hashable, default: Any = ..., /) -> Any:
        """Remove key and return its final count (KeyError or default when
        absent).  A concurrent increment of key lands in the returned count
        or in a fresh entry, never in neither."""
    def discard(self, key: Hashable, /) -> None:
        """Remove key if present."""
    def clear(self) -> None:
        """Remove every key (key by key)."""
    def _get(self, key: Hashable, default: Any, /) -> Any: ...
    def _setdefault(self, key: Hashable, v: SupportsIndex, /) -> int: ...
    def _set(self, key: Hashable, v: SupportsIndex, /) -> None: ...
    def _reset_key(self, key: Hashable, /) -> int: ...
    def _prune(self, key: Hashable, nonpositive: bool, /) -> bool: ...
    def _keys(self) -> list[Any]: ...
    def _items(self) -> list[tuple[Any, int]]: ...
    def _drain(self) -> list[tuple[Any, int]]: ...
    def _nonzero(self, take: bool, since: int, /) -> dict[Any, int]: ...
    def _values(self) -> list[int]: ...
    def _total(self) -> int: ...
    def _most_common(self, n: int | None, /) -> list[tuple[Any, int]]: ...
    def _count_iter(self, iterable: Any, sign: int, /) -> None: ...
    def _set_many(self, pairs: Any, /) -> None: ...
    def _iter_keys(self) -> Iterator[Any]: ...
    def _iter_items(self) -> Iterator[tuple[Any, int]]: ...
    def _iter_values(self) -> Iterator[int]: ...
    def _dict(self) -> dict[Any, int]: ...
    def _combine(self, other: Any, opcode: int, reflected: bool, /) -> Any:
        """The multiset operator ``opcode`` (tallies.keyed.api._OPCODES) with
        ``other``, or NotImplemented."""
    def _equal(self, other: Any, /) -> Any:
        """``self == other`` computed in C, or NotImplemented."""
    def __sizeof__(self) -> int: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object) -> bool: ...
    def __getitem__(self, key: Hashable) -> int: ...
    def __setitem__(self, key: Hashable, value: SupportsIndex) -> None: ...
    def __delitem__(self, key: Hashable) -> None: ...

# ---- RateCounter, KeyedRateCounter (_c/rate.c) ----------------------------------

@type_check_only
class _Ring:
    """The settings RateCounter and KeyedRateCounter share (a name of this stub
    only: each of the two C types defines them itself)."""

    def __init__(
        self,
        window: float = 60.0,
        resolution: float = 1.0,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None: ...
    @property
    def window(self) -> float:
        """The window in seconds (count()'s default and maximum)."""
    @property
    def resolution(self) -> float:
        """The bucket width in seconds."""
    @property
    def buckets(self) -> int:
        """ceil(window_ns / resolution_ns)."""
    @property
    def clock(self) -> Callable[[], float] | None:
        """The clock callable, or None for the default."""

class RateCounter(_Ring):
    """Events in the last ``window`` seconds, in buckets of ``resolution`` seconds."""

    def increment(self, n: SupportsIndex = 1) -> None:
        """Count ``n`` events now (one clock read and one checked add)."""
    def decrement(self, n: SupportsIndex = 1) -> None:
        """Count ``-n`` events now."""
    def count(self, window: float | None = None) -> int:
        """Events in the current bucket and the buckets fully inside the last
        ``window`` seconds (default and maximum: the configured window)."""
    def per_second(self, window: float | None = None) -> float:
        """``count(window) / window``."""
    def total(self) -> int:
        """Events since creation or the last reset()."""
    def reset(self) -> int:
        """Take the total and empty every bucket; each event is in exactly one
        reset() result or in a later total()."""

class KeyedRateCounter(_Ring):
    """A RateCounter per key; keys whose buckets have all expired are swept."""

    def increment(self, key: Hashable, n: SupportsIndex = 1) -> None:
        """Count ``n`` events of key now."""
    def decrement(self, key: Hashable, n: SupportsIndex = 1) -> None:
        """Count ``-n`` events of key now."""
    def count(self, key: Hashable, window: float | None = None) -> int:
        """key's events in the window."""
    def per_second(self, key: Hashable, window: float | None = None) -> float:
        """``count(key, window) / window``."""
    def snapshot(self, window: float | None = None) -> dict[Any, int]:
        """Every key with a non-zero count in the window."""
    def most_common(
        self, n: SupportsIndex | None = None, window: float | None = None
    ) -> list[tuple[Any, int]]:
        """The ``n`` keys with the most events in the window (all when ``n`` is
        None), highest first; ties keep first-counted order; keys at 0 are left out."""
    def sweep(self) -> int:
        """Drop the keys whose buckets have all expired; how many."""
    def clear(self) -> None:
        """Drop every key."""
    def _keys(self) -> list[Any]: ...
    def __len__(self) -> int: ...

# ---- shm:// (_c/shm.c) -----------------------------------------------------------

class Segment:
    """Atomic access to one mapped tallies segment."""

    ncells: int
    nslabs: int
    size: int
    def __init__(
        self,
        buffer: Any,
        ncells: int,
        slab_bytes: int,
        nslabs: int,
        desc_off: int,
        desc_stride: int,
        archive_off: int,
        slabs_off: int,
        seq_off: int,
        binder: Callable[[], object],
    ) -> None: ...
    def bind(self, slab: int) -> None: ...
    def unbind(self) -> None: ...
    def bound_slab(self) -> int: ...
    def slab_states(self) -> list[int]: ...
    def load(self, off: int) -> int: ...
    def store(self, off: int, v: int) -> None: ...
    def exchange(self, off: int, v: int) -> int: ...
    def add(self, off: int, n: int) -> int: ...
    def cas(self, off: int, expected: int, new: int) -> bool: ...
    def sum(self, cell: int) -> int | None: ...
    def sum_many(self, cells: Sequence[int]) -> list[int] | None: ...
    def take(self, cell: int) -> int: ...
    def nonzero(self, off: int, lo: int, hi: int) -> list[tuple[int, int]]: ...
    def attach_keys(
        self,
        names_cap: int,
        keys_cap: int,
        hash_off: int,
        slots: int,
        entries_off: int,
        heap_off: int,
        heap_cap: int,
        used_off: int,
        heap_used_off: int,
        bitmap_off: int,
        fd: int,
        full_error: type[BaseException],
        corrupt_error: type[BaseException],
        label: str,
        /,
    ) -> None:
        """Set up the key directory (``_c/_shmkeys.h``) and page reservations."""
    def key_find(self, owner: int, key: str, /) -> int | None: ...
    def key_insert(self, owner: int, key: str, ring1: int = 0, /) -> int: ...
    def key_entries(self, lo: int, hi: int, /) -> list[tuple[int, int, int, bytes | None]]: ...
    def reserve(self, off: int, length: int, /) -> None: ...

class Cell:
    """The write side of one shared counter: this process's cell."""

    segment: Segment
    cell: int
    def __init__(self, segment: Segment, cell: int) -> None: ...
    def increment(self, n: SupportsIndex = 1) -> None: ...
    def decrement(self, n: SupportsIndex = 1) -> None: ...
    def __iadd__(self, n: SupportsIndex) -> Cell: ...
    def __isub__(self, n: SupportsIndex) -> Cell: ...

class KeyedCells:
    """The write side of one shared keyed counter."""

    segment: Segment
    @property
    def cells(self) -> Mapping[str, int]:
        """A read-only copy of the cells known so far, built on each access (only
        the C code writes them, each checked against the segment)."""
    def __init__(
        self,
        segment: Segment,
        register: Callable[[str], int],
        find: Callable[[str], int | None] | None = None,
        owner: int = -1,
    ) -> None:
        """With ``owner`` (a keyed counter's name index, on a segment with a key
        directory), new keys are inserted and looked up in C, lock-free, and
        ``register``/``find`` are not called."""
    def lookup(self, key: str, /) -> int | None:
        """key's cell, asking ``find`` when it is not known yet; None when it has none."""
    def increment(self, key: str, n: SupportsIndex = 1) -> None: ...
    def decrement(self, key: str, n: SupportsIndex = 1) -> None: ...

# ---- the write-behind stores' counter (_c/buffered.c) ---------------------------

class BufferedCounter(_Striped):
    """A write-behind counter: this process's pending delta in local cells
    (updates never leave C, never do I/O) plus the owner's stored value."""

    def __new__(cls, owner: Any, name: str, write_through: bool = False) -> BufferedCounter: ...
    def increment(self, n: SupportsIndex = 1) -> None:
        """Add ``n`` (default 1) to this process's pending delta."""
    def value(self) -> int:
        """The stored value plus this process's pending delta."""
    def reset(self) -> int:
        """Zero stored value and pending delta in one transaction; their sum."""
    def _take(self) -> int: ...
    def _pending(self) -> int: ...
    def _close(self) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def closed(self) -> bool: ...

class BufferedKeyedCounter:
    """A write-behind keyed counter's C half (_c/keyed.c): an update of a key
    already in the cells adds to its cell there; every other update (a new
    key, a non-str key, a closed gate) calls the fallbacks that
    ``_open_gate`` was given, with the same arguments.  stores/writebehind.py
    installs the rest of the API on this type."""

    def increment(self, key: str, n: SupportsIndex = 1) -> None:
        """Add ``n`` (default 1) to ``key``'s count."""
    def decrement(self, key: str, n: SupportsIndex = 1) -> None:
        """Subtract ``n`` (default 1) from ``key``'s count."""
    def _open_gate(
        self, cells: Any, increment: Callable[..., None], decrement: Callable[..., None], /
    ) -> None: ...
    def _close_gate(self) -> None: ...

# ---- limiters (_c/limiter.c) and durable rates (_c/wallrate.c) -------------------

LIMTABLE_HEADER: int
"""Bytes before the first entry of shm://'s limiter table (_limtable.h)."""
LIMTABLE_ENTRY: int
"""Bytes of one entry of that table."""
LIMTABLE_SLOTS: int
"""The most slots of one shared window (buckets + 1)."""
LIMTABLE_NAMES: int
"""The most limiter and fixed-window names one table holds."""
LIMTABLE_KEY_MAX: int
"""The longest key of the table, in UTF-8 bytes."""

class Limiter:
    """memory://'s limiter (tallies.stores._limiter installs the rest of its API)."""

    spec: Any
    def __new__(cls, spec: Any, check_key: Callable[[object], str]) -> Limiter: ...
    def hit(self, key: str | None = None, n: int = 1) -> bool: ...
    def _window(self, key: str | None) -> tuple[int, int | None, int]: ...
    def _reset(self, key: str | None) -> int: ...
    def _len(self) -> int: ...

class ShmLimiter:
    """shm://'s limiter or family of fixed windows (see _c/_limtable.h)."""

    spec: Any
    def __new__(
        cls,
        buffer: Any,
        name: int,
        kind: int,
        limit: int,
        res_ns: int,
        buckets: int,
        spec: Any,
        check_key: Callable[[object], str],
        full_error: type[Exception],
    ) -> ShmLimiter: ...
    def hit(self, key: str | None = None, n: int = 1) -> bool: ...
    def _window(self, key: str | None) -> tuple[int, int | None, int]: ...
    def _reset(self, key: str | None) -> int: ...
    def _incr(self, key: str | None, expiry_ms: int, amount: int) -> tuple[int, int]: ...
    def _get(self, key: str | None) -> tuple[int, int]: ...
    @staticmethod
    def _format(buffer: Any, cap: int) -> None: ...
    @staticmethod
    def _check(buffer: Any) -> int: ...
    @staticmethod
    def _register(
        buffer: Any, name: bytes, kind: int, limit: int, per_ns: int, res_ns: int, buckets: int
    ) -> tuple[int, int]: ...
    @staticmethod
    def _spec_at(buffer: Any, index: int) -> tuple[str, int, int, int, int, int]: ...

class LeaseLimiter:
    """A write-behind store's limiter: hit() from a lease in C, else _hit_slow."""

    def hit(self, key: str | None = None, n: int = 1) -> bool: ...
    def _take(self, key: str, n: int) -> bool: ...
    def _swap(self, key: str) -> tuple[int, int, int, int]: ...
    def _set(self, key: str, slot: int, left: int, deadline: int, want: int) -> None: ...
    def _peek(self, key: str) -> tuple[int, int, int]: ...
    def _pop(self, key: str) -> None: ...
    def _entries(self) -> list[tuple[str, int, int, int]]: ...
    @staticmethod
    def _now() -> int: ...

class ShmRate:
    """A shm:// rate: its increment in C on this process's ring of the
    segment (tallies.stores._shm_rates installs the reading methods)."""

    clock: Callable[[], int] | None
    _seg: Any
    _idx: Any
    _name: Any
    _url: Any
    _sp: Any
    _ring: Any
    def increment(self, n: SupportsIndex = 1) -> None: ...
    def decrement(self, n: SupportsIndex = 1) -> None: ...
    def _setup(
        self,
        segment: Any,
        rates_off: int,
        slab_stride: int,
        unit_off: int,
        res_ns: int,
        rotate: Callable[..., int],
        /,
    ) -> None: ...

class BufferedRate:
    """A write-behind store's rate: this process's pending events on a
    wall-clock ring (tallies.stores._wbrates installs the reading methods)."""

    clock: Callable[[], int] | None
    _wb: Any
    _name: str
    _spec: Any
    _sp: Any
    _closed: bool
    def __new__(cls, window_ns: int, res_ns: int) -> BufferedRate: ...
    def increment(self, n: SupportsIndex = 1) -> None: ...
    def decrement(self, n: SupportsIndex = 1) -> None: ...
    def _drain(self) -> dict[int, int]: ...
    def _items(self) -> dict[int, int]: ...
    def _close_with(self, message: str) -> None: ...
    def _restart(self) -> None: ...
