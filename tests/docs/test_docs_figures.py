"""Every benchmark figure in the docs carries its run's date, machine and commit
(issue 28): figures are generated from recorded runs (docs/runs/*.json) at build
time, never typed.

- Every recorded run states its date, machine (CPU model and count), commit and
  Python, and was measured on committed code (no ``-dirty`` commit).
- In the built site, every generated figure (tables, inline values, plots) and
  every dated record of an older run carries ``data-date``, ``data-machine`` and
  ``data-commit``, and a generated figure's are its run's.
- In the pages' sources, a figure typed by hand (a time per operation, a ratio
  such as ``1.27x``, a rate: ``figures.TYPED_FIGURE``) is allowed only in a
  section (the text under one heading) that carries a ``run_record`` stating
  the run it comes from; the README has none at all.
- The plots in docs/plots/ are exactly what their runs draw, and each names its
  runs' date and commit inside the picture.
"""

from __future__ import annotations

import html.parser
import json
import re
from pathlib import Path

import pytest
from _docs_support import DOCS, ROOT, Site, need_docs_tools, pages, rel
from docsite import figures, plots, runs


@pytest.mark.parametrize("name", runs.names())
def test_each_recorded_run_states_its_date_machine_and_commit(name: str) -> None:
    run = runs.load(name)  # raises RunError when any of them is missing or dirty
    assert re.fullmatch(r"[0-9a-f]{7,40}", run["commit"]), run["commit"]
    assert run["rows"]


def test_a_run_without_its_commit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "RUNS", tmp_path)
    runs.load.cache_clear()
    good = json.loads((DOCS / "runs" / "default.json").read_text())
    for broken in (
        {**good, "commit": ""},
        {**good, "commit": "abc1234-dirty"},
        {**good, "machine": {}},
    ):
        (tmp_path / "x.json").write_text(json.dumps(broken))
        runs.load.cache_clear()
        with pytest.raises(runs.RunError):
            runs.load("x")
    runs.load.cache_clear()


class _Figures(html.parser.HTMLParser):
    CLASSES = ("bench-figure", "bench-value", "run-record")

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if any(c in a.get("class", "").split() for c in self.CLASSES):
            self.found.append(a)


def test_every_figure_in_the_site_carries_its_run(site: Site) -> None:
    found: list[tuple[str, dict[str, str]]] = []
    for page in site.path.rglob("*.html"):
        parser = _Figures()
        parser.feed(page.read_text())
        found += [(str(page.relative_to(site.path)), a) for a in parser.found]
    assert len(found) >= 20, len(found)
    for page, a in found:
        for what in ("data-date", "data-machine", "data-commit"):
            assert a.get(what, "").strip(), f"{page}: a figure without its {what}: {a}"
        if "data-run" in a:
            p = runs.provenance(runs.load(a["data-run"]))
            assert (a["data-date"], a["data-commit"]) == (p["date"], p["commit"]), (page, a)
    kinds = {a["class"] for _, a in found}
    assert any("bench-plot" in k for k in kinds) and any("bench-table" in k for k in kinds)


@pytest.mark.parametrize(
    ("text", "figure"),
    [
        ("took 26.9 ns per call", "26.9 ns"),
        ("1.27x the floor", "1.27x"),
        ("25.5\u00d7 slower", "25.5\u00d7"),
        ("8.5 M increments/s", "8.5 M increments/s"),
        ("22.74 M/s", "22.74 M/s"),
        ("3.5 ms", "3.5 ms"),
        ("221 ns/op", "221 ns/op"),
        ("target ≤ 1.5x: met", None),
        ("target >= 100x", None),
        ("10 threads x 100,000", None),
        ("a 128-byte cell", None),
    ],
)
def test_the_typed_figure_rule(text: str, figure: str | None) -> None:
    m = figures.TYPED_FIGURE.search(text)
    assert (m[0] if m else None) == figure


HEADING = re.compile(r"^#{1,6} ", re.M)


def _sections(text: str) -> list[str]:
    # fenced blocks stay in their section: a demo's output is a figure too
    starts = [0] + [m.start() for m in HEADING.finditer(text)]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_a_typed_figure_stands_under_the_run_it_comes_from(page: Path) -> None:
    text = page.read_text()
    bad = []
    for section in _sections(text):
        has_record = "run_record(" in section
        typed = figures.TYPED_FIGURE.findall(figures.DIRECTIVE.sub("", section))
        if typed and (page.name == "README.md" or not has_record):
            title = section.split("\n", 1)[0][:60]
            bad.append(f"{title!r}: {typed[:5]}")
    assert bad == [], f"{rel(page)}: figures typed without their run (date, machine, commit): {bad}"


@pytest.mark.parametrize("name", sorted(plots.PLOTS))
def test_each_plot_is_what_its_runs_draw(name: str) -> None:
    need_docs_tools()
    svg = plots.render(name)
    path = DOCS / "plots" / f"{name}.svg"
    assert path.read_bytes() == svg, f"docs/plots/{name}.svg is stale: run scripts/docs plots"
    text = svg.decode()
    for run_name in plots.PLOTS[name].runs():
        p = runs.provenance(runs.load(run_name))
        assert p["date"] in text and p["commit"] in text and p["machine"].split(",")[0] in text


def test_the_readme_figure_is_a_generated_plot() -> None:
    readme = (ROOT / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert images, "the README shows one figure"
    for img in images:
        assert img.startswith("docs/plots/") and (ROOT / img).is_file(), img
