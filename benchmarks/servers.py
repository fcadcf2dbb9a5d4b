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

- :class:`PostgresServer`: ``initdb`` into a temporary directory (as
  ``nobody`` under root: PostgreSQL refuses root), ``pg_ctl start`` on a free
  port with its unix socket in that directory, ``stop("immediate")`` for the
  crash tests; the superuser ``tallies`` has a password (:data:`PG_PASSWORD`).
  fsync is off unless asked for: a killed server process loses nothing that
  way (a commit ``write()``s its WAL before it is acknowledged), only an
  operating-system crash would; the benchmarks run with fsync on.

``tests/_redis_support.py`` builds its fixtures on these (and decides what a
missing ``redis-server`` means for a test); ``benchmarks/redis_store.py``
starts its server with them.  Nothing in the library imports this module.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = [
    "PG_PASSWORD",
    "PG_PASSWORD_IN_URL",
    "PG_SUPERUSER",
    "REDIS_CLI",
    "REDIS_SERVER",
    "PostgresServer",
    "RedisCluster",
    "RedisServer",
    "free_port",
    "pg_bindir",
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


# ---- PostgreSQL ------------------------------------------------------------------

PG_SUPERUSER = "tallies"
PG_PASSWORD = "pg-s3cret/pw"  # has a '/': the URL must percent-encode it
PG_PASSWORD_IN_URL = "pg-s3cret%2Fpw"


def pg_bindir() -> str | None:
    """The directory of the newest installed PostgreSQL's ``initdb`` and ``pg_ctl``."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return os.path.dirname(found)
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2] or 0))
    for d in reversed(dirs):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            return d
    return None


def _run_as() -> dict[str, Any]:
    """subprocess keywords: run as ``nobody`` when we are root."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("nobody")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, on 127.0.0.1:port."""

    def __init__(self, *, fsync: bool = False) -> None:
        bindir = pg_bindir()
        assert bindir is not None
        self.bindir = bindir
        self.fsync = fsync
        # not under pytest's tmp dir: that one is private to root
        self.dir = Path(tempfile.mkdtemp(prefix="tallies-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        self.as_user = _run_as()
        if self.as_user:
            os.chown(self.dir, self.as_user["user"], self.as_user["group"])
        pwfile = self.dir / "pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        if self.as_user:
            os.chown(pwfile, self.as_user["user"], self.as_user["group"])
        self._tool(
            "initdb",
            "-D", str(self.data),
            "-U", PG_SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        self.running = False
        self.start()

    def _tool(self, name: str, *args: str, timeout: float = 120.0) -> str:
        out = subprocess.run(
            [os.path.join(self.bindir, name), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.dir,
            **self.as_user,
        )
        if out.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{name} failed ({out.returncode}): {out.stderr}{out.stdout}\n{log}")
        return str(out.stdout)

    def start(self) -> None:
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.dir} -c max_connections=200 "
            f"-c fsync={'on' if self.fsync else 'off'} -c shared_buffers=64MB"
        )
        self._tool(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
            "-o", opts,
        )  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE``: ``immediate`` kills every server process at once."""
        self._tool("pg_ctl", "stop", "-w", "-t", "60", "-D", str(self.data), "-m", mode)
        self.running = False

    def url(
        self,
        dbname: str = "postgres",
        *,
        user: str = PG_SUPERUSER,
        password: str | None = PG_PASSWORD_IN_URL,
        port: int | None = None,
        **params: object,
    ) -> str:
        auth = user + (f":{password}" if password is not None else "")
        q = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{auth}@127.0.0.1:{port or self.port}/{dbname}" + (
            f"?{q}" if q else ""
        )

    def connect(self, dbname: str = "postgres", **kw: Any) -> Any:
        """A psycopg connection as the superuser (autocommit), for plain SQL."""
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=PG_SUPERUSER,
            password=PG_PASSWORD,
            dbname=dbname,
            autocommit=True,
            **kw,
        )

    def sql(self, query: str, *args: Any, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser; the rows it returns (if any)."""
        with self.connect(dbname) as conn:
            cur = conn.execute(query, args or None)
            return cur.fetchall() if cur.description is not None else []

    _db_counter = 0
    _db_lock = threading.Lock()

    def new_database(self) -> str:
        """A fresh, empty database (each test gets its own)."""
        with PostgresServer._db_lock:
            PostgresServer._db_counter += 1
            name = f"t{os.getpid()}_{PostgresServer._db_counter}"
        self.sql(f"CREATE DATABASE {name}")
        return name

    def close(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
