"""What the docs tests share: the site built once per session, the pages' sources.

The site is built strictly (``mkdocs build --strict``, what ``scripts/docs
build`` runs) into a temporary directory once per session; every test of the
built HTML reads that build.  The docs' tools come from docs/requirements.txt
(./run-tests installs them): without them the tests fail under ./run-tests and
CI, and are skipped elsewhere, saying why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from _support import REQUIRE_C, SITE_ELSEWHERE, unavailable

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "scripts"))  # the site's hooks: scripts/docsite


def need_docs_tools() -> None:
    try:
        import matplotlib  # noqa: F401
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError as exc:
        # The site is one artefact, built and checked in the GIL leg (./run-tests
        # installs the tools there); other legs run the examples only (_support).
        unavailable(
            f"the docs' tools are not installed ({exc}; scripts/docs installs them)"
            + ("; the GIL leg builds and checks the site" if SITE_ELSEWHERE else ""),
            required=REQUIRE_C and not SITE_ELSEWHERE,
        )


def pages() -> list[Path]:
    """Every Markdown source a user reads: README.md and docs/**/*.md."""
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@dataclass
class Site:
    path: Path
    seconds: float
    log: str

    def html(self, page: str) -> str:
        return (self.path / page).read_text()


def build(dest: Path, config: Path = ROOT / "mkdocs.yml") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(dest)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The site, built strictly once for the session."""
    need_docs_tools()
    dest = tmp_path_factory.mktemp("site")
    start = time.monotonic()
    done = build(dest)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}", pytrace=False)
    return Site(dest, seconds, done.stderr)


FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^\n`]*)$")
MARK = re.compile(r"<!--\s*test:\s*(?P<what>[\w-]+)\s*-->")


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    mark: str  # "" or what the <!-- test: ... --> line before it says

    @property
    def id(self) -> str:
        return f"{rel(self.path)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order, with their marks."""
    out: list[Block] = []
    lines = path.read_text().split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        start = i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:])
            i += 1
        prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        mark = MARK.fullmatch(prev.strip())
        lang = m["info"].strip().split(" ")[0].lower()
        out.append(
            Block(path, start + 1, lang, "\n".join(body) + "\n", mark["what"] if mark else "")
        )
        i += 1
    return out
