"""tallies.open(url): the registry of schemes, the Store interface, memory://."""

from __future__ import annotations

import pytest

import tallies
from tallies.stores import StoreURL, parse_url, register, schemes
from tallies.stores.base import Snapshot, Store


def test_open_destroy_and_store_are_exported() -> None:
    assert tallies.open is tallies.stores.open
    assert tallies.destroy is tallies.stores.destroy
    assert tallies.Store is Store
    assert issubclass(tallies.CapacityError, RuntimeError)
    assert issubclass(tallies.CorruptSegmentError, ValueError)


def test_parse_url_splits_scheme_target_and_params() -> None:
    u = parse_url("shm://app?names=10&slabs=4")
    assert (u.scheme, u.target, dict(u.params)) == ("shm", "app", {"names": "10", "slabs": "4"})
    assert parse_url("SQLITE:///var/db.sqlite").target == "/var/db.sqlite"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("app", "not a store URL"),
        ("://app", "not a store URL"),
        ("shm://app?names=1&names=2", "given twice"),
        ("shm://app?names", "malformed query"),
        ("shm://app#frag", "fragment"),
    ],
)
def test_bad_urls_are_clear_value_errors(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tallies.open(url)


def test_url_must_be_a_str() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        tallies.open(b"shm://app")  # type: ignore[arg-type]


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown store scheme 'nosuch'.*memory://.*shm://"):
        tallies.open("nosuch://x")
    assert {"memory", "shm"} <= set(schemes())


def test_unknown_parameter_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown parameter"):
        tallies.open("memory://?size=3")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) colour"):
        tallies.open("shm://app?colour=red")


def test_store_is_abstract() -> None:
    with pytest.raises(TypeError):
        Store(parse_url("x://y"))  # type: ignore[abstract]


class _DictStore(Store):
    """A third-party scope: the interface is enough to plug one in."""

    scheme = "dictish"

    @classmethod
    def open_url(cls, url: StoreURL, *, create: bool = True) -> _DictStore:
        return cls(url)

    @classmethod
    def destroy_url(cls, url: StoreURL) -> bool:
        return False

    def counter(self, name: str) -> tallies.Counter:
        return tallies.Counter()

    def keyed(self, name: str) -> tallies.Counter:  # type: ignore[override]
        raise NotImplementedError

    def names(self) -> list[str]:
        return []

    def snapshot(self) -> Snapshot:
        return {"counters": {}, "keyed": {}}


def test_register_adds_a_scheme() -> None:
    register("dictish", _DictStore)
    with tallies.open("dictish://anything") as s:
        assert isinstance(s, _DictStore)
        assert s.counter("x").value() == 0
    assert s.closed
    with pytest.raises(ValueError, match="invalid scheme"):
        register("Bad-Scheme", _DictStore)
    with pytest.raises(TypeError):
        register("okay", dict)  # type: ignore[arg-type]


# ---- memory:// ----------------------------------------------------------------


def test_memory_counter_is_the_core_counter_and_the_same_object() -> None:
    with tallies.open("memory://") as s:
        c = s.counter("requests")
        assert isinstance(c, tallies.Counter)
        assert s.counter("requests") is c
        c.increment(3)
        c.decrement()
        assert s.counter("requests").value() == 2
        assert s.names() == ["requests"]
        assert s.snapshot() == {"counters": {"requests": 2}, "keyed": {}}
        s.flush()  # writes are immediate: nothing to do, but it exists


def test_memory_private_stores_are_separate_named_ones_shared() -> None:
    a, b = tallies.open("memory://"), tallies.open("memory://")
    a.counter("x").increment()
    assert b.names() == []
    n1, n2 = tallies.open("memory://shared-test"), tallies.open("memory://shared-test")
    try:
        n1.counter("x").increment(5)
        assert n2.counter("x") is n1.counter("x")
        assert n2.snapshot()["counters"] == {"x": 5}
    finally:
        assert tallies.destroy("memory://shared-test") is True
    assert tallies.destroy("memory://shared-test") is False
    assert tallies.open("memory://shared-test").names() == []
    tallies.destroy("memory://shared-test")


def test_memory_create_false_needs_an_existing_store() -> None:
    with pytest.raises(tallies.StoreNotFoundError):
        tallies.open("memory://never-made", create=False)
    with pytest.raises(FileNotFoundError):  # StoreNotFoundError is one
        tallies.open("memory://", create=False)


def test_close_is_idempotent_and_a_closed_store_refuses_calls() -> None:
    s = tallies.open("memory://")
    c = s.counter("x")
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(ValueError, match="closed"):
        s.counter("x")
    with pytest.raises(ValueError, match="closed"):
        s.snapshot()
    with pytest.raises(ValueError, match="closed"), s:
        pass
    c.increment()  # an in-process counter keeps working
    assert c.value() == 1
    assert "closed" in repr(s)


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 225])  # 224 bytes at most (contract)
def test_memory_counter_names_are_validated(bad: str) -> None:
    with tallies.open("memory://") as s, pytest.raises(ValueError):
        s.counter(bad)


def test_memory_counter_name_must_be_a_str() -> None:
    with tallies.open("memory://") as s, pytest.raises(TypeError, match="must be a str"):
        s.counter(3)  # type: ignore[arg-type]
