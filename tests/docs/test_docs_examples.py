"""Every Python example a user reads runs: each fenced ``python`` block of
README.md and docs/**/*.md is executed as written.

The blocks of one page run in order in one namespace (a page is read top to
bottom), in a temporary directory of their own, with ``TALLIES_SHM_DIR``
pointing at a temporary directory (so ``shm://`` names never meet another
test's).  A comment line right before a block may say:

- ``<!-- test: fragment -->``: the block cannot run alone; it is only compiled;
- ``<!-- test: redis -->``: ``redis://localhost:6379`` in the block stands for
  the tests' own redis-server (``tests/_redis_support.py``), whose URL is
  substituted before it runs (the text users read stays as it is);
- ``<!-- test: redis-cluster -->``: likewise, ``redis+cluster://localhost:7000``
  for the tests' 3-master Redis Cluster.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from _docs_support import Block, blocks, pages, rel

REDIS_PLACEHOLDER = "redis://localhost:6379"
CLUSTER_PLACEHOLDER = "redis+cluster://localhost:7000"
MARKS = {"", "fragment", "redis", "redis-cluster"}
MAX_FRAGMENTS = 3

EXAMPLES = [b for page in pages() for b in blocks(page) if b.lang in ("python", "py", "python3")]


def test_every_page_with_examples_was_found() -> None:
    """The collector sees the README's example and the docs' (a guard against a
    parser that silently finds nothing)."""
    found = {rel(b.path) for b in EXAMPLES}
    assert "README.md" in found and "docs/getting-started.md" in found
    assert len(EXAMPLES) >= 20


def test_fragments_are_few_and_marks_are_known() -> None:
    assert {b.mark for b in EXAMPLES} <= MARKS, {b.id: b.mark for b in EXAMPLES}
    fragments = [b.id for b in EXAMPLES if b.mark == "fragment"]
    assert len(fragments) <= MAX_FRAGMENTS, fragments


_namespaces: dict[Path, dict[str, Any]] = {}
_failed: dict[Path, str] = {}


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    return {}


def _substitute(block: Block, request: pytest.FixtureRequest) -> str:
    code = block.code
    if block.mark == "redis":
        assert REDIS_PLACEHOLDER in code, (
            f"{block.id} is marked redis but never names {REDIS_PLACEHOLDER}"
        )
        server = request.getfixturevalue("redis_server")
        code = code.replace(REDIS_PLACEHOLDER, f"redis://127.0.0.1:{server.port}")
    elif block.mark == "redis-cluster":
        assert CLUSTER_PLACEHOLDER in code, (
            f"{block.id} is marked redis-cluster but never names {CLUSTER_PLACEHOLDER}"
        )
        cluster = request.getfixturevalue("redis_cluster")
        code = code.replace(
            CLUSTER_PLACEHOLDER, f"redis+cluster://127.0.0.1:{cluster.nodes[0].port}"
        )
    else:
        assert "localhost:6379" not in code and "localhost:7000" not in code, (
            f"{block.id} names a Redis server: mark it <!-- test: redis --> so that it runs"
        )
    return code


@pytest.mark.parametrize("block", EXAMPLES, ids=[b.id for b in EXAMPLES])
def test_example_runs_as_written(
    block: Block,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled = compile(block.code, block.id, "exec")
    if block.mark == "fragment":
        return  # compiled above: a fragment's syntax is checked, it cannot run alone
    if block.path in _failed:
        pytest.fail(
            f"an earlier example of this page failed ({_failed[block.path]})", pytrace=False
        )
    code = _substitute(block, request)
    if code != block.code:
        compiled = compile(code, block.id, "exec")
    namespace = _namespaces.setdefault(block.path, {"__name__": "__docs_example__"})
    workdir = namespace.setdefault("__workdir__", tmp_path_factory.mktemp("example"))
    shm_dir = workdir / "shm"
    shm_dir.mkdir(exist_ok=True)
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("TALLIES_SHM_DIR", str(shm_dir))
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            exec(compiled, namespace)
    except BaseException:
        _failed[block.path] = block.id
        print(out.getvalue(), err.getvalue())
        raise
    assert os.getcwd() == str(workdir), f"{block.id} changed the working directory"
