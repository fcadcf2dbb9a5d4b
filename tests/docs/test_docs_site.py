"""The site builds strictly, its links resolve, its API reference covers the
public API, and every path a page names exists.

- The build: ``mkdocs build --strict`` (what ``scripts/docs build`` runs): a
  warning of any kind (a broken link, a missing API reference, a directive
  without its run) fails it. A control build of a one-page site with a broken
  link must fail, so strictness cannot be off without this noticing.
- Links: every ``href`` and ``src`` of every built page that points inside the
  site names a file that exists, and its ``#anchor`` an id in that file.
- The API reference: every name of ``tallies.__all__`` and every public method
  and property of every built-in store class has its entry (an element whose id
  is its dotted path) in api.html.
- Paths: every ``tests/...``, ``src/...``, ``scripts/...`` and ``benchmarks/...``
  path that a page names exists, and a ``tests/x.py::name`` names a test in it.
"""

from __future__ import annotations

import html.parser
import importlib
import inspect
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from _docs_support import DOCS, ROOT, Site, build, need_docs_tools, pages, rel

import tallies
import tallies.stores


def test_the_site_builds_strictly(site: Site) -> None:
    print(f"mkdocs build --strict took {site.seconds:.1f} s")
    for page in ("index.html", "api.html", "performance.html", "guarantees.html"):
        assert (site.path / page).is_file()
    assert "WARNING" not in site.log


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    need_docs_tools()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# home\n\n[gone](nowhere.md)\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text("site_name: control\nstrict: true\ndocs_dir: docs\n")
    done = build(tmp_path / "site", config)
    assert done.returncode != 0 and "nowhere.md" in done.stderr, done.stderr


class _Refs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for k, v in attrs:
            if k in ("id", "name") and v:
                self.ids.add(v)
            if v and (
                (k == "href" and tag in ("a", "link")) or (k == "src" and tag in ("img", "script"))
            ):
                self.refs.append(v)


def _parse(path: Path) -> _Refs:
    p = _Refs()
    p.feed(path.read_text(errors="replace"))
    return p


def test_every_link_and_anchor_in_the_site_resolves(site: Site) -> None:
    parsed = {p: _parse(p) for p in site.path.rglob("*.html")}
    broken = []
    checked = 0
    for page, refs in parsed.items():
        if page.name == "404.html":
            continue  # served at any depth: its links are absolute by design
        for ref in refs.refs:
            parts = urlsplit(ref)
            if parts.scheme or parts.netloc or ref.startswith(("mailto:", "javascript:")):
                continue  # outside the site: not ours to check offline
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            checked += 1
            if not target.is_file():
                broken.append(f"{page.relative_to(site.path)}: {ref} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(site.path)}: {ref} (no such anchor)")
    assert checked > 500, checked
    assert broken == []


def _store_classes() -> list[type]:
    classes = []
    for scheme in tallies.stores.BUILTIN_SCHEMES:
        if "+" in scheme or scheme == "rediss":
            continue  # served by another scheme's module
        module = importlib.import_module(f"tallies.stores.{scheme}")
        classes.append(module.STORE)
    return classes


def _public(cls: type) -> list[str]:
    return [
        n
        for n, v in inspect.getmembers(cls)
        if not n.startswith("_")
        and (callable(v) or isinstance(v, property))
        and n not in ("open_url", "destroy_url")  # reached through tallies.open / destroy
    ]


def test_the_api_reference_covers_every_public_name(site: Site) -> None:
    ids = _parse(site.path / "api.html").ids
    missing = [f"tallies.{n}" for n in tallies.__all__ if f"tallies.{n}" not in ids]
    missing += [f"tallies.{n}" for n in ("open",) if f"tallies.{n}" not in ids]
    stores = _store_classes()
    assert len(stores) >= 4
    for cls in stores:
        anchor = f"{cls.__module__}.{cls.__name__}"
        if anchor not in ids:
            missing.append(anchor)
            continue
        missing += [f"{anchor}.{m}" for m in _public(cls) if f"{anchor}.{m}" not in ids]
    assert missing == [], "not in docs/api.md's reference: " + ", ".join(missing)


PATH = re.compile(r"(?<![\w/.-])((?:tests|src|scripts|benchmarks)/[\w./*{}-]*[\w*}])(?:::(\w+))?")


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_every_path_a_page_names_exists(page: Path) -> None:
    missing = []
    for m in PATH.finditer(page.read_text()):
        path, test = m[1], m[2]
        if any(ch in path for ch in "*{}") or path.endswith("/X"):
            continue
        target = ROOT / path
        if not target.exists():
            missing.append(path)
        elif test and not re.search(rf"^(?:async )?def {test}\(", target.read_text(), re.M):
            missing.append(f"{path}::{test}")
    assert missing == [], f"{rel(page)} names what does not exist: {missing}"


def test_the_path_check_sees_the_guarantees() -> None:
    names = PATH.findall((DOCS / "guarantees.md").read_text())
    assert sum(1 for _, t in names if t) >= 30
