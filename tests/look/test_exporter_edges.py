"""Exporters never fail a scrape for one key; OpenTelemetry reads the store once per
collection and keeps every instrument name valid (at most 255 characters)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

import tallies
from tallies.otel import observe
from tallies.prometheus import Collector

ODD = os.fsdecode(b"/files/caf\xe9.txt")  # a lone surrogate: not valid Unicode text
OTEL_NAME = re.compile(r"[a-zA-Z][-_./a-zA-Z0-9]{0,254}\Z")


def _prometheus(store: tallies.Store) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(store))
    text = generate_latest(registry).decode("utf-8")
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    # and the OpenMetrics exposition of the same registry parses too
    for _ in parse_openmetrics(generate_openmetrics(registry).decode("utf-8")):
        pass
    return out


def test_a_key_that_is_not_valid_unicode_is_escaped_not_fatal() -> None:
    """Before: generate_latest raised UnicodeEncodeError for the whole registry."""
    with tallies.open("memory://") as store:
        store.counter("requests").increment(2)
        files = store.keyed("files")
        # no store takes such a key from tallies (docs/contract.md), but a Redis
        # hash written by another client can hold one: put it in under the check
        tallies.KeyedCounter.increment(files, ODD, 3)
        files.increment("/files/ok.txt", 1)
        got = _prometheus(store)
    assert got == {
        ("tallies_requests_total", ()): 2,
        ("tallies_files_total", (("key", "/files/caf\\udce9.txt"),)): 3,
        ("tallies_files_total", (("key", "/files/ok.txt"),)): 1,
    }


def test_an_odd_key_whose_escape_is_taken_is_left_out_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with tallies.open("memory://") as store:
        files = store.keyed("files")
        files.increment("/files/caf\\udce9.txt", 5)  # the escape, literally
        tallies.KeyedCounter.increment(files, ODD, 3)  # as another Redis client could
        with caplog.at_level(logging.WARNING, logger="tallies"):
            got = _prometheus(store)
    assert got == {("tallies_files_total", (("key", "/files/caf\\udce9.txt"),)): 5}
    assert "is not valid Unicode and its escape" in caplog.text and "'files'" in caplog.text


def _counting(store: tallies.Store) -> list[int]:
    calls = [0]
    real: Callable[[], Any] = store.snapshot

    def snapshot() -> Any:
        calls[0] += 1
        return real()

    store.snapshot = snapshot  # type: ignore[method-assign]
    return calls


def test_an_otel_collection_reads_the_store_once() -> None:
    """Before: each rate's three callbacks took a full snapshot each (and each
    counter read its own value): 3 x rates reads per collection."""
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    with tallies.open("memory://") as store:
        for i in range(10):
            store.rate(f"r{i}", 60, 1).increment(i)
            store.keyed_rate(f"k{i}", 60, 1).increment("x", i)
        store.counter("c").increment(7)
        store.keyed("kc").increment("a", 2)
        observed = observe(store, meter)
        calls = _counting(store)
        for n in range(1, 4):
            store.rate("r3").increment()
            data = reader.get_metrics_data()
            assert calls[0] == n  # one read per collection
            assert data is not None
            values = {
                m.name: [p.value for p in m.data.data_points]
                for rm in data.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            }
            assert values["tallies.r3.window_count"] == [3 + n]  # this collection's read
            assert values["tallies.r9"] == [9] and values["tallies.c"] == [7]
            assert values["tallies.k9.window_count"] == [9]
        assert observed.reads == 3


def test_otel_instrument_names_are_valid_and_at_most_255_characters() -> None:
    """Before: a 224-byte rate name plus the prefix raised in observe(), leaving the
    instruments registered before it."""
    long_names = ["r" * 224, "é" * 112, "R" * 224, "a.b " * 50, "x" * 223 + "y"]
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    url = "shm://t-otel-names-" + os.urandom(4).hex()
    try:
        with tallies.open(url) as store:
            for i, name in enumerate(long_names):
                store.rate(name, 60, 1).increment(i + 1)
            store.keyed("k" * 224).increment(ODD.replace("\udce9", "e"), 1)
            observed = observe(store, meter, prefix="my.service.tallies.")
            data = reader.get_metrics_data()
        assert data is not None
        seen = {
            m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }
        made = [n for base in observed.names.values() for n in (base, base + ".window_count")]
        assert all(OTEL_NAME.match(n) for n in made), [n for n in made if not OTEL_NAME.match(n)]
        assert len({n.lower() for n in observed.names.values()}) == len(long_names) + 1
        assert len(seen) == 3 * len(long_names) + 1  # every instrument reported
    finally:
        tallies.destroy(url)


def test_otel_attributes_of_an_odd_key_are_escaped() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    with tallies.open("memory://") as store:
        tallies.KeyedCounter.increment(store.keyed("files"), ODD, 3)  # see above
        observe(store, meter)
        data = reader.get_metrics_data()
    assert data is not None
    (metric,) = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    assert [(dict(p.attributes or {}), p.value) for p in metric.data.data_points] == [
        ({"key": "/files/caf\\udce9.txt"}, 3)
    ]
