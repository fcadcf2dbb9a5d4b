"""``tallies show URL [--json]``: every counter and key of a store.

The CLI calls :func:`show`; it opens the store without creating it (a typo in
a segment name is an error, not a new empty segment) and never writes.
"""

from __future__ import annotations

import json

from ..stores import open as open_store

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
    if not rows:
        return f"{url}: no counters"
    table = [("NAME", "KEY", "VALUE")] + [(_clean(n), _clean(k), v) for n, k, v in rows]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    lines = [url]
    for col_name, col_key, col_value in table:
        lines.append(
            f"{col_name:<{widths[0]}}  {col_key:<{widths[1]}}  {col_value:>{widths[2]}}".rstrip()
        )
    return "\n".join(lines)


def _clean(text: str) -> str:
    """Keep control characters in names and keys from messing up the terminal."""
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")
