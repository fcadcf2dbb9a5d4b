"""Which build of tallies is running (``tallies.BUILD``), and no silent fallback.

tallies runs on its C core, or on the pure-Python fallback (``tallies._pure``):
the same behaviour, many times slower.  The fallback is used when the
environment sets ``TALLIES_PURE=1`` (a choice: nothing is said), or when the C
core is missing: its build failed when tallies was installed (no compiler, no
Python headers; setup.py keeps the compiler's complaint in
``tallies/_build_failed.txt``), or the extension does not import.  Then
``import tallies`` warns once with the reason and what to do, a
``RuntimeWarning`` that ``TALLIES_NO_WARN=1`` silences, and ``tallies demo`` /
``tallies bench`` say it on screen (``fallback_notice``).
"""

from __future__ import annotations

import importlib
import os
import sysconfig
import warnings
from pathlib import Path
from typing import NamedTuple

__all__ = ["Build", "detect", "fallback_notice", "warn_if_fallback"]

#: The extension whose import decides ``tallies.IMPLEMENTATION``.
CORE = "tallies._tallies"
FAILED_FILE = Path(__file__).with_name("_build_failed.txt")

HOW_TO_GET_IT = (
    "To get the C core, install a tallies wheel built for this platform, or install a C "
    "compiler and this Python's headers (Debian/Ubuntu: apt-get install gcc python3-dev) "
    "and reinstall with: pip install --force-reinstall --no-cache-dir tallies"
)


class Build(NamedTuple):
    """What ``tallies.BUILD`` says about the running tallies."""

    implementation: str
    """``"c"`` (the C core) or ``"python"`` (the pure-Python fallback), as IMPLEMENTATION."""
    free_threaded: bool
    """This CPython was built without the GIL (``Py_GIL_DISABLED``)."""
    cpython_internals: tuple[str, ...]
    """The CPython internals the C core was compiled to use (``_c/_internals.h``): on the
    interpreters CI runs, ``("int-layout", "str-hash-cache")`` with the GIL and
    ``("int-layout", "immortal-shared")`` on free-threaded 3.13; ``()`` means the
    documented API only (any other CPython, or a ``TALLIES_PUBLIC_API=1`` build) or no C
    core."""
    fallback_reason: str | None
    """Why the pure-Python fallback runs; ``None`` on the C core."""


def _why_no_core() -> str:
    try:
        importlib.import_module(CORE)
    except ModuleNotFoundError as exc:
        if exc.name != CORE:
            return f"{CORE} did not import: {exc}"
        try:
            said = FAILED_FILE.read_text(encoding="utf-8").strip().splitlines()
        except OSError:
            said = []
        if said:
            return f"its build failed when tallies was installed: {said[0]}"
        return "it was not built when tallies was installed"
    except ImportError as exc:
        return f"{CORE} did not import: {exc}"
    return "it imports, but tallies did not choose it"  # not reached while IMPLEMENTATION is right


def detect(implementation: str) -> Build:
    """The running build, given ``IMPLEMENTATION`` (``tallies.counter``'s choice)."""
    free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    if implementation == "c":
        core = importlib.import_module(CORE)
        used = str(getattr(core, "CPYTHON_INTERNALS", ""))
        return Build("c", free_threaded, tuple(filter(None, used.split(","))), None)
    if os.environ.get("TALLIES_PURE") == "1":
        reason = "TALLIES_PURE=1 chose it"
    else:
        reason = "the C core is missing: " + _why_no_core()
    return Build(implementation, free_threaded, (), reason)


def chosen(build: Build) -> bool:
    """The fallback was asked for (``TALLIES_PURE=1``), or there is none."""
    return build.implementation == "c" or os.environ.get("TALLIES_PURE") == "1"


def fallback_notice(build: Build) -> str | None:
    """One paragraph for a screen when tallies runs on its fallback; else None."""
    if build.implementation == "c":
        return None
    if chosen(build):
        return "tallies runs on its pure-Python fallback: TALLIES_PURE=1 chose it."
    return (
        f"tallies is running on its pure-Python fallback, many times slower than its C core; "
        f"{build.fallback_reason}. {HOW_TO_GET_IT}"
    )


def warn_if_fallback(build: Build) -> None:
    """At ``import tallies``: the RuntimeWarning, unless chosen or TALLIES_NO_WARN=1."""
    if chosen(build) or os.environ.get("TALLIES_NO_WARN") == "1":
        return
    warnings.warn(
        f"{fallback_notice(build)} (TALLIES_PURE=1 chooses the fallback on purpose; "
        "TALLIES_NO_WARN=1 silences this warning.)",
        RuntimeWarning,
        stacklevel=2,
    )
