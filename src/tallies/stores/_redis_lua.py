"""The key layout of ``redis://`` and its Lua scripts (no redis-py needed here).

The scripts are files shipped with the package (``tallies/stores/lua/*.lua``,
package data): ``apply.lua`` and ``reset.lua`` with ``int64.lua`` (exact
int64 checks) prepended, ``read.lua`` and ``scan.lua`` (a page of a keyed
counter's hash as one JSON string, for snapshots); this module loads them
once.

Key layout (``P`` is the URL's ``prefix``, ``tallies:`` by default)
-----------------------------------------------------------------
===============================  ==========================================
``P{NAME}``                      a counter: a Redis integer (``GET``), or a
                                 keyed counter: a Redis hash, field = key,
                                 value = integer (``HGETALL``)
``P~w{TAG}:WRITER``              a writer's last applied batch in that hash
                                 tag, ``"SEQ:PART"``, expires (``writer_ttl``)
``P~w:WRITER``                   the same on a standalone server (one per
                                 writer for the whole store)
``P~r{NAME}:WRITER``             the result of a writer's last ``reset()``
                                 of NAME, ``"SEQ:RESULT"``, expires
``P~q{NAME}``                    a rate or keyed rate: its spec and total,
                                 a hash (``k`` kind, ``w`` window ns, ``r``
                                 resolution ns, ``t`` total of a plain rate)
``P~b{NAME}:SLOT``               one wall-clock bucket of a rate: a hash,
                                 field ``n`` (a plain rate) or the key (a
                                 keyed rate); it expires a window after it
                                 left the window (at least a minute after)
``P~L:NAME``                     a limiter's spec (``l``, ``p``, ``r``, ``b``)
``P~l:LEN:NAME:KEY``             one limiter key's slots (``limit.lua``),
                                 expires with its window (LEN: len(NAME))
``P~f:LEN:NAME:KEY``             a fixed window's count (``window.lua``)
===============================  ==========================================

``NAME`` and keys are UTF-8.  ``TAG`` is Redis Cluster's hash tag of
``P{NAME}``: ``NAME`` up to its first ``}``.  Every key a script touches
therefore lies in one hash slot, and different names spread over all slots
(one tag per name, not one for the store).  Counts live under ``P{``; the
bookkeeping under ``P~``, so ``SCAN MATCH P{*`` lists exactly the names.

The apply script
----------------
``KEYS = [writer key, data key 1, ...]``, ``ARGV = [seq, part, ttl_ms, ops...]``
with one op per data key, in order: ``"c", delta`` (a counter) or
``"h", n, field1, delta1, ..., fieldn, deltan`` (a keyed counter).

One flush batch (``seq``) is cut into parts of at most ``batch`` fields; parts
of one writer key are numbered ``0..`` and sent in order.  The writer key
holds the last ``(seq, part)`` applied, so the script:

1. validates every argument (canonical int64 decimals, no repeated key or
   field, the ops consume ARGV exactly);
2. returns ``"dup"`` without writing when ``(seq, part)`` is not newer than
   the recorded one (a retry after a lost reply or a timeout), before looking
   at any value, so an applied batch stays applied whatever came after it;
3. refuses (``TALLIES gap``) a part > 0 whose predecessor is not the recorded
   one, so parts apply strictly in order even when a pipeline sends part 1
   after part 0 failed;
4. reads every current value (type ``string``/``hash``/none, canonical
   int64 decimals) and checks that no sum leaves int64, all before the first
   write: Lua does not roll back; a refusal writes nothing;
5. writes with ``INCRBY``/``HINCRBY`` (exact int64 on the server; a key's
   TTL is kept; a delta of 0 creates a key at 0: keys at 0 are listed),
   except the fields of a hash that step 4 found absent: their sum is their
   delta, set by one ``HSET`` a key; and records ``SEQ:PART`` with the expiry.  It answers ``big``
   instead of ``ok`` when a count is at 10^18 or beyond, so the client checks
   whole batches for overflow before sending them.

What one call costs Redis here (hashtable hashes, 200 fields a call): about
2.5 µs a field, of which the ``HINCRBY`` itself is about 1.2 µs, reading the
current values 0.8 µs and the checks the rest.  (Computing the new values in
Lua and writing one ``HSET`` was measured slower: ``string.format`` costs
more than ``HINCRBY``.  A new field needs no computing: one ``HSET`` of the
new fields' deltas cut a flush of 10^6 new keys from 330-420 to 300-350 µs
a call, ``INFO commandstats``, 2026-12-06.)  Parts of 500 or 1000 fields
cost more a field than parts of 200 (2.1 and 2.5 µs against 1.5-1.8 µs a
field, 10^6 new keys): 200 stays the default ``batch``.

Exact int64 arithmetic in Redis' Lua 5.1 (numbers are doubles): a decimal is
split into ``hi * 10^9 + lo`` (each exact in a double) for the overflow test.

The reset script zeroes what it takes and deletes nothing: a counter's key
stays at 0, a keyed counter's fields stay at 0 (every store lists a key that
has been counted, at 0 after a reset: docs/contract.md).
"""

from __future__ import annotations

__all__ = [
    "APPLY_LUA",
    "LIMIT_LUA",
    "READ_LUA",
    "REGISTER_LUA",
    "RESET_LUA",
    "SCAN_LUA",
    "WINDOW_LUA",
    "data_key",
    "fixed_window_key",
    "limiter_key",
    "limiter_spec_key",
    "name_from_data_key",
    "rate_bucket_key",
    "rate_meta_key",
    "reset_key",
    "scan_pattern",
    "tag_of",
    "writer_key",
]


def _script(name: str) -> str:
    from importlib.resources import files

    return files(__package__).joinpath("lua").joinpath(name).read_text(encoding="utf-8")


_INT64_LUA = _script("int64.lua")
APPLY_LUA = _INT64_LUA + _script("apply.lua")
RESET_LUA = _INT64_LUA + _script("reset.lua")
READ_LUA = _script("read.lua")
LIMIT_LUA = _script("limit.lua")
WINDOW_LUA = _script("window.lua")
REGISTER_LUA = _script("register.lua")
SCAN_LUA = _script("scan.lua")


def tag_of(name: str) -> str:
    """The hash tag of ``P{name}`` (``name`` up to its first ``}``)."""
    return name.partition("}")[0]


def data_key(prefix: str, name: str) -> str:
    return f"{prefix}{{{name}}}"


def writer_key(prefix: str, writer: str, tag: str | None) -> str:
    """Where a writer's last applied ``SEQ:PART`` lives (per tag on a cluster)."""
    if tag is None:
        return f"{prefix}~w:{writer}"
    return f"{prefix}~w{{{tag}}}:{writer}"


def reset_key(prefix: str, writer: str, name: str) -> str:
    """Where a writer's last ``reset()`` of ``name`` records its result."""
    return f"{prefix}~r{{{name}}}:{writer}"


def scan_pattern(prefix: str) -> str:
    """A ``SCAN MATCH`` pattern for every data key under ``prefix``."""
    escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix)
    return escaped + "\\{*"


def name_from_data_key(prefix: str, key: str) -> str | None:
    """The name a data key holds, or None for a key that is not one of ours."""
    if not key.startswith(prefix + "{") or not key.endswith("}"):
        return None
    name = key[len(prefix) + 1 : -1]
    return name or None


def rate_meta_key(prefix: str, name: str) -> str:
    """A rate's spec and total (the same hash tag as its name's data key)."""
    return f"{prefix}~q{{{name}}}"


def rate_bucket_key(prefix: str, name: str, slot: int) -> str:
    """One wall-clock bucket of a rate."""
    return f"{prefix}~b{{{name}}}:{slot}"


def limiter_spec_key(prefix: str, name: str) -> str:
    return f"{prefix}~L:{name}"


def limiter_key(prefix: str, name: str, key: str) -> str:
    """One limiter key's slots; no hash tag of ours, so that the keys of one
    limiter spread over a cluster (each call touches one key)."""
    return f"{prefix}~l:{len(name)}:{name}:{key}"


def fixed_window_key(prefix: str, name: str, key: str) -> str:
    return f"{prefix}~f:{len(name)}:{name}:{key}"
