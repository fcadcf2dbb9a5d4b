"""tallies.prometheus.Collector against real stores, read back through prometheus_client.

Every value is rendered by prometheus_client's own exposition code
(``generate_latest``) and parsed back by its own parser, so what is checked is
what a Prometheus server receives.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

import tallies
from tallies._export import PROMETHEUS_INVALID
from tallies.prometheus import Collector, metric_names


def scrape(collector: Collector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_counters_and_keyed_counters_of_a_shm_store(shm_url: str) -> None:
    with tallies.open(shm_url) as store:
        store.counter("requests").increment(12)
        store.counter("errors").increment(3)
        store.counter("errors").decrement(1)
        status = store.keyed("status")
        status.increment("200", 10)
        status.increment("404", 2)
        status.increment('we"ird\\key\n', 5)
        got = scrape(Collector(store))
    assert got == {
        ("tallies_requests_total", ()): 12,
        ("tallies_errors_total", ()): 2,
        ("tallies_status_total", (("key", "200"),)): 10,
        ("tallies_status_total", (("key", "404"),)): 2,
        ("tallies_status_total", (("key", 'we"ird\\key\n'),)): 5,
    }


def test_label_namespace_and_a_url_instead_of_a_store(shm_url: str) -> None:
    with tallies.open(shm_url) as store:
        store.keyed("hits").increment("a", 4)
        got = scrape(Collector(shm_url.partition("?")[0], namespace="app_", label="path"))
    assert got == {("app_hits_total", (("path", "a"),)): 4}
    got = scrape(Collector(shm_url.partition("?")[0], namespace=""))
    assert got == {("hits_total", (("key", "a"),)): 4}


@pytest.mark.parametrize(
    "value", [2**53, 2**53 - 1, -(2**53), 2**52 + 1, 10**15 + 7, 1, 0, -1, 4_294_967_297]
)
def test_counts_are_exact_up_to_2_to_the_53(shm_url: str, value: int) -> None:
    with tallies.open(shm_url) as store:
        store.counter("big").increment(value)
        store.keyed("k").increment("x", value)
        got = scrape(Collector(store))
    assert got[("tallies_big_total", ())] == value
    assert int(got[("tallies_big_total", ())]) == value
    assert int(got[("tallies_k_total", (("key", "x"),))]) == value


def test_beyond_2_to_the_53_a_count_is_the_nearest_float64(shm_url: str) -> None:
    value = 2**53 + 1  # not a float64: Prometheus itself cannot hold it
    with tallies.open(shm_url) as store:
        store.counter("big").increment(value)
        got = scrape(Collector(store))
    assert got[("tallies_big_total", ())] == float(value) == 2**53


def test_describe_is_cheap_and_registration_reads_nothing(shm_url: str) -> None:
    with tallies.open(shm_url) as store:
        store.counter("x").increment()
        collector = Collector(store)
        assert collector.describe() == []
        registry = CollectorRegistry(auto_describe=True)
        registry.register(collector)
        store.close()
        # Registration did not read the store: collecting a closed store now fails.
        with pytest.raises(ValueError, match="closed"):
            generate_latest(registry)


def test_bad_arguments() -> None:
    with tallies.open("memory://") as store:
        with pytest.raises(ValueError, match="label"):
            Collector(store, label="__reserved")
        with pytest.raises(ValueError, match="label"):
            Collector(store, label="no-dash")
        with pytest.raises(ValueError, match="namespace"):
            Collector(store, namespace="1x")
        with pytest.raises(TypeError, match="Store"):
            Collector(42)  # type: ignore[arg-type]
    with pytest.raises(tallies.StoreNotFoundError):
        Collector("shm://tallies-test-never-created-xyz")


# ---------------------------------------------------------------- the name rule


def test_names_prometheus_rejects_are_mapped_by_the_documented_rule(shm_url: str) -> None:
    with tallies.open(shm_url) as store:
        for name, n in [("a-b", 1), ("a.b", 2), ("a_b", 3), ("9lives", 4), ("über", 5)]:
            store.counter(name).increment(n)
        store.counter("hits").increment(6)
        store.counter("hits_total").increment(7)
        got = scrape(Collector(store))
        again = scrape(Collector(store))
    assert got == again  # the same names on every scrape
    assert got == {
        ("tallies_a_b_total", ()): 3,  # already valid: keeps its name
        ("tallies_U__a_2d_b_total", ()): 1,  # escaped, reversibly
        ("tallies_U__a_2e_b_total", ()): 2,
        ("tallies_9lives_total", ()): 4,
        ("tallies_U___fc_ber_total", ()): 5,
        ("tallies_hits_total", ()): 6,
        ("tallies_U__hits__total__total", ()): 7,  # hits_total: escaped, see _export.py
    }


def test_a_series_name_never_changes_when_other_names_appear(shm_url: str) -> None:
    """Issue 26: api.errors at 3 was tallies_api_errors_total until api_errors
    (5000) appeared; then it was renamed and the series jumped from 3 to 5000."""
    with tallies.open(shm_url) as store:
        store.counter("api.errors").increment(3)
        first = scrape(Collector(store))
        store.counter("api_errors").increment(5000)
        second = scrape(Collector(store))
    assert first == {("tallies_U__api_2e_errors_total", ()): 3}
    assert second == {
        ("tallies_U__api_2e_errors_total", ()): 3,
        ("tallies_api_errors_total", ()): 5000,
    }


def test_a_leading_digit_without_namespace_is_escaped(shm_url: str) -> None:
    with tallies.open(shm_url) as store:
        store.counter("9lives").increment(9)
        got = scrape(Collector(store, namespace=""))
    assert got == {("U__9lives_total", ()): 9}


names = st.builds(
    lambda stem, end: stem + end,
    st.text(alphabet=st.sampled_from("ab_-.:9Ü xU"), min_size=1, max_size=8),
    st.sampled_from(["", "", "_total", "_created", "_window_count", "_per_second"]),
)
OCCUPIES = {  # what each kind's families take in OpenMetrics (counters: B, B_total, B_created)
    "counter": ("", "_total", "_created"),
    "keyed": ("", "_total", "_created"),
    "rate": ("", "_total", "_created", "_window_count", "_per_second"),
    "keyed_rate": ("_window_count", "_per_second"),
}


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(names, st.sampled_from(sorted(OCCUPIES)), max_size=12),
    st.sampled_from(["tallies_", ""]),
)
def test_mapping_is_valid_injective_order_free(kinds: dict[str, str], namespace: str) -> None:
    """Each store name has one kind (stores enforce it); every series name is valid,
    none is shared (nor any name OpenMetrics reserves), each depends on its own store
    name only, and both expositions parse back with every series."""
    entries = [(kind, name) for name, kind in kinds.items()]
    mapped = metric_names(entries, namespace)
    assert mapped == metric_names(list(reversed(entries)), namespace)
    assert len(mapped) == len(entries)  # nothing merged, nothing dropped
    taken: list[str] = []
    for (kind, name), base in mapped.items():
        assert base == metric_names([(kind, name)], namespace)[(kind, name)]  # alone, the same
        assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", base)
        assert not PROMETHEUS_INVALID.search(base)
        taken += [base + suffix for suffix in OCCUPIES[kind]]
    assert len(taken) == len(set(taken))
    with tallies.open("memory://") as store:
        for name, kind in kinds.items():
            if kind == "counter":
                store.counter(name).increment()
            elif kind == "keyed":
                store.keyed(name).increment("k")
            elif kind == "rate":
                store.rate(name).increment()
            else:
                store.keyed_rate(name).increment("k")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(store, namespace=namespace))
        samples = [
            s.name
            for f in text_string_to_metric_families(generate_latest(registry).decode())
            for s in f.samples
        ]
        om = generate_openmetrics(registry).decode()
        om_samples = [s.name for f in parse_openmetrics(om) for s in f.samples]
    expected = {"counter": 1, "keyed": 1, "rate": 3, "keyed_rate": 2}
    assert len(samples) == len(set(samples)) == sum(expected[k] for k in kinds.values())
    assert sorted(om_samples) == sorted(samples)


def test_importing_tallies_does_not_import_the_integrations() -> None:
    code = (
        "import sys, tallies\n"
        "bad = [m for m in ('prometheus_client', 'opentelemetry', 'rich', 'tallies.prometheus',"
        " 'tallies.otel') if m in sys.modules]\n"
        "print(bad)\n"
        "c = tallies.Counter(); p = tallies.progress(c, total=1)\n"
        "print([m for m in ('prometheus_client', 'opentelemetry', 'rich') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[]", "[]"]


BLOCK = "import sys\nfor m in {mods!r}: sys.modules[m] = None  # as if not installed\n"


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("tallies.prometheus", ["prometheus_client"], "tallies[prometheus]"),
        ("tallies.otel", ["opentelemetry", "opentelemetry.metrics"], "tallies[otel]"),
    ],
)
def test_a_missing_extra_is_a_clear_import_error(
    module: str, blocked: list[str], extra: str
) -> None:
    code = BLOCK.format(mods=blocked) + (
        f"try:\n    import {module}\nexcept ImportError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"pip install {extra}" in done.stdout


def test_serve_without_prometheus_client_says_so_in_one_line(shm_url: str) -> None:
    with tallies.open(shm_url):
        code = BLOCK.format(mods=["prometheus_client"]) + (
            "from tallies.cli import main\n"
            f"sys.exit(main(['serve', {shm_url.partition('?')[0]!r}, '--port', '0']))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == (
        "tallies serve: prometheus_client is not installed: pip install tallies[prometheus]\n"
    )
