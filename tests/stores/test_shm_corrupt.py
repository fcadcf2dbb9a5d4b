"""shm:// refuses truncated, foreign, garbage and other-version files clearly.

Every bad file gives a CorruptSegmentError (a ValueError) that says what is
wrong, never a crash, and opening it changes none of its bytes.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Callable, Iterator

import pytest
from _shm_support import SHM_DIR, new_url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tallies
from tallies.stores import _shm_segment as segment_mod

CorruptSegmentError = tallies.CorruptSegmentError


def _path(url: str) -> str:
    return os.path.join(SHM_DIR, "tallies." + url.partition("?")[0][len("shm://") :])


@pytest.fixture
def good() -> Iterator[tuple[str, bytes]]:
    """A valid, used segment: (url, its bytes)."""
    url = new_url("?names=4&keys=8&slabs=4")
    with tallies.open(url) as s:
        s.counter("a").increment(5)
        k = s.keyed("k")
        k.increment("x", 2)
        k.increment("y", 3)
    with open(_path(url), "rb") as f:
        data = f.read()
    yield url, data
    tallies.destroy(url)


def _write(data: bytes) -> str:
    url = new_url()
    with open(_path(url), "wb") as f:
        f.write(data)
    os.chmod(_path(url), 0o600)
    return url


def _refused(data: bytes, message: str) -> None:
    url = _write(data)
    try:
        with pytest.raises(CorruptSegmentError, match=message), tallies.open(url) as s:
            s.snapshot()
        with open(_path(url), "rb") as f:
            assert f.read() == data, "a refused file must not be modified"
    finally:
        tallies.destroy(url)


def _patch(data: bytes, off: int, value: int) -> bytes:
    return data[:off] + struct.pack("=q", value) + data[off + 8 :]


def test_empty_file() -> None:
    _refused(b"", "truncated: 0 bytes")


def test_short_garbage() -> None:
    _refused(b"hello world\n", "truncated: 12 bytes")


def test_foreign_file_of_some_size() -> None:
    _refused(b'{"json": "not a segment"}' * 400, "not a tallies shared-memory segment")


def test_random_garbage() -> None:
    _refused(secrets.token_bytes(1 << 16), "not a tallies shared-memory segment")


def test_all_zeros() -> None:
    _refused(bytes(1 << 16), "magic")


def test_wrong_magic(good: tuple[str, bytes]) -> None:
    _refused(b"NOTTALLY" + good[1][8:], "magic b'NOTTALLY'")


def test_wrong_byte_order(good: tuple[str, bytes]) -> None:
    _refused(_patch(good[1], 8, 0x0807060504030201), "another byte order")


def test_wrong_version(good: tuple[str, bytes]) -> None:
    _refused(_patch(good[1], 16, 4), "layout version 4; this tallies reads version 3")
    # segments of the layouts before the hashed key directory (2) and before
    # rates (1) are refused the same way
    _refused(_patch(good[1], 16, 2), "layout version 2; this tallies reads version 3")
    _refused(_patch(good[1], 16, 1), "layout version 1; this tallies reads version 3")


def test_impossible_capacity(good: tuple[str, bytes]) -> None:
    _refused(_patch(good[1], 40, 0), "capacity names=0 is impossible")
    _refused(_patch(good[1], 56, 1 << 40), "capacity slabs=")


def test_inconsistent_header(good: tuple[str, bytes]) -> None:
    _refused(_patch(good[1], 136, 4096), "inconsistent")


def test_truncated(good: tuple[str, bytes]) -> None:
    _refused(good[1][: len(good[1]) // 2], "truncated or damaged")
    _refused(good[1][:4096], "truncated or damaged")
    _refused(good[1][:100], "truncated: 100 bytes")


def test_extended(good: tuple[str, bytes]) -> None:
    _refused(good[1] + bytes(4096), "truncated or damaged")


def test_header_claims_a_capacity_matching_another_size(good: tuple[str, bytes]) -> None:
    # names 4 -> 5 changes every offset: inconsistent, not an out-of-bounds map
    _refused(_patch(good[1], 32, 5), "inconsistent")


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (segment_mod.NAMES_USED, 99, "directory counts are impossible"),
        (segment_mod.KEYS_USED, -1, "directory counts are impossible"),
        (segment_mod.HEADER_BYTES + 16, 10_000, "name entry 0 is corrupt"),  # name length
        (segment_mod.HEADER_BYTES + 8, 7, "name entry 0 is corrupt"),  # kind
    ],
)
def test_corrupt_directories(
    good: tuple[str, bytes], offset: int, value: int, message: str
) -> None:
    _refused(_patch(good[1], offset, value), message)


def test_corrupt_key_entry_owner(good: tuple[str, bytes]) -> None:
    layout = segment_mod.Layout(4, 8, 4)
    _refused(_patch(good[1], layout.keys_off + 8, 0), "key entry 0 is corrupt")  # 'a' is a counter


def test_invalid_utf8_name(good: tuple[str, bytes]) -> None:
    off = segment_mod.HEADER_BYTES + segment_mod.TEXT_OFF
    data = good[1][:off] + b"\xff" + good[1][off + 1 :]
    _refused(data, "not UTF-8")


def test_corrupt_slab_state(good: tuple[str, bytes]) -> None:
    layout = segment_mod.Layout(4, 8, 4)
    _refused(_patch(good[1], layout.desc(2), 77), "slab 2 has impossible state 77")


def test_corrupt_fold_journal(good: tuple[str, bytes]) -> None:
    data = _patch(good[1], segment_mod.J_STATE, 1)
    data = _patch(data, segment_mod.J_SLAB, 1000)
    _refused(data, "fold journal is corrupt")


def test_corruption_after_open_is_reported_not_crashed(good: tuple[str, bytes]) -> None:
    url = good[0]
    with tallies.open(url) as s:
        assert s.counter("a").value() == 5
        with open(_path(url), "r+b") as f:
            f.seek(segment_mod.NAMES_USED)
            f.write(struct.pack("=q", 1 << 40))
        with pytest.raises(CorruptSegmentError, match="directory counts"):
            s.counter("new")
        with pytest.raises(CorruptSegmentError, match="directory counts"):
            s.names()
        assert s.counter("a").value() == 5  # known cells are still readable


def test_a_directory_or_a_symlink_in_its_place() -> None:
    url = new_url()
    os.mkdir(_path(url))
    try:
        with pytest.raises(CorruptSegmentError, match="directory"):
            tallies.open(url)
    finally:
        os.rmdir(_path(url))
    target = os.path.join(SHM_DIR, "elsewhere")
    with open(target, "wb"):
        pass
    os.symlink(target, _path(url))
    try:
        with pytest.raises(CorruptSegmentError, match="symbolic link"):
            tallies.open(url)
    finally:
        os.unlink(_path(url))
        os.unlink(target)


_good_cache: list[tuple[str, bytes]] = []


def _good_bytes() -> bytes:
    if not _good_cache:
        url = new_url("?names=4&keys=8&slabs=4")
        with tallies.open(url) as s:
            s.counter("a").increment(5)
            s.keyed("k").increment("x", 2)
        with open(_path(url), "rb") as f:
            _good_cache.append((url, f.read()))
        tallies.destroy(url)
    return _good_cache[0][1]


def _fuzz_open(data: bytes, check: Callable[[tallies.Store], object]) -> None:
    """Open ``data`` as a segment: it reads, or it is refused without a write."""
    url = _write(data)
    try:
        with tallies.open(url) as s:
            check(s)
    except CorruptSegmentError:
        with open(_path(url), "rb") as f:
            assert f.read() == data, "a refused segment was written to"
    finally:
        tallies.destroy(url)


# The fuzzed layout (names=4, keys=8, slabs=4): every byte that means
# something, and none of the page padding between the regions.
_FUZZ_LAYOUT = segment_mod.Layout(names_cap=4, keys_cap=8, slabs_cap=4)
_FUZZ_REGIONS = [
    (0, segment_mod.HEADER_BYTES),
    (_FUZZ_LAYOUT.names_off, _FUZZ_LAYOUT.names_off + 4 * segment_mod.NAME_ENTRY),
    (_FUZZ_LAYOUT.hash_off, _FUZZ_LAYOUT.hash_off + 4 * _FUZZ_LAYOUT.hash_slots),
    (_FUZZ_LAYOUT.keys_off, _FUZZ_LAYOUT.keys_off + 8 * segment_mod.KEY_ENTRY),
    (_FUZZ_LAYOUT.heap_off, _FUZZ_LAYOUT.heap_off + 64),
    (_FUZZ_LAYOUT.desc_off, _FUZZ_LAYOUT.desc_off + 4 * segment_mod.DESC_STRIDE),
]
_fuzz_offsets = st.one_of(*(st.integers(lo, hi - 1) for lo, hi in _FUZZ_REGIONS))


def test_the_fuzzed_regions_are_the_layouts_own() -> None:
    """The fuzz covers the header, the name directory, the key directory (its
    hash, entries and heap) and the slab descriptors."""
    assert len(_good_bytes()) == _FUZZ_LAYOUT.total
    assert (
        _FUZZ_LAYOUT.keys_off > _FUZZ_LAYOUT.names_off + 4 * segment_mod.NAME_ENTRY
    )  # padding between
    # The key heap holds the key written by _good_bytes() ("x"), its entry
    # says so (published, length 1), and one hash slot points at it:
    data = _good_bytes()
    assert data[_FUZZ_LAYOUT.heap_off : _FUZZ_LAYOUT.heap_off + 1] == b"x"
    entry = struct.unpack_from("=4q", data, _FUZZ_LAYOUT.keys_off)
    assert entry[0] == segment_mod.KEY_PUBLISHED and entry[2] == 1 and entry[3] == 0
    slots = struct.unpack_from(f"={_FUZZ_LAYOUT.hash_slots}I", data, _FUZZ_LAYOUT.hash_off)
    assert [s & 0x1FFFFFF for s in slots if s] == [1]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(_fuzz_offsets, st.integers(0, 255)),
        min_size=1,
        max_size=8,
    )
)
def test_byte_flips_in_header_and_directories_never_crash(flips: list[tuple[int, int]]) -> None:
    """Model: any damage to the header, the directories or the slab descriptors
    either leaves a segment that reads, or raises CorruptSegmentError without
    changing a byte of the file; nothing else."""
    data = bytearray(_good_bytes())
    for off, byte in flips:
        data[off] = byte
    _fuzz_open(bytes(data), lambda s: (s.snapshot(), s.names(), s.info()))
