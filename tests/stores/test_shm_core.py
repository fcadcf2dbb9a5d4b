"""shm://'s hot path in the extension (Segment, Cell, KeyedCells) on its own:
every offset is checked, bad layouts are refused."""

from __future__ import annotations

import mmap

import pytest

from tallies import _tallies as _shm

SIZE = 4 * 4096


def _segment(binder: object = None, **overrides: int) -> tuple[_shm.Segment, mmap.mmap]:
    mm = mmap.mmap(-1, SIZE)
    args = {
        "ncells": 16,
        "slab_bytes": 128,
        "nslabs": 4,
        "desc_off": 1024,
        "desc_stride": 64,
        "archive_off": 2048,
        "slabs_off": 4096,
        "seq_off": 512,
    }
    args.update(overrides)
    seg = _shm.Segment(mm, binder=binder or (lambda: None), **args)  # type: ignore[arg-type]
    return seg, mm


def test_offsets_outside_or_misaligned_are_value_errors() -> None:
    seg, _ = _segment()
    for off in (-8, SIZE, SIZE - 4, 3):
        with pytest.raises(ValueError, match="aligned int64 inside"):
            seg.load(off)
        with pytest.raises(ValueError):
            seg.store(off, 1)
    with pytest.raises(ValueError, match=r"cell 16 is outside 0\.\.15"):
        seg.sum(16)
    with pytest.raises(ValueError):
        seg.take(-1)
    with pytest.raises(ValueError, match="not a cell array"):
        seg.nonzero(8, 0, 4)
    with pytest.raises(ValueError, match="not a cell array"):
        seg.nonzero(4096, 0, 17)
    with pytest.raises(ValueError, match="slab 4 is outside"):
        seg.bind(4)
    with pytest.raises(ValueError):
        _shm.Cell(seg, 16)


@pytest.mark.parametrize(
    "overrides",
    [
        {"ncells": 0},
        {"slab_bytes": 64},  # 16 cells need 128 bytes
        {"nslabs": 100},  # slabs past the end of the buffer
        {"archive_off": SIZE - 64},
        {"desc_off": SIZE},
        {"seq_off": SIZE},
        {"slabs_off": 4100},  # not 128-aligned
    ],
)
def test_layouts_that_do_not_fit_are_refused(overrides: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        _segment(**overrides)


def test_a_read_only_buffer_is_refused() -> None:
    with pytest.raises(BufferError, match="not writable"):
        _shm.Segment(b"x" * SIZE, 16, 128, 4, 1024, 64, 2048, 4096, 512, lambda: None)
    with pytest.raises(TypeError, match="binder must be callable"):
        _shm.Segment(bytearray(SIZE), 16, 128, 4, 1024, 64, 2048, 4096, 512, 42)


def test_first_write_calls_the_binder_and_then_writes_the_own_slab() -> None:
    calls = []
    holder: list[_shm.Segment] = []

    def binder() -> None:
        calls.append(1)
        holder[0].bind(2)

    seg, _ = _segment(binder)
    holder.append(seg)
    c = _shm.Cell(seg, 5)
    assert seg.bound_slab() == -1
    c.increment(7)
    c.increment()
    c -= 3
    assert calls == [1] and seg.bound_slab() == 2
    assert seg.load(4096 + 2 * 128 + 5 * 8) == 5
    assert seg.sum(5) == 0  # slab 2's state word is FREE: not summed
    seg.store(1024 + 2 * 64, 1)  # mark it LIVE
    assert seg.sum(5) == 5
    seg.store(2048 + 5 * 8, 10)  # the archive
    assert seg.sum(5) == 15 and seg.sum_many([5, 4]) == [15, 0]
    assert seg.nonzero(4096 + 2 * 128, 0, 16) == [(5, 5)]
    assert seg.take(5) == 15 and seg.sum(5) == 0
    seg.unbind()
    assert seg.bound_slab() == -1


def test_a_binder_that_fails_or_binds_nothing_changes_nothing() -> None:
    def failing() -> None:
        raise OSError("no slab for you")

    seg, mm = _segment(failing)
    with pytest.raises(OSError, match="no slab for you"):
        _shm.Cell(seg, 0).increment()
    seg2, mm2 = _segment(lambda: None)
    with pytest.raises(RuntimeError, match="did not bind a slab"):
        _shm.Cell(seg2, 0).increment()
    k = _shm.KeyedCells(seg2, lambda key: 3)
    with pytest.raises(RuntimeError, match="did not bind a slab"):
        k.increment("a")
    assert mm[:] == bytes(SIZE) and mm2[:] == bytes(SIZE)


def test_an_odd_sequence_makes_sum_refuse() -> None:
    seg, _ = _segment()
    seg.store(512, 1)  # a fold or reset "in progress"
    assert seg.sum(0) is None and seg.sum_many([0, 1]) is None
    seg.add(512, 1)
    assert seg.sum(0) == 0


def test_keyed_register_must_return_a_valid_cell() -> None:
    seg, _ = _segment(lambda: None)
    k = _shm.KeyedCells(seg, lambda key: 99)
    with pytest.raises(ValueError, match="cell 99 is outside"):
        k.increment("a")
    assert k.cells == {}


def test_keyed_cells_cache_is_read_only_and_checked() -> None:
    """The increment trusts the cells it remembers: Python cannot write them
    (issue 27: a key pointed at another counter's cell, at -1, or at 1 << 40),
    and find()'s answers are checked before they are remembered."""
    seg, _ = _segment(lambda: seg.bind(0))
    answers = {"a": 3, "far": 1 << 40, "neg": -1, "text": "5"}
    k = _shm.KeyedCells(seg, lambda key: 7, answers.get)
    k.increment("new")
    assert k.cells == {"new": 7}
    for bad in (5, -1, 1 << 40):
        with pytest.raises(TypeError):
            k.cells["new"] = bad  # type: ignore[index]
    with pytest.raises(AttributeError):
        k.cells = {}  # type: ignore[misc]
    k.increment("new", 1000)
    assert seg.load(4096 + 7 * 8) == 1001 and seg.load(4096 + 5 * 8) == 0  # slab 0
    assert k.lookup("a") == 3 and k.lookup("absent") is None
    with pytest.raises(ValueError, match=r"cell 1099511627776 is outside 0\.\.15"):
        k.lookup("far")
    with pytest.raises(ValueError, match=r"cell -1 is outside"):
        k.lookup("neg")
    with pytest.raises(TypeError):
        k.lookup("text")
    with pytest.raises(TypeError, match="key must be a str"):
        k.lookup(1)  # type: ignore[arg-type]
    assert dict(k.cells) == {"new": 7, "a": 3}
