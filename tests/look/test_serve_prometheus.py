"""``tallies serve`` scraped by a real Prometheus server, and its errors.

Prometheus (Debian's package) runs on a free loopback port with a 1 s scrape
interval against ``tallies serve`` on another; the test reads Prometheus's
query API and compares with the store, exactly.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from decimal import Decimal

import pytest
from _look_support import (
    env,
    free_port,
    http_get,
    prom_query,
    prometheus_server,
    serving,
    tallies_cmd,
    wait_for,
)

import tallies


def prometheus_values(base: str) -> dict[tuple[str, str], int]:
    out = {}
    for item in prom_query(base, '{__name__=~"tallies_.*", job="tallies"}'):
        metric = item["metric"]
        assert isinstance(metric, dict)
        value = item["value"]
        assert isinstance(value, list)
        exact = Decimal(value[1])
        assert exact == exact.to_integral_value(), value
        out[(metric["__name__"], metric.get("key", ""))] = int(exact)
    return out


def store_values(store: tallies.Store) -> dict[tuple[str, str], int]:
    snap = store.snapshot()
    out = {(f"tallies_{name}_total", ""): v for name, v in snap["counters"].items()}
    for name, keys in snap["keyed"].items():
        out.update({(f"tallies_{name}_total", k): v for k, v in keys.items()})
    return out


def test_prometheus_scrapes_exactly_the_stores_values(shm_url: str) -> None:
    url = shm_url.partition("?")[0]
    with tallies.open(shm_url) as store:
        store.counter("requests").increment(123_456_789)
        store.counter("near_limit").increment(2**53)
        store.counter("below_zero").decrement(42)
        status = store.keyed("status")
        status.increment("200", 1_000_001)
        status.increment("404", 7)
        status.increment('quote " and ü', 3)
        with serving(url) as metrics:
            target = metrics.removeprefix("http://").removesuffix("/metrics")
            with prometheus_server([target]) as prom:
                expected = store_values(store)
                wait_for(
                    "Prometheus to hold the store's values",
                    lambda: prometheus_values(prom) == expected,
                    timeout=30,
                )
                # Writers in another process; Prometheus follows, still exact.
                done = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        f"import tallies; s = tallies.open({url!r}); "
                        "s.counter('requests').increment(1); "
                        "s.keyed('status').increment('500', 2**52 + 3)",
                    ],
                    env=env(),
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert done.returncode == 0, done.stderr
                expected = store_values(store)
                assert expected[("tallies_requests_total", "")] == 123_456_790
                wait_for(
                    "Prometheus to see the new values",
                    lambda: prometheus_values(prom) == expected,
                    timeout=30,
                )
                up = prom_query(prom, 'up{job="tallies"}')
                assert [item["value"][1] for item in up] == ["1"]  # type: ignore[index]


def test_serve_answers_metrics_root_and_404(shm_url: str) -> None:
    url = shm_url.partition("?")[0]
    with tallies.open(shm_url) as store:
        store.counter("x").increment(5)
        with serving(url) as metrics:
            code, body = http_get(metrics)
            assert code == 200 and b"tallies_x_total 5.0" in body
            code, body = http_get(metrics.removesuffix("metrics"))
            assert code == 200 and url.encode() in body
            code, _ = http_get(metrics.removesuffix("metrics") + "nope")
            assert code == 404


def run_serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tallies_cmd("serve", *args), env=env(), capture_output=True, text=True, timeout=timeout
    )


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tallies serve: ")
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_serve_on_a_port_in_use_is_a_one_line_error(shm_url: str) -> None:
    with tallies.open(shm_url), socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_serve(shm_url.partition("?")[0], "--port", str(port))
    one_line_error(done, "already in use", str(port))


def test_serve_a_store_that_does_not_exist() -> None:
    done = run_serve("shm://tallies-test-no-such-segment")
    one_line_error(done, "no such store", "tallies-test-no-such-segment")


def test_serve_an_unknown_scheme_and_a_non_url() -> None:
    one_line_error(run_serve("nosuch://x"), "unknown store scheme 'nosuch'")
    one_line_error(run_serve("just-a-name"), "not a store URL")


def test_serve_bad_arguments_are_usage_errors() -> None:
    for args in (["shm://x", "--port", "70000"], ["shm://x", "--port", "http"]):
        done = run_serve(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "port" in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_cleanly_on_sigint_and_sigterm(shm_url: str, sig: signal.Signals) -> None:
    with tallies.open(shm_url):
        port = free_port()
        proc = subprocess.Popen(
            tallies_cmd("serve", shm_url.partition("?")[0], "--port", str(port)),
            env=env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        assert "/metrics" in proc.stderr.readline()
        assert http_get(f"http://127.0.0.1:{port}/metrics")[0] == 200
        proc.send_signal(sig)
        rc = proc.wait(timeout=10)
        rest = proc.stderr.read()
        assert rc == 0, rest
        assert rest.strip() == "tallies serve: stopped"
        # the port is free again (for a server, which sets SO_REUSEADDR as serve does)
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))
