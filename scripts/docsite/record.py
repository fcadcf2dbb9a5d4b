"""``scripts/docs record NAME``: run a benchmark and keep its JSON as docs/runs/NAME.json.

    default   ./tallies bench --json            (per-call costs, KeyedCounter, rates)
    threads   ./tallies bench --threads --json  (thread scaling)
    stores    ./tallies bench --stores --json   (sqlite://, redis://)
    processes ./tallies bench --processes --json
    limits    ./tallies bench --limits --json   (limiters, durable rates, limits' strategies)
    scale     ./tallies bench --scale --json    (every store at 10^3 to 10^6 keys)
    demo      ./tallies demo --json, in the same envelope (date, machine, commit)

Extra arguments go to the command.  A note (``--note TEXT``) is kept with the run
and shown under its figures (say there what loaded the machine).  The checkout
must be clean (``git describe --dirty``): the run's commit must name the code
that was measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from . import runs

COMMANDS = {
    "default": ["bench", "--json"],
    "threads": ["bench", "--threads", "--json"],
    "stores": ["bench", "--stores", "--json"],
    "processes": ["bench", "--processes", "--json"],
    "limits": ["bench", "--limits", "--json"],
    "scale": ["bench", "--scale", "--json"],
    "demo": ["demo", "--json"],
}


def _demo_envelope(rows: list[dict[str, Any]], extra: list[str]) -> dict[str, Any]:
    sys.path.insert(0, str(runs.ROOT))
    from benchmarks.harness import report_json

    run = report_json(" ".join(["tallies demo", *extra]), [])
    run["rows"] = rows
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/docs record", description=__doc__.split("\n")[0])
    p.add_argument("name", help="the run's name: " + ", ".join(COMMANDS) + " (or KIND-anything)")
    p.add_argument("--note", default="", help="shown under the run's figures")
    a, rest = p.parse_known_args(argv)
    kind = a.name.split("-")[0]
    if kind not in COMMANDS:
        p.error(f"unknown kind {kind!r}: the name starts with one of {', '.join(COMMANDS)}")
    dirty = subprocess.run(
        ["git", "-C", str(runs.ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if dirty.strip():
        print(
            "scripts/docs record: commit your changes first (the run records the commit)",
            file=sys.stderr,
        )
        return 2
    extra = [x for x in rest if x != "--"]
    cmd = [str(runs.ROOT / "tallies"), *COMMANDS[kind], *extra]
    print("running " + " ".join(cmd), file=sys.stderr)
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        return out.returncode
    data = json.loads(out.stdout)
    run = _demo_envelope(data, extra) if kind == "demo" else data
    if a.note:
        run["note"] = a.note
    runs.RUNS.mkdir(exist_ok=True)
    path = runs.RUNS / f"{a.name}.json"
    path.write_text(json.dumps(run, indent=1) + "\n")
    print(f"wrote {path.relative_to(runs.ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
