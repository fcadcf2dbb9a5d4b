"""The ``tallies`` console script.

    tallies demo [--threads N] [--increments N] [--switch-interval S] [--json]
    tallies bench [--quick] [--processes | --stores | --threads [N,N...] [--rounds N]] [--json]
    tallies show URL [--json]
    tallies serve URL [--host 127.0.0.1] [--port 9464]
    tallies watch URL [--interval S] [--top N]

Each subcommand is one ``_add_<name>`` function that declares its arguments and
sets ``run`` to a function taking the parsed arguments; add one to add a command.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


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


def _switch_interval(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds (0 keeps the interpreter's), not {text!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number of seconds, not {text!r}")
    return value or None


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig
    from .demo import main as demo_main

    config = DemoConfig(
        threads=args.threads,
        increments=args.increments,
        switch_interval=args.switch_interval,
        processes=args.processes,
    )
    return demo_main(config, as_json=args.json)


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "demo",
        help="run the tutorial's thread-safety experiment on this interpreter",
        description=(
            "Several threads increment one shared counter: the tutorial's unsafe and "
            "Lock counters, an unsafe counter whose update spans a call, and tallies' "
            "counters. Prints what each really ended at, and why."
        ),
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=10,
        metavar="N",
        help="threads sharing the counter (default: 10)",
    )
    p.add_argument(
        "--increments",
        type=_positive_int,
        default=100_000,
        metavar="N",
        help="increments per thread (default: 100000)",
    )
    p.add_argument(
        "--switch-interval",
        type=_switch_interval,
        default=1e-6,
        metavar="S",
        help=(
            "sys.setswitchinterval() for the unsafe counters' runs only, restored after "
            "(default: 1e-6; 0 keeps the interpreter's setting)"
        ),
    )
    from .look import non_negative_int

    p.add_argument(
        "--processes",
        type=non_negative_int,
        default=4,
        metavar="N",
        help="processes for the shm:// part with a progress bar (default: 4; 0 skips it)",
    )
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    p.set_defaults(run=_run_demo)


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig
    from .bench import main as bench_main

    if args.stores:
        from .bench_stores import main as stores_main

        return stores_main(quick=args.quick, as_json=args.json)
    if args.processes:
        import json

        from .bench_processes import bench_processes, format_report

        n, rounds = (100_000, 1) if args.quick else (1_000_000, 3)
        report = bench_processes(n=n, rounds=rounds)
        print(json.dumps(report, indent=2) if args.json else format_report(report))
        return 0

    if args.rounds is not None and args.threads is None:
        print("tallies bench: --rounds applies to --threads only", file=sys.stderr)
        return 2
    if args.threads is not None:
        from .bench_threads import main as bench_threads_main

        return bench_threads_main(
            quick=args.quick, as_json=args.json, threads=args.threads, rounds=args.rounds
        )

    config = BenchConfig.quick_run() if args.quick else BenchConfig.full_run()
    return bench_main(config, as_json=args.json)


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "bench",
        help="measure tallies against a floor and its peers, and check the targets",
        description=(
            "Single-thread cost of one increment against the cheapest C method call and "
            "against installed peers, the tutorial's 10-thread workload, object sizes, "
            "and the project's speed and size targets, all measured in this run."
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
        help="instead: the durable scopes (sqlite://) against the in-process core, "
        "diskcache and a raw SQLite UPSERT per increment",
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
        "--rounds",
        type=_positive_int,
        default=None,
        help="interleaved rounds for --threads (default: 11; 1 with --quick)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_run_bench)


def _run_show(args: argparse.Namespace) -> int:
    from .look import user_errors
    from .show import show

    def run() -> int:
        print(show(args.url, as_json=args.json))
        return 0

    return user_errors("show", run)  # a user's mistake: one line, status 2 (as serve, watch)


def _add_show(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "show",
        help="print every counter and key of a store (e.g. shm://NAME)",
        description="Print every counter and every key of a keyed counter in the store at URL.",
    )
    p.add_argument("url", metavar="URL", help="the store, e.g. shm://app")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_run_show)


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .look import add_serve

    add_serve(commands)


def _add_watch(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .look import add_watch

    add_watch(commands)


COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_demo,
    _add_bench,
    _add_show,
    _add_serve,
    _add_watch,
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="tallies",
        description="Exact, C-fast counters for concurrent Python.",
    )
    parser.add_argument("--version", action="version", version=f"tallies {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit status (usage errors exit with 2)."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except BrokenPipeError:
        # The reader went away (``tallies bench | head``): stop quietly, and keep
        # the interpreter from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
