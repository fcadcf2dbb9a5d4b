"""The limiter's promise on postgresql:// under load, checked against the
ledger of every hit()'s answer and time and of every lease call (the same
writers and checks as test_limiter_redis_ledger.py): 4 writer processes x 4
threads on one limiter key; never more than the limit admitted in any
interval of ``per`` seconds, every refusal explained by the units reserved
when the server decided, and a writer killed while holding a lease."""

from __future__ import annotations

from pathlib import Path

from _postgres_support import PostgresServer, unique_schema
from test_limiter_redis_ledger import check, join, kill_one_holding_a_lease, start_writers


def test_four_processes_by_four_threads(postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = postgres_server.url(schema=unique_schema("lim"))
    check(join(start_writers(url, tmp_path)), 5.0)


def test_a_writer_killed_while_holding_a_lease(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.url(schema=unique_schema("lim"))
    writers = start_writers(url, tmp_path, seconds=6.0)
    kill_one_holding_a_lease(writers)
    check(join(writers), 6.0)
