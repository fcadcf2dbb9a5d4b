"""Pickles written by tallies 0.1.0 load as the same types with the same values.

``tests/fixtures/pickles-0.1.0/`` was written by tallies 0.1.0 itself (commit
7ce0762, before the package was laid out by scope), with the C core and with
the pure fallback (``TALLIES_PURE=1``), protocols 2 and 5.  Pickling the same
values today must give the same bytes, so pickles also travel back to 0.1.0.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

import tallies

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pickles-0.1.0"
KEYED = {"a": 3, "b": -2, ("t", 1): 2**62, 7: 1}
VALUES: dict[str, Any] = {
    "Counter": 2**63 - 1,
    "Counter-negative": -42,
    "ShardedCounter": 123456789,
    "KeyedCounter": KEYED,
}


def _manifest() -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for impl in ("c", "pure"):
        found.update(json.loads((FIXTURES / f"manifest-{impl}.json").read_text()))
    return found


MANIFEST = _manifest()


def _value(obj: Any) -> Any:
    return dict(obj.items()) if hasattr(obj, "items") else obj.value()


def _class(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)  # type: ignore[no-any-return]


def test_every_fixture_is_listed() -> None:
    assert sorted(MANIFEST) == sorted(p.name for p in FIXTURES.glob("*.pickle"))
    assert len(MANIFEST) == 16


@pytest.mark.parametrize("fixture", sorted(MANIFEST))
def test_a_0_1_0_pickle_loads_as_the_same_type_and_value(fixture: str) -> None:
    impl, rest = fixture.split("-", 1)
    kind = rest.removesuffix(".pickle").rsplit("-p", 1)[0]
    obj = pickle.loads((FIXTURES / fixture).read_bytes())
    assert type(obj) is _class(MANIFEST[fixture]["type"])
    if impl == "c" and tallies.IMPLEMENTATION == "c":
        # C pickles name the public types (tallies.Counter, tallies.keyed.KeyedCounter).
        assert type(obj).__module__ in ("tallies", "tallies.keyed")
    assert _value(obj) == VALUES[kind]
    if kind != "KeyedCounter":
        obj.decrement()  # still a working counter
        assert obj.value() == VALUES[kind] - 1
    else:
        obj.increment("a")
        assert obj.value("a") == 4


@pytest.mark.parametrize("fixture", sorted(MANIFEST))
def test_pickling_today_gives_0_1_0_bytes(fixture: str) -> None:
    impl, rest = fixture.split("-", 1)
    if impl == "c" and tallies.IMPLEMENTATION != "c":
        pytest.skip("TALLIES_PURE=1: no C objects to pickle in this run")
    kind, proto = rest.removesuffix(".pickle").rsplit("-p", 1)
    cls = _class(MANIFEST[fixture]["type"])
    obj = cls(VALUES[kind]) if kind != "KeyedCounter" else cls(KEYED)
    assert pickle.dumps(obj, protocol=int(proto)) == (FIXTURES / fixture).read_bytes()
