"""No password, token or userinfo of a store URL in anything tallies shows.

A real redis-server with ``requirepass``; the store URL carries the password.
Every output is collected and grepped for it: Prometheus HELP text (a scrape
of ``tallies serve``, and ``generate_latest`` in process), OpenTelemetry
instrument descriptions, the HTTP 500 body when the server is gone, the
serve and show commands' output and errors, the flusher's log lines, reprs of
the store and its counters, and the messages of the errors a user meets.
Before, HELP read ``tallies counter 'requests' in redis://:s3cret-pw@...``.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _look_support import env, http_get, tallies_cmd
from _redis_support import RedisServer, need_redis, unique_prefix
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

import tallies
from tallies.otel import observe
from tallies.prometheus import Collector

SECRET = "s3cret-pw-" + secrets.token_hex(6)


class _LockedServer(RedisServer):
    """redis-server with ``requirepass``: its readiness check authenticates."""

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(f"AUTH {SECRET}\r\nPING\r\n".encode())
                reply = b""
                while b"+PONG" not in reply and len(reply) < 256:
                    chunk = s.recv(64)
                    if not chunk:
                        break
                    reply += chunk
                return reply.startswith(b"+OK") and b"+PONG" in reply
        except OSError:
            return False


@pytest.fixture
def locked_server(tmp_path: Path) -> Iterator[RedisServer]:
    need_redis()
    server = _LockedServer(tmp_path / "auth", extra=("--requirepass", SECRET)).start()
    yield server
    server.stop()


def _url(server: RedisServer, user: str = "", **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"prefix": unique_prefix(), **params}.items())
    return f"redis://{user}:{SECRET}@127.0.0.1:{server.port}/0?{query}"


def _clean(what: str, text: str) -> str:
    assert SECRET not in text, f"{what} shows the password: {text[:2000]}"
    return text


def test_redact_url() -> None:
    from tallies.stores import redact_url

    assert redact_url("redis://:pw@h:6379/0?prefix=a") == "redis://***@h:6379/0?prefix=a"
    assert redact_url("rediss://user:pw@h/0") == "rediss://***@h/0"
    assert redact_url("redis://token@h") == "redis://***@h"
    assert redact_url("redis://:p/w#x@h/0") == "redis://***@h/0"  # not a valid URL: still hidden
    assert redact_url("redis://h/0?password=pw&prefix=x") == "redis://h/0?password=***&prefix=x"
    assert redact_url("x://h?api_key=k&Token=t&auth=a") == "x://h?api_key=***&Token=***&auth=***"
    assert redact_url("shm://a?names=4&keys=9") == "shm://a?names=4&keys=9"  # not secrets
    assert redact_url("shm://team@app") == "shm://team@app"  # a segment name, not userinfo
    assert redact_url("sqlite:////data/a@b.db") == "sqlite:////data/a@b.db"
    assert redact_url("user:pw@host") == "***@host"
    assert redact_url("memory://") == "memory://"


def test_no_output_shows_the_password(
    locked_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = _url(locked_server, flush="60", timeout="1")
    seen: dict[str, str] = {}
    store = tallies.open(url)
    try:
        assert store.url == url  # the real URL stays available, to reopen the store
        store.counter("requests").increment(5)
        store.keyed("status").increment("200", 2)
        store.flush()
        seen["reprs"] = " ".join(
            repr(x) for x in (store, store.counter("requests"), store.keyed("status"))
        )

        # Prometheus, in process: HELP text
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(store))
        text = generate_latest(registry).decode()
        assert "tallies_requests_total 5.0" in text and "redis://***@127.0.0.1" in text
        seen["prometheus"] = text

        # OpenTelemetry: instrument descriptions
        reader = InMemoryMetricReader()
        observe(store, MeterProvider(metric_readers=[reader]).get_meter("t"))
        data = reader.get_metrics_data()
        assert data is not None
        seen["otel"] = data.to_json()
        assert "redis://***@127.0.0.1" in seen["otel"]

        # the serve command: its banner, a scrape, the index page, then a 500
        proc = subprocess.Popen(
            tallies_cmd("serve", url, "--port", "0"),
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            banner = proc.stderr.readline()
            found = re.search(r"http://\S+/metrics", banner)
            assert found, banner
            metrics = found.group(0)
            status, body = http_get(metrics)
            assert status == 200 and b"tallies_requests_total 5.0" in body
            seen["scrape"] = body.decode()
            seen["index"] = http_get(metrics.removesuffix("metrics"))[1].decode()
            cli = subprocess.run(
                tallies_cmd("show", url), env=env(), capture_output=True, text=True, timeout=60
            )
            assert cli.returncode == 0 and "requests" in cli.stdout
            seen["show"] = cli.stdout + cli.stderr
            cli = subprocess.run(
                tallies_cmd("show", "--json", url),
                env=env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert json.loads(cli.stdout)["counters"] == {"requests": 5}
            seen["show --json"] = cli.stdout + cli.stderr

            locked_server.stop()  # the server is gone: scrapes fail with a 500
            status, body = http_get(metrics, timeout=60)
            assert status == 500 and b"tallies: cannot read redis://***@127.0.0.1" in body
            seen["500"] = body.decode()
            cli = subprocess.run(
                tallies_cmd("show", url), env=env(), capture_output=True, text=True, timeout=120
            )
            assert cli.returncode != 0
            seen["show, server down"] = cli.stdout + cli.stderr
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
            seen["serve output"] = banner + out + err

        # what a user meets with the server down: flush errors and the flusher's logs
        store.counter("requests").increment()
        with caplog.at_level(logging.DEBUG, logger="tallies"):
            with pytest.raises(tallies.StoreError) as info:
                store.flush()
            seen["flush error"] = f"{info.value!r} {info.value.__cause__!r}"
            assert store._wb._background_flush() is False  # type: ignore[attr-defined]
        seen["logs"] = caplog.text
        assert "redis://***@127.0.0.1" in caplog.text
        seen["threads"] = repr(store._wb._thread)  # type: ignore[attr-defined]
    finally:
        if not locked_server.ping():
            locked_server.start()  # so that the final flush can land
        store.close()

    # error messages that quote the URL
    errors = []
    for bad in (
        url + "&bogus=1",  # unknown parameter
        url + "&password=" + SECRET,
        url.replace("/0?", "/x?"),  # not a database number
        url + "&timeout=never",
        url.replace("redis://", "nosuch://"),
        url + "#frag",
        url + "&&",
    ):
        with pytest.raises((ValueError, tallies.StoreError)) as err:
            tallies.open(bad)
        errors.append(str(err.value))
    seen["errors"] = "\n".join(errors)
    with pytest.raises(ValueError) as err:
        store.counter("new")
    seen["closed"] = str(err.value) + repr(store)
    assert "redis://***@127.0.0.1" in seen["closed"]

    for what, text in seen.items():
        _clean(what, text)
    assert len(seen) >= 15
