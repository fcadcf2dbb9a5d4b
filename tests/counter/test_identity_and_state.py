"""Counter and ShardedCounter as objects: equality, weak references, subclass state (issue 27).

Both implementations (the ``impl`` fixture), both classes.

* One rule for ``==``: a counter is a shared, mutable cell that other threads
  change at any moment, so two counters compare by identity (as
  ``threading.Lock`` or Java's ``AtomicLong`` do), and stay hashable: a
  counter can key a dict or sit in a set.  Compare values with
  ``a.value() == b.value()``.  (``KeyedCounter`` is a multiset and compares
  by value, as ``collections.Counter`` does.)
* Weak references work, as they do for ``collections.Counter``.
* A subclass keeps its ``__slots__`` values (and its ``__dict__``) through
  pickle, ``copy.copy`` and ``copy.deepcopy``: before, only ``__dict__`` was
  kept.
"""

from __future__ import annotations

import copy
import gc
import pickle
import weakref
from types import ModuleType
from typing import Any

import pytest

CLASSES = ["Counter", "ShardedCounter"]


@pytest.mark.parametrize("name", CLASSES)
def test_counters_compare_and_hash_by_identity(impl: ModuleType, name: str) -> None:
    cls = getattr(impl, name)
    a, b = cls(3), cls(3)
    assert (a == a) is True and (a != a) is False
    assert (a != b) is True and (a == b) is False  # the same value, two counters
    assert a.value() == b.value()  # how to compare values
    assert a != 3 and hash(a) == hash(a)
    owners = {a: "jobs", b: "queue"}
    assert owners[a] == "jobs" and len({a, b, a}) == 2
    assert "identity" in (cls.__doc__ or "")


@pytest.mark.parametrize("name", CLASSES)
def test_a_counter_takes_weak_references(impl: ModuleType, name: str) -> None:
    c = getattr(impl, name)(5)
    ref = weakref.ref(c)
    assert ref() is c
    finalised: list[int] = []
    weakref.finalize(c, finalised.append, 1)
    registry = weakref.WeakValueDictionary({"c": c})
    del c
    gc.collect()
    assert ref() is None and finalised == [1] and "c" not in registry


def slotted(base: type) -> type:
    """A module-level subclass (pickle finds it) with __slots__, one of them
    name-mangled, and no __dict__."""
    name = f"Slotted{base.__name__}_{base.__module__.replace('.', '_')}"
    cls = globals().get(name)
    if cls is None:
        cls = type(name, (base,), {"__module__": __name__, "__slots__": ("tag", "__secret")})
        cls.__qualname__ = name
        globals()[name] = cls
    return cls


def slotted_with_dict(base: type) -> type:
    """Its subclass adding a slot and a __dict__."""
    parent = slotted(base)
    name = f"SlottedDict{base.__name__}_{base.__module__.replace('.', '_')}"
    cls = globals().get(name)
    if cls is None:
        cls = type(name, (parent,), {"__module__": __name__, "__slots__": ("more", "__dict__")})
        cls.__qualname__ = name
        globals()[name] = cls
    return cls


def _clones(c: Any) -> list[Any]:
    return [pickle.loads(pickle.dumps(c, p)) for p in range(pickle.HIGHEST_PROTOCOL + 1)] + [
        copy.copy(c),
        copy.deepcopy(c),
    ]


@pytest.mark.parametrize("name", CLASSES)
def test_a_subclass_keeps_its_slots_through_pickle_and_copy(impl: ModuleType, name: str) -> None:
    cls = slotted(getattr(impl, name))
    c = cls(-7)
    c.tag = ["queue"]
    secret = "_" + cls.__name__ + "__secret"
    setattr(c, secret, 42)
    for clone in _clones(c):
        assert type(clone) is cls and clone is not c
        assert clone.value() == -7
        assert clone.tag == ["queue"] and getattr(clone, secret) == 42
    deep = copy.deepcopy(c)
    assert deep.tag is not c.tag  # deepcopy copies the state too
    half = cls(1)  # a slot never set stays unset
    half.tag = "only"
    for clone in _clones(half):
        assert clone.tag == "only" and not hasattr(clone, secret)


@pytest.mark.parametrize("name", CLASSES)
def test_a_subclass_keeps_slots_and_dict_together(impl: ModuleType, name: str) -> None:
    cls = slotted_with_dict(getattr(impl, name))
    c = cls(9)
    c.tag, c.more, c.note = "t", "m", "n"
    for clone in _clones(c):
        assert (clone.value(), clone.tag, clone.more, clone.note) == (9, "t", "m", "n")
