"""shm://'s limiters and fixed windows: the ``NAME.limits`` file beside the segment.

Read ``_c/_limtable.h`` first: the layout, the per-entry locks, why a dead
owner's lock is taken over.  This module creates the file (complete, under a
temporary name, then ``link()``-ed into place: no process ever maps a
half-made one), maps it once per process, and hands out the C objects
(``ShmLimiter`` of the extension, with the Python methods of ``_limiter``).
Its size is fixed at creation: ``?limiter_keys=N`` entries (default 16,384,
1 KiB each, so 16 MiB of address space, pages touched only when used), for
at most 126 limiter names (and fixed-window families) per segment; a key's
entry is reused by another key once its window has expired.
``destroy("shm://NAME")`` removes the file with the segment.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import threading
from typing import Any

from ._limiter import ShmLimiter
from ._protocol import LimitSpec
from .base import CapacityError, CorruptSegmentError, StoreUnavailableError, check_key

__all__ = ["DEFAULT_KEYS", "KEYS_RANGE", "fixed_windows", "limiter", "limits_path"]

DEFAULT_KEYS = 16384
KEYS_RANGE = (64, 1 << 24)
TLL_LIMITER, TLL_FIXED = 1, 2

_maps: dict[tuple[int, int], mmap.mmap] = {}  # (dev, inode) -> the mapping, one per process
_lock = threading.Lock()


def limits_path(segment_path: str) -> str:
    return segment_path + ".limits"


def _native() -> Any:
    if ShmLimiter is None:
        raise StoreUnavailableError("shm:// limiters need tallies' C extension")
    return ShmLimiter


def _create(path: str, keys: int) -> None:
    native = _native()
    size = native_size(keys)
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except (AttributeError, OSError):
            os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            native._format(mm, keys)
            mm.flush()
        finally:
            mm.close()
        with contextlib.suppress(FileExistsError):  # the loser uses the winner's file
            os.link(tmp, path)
    except OSError as exc:
        raise StoreUnavailableError(f"cannot create {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def native_size(keys: int) -> int:
    from ._limiter import _native

    native = _native()
    assert native is not None
    return int(native.LIMTABLE_HEADER) + keys * int(native.LIMTABLE_ENTRY)


def _table(segment_path: str, keys: int) -> mmap.mmap:
    """This process's mapping of the segment's limiter table (created when missing)."""
    native = _native()
    path = limits_path(segment_path)
    with _lock:
        for _ in range(3):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                _create(path, keys)
                continue
            try:
                st = os.fstat(fd)
                ident = (st.st_dev, st.st_ino)
                mm = _maps.get(ident)
                if mm is None:
                    if st.st_uid != os.geteuid():
                        raise StoreUnavailableError(f"{path} belongs to another user")
                    mm = mmap.mmap(
                        fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
                    )
                    try:
                        native._check(mm)
                    except ValueError:
                        mm.close()
                        raise CorruptSegmentError(
                            f"{path} is not a tallies limiter table (destroy the store)"
                        ) from None
                    _maps[ident] = mm
                return mm
            finally:
                os.close(fd)
    raise StoreUnavailableError(f"{path} kept disappearing")


def _register(mm: mmap.mmap, name: str, kind: int, spec: LimitSpec | None) -> int:
    native = _native()
    lim, per, res, buckets = (
        (spec.limit, spec.per_ns, spec.res_ns, spec.buckets) if spec else (1, 1, 1, 1)
    )
    raw = name.encode("utf-8")
    idx, clash = native._register(mm, raw, kind, lim, per, res, buckets)
    if idx < 0:
        raise CapacityError(
            "shm:// holds at most 126 limiter and fixed-window names per segment; "
            "nothing was created"
        )
    if clash:
        _, k, lim2, per2, res2, b2 = native._spec_at(mm, idx)
        if k != kind:
            raise ValueError(f"{name!r} is used by the other kind of limiter in this store")
        have = LimitSpec(name, lim2, per2, res2, b2)
        raise ValueError(
            f"{name!r} is a limiter with limit={have.limit}, per={have.per_ns / 1e9!r}, "
            f"resolution={have.res_ns / 1e9!r} in this store, not limit={lim}, "
            f"per={per / 1e9!r}, resolution={res / 1e9!r}"
        )
    return int(idx)


def limiter(segment_path: str, keys: int, spec: LimitSpec) -> Any:
    native = _native()
    if spec.buckets + 1 > 64:
        raise ValueError(
            f"limiter() per / resolution is {spec.buckets} slots; shm:// limiters have at "
            "most 63 (choose a coarser resolution)"
        )
    mm = _table(segment_path, keys)
    idx = _register(mm, "L" + spec.name, TLL_LIMITER, spec)
    return native(
        mm, idx, TLL_LIMITER, spec.limit, spec.res_ns, spec.buckets, spec, check_key, CapacityError
    )


class ShmFixedWindows:
    """Fixed windows (the limits package's) in the segment's limiter table."""

    def __init__(self, cell: Any) -> None:
        self._c = cell

    def incr(self, key: str, expiry: float, amount: int) -> tuple[int, float]:
        count, end = self._c._incr(key, max(1, round(expiry * 1000)), amount)
        return int(count), end / 1000

    def get(self, key: str) -> tuple[int, float]:
        count, end = self._c._get(key)
        return int(count), end / 1000

    def clear(self, key: str) -> None:
        self._c._reset(key)


def fixed_windows(segment_path: str, keys: int, name: str) -> ShmFixedWindows:
    native = _native()
    mm = _table(segment_path, keys)
    idx = _register(mm, "F" + name, TLL_FIXED, None)
    return ShmFixedWindows(native(mm, idx, TLL_FIXED, 1, 1, 1, None, check_key, CapacityError))


def destroy(segment_path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(limits_path(segment_path))
