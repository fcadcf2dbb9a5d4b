"""Real Redis servers for the ``redis://`` tests, started on 127.0.0.1 free ports.

The launcher itself (:func:`free_port`, :class:`RedisServer`,
:class:`RedisCluster`) is ``benchmarks/servers.py``, shared with the
benchmarks; this module adds what only the tests need:

- the session's fixtures ``redis_server`` (no persistence), ``redis_cluster``
  (three masters) and ``aof_server`` (``appendfsync always``, its own);
- replicas: :func:`start_replica`, :func:`wait_in_sync`, :func:`info`, and
  :class:`ReplicatedCluster` (one master and its replicas, for ``wait=`` and
  ``CLUSTER FAILOVER TAKEOVER``);
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
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import REQUIRE_SERVERS, unavailable

from benchmarks.servers import (
    REDIS_CLI,
    REDIS_SERVER,
    RedisCluster,
    RedisServer,
    free_port,
    redis_cli,
)

__all__ = [
    "LostReplyProxy",
    "RedisCluster",
    "RedisServer",
    "ReplicatedCluster",
    "aof_server",
    "free_port",
    "info",
    "need_redis",
    "redis_cli",
    "redis_cluster",
    "redis_server",
    "start_replica",
    "unique_prefix",
    "wait_in_sync",
]

REQUIRE_REDIS = os.environ.get("TALLIES_REQUIRE_REDIS") == "1" or REQUIRE_SERVERS


def need_redis() -> None:
    """Skip (or fail under CI) when redis-server / redis-cli / redis-py are missing."""
    missing = []
    for env in ("TALLIES_REDIS_SERVER", "TALLIES_REDIS_CLI"):
        path = os.environ.get(env)
        if path and not os.access(path, os.X_OK):
            missing.append(f"{env}={path} (not an executable file)")
    if REDIS_SERVER is None or REDIS_CLI is None:
        missing.append("redis-server and redis-cli (apt-get install redis-server redis-tools)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("redis-py (pip install tallies[redis])")
    if missing:
        reason = "not installed: " + "; ".join(missing)
        unavailable(reason, required=REQUIRE_REDIS, by="CI / TALLIES_REQUIRE_REDIS=1")


def info(port: int, section: str = "replication") -> dict[str, str]:
    """``INFO section`` of the server on ``port`` as a dict."""
    out = {}
    for line in redis_cli(port, "info", section).splitlines():
        k, sep, v = line.strip().partition(":")
        if sep:
            out[k] = v
    return out


def start_replica(master: RedisServer, directory: Path, *, aof: bool = False) -> RedisServer:
    """A replica of ``master`` on a free port, returned once its link is up."""
    replica = RedisServer(
        directory, aof=aof, extra=("--replicaof", "127.0.0.1", str(master.port))
    ).start()
    wait_in_sync(master, [replica])
    return replica


def wait_in_sync(master: RedisServer, replicas: list[RedisServer], timeout: float = 30) -> None:
    """Until every replica's link to ``master`` is up, the master sees them
    all, and each has processed everything the master had sent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = int(info(master.port).get("master_repl_offset", "0"))
        rs = [info(r.port) for r in replicas]
        ups = [r.get("master_link_status") == "up" for r in rs]
        caught_up = [int(r.get("slave_repl_offset", "-1")) >= sent for r in rs]
        if (
            all(ups)
            and all(caught_up)
            and int(info(master.port).get("connected_slaves", "0")) >= len(replicas)
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"replicas of port {master.port} did not come in sync")


class ReplicatedCluster:
    """A Redis Cluster of one master (every slot) and its replicas, joined by
    hand (``redis-cli --cluster create`` wants three masters): enough for
    ``wait=`` and ``CLUSTER FAILOVER TAKEOVER``, which promotes a replica
    without the votes one master cannot give."""

    def __init__(self, directory: Path, replicas: int = 1) -> None:
        self.nodes = [
            RedisServer(directory / f"node{i}", cluster=True, aof=True) for i in range(1 + replicas)
        ]

    def node_id(self, node: RedisServer) -> str:
        return redis_cli(node.port, "cluster", "myid").strip()

    def start(self) -> ReplicatedCluster:
        for n in self.nodes:
            n.start()
        first = self.nodes[0]
        redis_cli(first.port, "cluster", "addslotsrange", "0", "16383")
        for n in self.nodes[1:]:
            redis_cli(n.port, "cluster", "meet", "127.0.0.1", str(first.port))
        master_id = self.node_id(first)
        deadline = time.monotonic() + 30
        for n in self.nodes[1:]:
            while "OK" not in redis_cli(n.port, "cluster", "replicate", master_id):
                if time.monotonic() > deadline:
                    raise RuntimeError("a replica could not join the cluster")
                time.sleep(0.1)
        self.wait_ok(self.nodes)
        return self

    def wait_ok(self, nodes: list[RedisServer], timeout: float = 30) -> None:
        """Until ``nodes`` say cluster_state:ok and every replica's link is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [redis_cli(n.port, "cluster", "info") for n in nodes]
            links = [info(n.port) for n in nodes]
            if all("cluster_state:ok" in st for st in states) and all(
                i.get("role") == "master" or i.get("master_link_status") == "up" for i in links
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok with its replicas in sync")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

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
