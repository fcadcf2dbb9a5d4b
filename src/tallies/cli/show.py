"""``tallies show URL [--json]``: every counter and key of a store.

The CLI calls :func:`show`; it opens the store without creating it (a typo in
a segment name is an error, not a new empty segment) and never writes.
"""

from __future__ import annotations

import json
from typing import Any

from ..stores import open as open_store
from ..stores import redact_url

__all__ = ["show"]


def show(url: str, as_json: bool = False) -> str:
    """Every counter and keyed counter of the store at ``url``, as a table or JSON.

    The table has one row per counter and one per key of each keyed counter::

        NAME      KEY   VALUE
        requests             12
        status    200        10
        status    404         2
    """
    with open_store(url, create=False) as store:
        snap = store.snapshot()
    url = redact_url(url)  # shown without its password: see stores/_redact.py
    if as_json:
        return json.dumps({"url": url, **snap}, indent=2, ensure_ascii=False)
    rows: list[tuple[str, str, str]] = []
    for name, value in snap["counters"].items():
        rows.append((name, "", str(value)))
    for name, keys in snap["keyed"].items():
        if not keys:
            rows.append((name, "(no keys)", ""))
        for key, value in keys.items():
            rows.append((name, key, str(value)))
    rates = _rate_lines(snap)
    if not rows and not rates:
        return f"{url}: no counters"
    if not rows:
        return "\n".join([url, *rates])
    table = [("NAME", "KEY", "VALUE")] + [(_clean(n), _clean(k), v) for n, k, v in rows]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    lines = [url]
    for col_name, col_key, col_value in table:
        lines.append(
            f"{col_name:<{widths[0]}}  {col_key:<{widths[1]}}  {col_value:>{widths[2]}}".rstrip()
        )
    return "\n".join(lines + ([""] if rates else []) + rates)


def _rate_lines(snap: Any) -> list[str]:
    """Rates as count-in-window and per second, one row per rate and per key::

    RATE      KEY   IN WINDOW    PER SECOND  TOTAL
    requests  -     1,234 / 60 s     20.567  98,765
    """
    rows: list[tuple[str, str, str, str, str]] = []
    for name, r in snap.get("rates", {}).items():
        rows.append(
            (
                _clean(name),
                "",
                f"{r['count']:,} / {_secs(r['window'])}",
                f"{r['per_second']:.3f}",
                f"{r['total']:,}",
            )
        )
    for name, r in snap.get("keyed_rates", {}).items():
        if not r["counts"]:
            rows.append((_clean(name), "(no keys)", f"0 / {_secs(r['window'])}", "0.000", ""))
        for key, count in r["counts"].items():
            rows.append(
                (
                    _clean(name),
                    _clean(key),
                    f"{count:,} / {_secs(r['window'])}",
                    f"{count / r['window']:.3f}",
                    "",
                )
            )
    if not rows:
        return []
    table = [("RATE", "KEY", "IN WINDOW", "PER SECOND", "TOTAL"), *rows]
    w = [max(len(r[i]) for r in table) for i in range(5)]
    return [
        f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d:>{w[3]}}  {e:>{w[4]}}".rstrip()
        for a, b, c, d, e in table
    ]


def _secs(seconds: float) -> str:
    return f"{seconds:g} s"


def _clean(text: str) -> str:
    """Keep control characters in names and keys from messing up the terminal."""
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")
