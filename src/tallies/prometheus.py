"""A prometheus_client collector for any tallies store (``pip install tallies[prometheus]``).

    from prometheus_client import REGISTRY
    import tallies
    from tallies.prometheus import Collector

    REGISTRY.register(Collector(tallies.open("shm://web")))

Each scrape reads ``store.snapshot()`` once (no cost to the processes that
count) and exposes:

=========================  ===============================================
in the store               in Prometheus
=========================  ===============================================
counter ``requests``       counter ``tallies_requests_total``
keyed counter ``status``   counter ``tallies_status_total{key="200"}``, one
                           series per key (label name: ``label=``)
rate ``logins``            gauges ``tallies_logins_window_count`` (count in
                           the window) and ``tallies_logins_per_second``;
                           counter ``tallies_logins_total`` (all time)
keyed rate ``errors``      gauges ``tallies_errors_window_count{key=...}``
                           and ``tallies_errors_per_second{key=...}``
=========================  ===============================================

Names: the prefix (``namespace=``, default ``tallies_``) goes in front; a
name's series depend on that name alone, never on the other names in the
store, and two names never share a series (the rule in ``tallies._export``):
a name that is valid as it is keeps it (``api_errors`` is
``tallies_api_errors_total``); any other is escaped reversibly, Prometheus 3
style: ``U__``, ``_`` as ``__``, other characters as ``_<hex>_``
(``api.errors`` is ``tallies_U__api_2e_errors_total``; names ending in
``_total``, ``_created``, ``_window_count`` or ``_per_second``, which
OpenMetrics would confuse with another name's series, are escaped too: a
counter called ``hits_total`` is ``tallies_U__hits__total__total``).  A key that is not valid
Unicode (a lone surrogate) is exported with ``\\udcXX`` escapes rather than
failing the scrape (see ``tallies._export``).

Exactness: Prometheus stores every sample as a float64, so counts are exact
up to 2**53 (9,007,199,254,740,992) in magnitude; beyond that a sample is the
nearest float64.  Counters that are decremented or ``reset()`` look to
Prometheus like counter resets (``rate()`` treats them so).

``describe()`` returns ``[]``: the families depend on what the store holds at
scrape time, and an empty ``describe()`` keeps registration from reading the
store (prometheus_client's documented choice for such collectors).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ._export import PROMETHEUS_LABEL, Series, missing_extra, prometheus_base, read_series
from .stores import Store, redact_url
from .stores import open as open_store

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector as _CollectorBase
except ImportError as exc:  # pragma: no cover - exercised in a venv without the extra
    raise missing_extra("tallies.prometheus", "prometheus_client", "prometheus") from exc

__all__ = ["Collector", "metric_name", "metric_names"]


def metric_name(name: str, namespace: str = "tallies_") -> str:
    """The base metric name of the store name ``name`` (the module's rule): a
    counter is exposed as base + ``_total``, a rate as base + ``_window_count``,
    ``_per_second`` and ``_total``."""
    return prometheus_base(name, namespace)


def metric_names(
    series: Iterable[Series] | Iterable[tuple[str, str]], namespace: str = "tallies_"
) -> dict[tuple[str, str], str]:
    """The base metric name of each ``(kind, store name)`` (see :func:`metric_name`)."""
    entries = [(s.kind, s.name) if isinstance(s, Series) else s for s in series]
    return {(kind, name): metric_name(name, namespace) for kind, name in entries}


class Collector(_CollectorBase):
    """Exposes every count of ``store`` (a Store, or a URL opened with create=False).

    ``namespace`` is the prefix of every metric name (``""`` for none);
    ``label`` the label that carries a keyed counter's key.
    """

    def __init__(self, store: Store | str, *, namespace: str = "tallies_", label: str = "key"):
        if not isinstance(namespace, str) or (namespace and not PROMETHEUS_LABEL.match(namespace)):
            raise ValueError(
                f"namespace {namespace!r} is not a valid metric name prefix "
                "([a-zA-Z_][a-zA-Z0-9_]*, or empty)"
            )
        if not isinstance(label, str) or not PROMETHEUS_LABEL.match(label):
            raise ValueError(
                f"label {label!r} is not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"
            )
        if label.startswith("__"):
            raise ValueError(
                f"label {label!r} is not a valid Prometheus label name "
                "([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"
            )
        if isinstance(store, str):
            store = open_store(store, create=False)
        if not isinstance(store, Store):
            kind = type(store).__name__
            raise TypeError(f"Collector() expects a tallies Store or a URL, not {kind!r}")
        self.store = store
        self.namespace = namespace
        self.label = label

    def describe(self) -> list[Metric]:
        """Nothing: the families are known only at scrape time (see the module doc)."""
        return []

    def collect(self) -> Iterator[Metric]:
        snap: Any = self.store.snapshot()
        for s in read_series(snap):
            yield from self._families(s, metric_name(s.name, self.namespace))

    def _families(self, s: Series, base: str) -> Iterator[Metric]:
        what = f"tallies {s.kind.replace('_', ' ')} {s.name!r} in {redact_url(self.store.url)}"
        # a counter family is given base + "_total": prometheus_client strips
        # exactly that suffix, so the series is base + "_total" for every base
        if s.kind == "counter":
            yield CounterMetricFamily(base + "_total", what, value=s.value)
        elif s.kind == "keyed":
            family = CounterMetricFamily(base + "_total", what, labels=[self.label])
            for key, value in s.keys.items():
                family.add_metric([key], value)
            yield family
        elif s.kind == "rate":
            window = f"{s.window:g} s window"
            yield GaugeMetricFamily(
                base + "_window_count", f"{what}: count in the last {window}", value=s.value
            )
            yield GaugeMetricFamily(
                base + "_per_second", f"{what}: per second over the {window}", value=s.per_second
            )
            if s.total is not None:
                yield CounterMetricFamily(base + "_total", f"{what}: all-time total", value=s.total)
        else:
            window = f"{s.window:g} s window"
            counts = GaugeMetricFamily(
                base + "_window_count", f"{what}: count in the last {window}", labels=[self.label]
            )
            rates = GaugeMetricFamily(
                base + "_per_second", f"{what}: per second over the {window}", labels=[self.label]
            )
            for key, value in s.keys.items():
                counts.add_metric([key], value)
                rates.add_metric([key], value / s.window if s.window > 0 else 0.0)
            yield counts
            yield rates
