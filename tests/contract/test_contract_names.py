"""The contract, names: docs/contract.md, "Names".  Every test runs on every store."""

from __future__ import annotations

import pytest
from _contract import another_writer

import tallies


@pytest.mark.parametrize(
    ("name", "error"),
    [
        (3, TypeError),
        (b"x", TypeError),
        (None, TypeError),
        ("", ValueError),
        ("a\x00b", ValueError),
        ("\udc80", ValueError),
        ("x" * 225, ValueError),
        ("é" * 113, ValueError),
        ("}a", ValueError),
    ],
)
def test_bad_names_raise_and_create_nothing(store_url: str, name: object, error: type) -> None:
    with tallies.open(store_url) as s:
        with pytest.raises(error):
            s.counter(name)  # type: ignore[arg-type]
        with pytest.raises(error):
            s.keyed(name)  # type: ignore[arg-type]
        assert s.names() == []
        assert s.snapshot() == {"counters": {}, "keyed": {}}


def test_names_may_hold_any_other_text(store_url: str) -> None:
    good = ["a}", "{x}", "{", "a b", "é✓", "x" * 224, "tab\tname", "a:b*"]
    with tallies.open(store_url) as s:
        for name in good:
            s.counter(name).increment()
        s.flush()
        assert s.names() == sorted(good)
        assert s.snapshot()["counters"] == dict.fromkeys(sorted(good), 1)


def test_a_name_is_a_counter_or_a_keyed_counter(store_url: str) -> None:
    with tallies.open(store_url) as s:
        s.counter("c").increment()
        s.keyed("k").increment("x")
        with pytest.raises(ValueError, match="'c' is a counter"):
            s.keyed("c")
        with pytest.raises(ValueError, match="'k' is a keyed counter"):
            s.counter("k")
        s.flush()
    with tallies.open(another_writer(store_url)) as s:  # as another process sees it
        with pytest.raises(ValueError, match="'c' is a counter"):
            s.keyed("c")
        with pytest.raises(ValueError, match="'k' is a keyed counter"):
            s.counter("k")


def test_names_and_the_snapshot_are_sorted(store_url: str) -> None:
    with tallies.open(store_url) as s:
        for name in ["b", "a", "d"]:
            s.counter(name)
        for name in ["z", "c"]:
            s.keyed(name).increment("k")
        assert s.names() == ["a", "b", "c", "d", "z"]
        snap = s.snapshot()
        assert list(snap) == ["counters", "keyed"]
        assert list(snap["counters"]) == ["a", "b", "d"]
        assert list(snap["keyed"]) == ["c", "z"]
        s.flush()
        assert s.names() == ["a", "b", "c", "d", "z"]
        assert list(s.snapshot()["keyed"]) == ["c", "z"]
