"""flask-limiter on gunicorn and slowapi on uvicorn, 4 worker processes each,
"100 per minute" on one route: with a tallies storage every worker shares one
limit, so 1,000 requests within the minute get exactly 100 answers 200 and
900 answers 429.  The same app on limits' ``memory://`` admits about 100 per
worker (the bug users report: slowapi #226, flask-limiter #40, #441)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _shm_support import new_url as new_shm_url
from _web import Server, need

import tallies


@pytest.fixture
def shm_storage() -> Iterator[str]:
    url = new_shm_url("")
    yield "tallies+" + url
    tallies.destroy(url)


def _run(kind: str, tmp_path: Path, uri: str, strategy: str, name: str):  # type: ignore[no-untyped-def]
    server = Server(kind, tmp_path / name, uri, strategy)
    try:
        return server.hammer(1000)
    finally:
        server.stop()


STORAGES = ["shm", "sqlite"]


def _uri(which: str, tmp_path: Path, shm: str) -> str:
    if which == "shm":
        return shm
    return f"tallies+sqlite:///{tmp_path}/limits-{which}.db"


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window"])
@pytest.mark.parametrize("which", STORAGES)
def test_flask_limiter_on_gunicorn_admits_exactly_the_limit(
    tmp_path: Path, shm_storage: str, which: str, strategy: str
) -> None:
    need("flask", "flask_limiter", "gunicorn")
    got = _run("gunicorn", tmp_path, _uri(which, tmp_path, shm_storage), strategy, "tallies")
    print(
        f"\ngunicorn 4 workers, tallies+{which}, {strategy}: {dict(got.status)} "
        f"in {got.seconds:.1f} s, 200s served by {dict(got.pids)}"
    )
    assert got.errors == [] and got.seconds < 50
    assert got.status == {200: 100, 429: 900}
    if strategy == "fixed-window":
        # limits' memory:// beside it: each worker keeps its own count (the bug)
        mem = _run("gunicorn", tmp_path, "memory://", strategy, "memory")
        print(f"gunicorn 4 workers, memory://: {dict(mem.status)}, 200s by {dict(mem.pids)}")
        assert mem.errors == [] and sum(mem.status.values()) == 1000
        assert len(mem.pids) >= 2 and max(mem.pids.values()) <= 100  # 100 per worker
        assert mem.status[200] > 100


@pytest.mark.parametrize("which", STORAGES)
def test_slowapi_on_uvicorn_admits_exactly_the_limit(
    tmp_path: Path, shm_storage: str, which: str
) -> None:
    need("slowapi", "starlette", "uvicorn")
    got = _run("uvicorn", tmp_path, _uri(which, tmp_path, shm_storage), "fixed-window", "t")
    print(
        f"\nuvicorn 4 workers, tallies+{which}: {dict(got.status)} in {got.seconds:.1f} s, "
        f"200s served by {dict(got.pids)}"
    )
    assert got.errors == [] and got.seconds < 50
    assert got.status == {200: 100, 429: 900}
    mem = _run("uvicorn", tmp_path, "memory://", "fixed-window", "memory")
    print(f"uvicorn 4 workers, memory://: {dict(mem.status)}, 200s by {dict(mem.pids)}")
    assert mem.errors == [] and sum(mem.status.values()) == 1000
    assert len(mem.pids) >= 2 and max(mem.pids.values()) <= 100  # 100 per worker
    assert mem.status[200] > 100
