"""What the tests of serve / watch / Prometheus share: real processes on loopback ports.

Every server here is started by the test on 127.0.0.1 and a free port, and
stopped by it.  A tool the tests need (``prometheus``, ``tmux``) is installed
by ``scripts/bootstrap.sh`` for the test command; when it is missing anyway,
the test fails under ``TALLIES_REQUIRE_C=1`` (CI and ``./run-tests``) and is
skipped, with the reason, only in a bare ``pytest`` run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from _support import REQUIRE_SERVERS, unavailable

import tallies
from benchmarks.servers import free_port, stop_process

SRC = str(Path(tallies.__file__).resolve().parent.parent)
REQUIRE = os.environ.get("TALLIES_REQUIRE_C") == "1" or REQUIRE_SERVERS


def need_tool(name: str) -> str:
    """The path of a system tool; fail (CI) or skip (bare pytest) without it."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (scripts/bootstrap.sh installs it for ./run-tests)"
        unavailable(reason, required=REQUIRE, by="CI / TALLIES_REQUIRE_C=1")
    return path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, e.get("PYTHONPATH")]))
    return e


def tallies_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tallies", *args]


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(what: str, check: object, timeout: float = 30, every: float = 0.1) -> object:
    """Call ``check()`` until it returns a truthy value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()  # type: ignore[operator]
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@contextlib.contextmanager
def serving(url: str) -> Iterator[str]:
    """``tallies serve URL --port 0`` in a subprocess; yields its /metrics URL."""
    proc = subprocess.Popen(
        tallies_cmd("serve", url, "--port", "0"),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"http://\S+/metrics", line)
        assert found, f"tallies serve said {line!r}; rc={proc.poll()}"
        yield found.group(0)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


@contextlib.contextmanager
def prometheus_server(targets: list[str]) -> Iterator[str]:
    """A real Prometheus scraping ``targets`` (host:port) every second; yields its base URL."""
    binary = need_tool("prometheus")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tallies-prom-") as tmp:
        config = Path(tmp, "prometheus.yml")
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: tallies\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        log = open(Path(tmp, "prometheus.log"), "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={Path(tmp, 'data')}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(
                "prometheus to be ready",
                lambda: proc.poll() is None and http_get(base + "/-/ready", 2)[0] == 200,
                timeout=60,
            )
            yield base
        finally:
            stop_process(proc)
            log.close()


def prom_query(base: str, query: str) -> list[dict[str, object]]:
    """The instant-query result list from Prometheus's HTTP API."""
    status, body = http_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    reply = json.loads(body)
    assert status == 200 and reply["status"] == "success", reply
    result: list[dict[str, object]] = reply["data"]["result"]
    return result
