"""What the exporters share: a store's snapshot flattened into named series.

``tallies.prometheus``, ``tallies.otel`` and ``tallies watch`` all read a
store through ``store.snapshot()`` only, so they work for every scope.  This
module turns one snapshot into :class:`Series` (one per counter, keyed
counter, rate or keyed rate) and maps store names to names a metrics system
accepts.  It imports nothing outside the standard library.

The name rule (:func:`map_names`), the same for every exporter:

1. the exporter's prefix (``tallies_`` for Prometheus, ``tallies.`` for
   OpenTelemetry) is put in front of the store name;
2. every character the target does not accept becomes ``_``;
3. a name that would still start with a digit gets a leading ``_``;
4. a name that collides with another after steps 1-3 (``a-b`` and ``a.b``,
   or a counter ``x`` and a counter ``x_total``, which Prometheus exposes
   the same way) is disambiguated deterministically: names that were already
   valid are served first and keep their name; every later one that collides
   gets ``_`` plus the first 8 hex digits of the SHA-256 of its kind and
   original name.  The result depends only on the set of names in the store,
   never on the order in which they appeared.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Series", "map_names", "read_series", "sanitize"]

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
        out.append(Series("keyed", name, keys={str(k): int(v) for k, v in keys.items()}))
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
        counts = rate.get("counts") or {}
        out.append(
            Series(
                "keyed_rate",
                name,
                keys={str(k): int(v) for k, v in counts.items()},
                window=float(rate.get("window", 0.0)),
                resolution=float(rate.get("resolution", 0.0)),
            )
        )
    return out


def sanitize(name: str, prefix: str, invalid: re.Pattern[str]) -> str:
    """Steps 1-3 of the name rule."""
    mapped = invalid.sub("_", prefix + name)
    if not mapped or mapped[0].isdigit():
        mapped = "_" + mapped
    return mapped


def _tag(kind: str, name: str) -> str:
    return hashlib.sha256(f"{kind}:{name}".encode("utf-8", "surrogatepass")).hexdigest()[:8]


def map_names(
    entries: Iterable[tuple[str, str]],
    prefix: str,
    invalid: re.Pattern[str],
    occupies: Callable[[str, str], Iterable[str]],
    stem: Callable[[str, str], str] = lambda kind, base: base,
    taken: Iterable[str] = (),
) -> dict[tuple[str, str], str]:
    """Map each ``(kind, store name)`` to a unique name (the module's rule).

    ``occupies(kind, base)`` lists every name a series with that base name
    takes in the target (for a Prometheus counter ``base`` and
    ``base_total``), so collisions between derived names are caught too.
    ``stem(kind, base)`` is where a disambiguating suffix goes (a Prometheus
    counter ``x_total`` becomes ``x_<tag>``, exposed as ``x_<tag>_total``).
    ``taken`` are names handed out earlier that new entries must avoid.
    """
    items = sorted(set(entries), key=lambda e: (e[1], KINDS.index(e[0]) if e[0] in KINDS else 9))
    bases = {e: sanitize(e[1], prefix, invalid) for e in items}
    clean = [e for e in items if bases[e] == prefix + e[1]]
    changed = [e for e in items if bases[e] != prefix + e[1]]
    used = set(taken)
    result: dict[tuple[str, str], str] = {}
    for entry in clean + changed:
        base = bases[entry]
        names = set(occupies(entry[0], base))
        if names & used:
            root = stem(entry[0], base)
            tag = _tag(*entry)
            base = f"{root}_{tag}"
            names = set(occupies(entry[0], base))
            n = 2
            while names & used:  # a hash collision on top of a name collision
                base = f"{root}_{tag}_{n}"
                names = set(occupies(entry[0], base))
                n += 1
        used |= names
        result[entry] = base
    return result


#: Prometheus metric names: [a-zA-Z_:][a-zA-Z0-9_:]*; colons are reserved for
#: recording rules, so tallies maps them to "_" as well.
PROMETHEUS_INVALID = re.compile(r"[^a-zA-Z0-9_]")
PROMETHEUS_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
