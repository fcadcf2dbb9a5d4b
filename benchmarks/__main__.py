"""``./tallies bench`` (``python -m benchmarks`` from a checkout): the whole report.

    tallies bench [--quick] [--processes | --stores [--part NAME...] | --limits
                  | --threads [N,N...] [--rounds N] | --scale [--max-keys N]] [--json]

Without a mode: the default report, ``PARTS`` in order (Counter and
ShardedCounter, KeyedCounter, RateCounter), printed part by part, then every
target with its verdict.  A mode runs its own report instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

import tallies
from tallies._build import fallback_notice
from tallies.cli.look import positive_int

from . import counters, keyed, limits, processes, rates, scale, stores, threads
from .harness import Row, emit, format_rows, format_targets, header, report_json

__all__ = ["PARTS", "build_parser", "main"]

COMMAND = "tallies bench"

Part = Callable[[bool], list[Row]]
"""A part of the default report: ``part(quick) -> rows``."""


PARTS: list[Part] = [counters.run, keyed.run, rates.run]
"""The default report's parts, in order.  Append one to add a part."""


def report(quick: bool, as_json: bool) -> int:
    command = COMMAND + (" --quick" if quick else "")
    rows: list[Row] = []
    if not as_json:
        print(header(command), flush=True)
    for part in PARTS:
        new = part(quick)
        rows += new
        if not as_json:
            print()
            print(format_rows(new), flush=True)
    if as_json:
        print(json.dumps(report_json(command, rows, quick=quick), indent=2))
    else:
        print()
        print(format_targets(rows))
    return 0


def _thread_counts(text: str) -> list[int]:
    """``--threads 2,4,8``: thread counts from 1 to 1024."""
    counts = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= 1024:
            raise argparse.ArgumentTypeError(
                f"expected thread counts from 1 to 1024 such as 2,4,8, not {text!r}"
            )
        counts.append(int(part))
    return counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=COMMAND,
        description=(
            "Single-thread cost of one increment against the cheapest C method call and "
            "against installed peers, the tutorial's 10-thread workload, object sizes, "
            "KeyedCounter and RateCounter against their peers, and the project's speed "
            "and size targets, all measured in this run as ratios per round."
        ),
    )
    p.add_argument(
        "--quick", action="store_true", help="a short run with the same structure (for tests)"
    )
    p.add_argument(
        "--processes",
        action="store_true",
        help="instead: counters shared by processes (shm://) against multiprocessing.Value "
        "and prometheus_client's multiprocess mode",
    )
    p.add_argument(
        "--stores",
        action="store_true",
        help="instead: the durable scopes (sqlite://, redis://) against the in-process core, "
        "diskcache, a raw SQLite UPSERT per increment and redis-py",
    )
    p.add_argument(
        "--part",
        action="append",
        choices=[part.name for part in stores.PARTS],
        help="with --stores: only this part (again for more)",
    )
    p.add_argument(
        "--limits",
        action="store_true",
        help="instead: limiters (Limiter.hit on memory://, shm://, redis://), rates on the "
        "durable scopes, and limits' strategies over the tallies storage and its own",
    )
    p.add_argument(
        "--threads",
        nargs="?",
        const=[],
        type=_thread_counts,
        metavar="N,N...",
        help="instead: how throughput scales from 1 thread to one per CPU (or to each "
        "count given, e.g. 2,4,8,16), for each form of counting (the targets apply to "
        "free-threaded builds)",
    )
    p.add_argument(
        "--scale",
        action="store_true",
        help="instead: what one key costs in every store at 10^3 to 10^6 keys (first and "
        "later increments, flush, one-key read, snapshot, memory, disk), issue 19's targets",
    )
    p.add_argument(
        "--max-keys",
        type=positive_int,
        default=None,
        help=f"with --scale: the most keys measured (default {max(scale.SIZES):,})",
    )
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=None,
        help="interleaved rounds for --threads (default: 11; 1 with --quick)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    notice = fallback_notice(tallies.BUILD)  # measuring the fallback: say so first
    if notice:
        print(f"NOTE: {notice}", file=sys.stderr, flush=True)
    if args.rounds is not None and args.threads is None:
        print(f"{COMMAND}: --rounds applies to --threads only", file=sys.stderr)
        return 2
    if args.part and not args.stores:
        print(f"{COMMAND}: --part applies to --stores only", file=sys.stderr)
        return 2
    if args.max_keys is not None and not args.scale:
        print(f"{COMMAND}: --max-keys applies to --scale only", file=sys.stderr)
        return 2
    if args.scale:
        max_keys = args.max_keys or max(scale.SIZES)
        command = f"{COMMAND} --scale" + (f" --max-keys {max_keys}" if args.max_keys else "")
        command += " --quick" if args.quick else ""
        emit(command, scale.run(args.quick, max_keys), as_json=args.json, note=scale.NOTE)
        return 0
    if args.stores:
        command = " ".join([f"{COMMAND} --stores", *(f"--part {p}" for p in args.part or ())])
        emit(command, stores.run(args.quick, args.part), as_json=args.json)
        return 0
    if args.limits:
        emit(f"{COMMAND} --limits", limits.run(args.quick), as_json=args.json)
        return 0
    if args.processes:
        n, rounds = (100_000, 1) if args.quick else (1_000_000, 3)
        emit(f"{COMMAND} --processes", processes.run(n=n, rounds=rounds), as_json=args.json)
        return 0
    if args.threads is not None:
        return threads.main(
            quick=args.quick, as_json=args.json, threads=args.threads, rounds=args.rounds
        )
    return report(args.quick, args.json)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # The reader went away (``./tallies bench | head``): stop quietly, and keep
        # the interpreter from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
