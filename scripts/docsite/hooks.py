"""MkDocs hooks (``mkdocs.yml``: ``hooks:``): the generated parts of the pages.

* before a build: redraw every plot of ``docs/plots/`` whose recorded run
  changed (``plots.py``; a file is written only when its bytes change, so
  ``mkdocs serve`` does not rebuild in a loop);
* in each page: ``{{ include("CHANGELOG.md") }}`` inlines a file of the
  repository (a page shows it as it is), and the figure directives
  (``figures.py``) become tables, values and plots generated from
  ``docs/runs/*.json`` with their date, machine and commit.

A directive that names a run, part or row that does not exist fails the build.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docsite import figures, plots, runs

INCLUDE = re.compile(r"\{\{\s*include\(\s*\"(?P<path>[^\"]+)\"\s*\)\s*\}\}")


def on_pre_build(config: Any) -> None:
    try:
        plots.write_all()
    except (runs.RunError, KeyError, ValueError) as exc:
        raise PluginError(f"docs/plots: {exc}") from exc


def _include(m: re.Match[str]) -> str:
    path = runs.ROOT / m["path"]
    if not path.is_file():
        raise PluginError(f"include: {m['path']} does not exist")
    text = path.read_text()
    # the file's own title is the page's: drop its first heading
    return re.sub(r"\A# .*\n", "", text, count=1)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    where = page.file.src_uri
    markdown = INCLUDE.sub(_include, markdown)
    try:
        return figures.expand(markdown, where)
    except figures.DirectiveError as exc:
        raise PluginError(str(exc)) from exc
