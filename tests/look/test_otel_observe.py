"""tallies.otel.observe with the OpenTelemetry SDK and its in-memory metric reader."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from _look_support import env
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import tallies
from tallies.otel import observe


def collect(reader: InMemoryMetricReader) -> dict[str, dict[tuple[tuple[str, Any], ...], Any]]:
    """{instrument name: {attributes: value}} from one collection."""
    data = reader.get_metrics_data()
    out: dict[str, dict[tuple[tuple[str, Any], ...], Any]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points = out.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    points[tuple(sorted((point.attributes or {}).items()))] = point.value
    return out


def kinds(reader: InMemoryMetricReader) -> dict[str, tuple[str, bool | None]]:
    data = reader.get_metrics_data()
    assert data is not None
    out = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = (
                    type(metric.data).__name__,
                    getattr(metric.data, "is_monotonic", None),
                )
    return out


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


def test_counters_and_keys_are_reported_cumulatively(
    shm_url: str, reader: InMemoryMetricReader
) -> None:
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    with tallies.open(shm_url) as store:
        store.counter("requests").increment(10)
        store.keyed("status").increment("200", 7)
        store.keyed("status").increment("404", 1)
        observed = observe(store, meter)
        assert observed.names == {
            ("counter", "requests"): "tallies.requests",
            ("keyed", "status"): "tallies.status",
        }
        assert collect(reader) == {
            "tallies.requests": {(): 10},
            "tallies.status": {(("key", "200"),): 7, (("key", "404"),): 1},
        }
        # Another process writes; the next collection reports the new totals.
        code = (
            f"import tallies; s = tallies.open({shm_url!r}); "
            "s.counter('requests').increment(5); s.keyed('status').increment('500', 2**53)"
        )
        done = subprocess.run([sys.executable, "-c", code], env=env(), timeout=60, check=False)
        assert done.returncode == 0
        assert collect(reader) == {
            "tallies.requests": {(): 15},
            "tallies.status": {
                (("key", "200"),): 7,
                (("key", "404"),): 1,
                (("key", "500"),): 2**53,
            },
        }
        assert kinds(reader) == {"tallies.requests": ("Sum", True), "tallies.status": ("Sum", True)}


def test_refresh_adds_new_names_and_keeps_the_old(
    shm_url: str, reader: InMemoryMetricReader
) -> None:
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    with tallies.open(shm_url) as store:
        store.counter("a").increment(1)
        observed = observe(store, meter, prefix="app.", attribute="route")
        store.counter("b").increment(2)
        store.keyed("c").increment("/x", 3)
        assert collect(reader) == {"app.a": {(): 1}}
        assert observed.refresh() == ["app.b", "app.c"]
        assert observed.refresh() == []
        assert collect(reader) == {
            "app.a": {(): 1},
            "app.b": {(): 2},
            "app.c": {(("route", "/x"),): 3},
        }


def test_up_down_counters_for_counts_that_go_down(
    shm_url: str, reader: InMemoryMetricReader
) -> None:
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    with tallies.open(shm_url) as store:
        store.counter("inflight").decrement(3)
        store.counter("done").increment(3)
        observe(store, meter, up_down=["inflight"])
        assert collect(reader) == {"tallies.inflight": {(): -3}, "tallies.done": {(): 3}}
        assert kinds(reader) == {
            "tallies.inflight": ("Sum", False),
            "tallies.done": ("Sum", True),
        }


def test_names_otel_rejects_are_mapped(shm_url: str, reader: InMemoryMetricReader) -> None:
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    with tallies.open(shm_url) as store:
        for name, n in [("hits per sec", 1), ("hits_per_sec", 2), ("Über", 3), ("HITS_per_sec", 4)]:
            store.counter(name).increment(n)
        observed = observe(store, meter)
        got = collect(reader)
    names = observed.names
    # a lowercase valid name keeps it; the others are escaped (capitals too: OTel
    # compares names case-insensitively), each from its own name alone
    assert names == {
        ("counter", "hits_per_sec"): "tallies.hits_per_sec",
        ("counter", "hits per sec"): "tallies.U__hits_20_per_20_sec",
        ("counter", "Über"): "tallies.U___dc_ber",
        ("counter", "HITS_per_sec"): "tallies.U___48__49__54__53___per__sec",
    }
    assert len({n.lower() for n in names.values()}) == 4
    # (the SDK exports instrument names in lower case)
    assert {name: got[names[("counter", name)].lower()][()] for _, name in names} == {
        "hits per sec": 1,
        "hits_per_sec": 2,
        "Über": 3,
        "HITS_per_sec": 4,
    }


def test_bad_arguments(reader: InMemoryMetricReader) -> None:
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    with tallies.open("memory://") as store:
        with pytest.raises(ValueError, match="prefix"):
            observe(store, meter, prefix="9x")
        with pytest.raises(ValueError, match="attribute"):
            observe(store, meter, attribute="")
    with pytest.raises(TypeError, match="Store"):
        observe("shm://x", meter)  # type: ignore[arg-type]
