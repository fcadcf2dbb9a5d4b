"""Recorded runs: the JSON that benchmark figures in the docs are generated from.

A run is one file ``docs/runs/NAME.json``, the object ``tallies bench --json``
prints (``benchmarks/harness.py``, ``report_json``): ``command``, ``date``,
``machine``, ``commit``, ``python``, ``tallies`` and ``rows``.  A run of
``tallies demo`` is recorded in the same envelope by ``scripts/docs record``
(its rows are the demo's own JSON rows).  Nothing here measures anything: it
only reads what a run recorded and says where it came from.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUNS = DOCS / "runs"

#: What every run must record for its figures to be shown (issue 28).
PROVENANCE = ("date", "machine", "commit", "python")


class RunError(ValueError):
    """A run that cannot be used: missing, or without its provenance."""


@cache
def load(name: str) -> dict[str, Any]:
    """The run ``docs/runs/NAME.json``, checked for its date, machine and commit."""
    path = RUNS / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RUNS.glob("*.json"))) or "none"
        raise RunError(f"no recorded run {name!r} (docs/runs/{name}.json; recorded: {known})")
    run: dict[str, Any] = json.loads(path.read_text())
    missing = [k for k in PROVENANCE if not run.get(k)]
    if missing:
        raise RunError(f"docs/runs/{name}.json does not record its {', '.join(missing)}")
    machine = run["machine"]
    if not machine.get("cpu") or not machine.get("cpus"):
        raise RunError(f"docs/runs/{name}.json: its machine has no cpu model or cpu count")
    if "dirty" in run["commit"]:
        raise RunError(
            f"docs/runs/{name}.json was measured on uncommitted code ({run['commit']}): "
            "record runs from a clean checkout, so that the commit names the code measured"
        )
    return run


def names() -> list[str]:
    return sorted(p.stem for p in RUNS.glob("*.json"))


def date_text(run: dict[str, Any]) -> str:
    """``2026-12-06 01:40 UTC`` from the run's ISO date."""
    date: str = run["date"]
    day, _, time = date.partition("T")
    return f"{day} {time[:5]} UTC" if time else day


def machine_text(run: dict[str, Any]) -> str:
    """``2 CPUs (Intel Xeon ...), Linux 6.1, load average 7.8 / 11.1 / 12.3``."""
    m = run["machine"]
    text = f"{m['cpus']} CPUs ({m['cpu']}), {m.get('system', '')}".rstrip(", ")
    load = m.get("load_average")
    if load:
        text += ", load average " + " / ".join(f"{x:.1f}" for x in load)
    return text


def python_text(run: dict[str, Any]) -> str:
    p = run["python"]
    text: str = p.get("description") or f"{p.get('implementation', '')} {p.get('version', '')}"
    impl = run.get("tallies", {}).get("implementation")
    if impl:
        text += ", tallies " + ("C core" if impl == "c" else "pure-Python fallback")
    return text


def commit_text(run: dict[str, Any]) -> str:
    return str(run["commit"])


def provenance(run: dict[str, Any]) -> dict[str, str]:
    """What a figure carries: date, machine, commit, Python, command."""
    return {
        "date": date_text(run),
        "machine": machine_text(run),
        "commit": commit_text(run),
        "python": python_text(run),
        "command": str(run.get("command", "")),
    }


def caption(run: dict[str, Any], name: str) -> str:
    """One line under a figure: where its numbers come from (Markdown)."""
    p = provenance(run)
    note = run.get("note")
    text = (
        f"Recorded run `{name}`: `{p['command']}` on {p['date']}, commit `{p['commit']}`; "
        f"{p['machine']}; {p['python']}."
    )
    if note:
        text += f" {note}"
    return text
