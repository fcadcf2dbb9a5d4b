"""URL parameters, parsed once: typed values and one set of error messages.

A scope declares its parameters as a tuple of :class:`Param` (a name, a
default and a parser); :func:`parse` refuses unknown parameters and returns
the typed values by name.  Every number is read by :func:`number`, so every
scope words a bad value the same way::

    'sqlite:///x.db?flush=abc': flush='abc' is not a number of seconds
    'redis://h?batch=0': batch='0' is outside [1, 2000]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .base import StoreURL

__all__ = ["FLUSH", "FLUSH_FLOOR", "Param", "choice", "number", "parse", "seconds", "text"]


def number(
    url: StoreURL,
    name: str,
    raw: str,
    lo: float,
    hi: float,
    *,
    unit: str = "",
    integer: bool = False,
    counting: str = "",
) -> float:
    """``raw`` as a finite number in ``[lo, hi]`` (a whole number if
    ``integer``; ``counting`` names what it counts in that message)."""
    of = f" of {unit}" if unit else ""
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{url.shown!r}: {name}={raw!r} is not a number{of}") from None
    if not math.isfinite(v):
        raise ValueError(f"{url.shown!r}: {name}={raw!r} is not a finite number{of}")
    if integer and v != int(v):
        whole = f" of {counting}" if counting else ""
        raise ValueError(f"{url.shown!r}: {name}={raw!r} is not a whole number{whole}")
    if not lo <= v <= hi:
        after = f" {unit}" if unit else ""
        raise ValueError(f"{url.shown!r}: {name}={raw!r} is outside [{lo:g}, {hi:g}]{after}")
    return v


@dataclass(frozen=True)
class Param:
    """One URL parameter: its name, its value when absent, and how to read it."""

    name: str
    default: Any
    read: Callable[[StoreURL, str, str], Any]


def seconds(name: str, default: float, lo: float, hi: float) -> Param:
    def read(url: StoreURL, key: str, raw: str) -> float:
        return number(url, key, raw, lo, hi, unit="seconds")

    return Param(name, default, read)


def integer(name: str, default: int, lo: int, hi: int, counting: str = "") -> Param:
    def read(url: StoreURL, key: str, raw: str) -> int:
        return int(number(url, key, raw, lo, hi, integer=True, counting=counting))

    return Param(name, default, read)


def choice(name: str, default: str, choices: Iterable[str]) -> Param:
    allowed = tuple(choices)

    def read(url: StoreURL, key: str, raw: str) -> str:
        v = raw.upper()
        if v not in allowed:
            raise ValueError(f"{url.shown!r}: {key} must be {' or '.join(allowed)}, not {raw!r}")
        return v

    return Param(name, default, read)


def text(name: str, default: str | None) -> Param:
    return Param(name, default, lambda url, key, raw: raw)


FLUSH_FLOOR = 0.001
"""The shortest write-behind interval a URL may ask for (0 is write-through):
a flusher waking more often than this would keep a CPU busy for nothing."""


def _flush(url: StoreURL, key: str, raw: str) -> float:
    v = number(url, key, raw, 0, 86400, unit="seconds")
    if 0 < v < FLUSH_FLOOR:
        raise ValueError(
            f"{url.shown!r}: {key}={raw!r} is below the {FLUSH_FLOOR:g} s floor "
            "(flush=0 is write-through: every update flushes before it returns)"
        )
    return v


FLUSH = Param("flush", 1.0, _flush)
"""Every write-behind scope's ``flush=SECONDS``: 0 or [0.001, 86400]."""


def parse(url: StoreURL, params: Iterable[Param]) -> dict[str, Any]:
    """Every declared parameter's value (its default when absent); unknown
    parameters raise ValueError listing the accepted ones."""
    declared = {p.name: p for p in params}
    url.reject_unknown(frozenset(declared))
    given: Mapping[str, str] = url.params
    return {
        name: (p.read(url, name, given[name]) if name in given else p.default)
        for name, p in declared.items()
    }
