"""Real Redis servers for the ``redis://`` tests, started on 127.0.0.1 free ports.

- :class:`RedisServer`: one ``redis-server`` in a temporary directory, without
  persistence, or with an append-only file (``appendfsync always``) for the
  kill-and-restart tests; ``kill()`` sends SIGKILL, ``start()`` again restarts
  it on the same port and the same files.
- :class:`RedisCluster`: three masters (``--cluster-enabled yes``) joined by
  ``redis-cli --cluster create``, ready when every node says
  ``cluster_state:ok``.
- :class:`LostReplyProxy`: a loopback TCP proxy that forwards everything but
  swallows the reply to the first successful ``EVALSHA``: the script ran on
  the server, the client never hears it and times out.

When ``redis-server`` is not installed the tests that need it are skipped,
except under CI or with ``TALLIES_REQUIRE_REDIS=1``, where they fail: the
test bootstrap (``scripts/bootstrap.sh``) installs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _support import REQUIRE_SERVERS, unavailable

REQUIRE_REDIS = os.environ.get("TALLIES_REQUIRE_REDIS") == "1" or REQUIRE_SERVERS
REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def need_redis() -> None:
    """Skip (or fail under CI) when redis-server / redis-cli / redis-py are missing."""
    missing = []
    if REDIS_SERVER is None or REDIS_CLI is None:
        missing.append("redis-server and redis-cli (apt-get install redis-server redis-tools)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("redis-py (pip install tallies[redis])")
    if missing:
        reason = "not installed: " + "; ".join(missing)
        unavailable(reason, required=REQUIRE_REDIS, by="CI / TALLIES_REQUIRE_REDIS=1")


_port_lock = threading.Lock()
_ports_given: set[int] = set()


def free_port(bus: bool = False) -> int:
    """A free 127.0.0.1 TCP port (and port + 10000 free too when ``bus``)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port in _ports_given or (bus and port > 55000):
            continue
        if bus:
            try:
                with socket.socket() as s2:
                    s2.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        with _port_lock:
            _ports_given.add(port)
        return port
    raise RuntimeError("no free port found")


def redis_cli(port: int, *args: str, timeout: float = 10.0) -> str:
    assert REDIS_CLI is not None
    out = subprocess.run(
        [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return out.stdout + out.stderr


class RedisServer:
    """One redis-server process on 127.0.0.1:port, files in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        aof: bool = False,
        cluster: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        assert REDIS_SERVER is not None
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aof = aof
        self.cluster = cluster
        self.extra = extra
        self.port = free_port(bus=cluster)
        self.proc: subprocess.Popen[bytes] | None = None

    def _argv(self) -> list[str]:
        assert REDIS_SERVER is not None
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.aof:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        if self.cluster:
            argv += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.dir / "nodes.conf"),
                "--cluster-node-timeout", "3000",
            ]  # fmt: skip
        return argv + list(self.extra)

    def start(self, timeout: float = 20.0) -> RedisServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            self._argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on port {self.port} exited: {log}")
            if self.ping():
                return self
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync beyond what appendfsync did."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def client(self, **kw: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, **kw)

    def url(self, prefix: str, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"prefix": prefix, **params}.items())
        return f"redis://127.0.0.1:{self.port}/0?{query}"


class RedisCluster:
    """Three masters, no replicas, on free ports."""

    def __init__(self, directory: Path) -> None:
        self.nodes = [RedisServer(directory / f"node{i}", cluster=True) for i in range(3)]

    def start(self) -> RedisCluster:
        for n in self.nodes:
            n.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        out = redis_cli(
            self.nodes[0].port,
            "--cluster", "create", *addrs,
            "--cluster-replicas", "0", "--cluster-yes",
            timeout=60,
        )  # fmt: skip
        if "[OK] All 16384 slots covered" not in out:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in redis_cli(n.port, "cluster", "info") for n in self.nodes):
                return self
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def client(self) -> Any:
        from redis.cluster import RedisCluster as Client

        return Client(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=10)

    def url(self, prefix: str, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"prefix": prefix, **params}.items())
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}?{query}"


class LostReplyProxy:
    """127.0.0.1:port -> upstream; swallows the reply to the first successful EVALSHA.

    Once armed (``arm()``), the first request chunk that contains ``EVALSHA``
    is forwarded and the reply to it is read from the server and dropped,
    unless it is an error reply (a ``NOSCRIPT`` means the script did not run,
    so that reply passes and the proxy stays armed).  After a drop the
    connection stays open and silent: the client times out, as it would when
    a reply is lost in the network.  ``dropped`` counts the replies dropped.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self.armed = False
        self.dropped = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def arm(self) -> None:
        with self._lock:
            self.armed = True

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._conns += [client, server]
            state = {"drop_next": False, "silent": False}
            threading.Thread(target=self._up, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, state), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, state: dict[str, bool]) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = client.recv(65536)
                if not data:
                    break
                with self._lock:
                    if self.armed and not state["silent"] and b"EVALSHA" in data.upper():
                        state["drop_next"] = True
                server.sendall(data)
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)

    def _down(self, server: socket.socket, client: socket.socket, state: dict[str, bool]) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = server.recv(65536)
                if not data:
                    break
                with self._lock:
                    if state["silent"]:
                        continue
                    if state["drop_next"]:
                        state["drop_next"] = False
                        if not data.startswith(b"-") and self.armed:
                            self.armed = False
                            self.dropped += 1
                            state["silent"] = True
                            continue
                client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()


@contextlib.contextmanager
def running(server: RedisServer) -> Iterator[RedisServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


_prefix_counter = 0


def unique_prefix(tag: str = "t") -> str:
    """A key prefix no other test uses (tests share the session's server)."""
    global _prefix_counter
    _prefix_counter += 1
    return f"{tag}{os.getpid()}x{_prefix_counter}:"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server (no persistence) for the whole session; tests use their own prefix."""
    need_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster for the whole session."""
    need_redis()
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of its own with appendonly yes + appendfsync always."""
    need_redis()
    server = RedisServer(tmp_path / "aof", aof=True).start()
    yield server
    server.stop()
