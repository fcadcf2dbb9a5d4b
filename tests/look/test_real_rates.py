"""The exporters and the progress bar over real rates (``store.rate``, ``tallies.RateCounter``)."""

from __future__ import annotations

import io
import subprocess
import sys

from _look_support import env
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import tallies
from tallies._export import read_series
from tallies.cli.watch import History, rows
from tallies.otel import observe
from tallies.prometheus import Collector


def fill(url: str) -> None:
    """Rates written by another process (shm:// rates are shared)."""
    code = (
        f"import tallies\ns = tallies.open({url!r})\n"
        "s.rate('logins', window=60.0).increment(120)\n"
        "e = s.keyed_rate('errors', window=10.0)\n"
        "e.increment('db', 30)\ne.increment('io', 5)\n"
        "s.counter('requests').increment(7)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_prometheus_collector_over_real_rates(shm_url: str) -> None:
    with tallies.open(shm_url) as store:
        fill(shm_url)
        registry = CollectorRegistry()
        registry.register(Collector(store))
        text = generate_latest(registry).decode()
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert got == {
        ("tallies_requests_total", ()): 7,
        ("tallies_logins_window_count", ()): 120,
        ("tallies_logins_per_second", ()): 2.0,
        ("tallies_logins_total", ()): 120,
        ("tallies_errors_window_count", (("key", "db"),)): 30,
        ("tallies_errors_window_count", (("key", "io"),)): 5,
        ("tallies_errors_per_second", (("key", "db"),)): 3.0,
        ("tallies_errors_per_second", (("key", "io"),)): 0.5,
    }


def test_otel_observe_over_real_rates(shm_url: str) -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    with tallies.open(shm_url) as store:
        fill(shm_url)
        observe(store, meter)
        data = reader.get_metrics_data()
    assert data is not None
    got = {
        (m.name, tuple(sorted((p.attributes or {}).items()))): p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.data.data_points
    }
    assert got == {
        ("tallies.requests", ()): 7,
        ("tallies.logins.window_count", ()): 120,
        ("tallies.logins.per_second", ()): 2.0,
        ("tallies.logins", ()): 120,
        ("tallies.errors.window_count", (("key", "db"),)): 30,
        ("tallies.errors.window_count", (("key", "io"),)): 5,
        ("tallies.errors.per_second", (("key", "db"),)): 3.0,
        ("tallies.errors.per_second", (("key", "io"),)): 0.5,
    }


def test_watch_rows_over_real_rates(shm_url: str) -> None:
    with tallies.open(shm_url) as store:
        fill(shm_url)
        table = list(rows(read_series(store.snapshot()), History(), 0.0, top=5))
    shown = {(r.name, r.key): (r.value, r.rate) for r in table}
    assert shown == {
        ("requests", ""): ("7", ""),
        ("logins", "(last 60 s)"): ("120", "2.00/s"),
        ("errors", "db"): ("30", "3.00/s"),
        ("errors", "io"): ("5", "0.50/s"),
    }


def test_progress_follows_a_rate_counters_total() -> None:
    rate = tallies.RateCounter(window=60.0)
    out = io.StringIO()
    with tallies.progress(rate, total=500, desc="events", file=out):
        for _ in range(5):
            rate.increment(100)
    assert " 500/500 [" in out.getvalue() and "100%" in out.getvalue()
