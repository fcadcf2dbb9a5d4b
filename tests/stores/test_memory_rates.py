"""memory:// rates, the refusal other stores inherit, and how `tallies show` prints rates."""

from __future__ import annotations

import json
from typing import Any

import pytest

import tallies
from tallies.cli.show import show
from tallies.stores.base import RatesUnsupportedError, Store, StoreURL


def test_memory_rates_are_shared_by_name() -> None:
    with tallies.open("memory://rates-shared") as a, tallies.open("memory://rates-shared") as b:
        r = a.rate("requests", window=10.0, resolution=0.5)
        assert b.rate("requests", window=10.0, resolution=0.5) is r
        assert b.rate("requests", 10, 0.5) is r
        r.increment(3)
        assert isinstance(r, tallies.RateCounter)
        k = a.keyed_rate("status")
        k.increment("200", 2)
        assert b.keyed_rate("status") is k
        assert isinstance(k, tallies.KeyedRateCounter)
        snap = b.snapshot()
        assert snap["rates"] == {
            "requests": {
                "window": 10.0,
                "resolution": 0.5,
                "count": 3,
                "per_second": 0.3,
                "total": 3,
            }
        }
        assert snap["keyed_rates"] == {
            "status": {"window": 60.0, "resolution": 1.0, "counts": {"200": 2}}
        }
        assert a.names() == ["requests", "status"]
    tallies.destroy("memory://rates-shared")


def test_sections_are_omitted_without_rates() -> None:
    with tallies.open("memory://") as s:
        s.counter("c").increment()
        assert s.snapshot() == {"counters": {"c": 1}, "keyed": {}}
        s.keyed_rate("k")
        assert "rates" not in s.snapshot()
        assert s.snapshot()["keyed_rates"] == {
            "k": {"window": 60.0, "resolution": 1.0, "counts": {}}
        }


def test_name_clashes_and_other_windows_are_refused() -> None:
    with tallies.open("memory://") as s:
        s.counter("c")
        s.rate("r", 60, 1)
        s.keyed_rate("kr")
        with pytest.raises(ValueError, match="'c' is a counter in this store"):
            s.rate("c")
        with pytest.raises(ValueError, match="'r' is a rate in this store"):
            s.counter("r")
        with pytest.raises(ValueError, match="'r' is a rate in this store"):
            s.keyed_rate("r")
        with pytest.raises(ValueError, match="'kr' is a keyed rate in this store"):
            s.rate("kr")
        with pytest.raises(ValueError, match="'kr' is a keyed rate in this store"):
            s.keyed("kr")
        with pytest.raises(
            ValueError,
            match=r"'r' is a rate with window=60.0, resolution=1.0 in this store, "
            r"not window=30.0, resolution=1.0",
        ):
            s.rate("r", 30)
        with pytest.raises(ValueError, match=r"RateCounter\(\) resolution must be"):
            s.rate("new", 1, 2)
        with pytest.raises(TypeError, match="counter name must be a str"):
            s.rate(5)  # type: ignore[arg-type]
        assert s.names() == ["c", "kr", "r"]  # sorted


class _NoRates(Store):
    """A real (minimal) store that, like the durable stores for now, has no rates."""

    scheme = "norates"

    @classmethod
    def open_url(cls, url: StoreURL, *, create: bool = True) -> Store:
        return cls(url)

    @classmethod
    def destroy_url(cls, url: StoreURL) -> bool:
        return False

    def counter(self, name: str) -> Any:
        return tallies.Counter()

    def keyed(self, name: str) -> Any:
        return tallies.KeyedCounter()

    def names(self) -> list[str]:
        return []

    def snapshot(self) -> Any:
        return {"counters": {}, "keyed": {}}


def test_stores_without_rates_refuse_clearly() -> None:
    tallies.stores.register("norates", _NoRates)
    with tallies.open("norates://x") as s:
        for call in (lambda: s.rate("r"), lambda: s.keyed_rate("r", 10, 1)):
            with pytest.raises(RatesUnsupportedError) as info:
                call()
            assert (
                str(info.value) == "norates://x: this store (norates://) does not support rates yet"
            )
            assert isinstance(info.value, tallies.StoreError)
            assert isinstance(info.value, NotImplementedError)


def test_show_prints_rates_as_count_in_window_and_per_second() -> None:
    with tallies.open("memory://show-rates") as s:
        r = s.rate("requests", window=60.0)
        r.increment(1234)
        s.keyed_rate("status", window=10.0).increment("404", 5)
        s.counter("c").increment()
        text = show("memory://show-rates")
        assert "requests       1,234 / 60 s      20.567  1,234" in text
        assert "status    404      5 / 10 s       0.500" in text
        assert text.splitlines()[1].split() == ["NAME", "KEY", "VALUE"]
        data = json.loads(show("memory://show-rates", as_json=True))
        assert data["rates"]["requests"]["count"] == 1234
        assert data["keyed_rates"]["status"]["counts"] == {"404": 5}
    tallies.destroy("memory://show-rates")
