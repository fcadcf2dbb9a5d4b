"""Real PostgreSQL servers for the ``postgresql://`` tests, on 127.0.0.1 free ports.

- :class:`PostgresServer` (``benchmarks/servers.py``, shared with the
  benchmarks): ``initdb`` into a temporary directory, ``pg_ctl start`` on a
  free loopback port, ``pg_ctl stop`` (``-m immediate`` for the crash tests:
  every server process is killed at once, no checkpoint, and the next start
  replays the WAL); as ``nobody`` under root.  The superuser ``tallies`` has
  a password: the store URLs carry one, as users' do, and every test that
  shows a URL can check it is redacted.  fsync off (see there).
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
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _support import REQUIRE_SERVERS, unavailable

from benchmarks.servers import (
    PG_PASSWORD,
    PG_PASSWORD_IN_URL,
    PG_SUPERUSER,
    PostgresServer,
    free_port,
    pg_bindir,
)

__all__ = [
    "PASSWORD",
    "PASSWORD_IN_URL",
    "SUPERUSER",
    "PostgresServer",
    "ReplyDropper",
    "need_postgres",
    "postgres_server",
    "postgres_server_cm",
    "unique_schema",
    "wait_for",
]

REQUIRE_POSTGRES = os.environ.get("TALLIES_REQUIRE_POSTGRES") == "1" or REQUIRE_SERVERS
SUPERUSER = PG_SUPERUSER
PASSWORD = PG_PASSWORD
PASSWORD_IN_URL = PG_PASSWORD_IN_URL


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
