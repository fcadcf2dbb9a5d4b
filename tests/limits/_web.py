"""Real servers for the limits-package tests: gunicorn (flask-limiter) and
uvicorn (slowapi), 4 worker processes each on a free loopback port, and a
client that sends N requests from a few threads and counts the answers."""

from __future__ import annotations

import http.client
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from _redis_support import free_port
from _support import REQUIRE_C, unavailable

FLASK_APP = """
import os

import tallies.limits  # registers the tallies+... storage schemes with limits
from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

app = Flask(__name__)
limiter = Limiter(
    get_remote_address,
    app=app,
    storage_uri=os.environ["STORAGE_URI"],
    strategy=os.environ["STRATEGY"],
)


@app.route("/limited")
@limiter.limit("100 per minute")
def limited():
    return str(os.getpid())
"""

STARLETTE_APP = """
import os

import tallies.limits  # registers the tallies+... storage schemes with limits
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

limiter = Limiter(
    key_func=get_remote_address,
    storage_uri=os.environ["STORAGE_URI"],
    strategy=os.environ["STRATEGY"],
)


@limiter.limit("100/minute")
async def limited(request):
    return PlainTextResponse(str(os.getpid()))


app = Starlette(routes=[Route("/limited", limited)])
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
"""


def need(*modules: str) -> None:
    for m in modules:
        if importlib.util.find_spec(m) is None:
            unavailable(f"{m} is not installed (it is in the test extra)", required=REQUIRE_C)


@dataclass
class Answers:
    status: Counter[int] = field(default_factory=Counter)
    pids: Counter[str] = field(default_factory=Counter)  # the worker of each 200
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Server:
    """gunicorn or uvicorn serving ``app:app`` from ``directory``."""

    def __init__(self, kind: str, directory: Path, storage_uri: str, strategy: str) -> None:
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "app.py").write_text(
            textwrap.dedent(FLASK_APP if kind == "gunicorn" else STARLETTE_APP)
        )
        env = dict(
            os.environ, STORAGE_URI=storage_uri, STRATEGY=strategy, PYTHONPATH=str(directory)
        )
        if kind == "gunicorn":
            argv = [
                sys.executable,
                "-m",
                "gunicorn",
                "-w",
                "4",
                "-k",
                "sync",
                "-b",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "warning",
                "app:app",
            ]
        else:
            argv = [
                sys.executable,
                "-m",
                "uvicorn",
                "--workers",
                "4",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "app:app",
            ]
        self.log = directory / "server.log"
        self.proc = subprocess.Popen(
            argv,
            cwd=directory,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{kind} exited: {self.log.read_text()[-3000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/nothing-here")
                c.getresponse().read()
                c.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{kind} did not answer: {self.log.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def hammer(self, n: int, clients: int = 8) -> Answers:
        """Send ``n`` GET /limited from ``clients`` threads, a new connection
        each (gunicorn's sync workers close every connection; new ones are
        spread over the workers by the kernel)."""
        out = Answers()
        lock = threading.Lock()
        todo = iter(range(n))

        def client() -> None:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                try:
                    c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    c.request("GET", "/limited", headers={"Connection": "close"})
                    r = c.getresponse()
                    body = r.read().decode(errors="replace")
                    c.close()
                except OSError as exc:
                    with lock:
                        out.errors.append(repr(exc))
                    continue
                with lock:
                    out.status[r.status] += 1
                    if r.status == 200:
                        out.pids[body] += 1

        t0 = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out.seconds = time.monotonic() - t0
        return out
