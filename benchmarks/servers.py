"""Real servers on 127.0.0.1 for the tests and the benchmarks: one launcher, used by both.

- :func:`free_port`: a free loopback TCP port, never the same one twice in a
  process (and with ``bus``, port + 10000 free too, for Redis Cluster's bus).
- :class:`RedisServer`: one ``redis-server`` with its files in a directory,
  without persistence, or with an append-only file (``appendfsync always``)
  for the kill-and-restart tests; ``kill()`` sends SIGKILL, ``start()`` again
  restarts it on the same port and the same files.
- :func:`stop_process`: SIGTERM, then SIGKILL after a timeout.
- :class:`RedisCluster`: three masters (``--cluster-enabled yes``) joined by
  ``redis-cli --cluster create``, ready when every node says
  ``cluster_state:ok``.

``tests/_redis_support.py`` builds its fixtures on these (and decides what a
missing ``redis-server`` means for a test); ``benchmarks/redis_store.py``
starts its server with them.  Nothing in the library imports this module.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

__all__ = [
    "REDIS_CLI",
    "REDIS_SERVER",
    "RedisCluster",
    "RedisServer",
    "free_port",
    "redis_cli",
    "stop_process",
]

#: The server started: ``TALLIES_REDIS_SERVER`` (a path: another version,
#: Valkey, a wrapper such as those ``scripts/redis-matrix`` makes for Debian
#: unstable's binaries) or ``redis-server`` on the PATH; the same for
#: ``TALLIES_REDIS_CLI``.
REDIS_SERVER = os.environ.get("TALLIES_REDIS_SERVER") or shutil.which("redis-server")
REDIS_CLI = os.environ.get("TALLIES_REDIS_CLI") or shutil.which("redis-cli")


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


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL when it has not exited within ``timeout`` seconds; what
    it still writes to a pipe is read (``communicate``), so it cannot block on it."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


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
            "--repl-diskless-sync-delay", "0",  # a replica syncs at once
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
        if self.proc is not None:
            stop_process(self.proc, timeout=10)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
