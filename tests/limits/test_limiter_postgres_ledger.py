"""The limiter's promise on postgresql:// under load, checked against the
ledger of every hit()'s answer and time and of every lease call (the same
writers and checks as test_limiter_redis_ledger.py): 4 writer processes x 4
threads on one limiter key; never more than the limit admitted in any
interval of ``per`` seconds, every refusal explained by the units reserved
when the server decided, and a writer killed while holding a lease."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from _ledger import Ledger
from _postgres_support import PostgresServer, unique_schema
from test_limiter_redis_ledger import check, join, start_writers


def test_four_processes_by_four_threads(postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = postgres_server.url(schema=unique_schema("lim"))
    check(join(start_writers(url, tmp_path)), 5.0)


def test_a_writer_killed_while_holding_a_lease(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.url(schema=unique_schema("lim"))
    writers = start_writers(url, tmp_path, seconds=6.0)
    victim, vlog = writers[0]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until it holds a lease with units to spare
        if vlog.exists() and any(c.get("granted", 0) > 1 for c in Ledger.read([vlog]).calls):
            break
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    check(join(writers), 6.0)
