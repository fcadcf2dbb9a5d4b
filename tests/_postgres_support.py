"""Real PostgreSQL servers for the ``postgresql://`` tests, on 127.0.0.1 free ports.

- :class:`PostgresServer`: ``initdb`` into a temporary directory, ``pg_ctl
  start`` on a free loopback port with its unix socket in that directory,
  ``pg_ctl stop`` (``-m immediate`` for the crash tests: every server process
  is killed at once, no checkpoint, and the next start replays the WAL).
  PostgreSQL refuses to run as root, so under root the server runs as the
  unprivileged ``nobody`` (its directory is handed to that user).  The
  superuser ``tallies`` has a password: the store URLs carry one, as users'
  do, and every test that shows a URL can check it is redacted.
  ``fsync=off``: a killed server process loses nothing that way (a commit
  still ``write()``s its WAL before it is acknowledged); only an operating
  system crash would, and no test makes one.  The benchmarks run with fsync on.
- :class:`ReplyDropper`: a loopback TCP proxy that forwards everything but,
  once armed, swallows the server's reply to the next client message that
  contains a marker (the write-behind's flush statement): the transaction
  commits, the client never hears it.

When PostgreSQL or psycopg is missing the tests that need them are skipped,
except under CI or with ``TALLIES_REQUIRE_POSTGRES=1``, where they fail (the
test bootstrap, ``scripts/bootstrap.sh``, installs both).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _redis_support import free_port
from _support import unavailable

REQUIRE_POSTGRES = (
    os.environ.get("TALLIES_REQUIRE_POSTGRES") == "1" or os.environ.get("CI") == "true"
)
SUPERUSER = "tallies"
PASSWORD = "pg-s3cret/pw"  # has a '/': the URL must percent-encode it
PASSWORD_IN_URL = "pg-s3cret%2Fpw"


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


def need_postgres() -> None:
    """Skip (or fail under CI) when PostgreSQL's server or psycopg is missing."""
    missing = []
    if pg_bindir() is None:
        missing.append("the PostgreSQL server (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing.append("psycopg 3 (pip install tallies[postgres])")
    if missing:
        reason = "not installed: " + "; ".join(missing)
        unavailable(reason, required=REQUIRE_POSTGRES, by="CI / TALLIES_REQUIRE_POSTGRES=1")


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
        pwfile.write_text(PASSWORD + "\n")
        if self.as_user:
            os.chown(pwfile, self.as_user["user"], self.as_user["group"])
        self._tool(
            "initdb",
            "-D", str(self.data),
            "-U", SUPERUSER,
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
        return out.stdout

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
        user: str = SUPERUSER,
        password: str | None = PASSWORD_IN_URL,
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
            user=SUPERUSER,
            password=PASSWORD,
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


@contextlib.contextmanager
def postgres_server_cm(*, fsync: bool = False) -> Iterator[PostgresServer]:
    need_postgres()
    server = PostgresServer(fsync=fsync)
    try:
        yield server
    finally:
        server.close()


class ReplyDropper:
    """127.0.0.1 TCP proxy to ``port``.  ``arm(marker)``: the server's reply to
    the next client message containing ``marker`` is swallowed (and every
    later byte from the server on that connection), while the connection
    stays open: the client hears nothing and must time out.  ``dropped`` is
    set once it happened.  While ``refuse`` is set, new connections are
    closed as soon as they are accepted."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = free_port()
        self._marker: bytes | None = None
        self.dropped = threading.Event()
        self.refuse = threading.Event()  # set: new connections are closed at once
        self._lsock = socket.create_server(("127.0.0.1", self.port))
        self._stop = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, marker: bytes) -> None:
        self._marker = marker

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._lsock.accept()
            except OSError:
                return
            if self.refuse.is_set():
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.target))
            self._socks += [client, server]
            swallow = threading.Event()
            threading.Thread(target=self._up, args=(client, server, swallow), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, swallow), daemon=True).start()

    def _up(self, src: socket.socket, dst: socket.socket, swallow: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                marker = self._marker
                if marker is not None and marker in data:
                    self._marker = None
                    swallow.set()
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _down(self, src: socket.socket, dst: socket.socket, swallow: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if swallow.is_set():
                    self.dropped.set()
                    continue
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop = True
        self._lsock.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session; each test uses a schema
    of its own (:func:`unique_schema`) in the database ``postgres``."""
    with postgres_server_cm() as server:
        yield server


_schema_counter = 0


def unique_schema(tag: str = "t") -> str:
    """A schema name no other test uses (tests share the session's server)."""
    global _schema_counter
    _schema_counter += 1
    return f"{tag}{os.getpid()}_{_schema_counter}"
