"""The ``shm://`` segment: its file, layout, slabs, folds and recovery.

Everything platform-specific about ``shm://`` is here: where segment files
live (/dev/shm, else the temp dir), fcntl record locks, the process identity
read from /proc (elsewhere a pid check only), posix_fallocate where it exists.
Without fcntl (Windows) importing it raises ImportError saying so.

Read the design comment at the top of ``tallies/stores/shm.py`` first: it
describes what this module implements.  ``shm.py`` holds the scheme's
user-facing objects (the store and its counters); this module owns the
segment file (layout, validation, naming, process identity, the fold
journal and crash recovery) and is used by ``shm.py`` and ``_shm_rates.py``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import mmap
import os
import secrets
import signal
import stat
import struct
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

try:  # the one POSIX-only import of shm:// (mmap of a shared file is everywhere)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    raise ImportError(
        "shm:// needs a POSIX system (fcntl record locks on a memory-mapped file); "
        "on Windows use memory://, sqlite:// or redis://"
    ) from None

from .._common import INT64_MAX, INT64_MIN
from .._impl import native as _shm  # the extension (None without a compiler)
from .base import (
    CapacityError,
    CorruptSegmentError,
    StoreNotFoundError,
    StoreUnavailableError,
    StoreURL,
    check_name,
)

# ---- layout ------------------------------------------------------------------

MAGIC = b"TALLYSHM"
BYTE_ORDER_WORD = 0x0102030405060708
# 3: a hashed key directory with a key heap, inserted into lock-free (_c/_shmkeys.h),
#    a sparse file with a page bitmap; 2: rates (rate meta, rings, ?buckets=); 1: none
VERSION = 3
PAGE = 4096
LINE = 128
HEADER_BYTES = PAGE
NAME_ENTRY = 256
KEY_ENTRY = 32  # state, owner, length | (ring unit + 1) << 32, heap offset
TEXT_OFF = 32  # name entry: state, kind, length, reserved, then the bytes
NAME_MAX = NAME_ENTRY - TEXT_OFF  # 224 bytes of UTF-8
KEY_MAX = 224  # bytes of UTF-8, in the key heap
KEY_WRITING, KEY_WRITTEN, KEY_PUBLISHED, KEY_ABANDONED = 0, 1, 2, 3
DESC_STRIDE = 64

DEFAULT_NAMES = 1024
DEFAULT_KEYS = 1 << 20  # a sparse file: untouched key capacity costs no memory
DEFAULT_SLABS = 64
DEFAULT_BUCKETS = 4096
LIMITS = {
    "names": (1, 1 << 20),
    "keys": (0, 1 << 24),
    "slabs": (1, 1 << 12),
    "buckets": (0, 1 << 24),
}
RMETA_STRIDE = 64  # per name: a rate's nb, res_ns, window_ns, ring unit, reset slot + 1
RING_UNIT = 16  # bytes: one bucket's (slot + 1, mark) pair; a ring takes nb + 2 units
MAX_TOTAL = 1 << 36  # 64 GiB: refuse anything larger as garbage
SEGMENT_NAME_MAX = 200

# The static header: magic then 26 int64 fields.
_STATIC = struct.Struct("=8s26q")
# Mutable header words (byte offsets), each group on its own cache line.
NAMES_USED = 256
KEYS_USED = 264
BUCKETS_USED = 272  # ring units handed out to rates
HEAP_USED = 280  # bytes of the key heap handed out
SEQ = 384
J_STATE, J_SLAB, J_CELL, J_OLD, J_VAL = 512, 520, 528, 536, 544

KIND_COUNTER, KIND_KEYED, KIND_RATE, KIND_KEYED_RATE = 1, 2, 3, 4
KIND_NAMES = {
    KIND_COUNTER: "a counter",
    KIND_KEYED: "a keyed counter",
    KIND_RATE: "a rate",
    KIND_KEYED_RATE: "a keyed rate",
}
SLAB_FREE, SLAB_LIVE, SLAB_FOLDING = 0, 1, 2


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class Layout:
    """Where everything is, computed from the three capacities."""

    names_cap: int
    keys_cap: int
    slabs_cap: int
    buckets_cap: int = DEFAULT_BUCKETS

    @functools.cached_property
    def ncells(self) -> int:
        return self.names_cap + self.keys_cap

    @functools.cached_property
    def slab_bytes(self) -> int:
        return _round_up(self.ncells * 8, LINE)

    @functools.cached_property
    def names_off(self) -> int:
        return HEADER_BYTES

    @functools.cached_property
    def hash_off(self) -> int:
        return _round_up(self.names_off + self.names_cap * NAME_ENTRY, PAGE)

    @functools.cached_property
    def hash_slots(self) -> int:
        """uint32 slots of the key hash: a power of two, at least twice keys_cap."""
        return max(1, 1 << (2 * self.keys_cap - 1).bit_length()) if self.keys_cap else 1

    @functools.cached_property
    def keys_off(self) -> int:
        return _round_up(self.hash_off + self.hash_slots * 4, PAGE)

    @functools.cached_property
    def desc_off(self) -> int:
        return _round_up(self.keys_off + self.keys_cap * KEY_ENTRY, PAGE)

    @functools.cached_property
    def archive_off(self) -> int:
        return _round_up(self.desc_off + self.slabs_cap * DESC_STRIDE, PAGE)

    @functools.cached_property
    def slabs_off(self) -> int:
        return _round_up(self.archive_off + self.slab_bytes, PAGE)

    @functools.cached_property
    def rmeta_off(self) -> int:
        return _round_up(self.slabs_off + self.slabs_cap * self.slab_bytes, PAGE)

    @functools.cached_property
    def rate_slab_bytes(self) -> int:
        return _round_up(self.buckets_cap * RING_UNIT, LINE)

    @functools.cached_property
    def rates_off(self) -> int:
        return _round_up(self.rmeta_off + self.names_cap * RMETA_STRIDE, PAGE)

    @functools.cached_property
    def heap_off(self) -> int:
        return _round_up(self.rates_off + self.slabs_cap * self.rate_slab_bytes, PAGE)

    @functools.cached_property
    def heap_cap(self) -> int:
        return self.keys_cap * KEY_MAX

    @functools.cached_property
    def bitmap_off(self) -> int:
        return _round_up(self.heap_off + self.heap_cap, PAGE)

    @functools.cached_property
    def total(self) -> int:
        """The file's size: the page bitmap (one bit per page, itself included) last."""
        pages = self.bitmap_off // PAGE
        return self.bitmap_off + _round_up((pages // 64 + 1) * 8, PAGE)

    def preallocated(self) -> list[tuple[int, int]]:
        """The (offset, length) ranges allocated when the file is made: every
        page written before its first user could reserve it.  The rest (key
        hash, entries and heap, archive and slab cells, rate rings) is sparse:
        reserved page by page before its first write (``Segment.reserve``)."""
        return [
            (0, self.hash_off),  # header, names
            (self.desc_off, self.archive_off - self.desc_off),
            (self.rmeta_off, self.rates_off - self.rmeta_off),
            (self.bitmap_off, self.total - self.bitmap_off),
        ]

    def rmeta(self, idx: int) -> int:
        return self.rmeta_off + idx * RMETA_STRIDE

    def ring_off(self, s: int, unit: int) -> int:
        """Where slab s keeps the ring that starts at ring unit ``unit``."""
        return self.rates_off + s * self.rate_slab_bytes + unit * RING_UNIT

    def static_fields(self) -> tuple[int, ...]:
        return (
            BYTE_ORDER_WORD,
            VERSION,
            HEADER_BYTES,
            self.total,
            self.names_cap,
            self.keys_cap,
            self.slabs_cap,
            NAME_ENTRY,
            KEY_ENTRY,
            DESC_STRIDE,
            self.ncells,
            self.slab_bytes,
            self.names_off,
            self.keys_off,
            self.desc_off,
            self.archive_off,
            self.slabs_off,
            self.buckets_cap,
            self.rate_slab_bytes,
            self.rmeta_off,
            self.rates_off,
            self.hash_off,
            self.hash_slots,
            self.heap_off,
            self.heap_cap,
            self.bitmap_off,
        )

    def header(self) -> bytes:
        return _STATIC.pack(MAGIC, *self.static_fields())

    def slab_off(self, s: int) -> int:
        return self.slabs_off + s * self.slab_bytes

    def desc(self, s: int) -> int:
        return self.desc_off + s * DESC_STRIDE

    def entry(self, cell: int) -> int:
        """The key entry of a key's cell."""
        return self.keys_off + (cell - self.names_cap) * KEY_ENTRY


def read_layout(fd: int, where: str) -> Layout:
    """Validate the file behind ``fd`` before anything maps it; its Layout.

    Raises CorruptSegmentError for a truncated, foreign, garbage or
    other-version file.  Nothing is written.
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise CorruptSegmentError(f"{where} is not a regular file")
    if st.st_size < _STATIC.size:
        raise CorruptSegmentError(
            f"{where} is truncated: {st.st_size} bytes, shorter than a tallies header"
        )
    raw = os.pread(fd, _STATIC.size, 0)
    if len(raw) != _STATIC.size:
        raise CorruptSegmentError(f"{where} is truncated: the header could not be read")
    magic, *fields = _STATIC.unpack(raw)
    if magic != MAGIC:
        raise CorruptSegmentError(
            f"{where} is not a tallies shared-memory segment (magic {magic!r}, expected {MAGIC!r})"
        )
    if fields[0] != BYTE_ORDER_WORD:
        raise CorruptSegmentError(f"{where} was written on a machine of another byte order")
    if fields[1] != VERSION:
        raise CorruptSegmentError(
            f"{where} has segment layout version {fields[1]}; this tallies reads "
            f"version {VERSION} (destroy it, or use the tallies that made it)"
        )
    names_cap, keys_cap, slabs_cap, buckets_cap = fields[4], fields[5], fields[6], fields[17]
    for label, value in (
        ("names", names_cap),
        ("keys", keys_cap),
        ("slabs", slabs_cap),
        ("buckets", buckets_cap),
    ):
        lo, hi = LIMITS[label]
        if not lo <= value <= hi:
            raise CorruptSegmentError(f"{where}: header capacity {label}={value} is impossible")
    layout = Layout(names_cap, keys_cap, slabs_cap, buckets_cap)
    if tuple(fields) != layout.static_fields():
        raise CorruptSegmentError(f"{where}: header fields are inconsistent (corrupt header)")
    if layout.total > MAX_TOTAL:
        raise CorruptSegmentError(f"{where}: header claims an impossible size")
    if st.st_size != layout.total:
        raise CorruptSegmentError(
            f"{where} is {st.st_size} bytes but its header describes {layout.total}: "
            "truncated or damaged"
        )
    return layout


# ---- processes -----------------------------------------------------------------

_HAVE_PROC = os.path.isdir("/proc/self")


def process_start(pid: int) -> int | None:
    """The start time of a live (non-zombie) process ``pid``; None if it is gone.

    Linux: field 22 of /proc/<pid>/stat (clock ticks since boot).  Elsewhere
    0 for any live process (pid reuse then goes unnoticed).
    """
    if pid <= 0:
        return None
    if _HAVE_PROC:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except (FileNotFoundError, ProcessLookupError):
            return None
        # "pid (comm) S ppid ...": comm may contain spaces and ')'.
        fields = data[data.rindex(b")") + 2 :].split()
        if fields[0] in (b"Z", b"X"):
            return None  # exited, not yet reaped: it will never write again
        return int(fields[19])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0


_me: tuple[int, int] = (0, 0)


def _identity() -> tuple[int, int]:
    global _me
    pid = os.getpid()
    if _me[0] != pid:
        start = process_start(pid)
        _me = (pid, start if start is not None else 0)
    return _me


# ---- test hook: die at a named point ------------------------------------------

CRASH_EXIT = 86
_crash_hits: collections.Counter[tuple[str, str]] = collections.Counter()


def _crash_point(tag: str) -> None:
    """For tests: ``TALLIES_SHM_CRASH=tag[:n]`` makes the n-th arrival here
    (default the first) end the process at once, as a SIGKILL would;
    ``TALLIES_SHM_STOP=tag[:n]`` stops it there with SIGSTOP (as a debugger or
    a frozen container would) until someone sends SIGCONT."""
    for var in ("TALLIES_SHM_CRASH", "TALLIES_SHM_STOP"):
        spec = os.environ.get(var)
        if not spec:
            continue
        name, _, nth = spec.partition(":")
        if name == tag:
            _crash_hits[var, tag] += 1
            if _crash_hits[var, tag] == int(nth or 1):
                if var == "TALLIES_SHM_CRASH":
                    os._exit(CRASH_EXIT)
                os.kill(os.getpid(), signal.SIGSTOP)


# ---- naming --------------------------------------------------------------------


def segment_dir() -> str:
    """Where segment files live: $TALLIES_SHM_DIR, else /dev/shm, else the temp dir.

    TALLIES_SHM_DIR must name an existing directory by an absolute path: a
    relative one is refused (each process would resolve it against its own
    working directory and miss the others' segments)."""
    env = os.environ.get("TALLIES_SHM_DIR")
    if env:
        if not os.path.isabs(env):
            raise StoreUnavailableError(
                f"TALLIES_SHM_DIR={env!r} is a relative path; set it to an absolute "
                "directory (every process must find the same segments)"
            )
        if not os.path.isdir(env):
            what = "is not a directory" if os.path.exists(env) else "does not exist"
            raise StoreUnavailableError(f"TALLIES_SHM_DIR={env!r} {what}")
        return env
    if os.path.isdir("/dev/shm"):
        return "/dev/shm"
    return tempfile.gettempdir()


def check_segment_name(name: str) -> str:
    """A segment name: 1..200 UTF-8 bytes, no '/', no '..', no NUL."""
    if not name:
        raise ValueError("shm:// needs a segment name, e.g. shm://app")
    if "/" in name:
        raise ValueError(f"segment name {name!r} must not contain '/'")
    if ".." in name:
        raise ValueError(f"segment name {name!r} must not contain '..'")
    return check_name(name, "segment name", SEGMENT_NAME_MAX)


def segment_path(name: str) -> str:
    """The file behind ``shm://name``."""
    return os.path.join(segment_dir(), "tallies." + check_segment_name(name))


def _parse_caps(url: StoreURL) -> dict[str, int]:
    caps: dict[str, int] = {}
    for label, (lo, hi) in LIMITS.items():
        text = url.params.get(label)
        if text is None:
            continue
        try:
            value = int(text, 10)
        except ValueError:
            raise ValueError(f"{url.shown!r}: {label}={text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise ValueError(f"{url.shown!r}: {label}={value} is outside {lo}..{hi}")
        caps[label] = value
    layout = Layout(
        caps.get("names", DEFAULT_NAMES),
        caps.get("keys", DEFAULT_KEYS),
        caps.get("slabs", DEFAULT_SLABS),
        caps.get("buckets", DEFAULT_BUCKETS),
    )
    if layout.total > MAX_TOTAL:
        raise ValueError(f"{url.shown!r}: that segment would be {layout.total} bytes")
    return caps


# ---- the segment, once per file per process ----------------------------------


def _text(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptSegmentError(f"{where}: not UTF-8 (corrupt directory)") from None


class _Segment:
    """One mapped segment file, shared by every store of this process that
    opens it (so there is one fd, one lock, one slab per process)."""

    def __init__(self, name: str, path: str, fd: int, layout: Layout) -> None:
        self.name = name
        self.path = path
        self.fd = fd
        self.L = layout
        st = os.fstat(fd)
        self.ident = (st.st_dev, st.st_ino)
        self.mm = mmap.mmap(fd, layout.total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        weak_bind = weakref.WeakMethod(self._bind)

        def binder() -> None:
            method = weak_bind()
            if method is None:  # pragma: no cover - the segment is being freed
                raise ValueError("the segment is gone")
            method()

        self.c = _shm.Segment(
            self.mm,
            layout.ncells,
            layout.slab_bytes,
            layout.slabs_cap,
            layout.desc_off,
            DESC_STRIDE,
            layout.archive_off,
            layout.slabs_off,
            SEQ,
            binder,
        )
        self.c.attach_keys(
            layout.names_cap,
            layout.keys_cap,
            layout.hash_off,
            layout.hash_slots,
            layout.keys_off,
            layout.heap_off,
            layout.heap_cap,
            KEYS_USED,
            HEAP_USED,
            layout.bitmap_off,
            fd,
            CapacityError,
            CorruptSegmentError,
            f"shm://{name}",
        )
        self._finalizer = weakref.finalize(self, os.close, fd)
        self.tlock = threading.RLock()
        self.depth = 0
        self.dir_lock = threading.Lock()
        self.names: list[tuple[str, int]] = []  # entry index -> (name, kind)
        self.name_index: dict[str, int] = {}
        self.keys: dict[int, dict[str, int]] = {}  # name index -> key -> cell
        self.keys_seen = 0
        self.keys_pending: list[int] = []  # entries below keys_seen not yet keys

    # -- the lock ------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The segment lock (thread lock + fcntl lock); recovery on entry."""
        with self.tlock:
            if self.depth == 0:
                fcntl.lockf(self.fd, fcntl.LOCK_EX)
            self.depth += 1
            try:
                if self.depth == 1:
                    self._recover()
                yield
            finally:
                self.depth -= 1
                if self.depth == 0:
                    fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def _slab_states(self) -> list[int]:
        states = self.c.slab_states()
        for s, state in enumerate(states):
            if state not in (SLAB_FREE, SLAB_LIVE, SLAB_FOLDING):
                raise CorruptSegmentError(f"{self.path}: slab {s} has impossible state {state}")
        return states

    def _begin(self) -> None:
        seq = self.c.load(SEQ)
        if seq % 2 == 0:
            self.c.add(SEQ, 1)

    def _end(self) -> None:
        if self.c.load(SEQ) % 2 == 1:
            self.c.add(SEQ, 1)

    def _recover(self) -> None:
        """Finish what a holder of the lock that died left undone (lock held)."""
        c, L = self.c, self.L
        jstate = c.load(J_STATE)
        folding = [s for s, state in enumerate(self._slab_states()) if state == SLAB_FOLDING]
        if jstate == 0 and not folding and c.load(SEQ) % 2 == 0:
            return
        if jstate != 0:  # validate before touching anything
            s, cell, old, val = c.load(J_SLAB), c.load(J_CELL), c.load(J_OLD), c.load(J_VAL)
            if (
                jstate != 1
                or not 0 <= s < L.slabs_cap
                or not 0 <= cell < L.ncells
                or not INT64_MIN <= old + val <= INT64_MAX
            ):
                raise CorruptSegmentError(f"{self.path}: the fold journal is corrupt")
        self._begin()
        if jstate != 0:
            c.store(L.archive_off + cell * 8, old + val)
            _crash_point("recover-archived")
            c.store(L.slab_off(s) + cell * 8, 0)
            c.store(J_STATE, 0)
        for s in folding:
            self._fold(s)
        self._end()

    def _fold(self, s: int) -> bool:
        """Move slab s's counts into the archive (lock held, sequence odd)."""
        c, L = self.c, self.L
        desc = L.desc(s)
        c.store(desc, SLAB_FOLDING)
        _crash_point("fold-marked")
        base = L.slab_off(s)
        complete = True
        n_names, n_keys = self._used()
        for lo, hi in ((0, n_names), (L.names_cap, L.names_cap + n_keys)):
            for cell, v in c.nonzero(base, lo, hi):
                arch = L.archive_off + cell * 8
                c.reserve(arch, 8)  # (the archive is sparse too)
                old = c.load(arch)
                if not INT64_MIN <= old + v <= INT64_MAX:
                    complete = False  # stays in the slab, still summed
                    continue
                c.store(J_SLAB, s)
                c.store(J_CELL, cell)
                c.store(J_OLD, old)
                c.store(J_VAL, v)
                c.store(J_STATE, 1)
                _crash_point("fold-journaled")
                c.store(arch, old + v)
                _crash_point("fold-archived")
                c.store(base + cell * 8, 0)
                _crash_point("fold-zeroed")
                c.store(J_STATE, 0)
                _crash_point("fold-cell-done")
        if complete:
            c.store(desc + 8, 0)
            c.store(desc + 16, 0)
            c.store(desc, SLAB_FREE)
            _crash_point("fold-freed")
        return complete

    def _used(self) -> tuple[int, int]:
        n_names, n_keys = self.c.load(NAMES_USED), self.c.load(KEYS_USED)
        if not 0 <= n_names <= self.L.names_cap or not 0 <= n_keys <= self.L.keys_cap:
            raise CorruptSegmentError(f"{self.path}: directory counts are impossible")
        return n_names, n_keys

    def reap(self) -> int:
        """Fold every slab whose owner is dead; how many were freed (lock held)."""
        dead = []
        for s, state in enumerate(self._slab_states()):
            if state != SLAB_LIVE:
                continue
            desc = self.L.desc(s)
            pid, start = self.c.load(desc + 8), self.c.load(desc + 16)
            if pid <= 0 or pid > 2**31 or process_start(pid) != start:
                dead.append(s)
        if not dead:
            return 0
        self._begin()
        freed = sum(1 for s in dead if self._fold(s))
        self._end()
        return freed

    def _bind(self) -> None:
        """Claim a slab for this process (called from C on its first write)."""
        with self.locked():
            if self.c.bound_slab() >= 0:
                return  # another thread of ours got here first
            pid, start = _identity()
            L = self.L
            for s, state in enumerate(self._slab_states()):
                desc = L.desc(s)
                if (
                    state == SLAB_LIVE
                    and self.c.load(desc + 8) == pid
                    and self.c.load(desc + 16) == start
                ):
                    self.c.bind(s)  # ours already (an earlier store of this process)
                    return
            self.reap()
            for s, state in enumerate(self._slab_states()):
                if state == SLAB_FREE:
                    desc = L.desc(s)
                    self.c.store(desc + 8, pid)
                    self.c.store(desc + 16, start)
                    _crash_point("bind-owner-written")
                    self.c.store(desc, SLAB_LIVE)
                    self.c.bind(s)
                    return
            raise CapacityError(
                f"shm://{self.name}: all {L.slabs_cap} writer slabs belong to live "
                "processes; create the segment with a larger ?slabs="
            )

    # -- directories -------------------------------------------------------

    def refresh(self) -> None:
        """Read directory entries published since the last look."""
        with self.dir_lock:  # two threads must not append the same entries
            self._refresh()

    def _refresh(self) -> None:
        c, L = self.c, self.L
        n_names, n_keys = self._used()
        for i in range(len(self.names), n_names):
            off = L.names_off + i * NAME_ENTRY
            state, kind, length = c.load(off), c.load(off + 8), c.load(off + 16)
            if state != 1 or kind not in KIND_NAMES or not 0 < length <= NAME_MAX:
                raise CorruptSegmentError(f"{self.path}: name entry {i} is corrupt")
            name = _text(self.mm[off + TEXT_OFF : off + TEXT_OFF + length], self.path)
            self.names.append((name, kind))
            self.name_index.setdefault(name, i)
        # Entries are read in order; one that is not a key yet (being written,
        # or its writer died first: see _c/_shmkeys.h) is looked at again on
        # the next refresh, until it is published or abandoned.
        todo = self.keys_pending + list(range(self.keys_seen, n_keys))
        pending: list[int] = []
        new = c.key_entries(self.keys_seen, n_keys) if n_keys > self.keys_seen else []
        old = [c.key_entries(j, j + 1)[0] for j in self.keys_pending]
        for j, (state, owner, _ring1, raw) in zip(todo, old + new, strict=True):
            if state in (KEY_WRITING, KEY_ABANDONED):
                if state == KEY_WRITING:
                    pending.append(j)
                continue
            if (
                state not in (KEY_WRITTEN, KEY_PUBLISHED)
                or raw is None
                or not 0 <= owner < len(self.names)
                or self.names[owner][1] not in (KIND_KEYED, KIND_KEYED_RATE)
            ):
                raise CorruptSegmentError(f"{self.path}: key entry {j} is corrupt")
            key = _text(raw, self.path)
            if state == KEY_WRITTEN:
                found = c.key_find(owner, key)
                if found is None:
                    pending.append(j)  # not published (yet)
                if found != L.names_cap + j:
                    continue  # another entry holds the key: this one lost
            self.keys.setdefault(owner, {}).setdefault(key, L.names_cap + j)
        self.keys_pending = pending
        self.keys_seen = n_keys

    def register_name(self, name: str, kind: int, meta: tuple[int, int, int] | None = None) -> int:
        """The entry index of ``name``, registering it (with a rate's ``meta``:
        nb, res_ns, window_ns) on first use.

        Every check (names left, bucket units left, a writer slab for this
        process) passes before anything is written: a refused name changes
        nothing (see :meth:`_can_write`)."""
        idx = self.name_index.get(name)
        if idx is None:
            self.refresh()
            idx = self.name_index.get(name)
        if idx is None:
            raw = name.encode("utf-8")
            with self.locked():
                self.refresh()
                idx = self.name_index.get(name)
                if idx is None:
                    idx = len(self.names)
                    if idx >= self.L.names_cap:
                        raise CapacityError(
                            f"shm://{self.name}: all {self.L.names_cap} names are taken; "
                            "create the segment with a larger ?names="
                        )
                    off = self.L.names_off + idx * NAME_ENTRY
                    if meta is not None and kind == KIND_RATE:
                        self.units_left(meta[0])
                    self._can_write()
                    if meta is not None:  # a rate: its meta goes in before the name
                        unit = self.alloc_units(meta[0]) if kind == KIND_RATE else -1
                        m = self.L.rmeta(idx)
                        for i, v in enumerate((*meta, unit, 0)):
                            self.c.store(m + 8 * i, v)
                    self._publish_entry(off, raw, kind, NAMES_USED, idx + 1)
        have = self.names[idx][1]
        if have != kind:
            raise ValueError(f"{name!r} is {KIND_NAMES[have]} in shm://{self.name}")
        return idx

    def _can_write(self) -> None:
        """CapacityError unless this process owns a writer slab or could claim
        one (a free slab, or one whose owner is dead); lock held, reads only.

        Checked before a name or key is registered, so a process that cannot
        write (every slab held by a live process) gets the error before the
        entry uses up a name, a key or a ring's bucket units, not from its
        first update after.  A process that only reads claims no slab, so a
        free slab seen here can still be taken by another process before this
        one's first write (then that write raises CapacityError, and the name
        it registered stays: a race this check narrows, not closes)."""
        if self.c.bound_slab() >= 0:
            return
        for s, state in enumerate(self._slab_states()):
            if state == SLAB_FREE:
                return
            if state == SLAB_LIVE:
                desc = self.L.desc(s)
                pid, start = self.c.load(desc + 8), self.c.load(desc + 16)
                if pid <= 0 or pid > 2**31 or process_start(pid) != start:
                    return  # dead: its slab is folded and freed by the claim
                if (pid, start) == _identity():
                    return  # ours already (an earlier store of this process)
        raise CapacityError(
            f"shm://{self.name}: all {self.L.slabs_cap} writer slabs belong to live "
            "processes; create the segment with a larger ?slabs="
        )

    def units_left(self, nb: int) -> int:
        """The first free ring unit, if a ring of nb buckets fits (lock held);
        CapacityError (nothing written) if not."""
        used = self.c.load(BUCKETS_USED)
        if not 0 <= used <= self.L.buckets_cap:
            raise CorruptSegmentError(f"{self.path}: the rate bucket count is impossible")
        if used + nb + 2 > self.L.buckets_cap:
            raise CapacityError(
                f"shm://{self.name}: a ring of {nb} buckets needs {nb + 2} bucket units and "
                f"{self.L.buckets_cap - used} of {self.L.buckets_cap} are left; create the "
                "segment with a larger ?buckets="
            )
        return used

    def alloc_units(self, nb: int) -> int:
        """Hand out a ring of nb buckets (nb + 2 units) in every slab (lock held):
        its pages are reserved in every slab first (CapacityError if they
        cannot be), since readers and resets touch every slab's ring."""
        used = self.units_left(nb)
        for s in range(self.L.slabs_cap):
            self.c.reserve(self.L.ring_off(s, used), (nb + 2) * RING_UNIT)
        self.c.store(BUCKETS_USED, used + nb + 2)
        return used

    def _publish_entry(self, off: int, raw: bytes, tag: int, used_word: int, used: int) -> None:
        """Write a directory entry (text, tag, length), mark it ready, then count it.

        The caller holds the segment lock.  Readers only trust entries below the
        used count, and the ready word is stored last, so a writer that dies
        here leaves at worst an entry that nobody counts yet.
        """
        self.mm[off + TEXT_OFF : off + TEXT_OFF + len(raw)] = raw
        self.c.store(off + 8, tag)
        self.c.store(off + 16, len(raw))
        self.c.store(off, 1)
        _crash_point("register-entry-written")
        self.c.store(used_word, used)
        self.refresh()

    def find_key(self, owner: int, key: str) -> int | None:
        """The cell of ``key`` of keyed counter ``owner``; None if it has none."""
        cell: int | None = self.c.key_find(owner, key)
        return cell

    def register_key(self, owner: int, key: object) -> int:
        """The cell of ``key``, inserting it on first use: lock-free in C
        (``_c/_shmkeys.h``) for a keyed counter, under the lock for a keyed rate
        (its ring's bucket units are handed out first)."""
        if not isinstance(key, str):
            raise TypeError(f"keys must be str, not {type(key).__name__!r}")
        cell = self.c.key_find(owner, key)  # ValueError for a bad key, nothing written
        if cell is not None:
            return int(cell)
        if self.names[owner][1] != KIND_KEYED_RATE:
            if self.c.bound_slab() < 0:
                with self.locked():
                    self._can_write()
            return int(self.c.key_insert(owner, key))
        with self.locked():
            cell = self.c.key_find(owner, key)
            if cell is not None:
                return int(cell)
            nb = self.c.load(self.L.rmeta(owner))
            self.units_left(nb)
            self._can_write()
            if self.c.load(KEYS_USED) >= self.L.keys_cap:
                raise CapacityError(
                    f"shm://{self.name}: all {self.L.keys_cap} keys are taken; "
                    "create the segment with a larger ?keys="
                )
            return int(self.c.key_insert(owner, key, self.alloc_units(nb) + 1))

    def key_ring(self, cell: int) -> int:
        """The first ring unit of a keyed rate's key (-1: none)."""
        return (self.c.load(self.L.entry(cell) + 16) >> 32) - 1

    # -- reads and resets --------------------------------------------------

    def _stable(self, read: Callable[[Any], Any], arg: Any) -> Any:
        """``read(arg)`` (a C sum, None when a slab changed under it), again
        under the segment lock when the lock-free read was not stable."""
        v = read(arg)
        if v is None:
            with self.locked():
                v = read(arg)
        if v is None:  # pragma: no cover - impossible while we hold the lock
            raise RuntimeError("tallies: no stable read under the segment lock")
        return v

    def sum(self, cell: int) -> int:
        v: int = self._stable(self.c.sum, cell)
        return v

    def sum_many(self, cells: list[int]) -> list[int]:
        vals: list[int] = self._stable(self.c.sum_many, cells)
        return vals

    def take(self, cells: list[int]) -> list[int]:
        """Exchange each cell (everywhere) with 0; what each held."""
        with self.locked():
            self._begin()
            try:
                return [self.c.take(cell) for cell in cells]
            finally:
                self._end()

    def put(self, cell: int, value: int) -> None:
        """Make the cell's value exactly ``value`` (set()).  The value goes to
        this process's own slab, so that this process's next update is
        checked against it (``set(2**63 - 1); increment(1)`` raises); if a
        concurrent update of ours makes that overflow, to the archive."""
        if self.c.bound_slab() < 0:
            self._bind()
        with self.locked():
            self._begin()
            try:
                self.c.take(cell)
                mine = self.c.bound_slab()
                try:
                    if mine < 0:
                        raise OverflowError("no slab")  # pragma: no cover - bound above
                    off = self.L.slab_off(mine) + cell * 8
                    self.c.reserve(off, 8)  # a sparse page is allocated before its first write
                    self.c.add(off, value)
                except OverflowError:
                    self.c.reserve(self.L.archive_off + cell * 8, 8)
                    self.c.store(self.L.archive_off + cell * 8, value)
            finally:
                self._end()

    def slabs(self) -> list[dict[str, Any]]:
        out = []
        mine = self.c.bound_slab()
        for s, state in enumerate(self._slab_states()):
            if state == SLAB_FREE:
                continue
            desc = self.L.desc(s)
            pid, start = self.c.load(desc + 8), self.c.load(desc + 16)
            out.append(
                {
                    "slab": s,
                    "state": "live" if state == SLAB_LIVE else "folding",
                    "pid": pid,
                    "start_time": start,
                    "alive": 0 < pid <= 2**31 and process_start(pid) == start,
                    "mine": s == mine,
                }
            )
        return out


_segments: dict[tuple[int, int], weakref.ref[_Segment]] = {}
_all_segments: weakref.WeakSet[_Segment] = weakref.WeakSet()
_segments_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _segments_lock
    _segments_lock = threading.Lock()
    for seg in list(_all_segments):
        seg.c.unbind()  # the child's first write claims its own slab
        seg.tlock = threading.RLock()  # the parent's holder thread is not here
        seg.depth = 0  # and fcntl locks are not inherited
        seg.dir_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_OPEN_FLAGS = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _create(name: str, path: str, layout: Layout) -> int:
    """Build a segment under a temporary name and link it into place.
    Returns an fd of the segment now at ``path`` (ours or a racing creator's)."""
    directory = os.path.dirname(path)
    _check_room(name, layout)
    tmp = os.path.join(directory, f".tallies.{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600)
    except OSError as exc:
        raise StoreUnavailableError(
            f"shm://{name}: cannot create a segment in {directory}: {exc.strerror}"
        ) from exc
    try:
        try:
            os.ftruncate(fd, layout.total)  # sparse: pages are allocated as used
            if hasattr(os, "posix_fallocate"):
                for off, length in layout.preallocated():
                    os.posix_fallocate(fd, off, length)
        except OSError as exc:
            raise CapacityError(
                f"shm://{name}: cannot allocate {layout.total} bytes in {directory}: {exc.strerror}"
            ) from exc
        os.pwrite(fd, layout.header(), 0)
        try:
            os.link(tmp, path)
        except OSError as exc:
            if not isinstance(exc, FileExistsError):
                raise StoreUnavailableError(
                    f"shm://{name}: cannot create a segment in {directory}: {exc.strerror}"
                ) from exc
            os.close(fd)
            fd = -1
            existing = _open_existing(path)
            if existing is None:  # created and destroyed meanwhile: try again
                return _create(name, path, layout)
            return existing
        return fd
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _check_room(name: str, layout: Layout) -> None:
    """Refuse a segment that would reserve more than half of this machine's
    memory (a typo in ?names= or ?keys= must not take the machine's memory
    silently; posix_fallocate only refuses what the filesystem cannot hold)."""
    try:
        phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no sysconf
        return
    if phys > 0 and layout.total > phys // 2:
        gib = 1 << 30
        raise CapacityError(
            f"shm://{name}: names={layout.names_cap}, keys={layout.keys_cap}, "
            f"slabs={layout.slabs_cap} would reserve {layout.total / gib:.1f} GiB of shared "
            f"memory, more than half of this machine's {phys / gib:.1f} GiB; nothing was "
            "created (ask for smaller capacities)"
        )


def _open_existing(path: str) -> int | None:
    """An fd of the segment file at path; None if there is none."""
    try:
        return os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise CorruptSegmentError(f"{path} is a directory, not a segment") from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise CorruptSegmentError(f"{path} is a symbolic link; refusing it") from None


def _open_segment(name: str, caps: dict[str, int], create: bool) -> _Segment:
    path = segment_path(name)
    with _segments_lock:
        try:
            st = os.stat(path)
            ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            ident = None
        # One _Segment per file per process, found by inode (not by path, which
        # may be spelt differently): two fds on one file would break the fcntl
        # lock, since closing either drops every lock the process holds on it.
        ref = _segments.get(ident) if ident is not None else None
        seg = ref() if ref is not None else None
        if seg is None:
            try:
                fd = _open_existing(path)
                if fd is None:
                    if not create:
                        raise StoreNotFoundError(f"shm://{name}: no segment at {path}")
                    layout = Layout(
                        caps.get("names", DEFAULT_NAMES),
                        caps.get("keys", DEFAULT_KEYS),
                        caps.get("slabs", DEFAULT_SLABS),
                        caps.get("buckets", DEFAULT_BUCKETS),
                    )
                    fd = _create(name, path, layout)
            except PermissionError as exc:
                raise StoreUnavailableError(f"shm://{name}: {exc}") from exc
            try:
                if os.fstat(fd).st_uid != os.geteuid():
                    raise StoreUnavailableError(
                        f"shm://{name}: {path} belongs to another user; refusing it"
                    )
                layout = read_layout(fd, path)
                seg = _Segment(name, path, fd, layout)
            except BaseException:
                os.close(fd)
                raise
            _segments[seg.ident] = weakref.ref(seg)
            _all_segments.add(seg)
    have = {
        "names": seg.L.names_cap,
        "keys": seg.L.keys_cap,
        "slabs": seg.L.slabs_cap,
        "buckets": seg.L.buckets_cap,
    }
    for label, value in caps.items():
        if have[label] != value:
            raise ValueError(
                f"shm://{name} exists with {label}={have[label]}, not {value}; open it "
                "without ?" + label + "= or destroy it first"
            )
    with seg.locked():  # runs recovery
        seg.refresh()
        seg.reap()
    return seg
