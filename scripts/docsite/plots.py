"""The performance plots, drawn from recorded runs (``docs/runs/*.json``).

Each plot is ``docs/plots/NAME.svg``, drawn by matplotlib (a docs requirement,
never a dependency of tallies) with its runs' date, machine and commit written
into the picture itself, so that it carries them wherever it is shown (the
README shows one).  The SVG is deterministic (no date, a fixed hash salt, text
kept as text): ``scripts/docs plots`` redraws every plot, the build redraws any
plot whose run changed, and ``tests/docs/test_docs_figures.py`` checks that the files
in the repository are exactly what their runs draw.

* ``per-call``: one increment's cost against the floor and the peers
  (``tallies bench``, part "single thread: ns per call").
* ``threads``: throughput of T threads over one thread for each form of
  counting (``tallies bench --threads``; each run of it adds its thread counts).
* ``keys``: bytes per key of ``KeyedCounter`` and ``collections.Counter``
  against the number of keys: every row named ``memory per key, N keys, KIND:
  IMPL`` of the plot's runs is a point (today the default report measures one
  N; a scale report with the same row names adds its sizes by being listed in
  ``KEYS_RUNS``).
* ``scale``: per-key cost of every store against the number of keys, one panel
  per operation (``tallies bench --scale``: every row named ``STORE, N keys``
  of its parts "scale: ...").
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import runs

PER_CALL_RUN = "default"
PER_CALL_PART = "single thread: ns per call"
THREADS_RUNS = ("threads",)
KEYS_RUNS = ("default",)
SCALE_RUN = "scale"
SCALE_ROW = re.compile(r"(?P<store>[^,]+), (?P<keys>[\d,]+) keys(?:, after flush\(\))?$")
#: The panels of the scale plot: (the part's name starts with, its title).
SCALE_PANELS = (
    ("scale: first increment", "first increment of a new key (ns per key)"),
    ("scale: increment of an existing", "increment of an existing key (ns)"),
    ("scale: one-key read", "one-key read kc[key] after flush() (us)"),
    ("scale: flush()", "flush() of every key dirty (ns per key)"),
    ("scale: snapshot()", "snapshot() (ns per key)"),
    ("scale: resident memory", "resident memory (bytes per key)"),
)
MEMORY_ROW = re.compile(r"memory per key, (?P<keys>[\d,]+) keys, (?P<kind>.+): (?P<impl>[\w.]+)$")


@dataclass(frozen=True)
class Plot:
    title: str
    runs: Callable[[], tuple[str, ...]]
    draw: Callable[[Any, list[tuple[str, dict[str, Any]]]], None]
    size: tuple[float, float] = (8.0, 4.2)


def _setup() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",
            "svg.hashsalt": "tallies-docs",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
    return plt


def _stamp(fig: Any, sources: list[tuple[str, dict[str, Any]]]) -> None:
    """Each run's date, machine, commit and Python, written under the plot."""
    lines = []
    for name, run in sources:
        p = runs.provenance(run)
        lines.append(f"run {name}: {p['command']}, {p['date']}, commit {p['commit']}")
        lines.append(f"    {p['machine']}; {p['python']}")
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=6.5, color="#555555", va="bottom", ha="left")


def _draw_per_call(fig: Any, sources: list[tuple[str, dict[str, Any]]]) -> None:
    ((_, run),) = sources
    rows = [
        r
        for r in run["rows"]
        if r["part"].startswith(PER_CALL_PART) and r.get("ratios") and r.get("of") == "floor"
    ]
    rows.sort(key=lambda r: r["ratio"])
    ax = fig.add_axes((0.36, 0.24, 0.6, 0.66))
    names = [r["name"] for r in rows]
    med = [r["ratio"] for r in rows]
    lo = [r["ratio"] - min(r["ratios"]) for r in rows]
    hi = [max(r["ratios"]) - r["ratio"] for r in rows]
    colors = ["#3f51b5" if n.startswith("tallies") else "#9e9e9e" for n in names]
    ax.barh(range(len(rows)), med, xerr=[lo, hi], color=colors, ecolor="#333333", capsize=2)
    ax.set_yticks(range(len(rows)), names)
    ax.set_xscale("log")
    ax.set_xlabel("cost of one call, x the floor (median of the rounds; bars: lowest-highest)")
    for i, r in enumerate(rows):
        ax.text(r["ratio"] * 1.08, i, f"{r['ratio']:.2f}x", va="center", fontsize=7)
    ax.set_title("One increment, single thread: cost against the floor and the peers")


def _draw_threads(fig: Any, sources: list[tuple[str, dict[str, Any]]]) -> None:
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for _, run in sources:
        for r in run["rows"]:
            t = r.get("data", {}).get("threads")
            if r["part"].startswith("scaling:") and t and r.get("value") is not None:
                series[r["name"]][int(t)] = r["value"]
                series[r["name"]][1] = 1.0
    ax = fig.add_axes((0.08, 0.3, 0.55, 0.6))
    counts = sorted({t for pts in series.values() for t in pts})
    for name, pts in series.items():
        xs = sorted(pts)
        style = "--" if name.startswith("floor") else "-"
        ax.plot(xs, [pts[x] for x in xs], style, marker="o", label=name)
    ax.plot(counts, counts, ":", color="#999999", label="perfect scaling")
    ax.set_xticks(counts)
    ax.set_xlabel("threads")
    ax.set_ylabel("throughput over 1 thread (median of the rounds)")
    ax.set_title("Thread scaling: T threads against 1")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)


def _draw_keys(fig: Any, sources: list[tuple[str, dict[str, Any]]]) -> None:
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for _, run in sources:
        for r in run["rows"]:
            m = MEMORY_ROW.match(r["name"].strip())
            if m and r.get("value") is not None:
                keys = int(m["keys"].replace(",", ""))
                series[f"{m['impl']}, {m['kind']}"][keys] = r["value"]
    ax = fig.add_axes((0.08, 0.3, 0.5, 0.6))
    for name, pts in sorted(series.items()):
        xs = sorted(pts)
        style = "-" if name.startswith("KeyedCounter") else "--"
        ax.plot(xs, [pts[x] for x in xs], style, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("keys in the counter")
    ax.set_ylabel("bytes per key (tracemalloc)")
    ax.set_ylim(bottom=0)
    ax.set_title("Memory per key as keys grow")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)


def _draw_scale(fig: Any, sources: list[tuple[str, dict[str, Any]]]) -> None:
    ((_, run),) = sources
    axes = fig.subplots(
        2,
        3,
        gridspec_kw={
            "left": 0.07,
            "right": 0.98,
            "top": 0.9,
            "bottom": 0.2,
            "hspace": 0.45,
            "wspace": 0.3,
        },
    )
    colors: dict[str, str] = {}
    palette = ("#9e9e9e", "#3f51b5", "#e65100", "#c62828", "#2e7d32")
    for ax, (part, label) in zip(axes.flat, SCALE_PANELS, strict=True):
        series: dict[str, dict[int, float]] = defaultdict(dict)
        for r in run["rows"]:
            m = SCALE_ROW.match(r["name"])
            if r["part"].startswith(part) and m and (r.get("value") or 0) > 0:  # log axes
                series[m["store"]][int(m["keys"].replace(",", ""))] = r["value"]
        for store, pts in series.items():
            color = colors.setdefault(store, palette[len(colors) % len(palette)])
            xs = sorted(pts)
            style = "--" if store == "KeyedCounter" else "-"
            ax.plot(
                xs,
                [max(pts[x], 1e-3) for x in xs],
                style,
                marker="o",
                ms=3,
                color=color,
                label=store,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("keys", fontsize=7)
        ax.tick_params(labelsize=7)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=7, frameon=False)


PLOTS: dict[str, Plot] = {
    "per-call": Plot(
        "Cost of one increment against the floor and the peers",
        lambda: (PER_CALL_RUN,),
        _draw_per_call,
    ),
    "threads": Plot("Thread scaling", lambda: THREADS_RUNS, _draw_threads),
    "keys": Plot("Memory per key as keys grow", lambda: KEYS_RUNS, _draw_keys),
    "scale": Plot(
        "What one key costs in every store as keys grow",
        lambda: (SCALE_RUN,),
        _draw_scale,
        size=(9.0, 6.0),
    ),
}


def render(name: str) -> bytes:
    """The SVG of one plot, from its runs as recorded now."""
    plt = _setup()
    spec = PLOTS[name]
    sources = [(n, runs.load(n)) for n in spec.runs()]
    fig = plt.figure(figsize=spec.size)
    try:
        spec.draw(fig, sources)
        _stamp(fig, sources)
        out = io.BytesIO()
        fig.savefig(out, format="svg", metadata={"Date": None, "Creator": "tallies docs"})
    finally:
        plt.close(fig)
    return out.getvalue()


def write_all(check_only: bool = False) -> list[str]:
    """Redraw every plot into docs/plots/; returns the names whose file changed
    (or, with ``check_only``, would change)."""
    out = runs.DOCS / "plots"
    out.mkdir(exist_ok=True)
    changed = []
    for name in PLOTS:
        svg = render(name)
        path = out / f"{name}.svg"
        if not path.is_file() or path.read_bytes() != svg:
            changed.append(name)
            if not check_only:
                path.write_bytes(svg)
    return changed
