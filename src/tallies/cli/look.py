"""The arguments of ``tallies serve`` and ``tallies watch``, and their one-line errors.

A user's mistake (an unknown scheme, a store that does not exist, a port in
use, a missing extra, no terminal) is printed as one line,
``tallies serve: ...``, and exits with status 2; nothing shows a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["UserError", "add_serve", "add_watch", "non_negative_int", "positive_int", "user_errors"]


class UserError(Exception):
    """A mistake the user can fix; the CLI prints it as one line."""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, not {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds between 0.05 and 3600, not {text!r}"
        )
    return value


def positive_int(text: str) -> int:
    """``tallies demo --threads N``, ``tallies watch --top N`` (and the benchmarks'
    ``--rounds N``): 1 or more; ``100_000`` and ``100,000`` are read as 100000."""
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """``tallies demo --processes N``: 0 skips the part."""
    message = f"expected 0 or a positive integer, not {text!r}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if value < 0:
        raise argparse.ArgumentTypeError(message)
    return value


def user_errors(command: str, run: Callable[[], int]) -> int:
    """Run ``run()``; a user's mistake becomes one line on stderr and status 2."""
    from ..stores import StoreError, StoreNotFoundError

    try:
        return run()
    except StoreNotFoundError as exc:
        message = f"no such store: {exc}"
    except (UserError, StoreError, ValueError, TypeError) as exc:
        message = str(exc)
    except OSError as exc:
        message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    with contextlib.suppress(OSError, ValueError, AttributeError):  # stderr may be gone too
        print(f"tallies {command}: {message}", file=sys.stderr, flush=True)
    return 2


Option = tuple[str, Callable[[str], Any], Any, str | None, str]
"""An option of a subcommand: (flag, type, default, metavar, help)."""


def add_options(p: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Declare each of ``options`` on ``p`` (a None metavar: argparse's)."""
    for flag, kind, default, metavar, text in options:
        p.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)


def _store_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], int],
    summary: str,
    options: Iterable[Option],
) -> argparse.ArgumentParser:
    """``tallies NAME URL [options]`` for ``run`` = ``_run_NAME``, whose
    docstring is the command's description (for a store that must exist)."""
    name = run.__name__.removeprefix("_run_")
    p = commands.add_parser(name, help=summary, description=run.__doc__)
    p.add_argument("url", metavar="URL", help="the store, e.g. shm://app (it must exist)")
    add_options(p, options)
    p.set_defaults(run=run)
    return p


def _run_serve(args: argparse.Namespace) -> int:
    """An HTTP endpoint /metrics in Prometheus' text format for the store at URL
    (e.g. shm://app): the sidecar exporter for gunicorn, uWSGI, Celery or
    multiprocessing workers. Needs prometheus_client (pip install tallies[prometheus])."""
    from .serve import serve

    return user_errors("serve", lambda: serve(args.url, args.host, args.port))


def add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _store_command(
        commands,
        _run_serve,
        "serve a store's counts to Prometheus at http://HOST:PORT/metrics",
        [
            ("--host", str, "127.0.0.1", None, "address to listen on (default: 127.0.0.1)"),
            ("--port", _port, 9464, None, "port (default: 9464; 0 picks a free one)"),
        ],
    )


def _run_watch(args: argparse.Namespace) -> int:
    """Each counter of the store at URL with its value, its rate over the last
    seconds and a sparkline of the last minute; keyed counters as their top
    keys; rates as count and per second. Uses rich when installed (pip install
    tallies[watch]) and the terminal can show it; plain lines otherwise. Ctrl-C
    exits."""
    from .watch import watch

    return user_errors(
        "watch", lambda: watch(args.url, interval=args.interval, top=args.top, plain=args.plain)
    )


def add_watch(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _store_command(
        commands,
        _run_watch,
        "a live view of a store's counters in the terminal",
        [
            ("--interval", _seconds, 1.0, "S", "seconds between refreshes (default: 1)"),
            ("--top", positive_int, 5, "N", "keys shown per keyed counter (default: 5)"),
        ],
    )
    p.add_argument("--plain", action="store_true", help="plain lines even on a capable terminal")
