"""memory:// keyed counters: tallies.KeyedCounter behind the Store interface.

These need tallies.KeyedCounter (built in another branch); they fail until
it is merged.
"""

from __future__ import annotations

import collections

import pytest

import tallies


def test_memory_keyed_is_a_keyed_counter_and_the_same_object() -> None:
    with tallies.open("memory://") as s:
        kc = s.keyed("status")
        assert isinstance(kc, tallies.KeyedCounter)
        assert s.keyed("status") is kc
        kc.increment("200", 10)
        kc.increment("404")
        kc.decrement("200")
        assert kc.value("200") == 9
        assert kc["404"] == 1
        assert s.snapshot() == {"counters": {}, "keyed": {"status": {"200": 9, "404": 1}}}
        assert kc.reset("404") == 1
        assert kc.reset() == collections.Counter({"200": 9})
        assert s.names() == ["status"]


def test_memory_a_name_is_either_a_counter_or_keyed() -> None:
    with tallies.open("memory://") as s:
        s.counter("x")
        with pytest.raises(ValueError, match="is a counter"):
            s.keyed("x")
        s.keyed("y")
        with pytest.raises(ValueError, match="is a keyed counter"):
            s.counter("y")
