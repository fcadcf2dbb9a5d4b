"""What every store's rates share: the snapshot format.

``snapshot()["rates"]`` is ``{name: {"window", "resolution", "count",
"per_second", "total"}}`` and ``snapshot()["keyed_rates"]`` is ``{name:
{"window", "resolution", "counts": {key: count}}}`` (counts over the whole
window; keys at 0 left out).  Each section is present only when the store has
a rate of that kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import KeyedRateSnapshot, RateSnapshot, Snapshot

__all__ = ["snapshot_rates"]


def snapshot_rates(snap: Snapshot, rates: Mapping[str, Any]) -> None:
    """Add the "rates" / "keyed_rates" sections for ``rates`` (name -> rate object)."""
    plain: dict[str, RateSnapshot] = {}
    keyed: dict[str, KeyedRateSnapshot] = {}
    for name, r in rates.items():
        if hasattr(r, "most_common"):
            keyed[name] = {
                "window": float(r.window),
                "resolution": float(r.resolution),
                "counts": {str(k): int(v) for k, v in r.snapshot().items()},
            }
        else:
            count = int(r.count())
            plain[name] = {
                "window": float(r.window),
                "resolution": float(r.resolution),
                "count": count,
                "per_second": count / float(r.window),
                "total": int(r.total()),
            }
    if plain:
        snap["rates"] = plain
    if keyed:
        snap["keyed_rates"] = keyed
