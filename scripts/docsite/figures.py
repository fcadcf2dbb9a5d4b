"""Benchmark figures in the docs: generated from recorded runs, never typed.

A page asks for a figure with a directive, expanded at build time by
``hooks.py`` (``on_page_markdown``):

``{{ bench_table("default", part="Counter and ShardedCounter, 1 thread") }}``
    the rows of one part of a recorded run as a table, with its caption.
``{{ bench_value("default", "tallies.Counter.increment()") }}``
    one row's figure inline (its median ratio, or its value), linked to its run.
``{{ demo_table("demo", section="One counter") }}``
    the rows of a recorded ``tallies demo`` run.
``{{ bench_plot("per-call") }}``
    a plot of ``docs/plots/`` (``plots.py``) with the caption of its runs.
``{{ run_record(date=..., machine=..., commit=...) }}``
    for the design notes only: figures typed long ago, kept as a dated record of
    a run that has no JSON; it states the run's date, machine and commit.

Every generated figure is wrapped in an element with ``data-date``,
``data-machine`` and ``data-commit`` (checked in the built HTML by
``tests/docs/test_docs_figures.py``), and ``TYPED_FIGURE`` is the rule that test
uses to find figures typed into a page by hand: a section of a page that has
one must carry a ``run_record``.
"""

from __future__ import annotations

import ast
import html
import re
from collections.abc import Callable
from typing import Any

from . import runs

DIRECTIVE = re.compile(r"\{\{\s*(?P<fn>[a-z_]+)\((?P<args>.*?)\)\s*\}\}", re.S)

#: A measured figure typed as text: a time per operation ("26.9 ns", "2.5 µs",
#: "3.5 ms"), a ratio ("1.27x", or with the multiplication sign) or a rate
#: ("8.5 M increments/s", "22.74 M/s", "9,023,640 incr/s").  A limit written with its operator
#: ("≤ 1.5x", ">= 100x") is a target, not a figure.
TYPED_FIGURE = re.compile(
    r"(?<![≤≥<>=~\w.,])(?<![≤≥<>=] )"
    r"\d[\d,]*(?:\.\d+)?"
    r"(?:\s?(?:ns|µs|us|ms)(?![\w/])|\s?ns/op|[x\u00d7](?!\w)|\s?M(?: \w+)?/s|\s?incr/s)"
)


class DirectiveError(ValueError):
    pass


def _args(text: str) -> tuple[list[Any], dict[str, Any]]:
    try:
        call = ast.parse(f"f({text})", mode="eval").body
    except SyntaxError as exc:
        raise DirectiveError(f"cannot read the arguments {text!r}: {exc.msg}") from None
    assert isinstance(call, ast.Call)
    pos = [ast.literal_eval(a) for a in call.args]
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    return pos, kw


def _attrs(run: dict[str, Any], name: str) -> str:
    p = runs.provenance(run)
    return (
        f'data-run="{html.escape(name)}" data-date="{html.escape(p["date"])}" '
        f'data-machine="{html.escape(p["machine"])}" data-commit="{html.escape(p["commit"])}"'
    )


def _figure(run: dict[str, Any], name: str, body: str, kind: str) -> str:
    return (
        f'\n<div class="bench-figure bench-{kind}" {_attrs(run, name)} markdown="1">\n\n'
        f"{body}\n\n"
        f'<p class="bench-caption" markdown="1">{runs.caption(run, name)}</p>\n\n</div>\n'
    )


# ---------------------------------------------------------------- numbers


def _x(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.2f}x"


def amount(value: float | None, unit: str) -> str:
    """A row's value as the harness prints it."""
    if value is None:
        return "-"
    if unit == "x":
        return _x(value)
    if unit == "s":
        return f"{value:.4g} s"
    if value == int(value) or abs(value) >= 10_000:
        return f"{value:,.0f} {unit}".rstrip()
    return f"{value:,.1f} {unit}".rstrip()


def ratio_text(row: dict[str, Any]) -> str:
    """``1.27x floor [1.21-1.35x, 31 rounds]``."""
    if row.get("ratio") is None:
        return ""
    text = f"{_x(row['ratio'])} {row.get('of', '')}".rstrip()
    ratios = row.get("ratios") or []
    if len(ratios) > 1:
        text += f" [{_x(min(ratios))[:-1]}-{_x(max(ratios))}, {len(ratios)} rounds]"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "&#124;").replace("\n", " ")


def _value_cell(row: dict[str, Any]) -> str:
    if row.get("unit") == "x" and row.get("ratios"):
        return ""
    return amount(row.get("value"), row.get("unit", ""))


# ---------------------------------------------------------------- directives


def _select(run: dict[str, Any], name: str, part: str | None, rows: Any) -> list[dict[str, Any]]:
    selected = list(run["rows"])
    if part is not None:
        selected = [r for r in selected if r.get("part", r.get("section", "")).startswith(part)]
        if not selected:
            parts = sorted({r.get("part", r.get("section", "")) for r in run["rows"]})
            raise DirectiveError(f"run {name!r} has no part starting {part!r} (parts: {parts})")
    if rows is not None:
        wanted = [rows] if isinstance(rows, str) else list(rows)
        picked = []
        for w in wanted:
            found = [r for r in selected if r["name"].strip().startswith(w)]
            if not found:
                raise DirectiveError(f"run {name!r} has no row starting {w!r}")
            picked += found
        selected = picked
    return selected


def bench_table(name: str, part: str | None = None, rows: Any = None) -> str:
    run = runs.load(name)
    selected = _select(run, name, part, rows)
    show_value = any(_value_cell(r) for r in selected)
    show_ratio = any(ratio_text(r) for r in selected)
    show_target = any(r.get("target") for r in selected)
    head = ["row"]
    head += ["measured"] if show_value else []
    head += ["ratio, median of the rounds [lowest-highest]"] if show_ratio else []
    head += ["target: verdict"] if show_target else []
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in selected:
        cells = [f"`{r['name'].strip()}`" if r.get("detail") is None else r["name"].strip()]
        if show_value:
            cells.append(_value_cell(r))
        if show_ratio:
            cells.append(ratio_text(r))
        if show_target:
            verdict = r.get("verdict", "")
            if r.get("reason"):
                verdict += f" ({r['reason']})"
            cells.append(f"{r['target']}: **{verdict}**" if r.get("target") else "")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return _figure(run, name, "\n".join(lines), "table")


def bench_value(name: str, row: str, field: str = "auto") -> str:
    run = runs.load(name)
    (r,) = _select(run, name, None, row)[:1]
    if field == "auto":
        field = "ratio" if r.get("ratio") is not None else "value"
    if field == "ratio":
        if r.get("ratio") is None:
            raise DirectiveError(f"row {row!r} of run {name!r} has no ratio")
        text = f"{_x(r['ratio'])} {r.get('of', '')}".rstrip()
    else:
        text = amount(r.get("value"), r.get("unit", ""))
    p = runs.provenance(run)
    title = html.escape(f"run {name}: {p['date']}, commit {p['commit']}, {p['machine']}")
    return (
        f'<span class="bench-value" {_attrs(run, name)} title="{title}">{html.escape(text)}</span>'
    )


DEMO_COLUMNS = ("expected", "final", "lost", "seconds", "ns/op")


def demo_table(name: str, section: str | None = None) -> str:
    run = runs.load(name)
    selected = _select(run, name, section, None)
    lines = [
        "| counter | expected | final | lost | seconds | ns per update |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for r in selected:
        lost = r["lost"]
        lost_text = f"{lost:,} ({100 * lost / r['expected']:.1f} %)" if lost else "0"
        lines.append(
            f"| `{_cell(r['name'])}` | {r['expected']:,} | {r['final']:,} | {lost_text} | "
            f"{r['seconds']:.3f} | {r['ns_per_op']:,.0f} |"
        )
    heading = selected[0].get("section", "") if selected else ""
    body = (f"*{heading}*\n\n" if heading else "") + "\n".join(lines)
    return _figure(run, name, body, "demo")


def run_record(date: str, machine: str, commit: str, note: str = "") -> str:
    for what, value in (("date", date), ("machine", machine), ("commit", commit)):
        if not str(value).strip():
            raise DirectiveError(f"run_record needs its {what}")
    text = f"Recorded {date}, {machine}, commit `{commit}`."
    if note:
        text += f" {note}"
    return (
        f'\n<p class="run-record" data-date="{html.escape(date)}" '
        f'data-machine="{html.escape(machine)}" data-commit="{html.escape(commit)}" '
        f'markdown="1">{text}</p>\n'
    )


def bench_plot(plot: str, alt: str = "") -> str:
    from . import plots

    spec = plots.PLOTS.get(plot)
    if spec is None:
        raise DirectiveError(f"no plot {plot!r} (plots: {sorted(plots.PLOTS)})")
    body = f"![{alt or spec.title}](plots/{plot}.svg){{ .bench-plot-img }}"
    sources = [(n, runs.load(n)) for n in spec.runs()]
    run_name, run = sources[0]
    if len(sources) > 1:
        body += "\n\n" + "\n\n".join(
            f'<p class="bench-caption" markdown="1">{runs.caption(r, n)}</p>'
            for n, r in sources[1:]
        )
    return _figure(run, run_name, body, "plot")


DIRECTIVES: dict[str, Callable[..., str]] = {
    "bench_table": bench_table,
    "bench_value": bench_value,
    "demo_table": demo_table,
    "bench_plot": bench_plot,
    "run_record": run_record,
}


def expand(markdown: str, where: str = "") -> str:
    """Replace every directive of a page by what it generates."""

    def one(m: re.Match[str]) -> str:
        fn = DIRECTIVES.get(m["fn"])
        if fn is None:
            raise DirectiveError(f"{where}: unknown directive {m['fn']!r} in {m[0]!r}")
        pos, kw = _args(m["args"])
        try:
            return fn(*pos, **kw)
        except (DirectiveError, runs.RunError, TypeError) as exc:
            raise DirectiveError(f"{where}: {m[0]!r}: {exc}") from exc

    return DIRECTIVE.sub(one, markdown)
