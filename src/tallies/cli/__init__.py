"""The ``tallies`` console script.

    tallies demo [--threads N] [--increments N] [--switch-interval S] [--json]
    tallies bench       (the benchmarks run from a checkout: ./tallies bench)
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

from .look import add_options, non_negative_int, positive_int

__all__ = ["build_parser", "main"]


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


def _say_fallback() -> None:
    """The demo measures tallies: first say so when it runs on its fallback
    (on stderr, which --json leaves alone)."""
    import tallies

    from .._build import fallback_notice

    notice = fallback_notice(tallies.BUILD)
    if notice:
        print(f"NOTE: {notice}", file=sys.stderr, flush=True)


def _run_demo(args: argparse.Namespace) -> int:
    _say_fallback()
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
    add_options(
        p,
        [
            ("--threads", positive_int, 10, "N", "threads sharing the counter (default: 10)"),
            ("--increments", positive_int, 100_000, "N", "increments per thread (default: 100000)"),
            (
                "--switch-interval",
                _switch_interval,
                1e-6,
                "S",
                "sys.setswitchinterval() for the unsafe counters' runs only, restored after "
                "(default: 1e-6; 0 keeps the interpreter's setting)",
            ),
            (
                "--processes",
                non_negative_int,
                4,
                "N",
                "processes for the shm:// part with a progress bar (default: 4; 0 skips it)",
            ),
        ],
    )
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    p.set_defaults(run=_run_demo)


BENCH_ELSEWHERE = (
    "tallies bench: the benchmarks are not part of the installed package; they live in"
    " the benchmarks/ folder of tallies' repository.  From a checkout, run ./tallies bench"
    " (it installs the peers they compare with from benchmarks/requirements.txt)."
)


def _run_bench(args: argparse.Namespace) -> int:
    print(BENCH_ELSEWHERE, file=sys.stderr)
    return 2


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "bench",
        help="the benchmarks: they run from a checkout of the repository (./tallies bench)",
        description=BENCH_ELSEWHERE.removeprefix("tallies bench: "),
    )
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
    parser = build_parser()
    # `tallies bench ANY FLAGS` gets the one line saying where the benchmarks are.
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except BrokenPipeError:
        # The reader went away (``tallies show URL | head``): stop quietly, and keep
        # the interpreter from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
