"""What the exporters share: a store's snapshot flattened into named series.

``tallies.prometheus``, ``tallies.otel`` and ``tallies watch`` all read a
store through ``store.snapshot()`` only, so they work for every scope.  This
module turns one snapshot into :class:`Series` (one per counter, keyed
counter, rate or keyed rate) and maps store names to names a metrics system
accepts.  It imports nothing outside the standard library.

The name rule (:func:`escape_name`), the same for every exporter: a series
name is a function of the store name alone, never of which other names
exist, and two store names never share one (an escape, not a guess):

1. the exporter's prefix (``tallies_`` for Prometheus, ``tallies.`` for
   OpenTelemetry) goes in front of the store name; when the result is a valid
   name for the target, does not start with ``U__`` or ``H__`` (either case),
   does not end with a suffix a series or family name is built with
   (Prometheus ``_total``, ``_created``, ``_window_count``, ``_per_second``,
   which OpenMetrics reserves next to a counter family or a rate's gauges;
   OpenTelemetry ``.window_count``, ``.per_second``), and for OpenTelemetry
   (whose names are case-insensitive) has no capital letter, that is the name;
2. otherwise the name is escaped, reversibly (Prometheus 3's ``U__`` escape):
   prefix + ``U__`` + the store name with ``_`` written ``__`` and every other
   character outside the target's plain set written ``_<hex code point>_``
   (``api.errors`` is ``tallies_U__api_2e_errors``; for OpenTelemetry a capital
   ``R`` is ``_52_``), plus a final ``_`` when that would end with a reserved
   suffix (``hits_total`` is ``tallies_U__hits__total_``, exposed as
   ``tallies_U__hits__total__total``);
3. where the target limits the length (OpenTelemetry: 255 characters with the
   ``.window_count`` suffix, so 242 for the base), a name still too long is
   prefix + ``H__`` + the start of its escape + ``_`` + 16 hex digits of the
   SHA-256 of the store name.

Keys (label and attribute values) are text as they are, except a key that is
not valid Unicode (a lone surrogate, as ``os.fsdecode`` gives for a file name
that is not UTF-8): its offending code points are written ``\\udcXX``
(Python's ``backslashreplace``), so one odd key never fails a whole scrape.
If that collides with another key of the same series, the odd key is left
out and a warning is logged (logger ``tallies``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Series", "escape_name", "read_series", "text"]

log = logging.getLogger("tallies")

#: Kinds of series, in the order they are emitted.
KINDS = ("counter", "keyed", "rate", "keyed_rate")


@dataclass(frozen=True)
class Series:
    """One counter, keyed counter, rate or keyed rate of a snapshot."""

    kind: str
    """``counter``, ``keyed``, ``rate`` or ``keyed_rate``."""
    name: str
    """The name in the store."""
    value: int = 0
    """A counter's value; for a rate its count in the window."""
    keys: Mapping[str, int] = field(default_factory=dict)
    """A keyed counter's (or keyed rate's) counts by key."""
    window: float = 0.0
    resolution: float = 0.0
    per_second: float = 0.0
    total: int | None = None
    """A rate's all-time total (None when the store does not give one)."""


def read_series(snapshot: Mapping[str, Any]) -> list[Series]:
    """Every series of ``store.snapshot()``; sections a store lacks are skipped."""
    out: list[Series] = []
    for name, value in (snapshot.get("counters") or {}).items():
        out.append(Series("counter", name, value=int(value)))
    for name, keys in (snapshot.get("keyed") or {}).items():
        out.append(Series("keyed", name, keys=_keys(name, keys)))
    for name, rate in (snapshot.get("rates") or {}).items():
        total = rate.get("total")
        out.append(
            Series(
                "rate",
                name,
                value=int(rate.get("count", 0)),
                window=float(rate.get("window", 0.0)),
                resolution=float(rate.get("resolution", 0.0)),
                per_second=float(rate.get("per_second", 0.0)),
                total=None if total is None else int(total),
            )
        )
    for name, rate in (snapshot.get("keyed_rates") or {}).items():
        out.append(
            Series(
                "keyed_rate",
                name,
                keys=_keys(name, rate.get("counts") or {}),
                window=float(rate.get("window", 0.0)),
                resolution=float(rate.get("resolution", 0.0)),
            )
        )
    return out


def text(value: object) -> str:
    """``str(value)``, with code points UTF-8 cannot encode written ``\\udcXX``."""
    s = str(value)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s


def _keys(name: str, keys: Mapping[Any, Any]) -> dict[str, int]:
    """The counts by key as text (see the module doc: odd keys escaped, or skipped)."""
    shown = {k: text(k) for k in keys}
    plain = {t for k, t in shown.items() if t == str(k)}
    out: dict[str, int] = {}
    for k, v in keys.items():
        t = shown[k]
        if t != str(k) and (t in plain or t in out):
            log.warning(
                "tallies: key %r of %r is not valid Unicode and its escape %r is another "
                "key; left out of this export",
                k,
                name,
                t,
            )
            continue
        out[t] = int(v)
    return out


def escape_name(
    name: str,
    prefix: str,
    valid: re.Pattern[str],
    plain: re.Pattern[str],
    reserved: tuple[str, ...],
    *,
    fold_case: bool = False,
    limit: int | None = None,
) -> str:
    """The base name of a store name (the module's rule).

    ``valid`` matches a whole valid name; ``plain`` one character an escape
    keeps as it is; ``reserved`` the suffixes the exporter appends; with
    ``fold_case`` the target compares names case-insensitively; ``limit`` is
    the longest base name (None: no limit)."""
    full = prefix + name
    if (
        valid.fullmatch(full)
        and not name.upper().startswith(("U__", "H__"))
        and not full.endswith(reserved)
        and not (fold_case and name != name.lower())
        and (limit is None or len(full) <= limit)
    ):
        return full
    esc = "".join(c if plain.fullmatch(c) else "__" if c == "_" else f"_{ord(c):x}_" for c in name)
    out = prefix + "U__" + esc
    if out.endswith(reserved):
        out += "_"  # never ends with a reserved suffix (and "..._" is no complete escape)
    if limit is not None and len(out) > limit:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        out = prefix + "H__" + esc[: max(limit - len(prefix) - 20, 0)] + "_" + digest
    return out


#: Prometheus metric names: [a-zA-Z_:][a-zA-Z0-9_:]*; colons are reserved for
#: recording rules, so tallies escapes them as well.
PROMETHEUS_VALID = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
PROMETHEUS_PLAIN = re.compile(r"[a-zA-Z0-9]")
PROMETHEUS_INVALID = re.compile(r"[^a-zA-Z0-9_]")  # no character outside a valid name
#: Suffixes of the names a counter family (OpenMetrics: B, B_total,
#: B_created) or a rate (B_window_count, B_per_second) occupies: no base ends so.
PROMETHEUS_RESERVED = ("_total", "_created", "_window_count", "_per_second")
PROMETHEUS_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

#: OpenTelemetry instrument names: a letter, then up to 254 of [a-zA-Z0-9_./-],
#: compared case-insensitively.
OTEL_VALID = re.compile(r"[a-zA-Z][-_./a-zA-Z0-9]{0,254}")
OTEL_PLAIN = re.compile(r"[-./a-z0-9]")
OTEL_RESERVED = (".window_count", ".per_second")
OTEL_LIMIT = 255 - len(".window_count")


def prometheus_base(name: str, namespace: str) -> str:
    """The base metric name of ``name`` under the Prometheus rule above."""
    return escape_name(name, namespace, PROMETHEUS_VALID, PROMETHEUS_PLAIN, PROMETHEUS_RESERVED)


def otel_base(name: str, prefix: str) -> str:
    """The base instrument name of ``name`` under the OpenTelemetry rule above."""
    return escape_name(
        name, prefix, OTEL_VALID, OTEL_PLAIN, OTEL_RESERVED, fold_case=True, limit=OTEL_LIMIT
    )


def missing_extra(module: str, needs: str, extra: str) -> ImportError:
    """The ImportError of an exporter module whose optional dependency is missing."""
    return ImportError(f"{module} needs {needs}: pip install tallies[{extra}]")
