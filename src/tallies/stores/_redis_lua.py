"""The Lua scripts and the key layout of ``redis://`` (no redis-py needed here).

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
   TTL is kept) and records ``SEQ:PART`` with the expiry.  It answers ``big``
   instead of ``ok`` when a count is at 10^18 or beyond, so the client checks
   whole batches for overflow before sending them.

What one call costs Redis here (hashtable hashes, 200 fields a call): about
2.5 µs a field, of which the ``HINCRBY`` itself is about 1.2 µs, reading the
current values 0.8 µs and the checks the rest.  (Computing the new values in
Lua and writing one ``HSET`` was measured slower: ``string.format`` costs
more than ``HINCRBY``.)

Exact int64 arithmetic in Redis' Lua 5.1 (numbers are doubles): a decimal is
split into ``hi * 10^9 + lo`` (each exact in a double) for the overflow test.
"""

from __future__ import annotations

__all__ = [
    "APPLY_LUA",
    "READ_LUA",
    "RESET_LUA",
    "data_key",
    "name_from_data_key",
    "reset_key",
    "scan_pattern",
    "tag_of",
    "writer_key",
]

_INT64_LUA = r"""
local function canon(s)
  if type(s) ~= 'string' then return false end
  local n = #s
  if n < 19 then return s == '0' or string.find(s, '^-?[1-9]%d*$') ~= nil end
  if not string.find(s, '^-?[1-9]%d*$') then return false end
  if string.byte(s, 1) == 45 then  -- '-'
    return n < 20 or (n == 20 and string.sub(s, 2) <= '9223372036854775808')
  end
  return n == 19 and s <= '9223372036854775807'
end

local function split(s)
  local neg = string.sub(s, 1, 1) == '-'
  local d = s
  if neg then d = string.sub(s, 2) end
  local n = #d
  local lo, hi
  if n > 9 then
    lo = tonumber(string.sub(d, n - 8)); hi = tonumber(string.sub(d, 1, n - 9))
  else
    lo = tonumber(d); hi = 0
  end
  return neg, hi, lo
end

-- true when a + b stays in int64 (a, b canonical int64 decimals)
local function add_ok(a, b)
  if #a < 16 and #b < 16 then return true end  -- both below 10^15: no overflow
  local na, ha, la = split(a)
  local nb, hb, lb = split(b)
  if (ha == 0 and la == 0) or (hb == 0 and lb == 0) or na ~= nb then return true end
  local lo = la + lb
  local hi = ha + hb
  if lo >= 1000000000 then lo = lo - 1000000000; hi = hi + 1 end
  local lim = 854775807
  if na then lim = 854775808 end
  if hi ~= 9223372036 then return hi < 9223372036 end
  return lo <= lim
end
"""

APPLY_LUA = (
    _INT64_LUA
    + r"""
local function small(s, maxlen)
  return type(s) == 'string' and #s <= maxlen and string.find(s, '^%d+$') ~= nil
end
if #KEYS < 1 then return redis.error_reply('TALLIES bad call: no writer key') end
local seq_s, part_s, ttl_s = ARGV[1], ARGV[2], ARGV[3]
if not (small(seq_s, 15) and small(part_s, 9) and small(ttl_s, 12)) then
  return redis.error_reply('TALLIES bad call: seq, part, ttl')
end
local seq, part, ttl = tonumber(seq_s), tonumber(part_s), tonumber(ttl_s)
if ttl < 1 then return redis.error_reply('TALLIES bad call: ttl') end

-- 1. parse and validate every argument (nothing read or written yet); flat
-- arrays, not a table per op: allocation is what a script pays most for
local ckeys, cdeltas = {}, {}          -- counters: key, delta
local hkeys, hfields, hbase = {}, {}, {}  -- keyed: key, its fields, ARGV index
local seen = {}
local a = 4
local nargv = #ARGV
for i = 2, #KEYS do
  local key = KEYS[i]
  if seen[key] then return redis.error_reply('TALLIES bad call: key given twice') end
  seen[key] = true
  local kind = ARGV[a]
  if kind == 'c' then
    local d = ARGV[a + 1]
    if not canon(d) then return redis.error_reply('TALLIES bad call: delta') end
    ckeys[#ckeys + 1] = key
    cdeltas[#cdeltas + 1] = d
    a = a + 2
  elseif kind == 'h' then
    local n_s = ARGV[a + 1]
    if not small(n_s, 9) then return redis.error_reply('TALLIES bad call: field count') end
    local n = tonumber(n_s)
    if n < 1 or a + 1 + 2 * n > nargv then
      return redis.error_reply('TALLIES bad call: field count')
    end
    local fields = {}
    local fseen = {}
    for j = 1, n do
      local f, d = ARGV[a + 2 * j], ARGV[a + 2 * j + 1]
      if fseen[f] then return redis.error_reply('TALLIES bad call: field given twice') end
      fseen[f] = true
      if not canon(d) then return redis.error_reply('TALLIES bad call: delta') end
      fields[j] = f
    end
    hkeys[#hkeys + 1] = key
    hfields[#hfields + 1] = fields
    hbase[#hbase + 1] = a + 1
    a = a + 2 + 2 * n
  else
    return redis.error_reply('TALLIES bad call: op kind')
  end
end
if a ~= nargv + 1 then return redis.error_reply('TALLIES bad call: arguments left over') end

-- 2. and 3. exactly once, parts in order (before any value is looked at, so
-- a retry of an applied batch is "dup" whatever happened to the values since)
local rec = redis.call('GET', KEYS[1])
local rseq, rpart = -1, -1
if rec then
  local s1, p1 = string.match(rec, '^(%d+):(%d+)$')
  if not s1 then return redis.error_reply('TALLIES bad writer record: ' .. KEYS[1]) end
  rseq, rpart = tonumber(s1), tonumber(p1)
end
if rseq > seq or (rseq == seq and rpart >= part) then return 'dup' end
if part > 0 and not (rseq == seq and rpart == part - 1) then
  return redis.error_reply('TALLIES gap: part ' .. part_s .. ' of batch ' .. seq_s ..
    ' before part ' .. (part - 1))
end

-- the current values: types, integers, no sum outside int64 ("big" tells
-- the client that a count is near the int64 edge)
local big = false
for i = 1, #hkeys do
  local key, fields, base = hkeys[i], hfields[i], hbase[i]
  local cur = redis.pcall('HMGET', key, unpack(fields))
  if cur.err then
    return redis.error_reply('TALLIES wrong type: ' .. key .. ' is a ' ..
      redis.call('TYPE', key).ok .. ', not a keyed counter')
  end
  for j = 1, #fields do
    local c = cur[j] or '0'
    local d = ARGV[base + 2 * j]
    if not canon(c) then
      return redis.error_reply('TALLIES not an integer: ' .. key .. ' field ' .. fields[j])
    end
    if not add_ok(c, d) then
      return redis.error_reply('TALLIES overflow: ' .. key .. ' field ' .. fields[j] ..
        ' is ' .. c .. ', adding ' .. d)
    end
    if #c >= 19 or #d >= 19 then big = true end
  end
end
if #ckeys > 0 then
  local cur = redis.call('MGET', unpack(ckeys))  -- nil for a missing key or another type
  for j = 1, #ckeys do
    local key, d, c = ckeys[j], cdeltas[j], cur[j]
    if not c then
      local t = redis.call('TYPE', key).ok
      if t ~= 'none' then
        return redis.error_reply('TALLIES wrong type: ' .. key .. ' is a ' .. t ..
          ', not a counter')
      end
      c = '0'
    end
    if not canon(c) then return redis.error_reply('TALLIES not an integer: ' .. key) end
    if not add_ok(c, d) then
      return redis.error_reply('TALLIES overflow: ' .. key .. ' is ' .. c .. ', adding ' .. d)
    end
    if #c >= 19 or #d >= 19 then big = true end
  end
end

-- 5. the writes (nothing above has written)
for i = 1, #hkeys do
  local key, fields, base = hkeys[i], hfields[i], hbase[i]
  for j = 1, #fields do
    redis.call('HINCRBY', key, fields[j], ARGV[base + 2 * j])
  end
end
for j = 1, #ckeys do
  redis.call('INCRBY', ckeys[j], cdeltas[j])
end
redis.call('SET', KEYS[1], seq_s .. ':' .. part_s, 'PX', ttl_s)
if big then return 'big' end
return 'ok'
"""
)

RESET_LUA = (
    _INT64_LUA
    + r"""
-- KEYS = [data key, reset record key]; ARGV = [mode, seq, ttl_ms, field?]
-- mode 'c': take a counter (returns its value; the key stays, at 0),
-- 'h': take a whole keyed counter (returns the flat HGETALL array; the hash
-- is deleted), 'f': take one field of a keyed counter (returns its value),
-- 'x': fence: 1 if take seq happened, else record seq so that it never can.
-- The record is "SEQ:RESULT" ("SEQ:!" once fenced); a take is refused when
-- the record is newer, and a retry with the recorded seq returns the recorded
-- result and takes nothing more.
local mode, seq_s, ttl = ARGV[1], ARGV[2], ARGV[3]
if type(seq_s) ~= 'string' or not string.find(seq_s, '^%d+$') or #seq_s > 15 then
  return redis.error_reply('TALLIES bad call: seq')
end
if type(ttl) ~= 'string' or not string.find(ttl, '^[1-9]%d*$') or #ttl > 12 then
  return redis.error_reply('TALLIES bad call: ttl')
end
local seq = tonumber(seq_s)
local rec = redis.call('GET', KEYS[2])
local rseq, body = -1, nil
if rec then
  local r1, b = string.match(rec, '^(%d+):(.*)$')
  if not r1 then return redis.error_reply('TALLIES bad reset record: ' .. KEYS[2]) end
  rseq, body = tonumber(r1), b
end
if mode == 'x' then
  if rseq == seq and body ~= '!' then return 1 end
  if rseq < seq then redis.call('SET', KEYS[2], seq_s .. ':!', 'PX', ttl) end
  return 0
end
if rseq > seq or (rseq == seq and body == '!') then
  return redis.error_reply('TALLIES stale: reset ' .. seq_s .. ' was fenced or superseded')
end
if rseq == seq then
  if mode == 'h' then return cjson.decode(body) end
  return body
end
local key = KEYS[1]
local t = redis.call('TYPE', key).ok
local result
if mode == 'c' then
  if t ~= 'none' and t ~= 'string' then
    return redis.error_reply('TALLIES wrong type: ' .. key .. ' is a ' .. t .. ', not a counter')
  end
  result = redis.call('GET', key) or '0'
  if not canon(result) then return redis.error_reply('TALLIES not an integer: ' .. key) end
  body = result
elseif mode == 'h' or mode == 'f' then
  if t ~= 'none' and t ~= 'hash' then
    return redis.error_reply('TALLIES wrong type: ' .. key .. ' is a ' .. t ..
      ', not a keyed counter')
  end
  if mode == 'h' then
    result = redis.call('HGETALL', key)
    for i = 2, #result, 2 do
      if not canon(result[i]) then
        return redis.error_reply('TALLIES not an integer: ' .. key .. ' field ' .. result[i - 1])
      end
    end
    if #result == 0 then body = '[]' else body = cjson.encode(result) end
  else
    if type(ARGV[4]) ~= 'string' then return redis.error_reply('TALLIES bad call: field') end
    result = redis.call('HGET', key, ARGV[4]) or '0'
    if not canon(result) then
      return redis.error_reply('TALLIES not an integer: ' .. key .. ' field ' .. ARGV[4])
    end
    body = result
  end
else
  return redis.error_reply('TALLIES bad call: mode')
end
if mode == 'f' then
  redis.call('HDEL', key, ARGV[4])
elseif mode == 'h' then
  redis.call('DEL', key)
elseif result ~= '0' then
  redis.call('SET', key, '0', 'KEEPTTL')
end
redis.call('SET', KEYS[2], seq_s .. ':' .. body, 'PX', ttl)
return result
"""
)

READ_LUA = r"""
-- KEYS = [writer key, reset record key, data keys...]; ARGV = one op per
-- data key: 'c' (GET), 'h' (HGETALL) or 'f', field (HGET).  Returns
-- {writer record or false, reset record or false, value...}: the values and
-- the records of one slot in one atomic read.
local out = {redis.call('GET', KEYS[1]) or false, redis.call('GET', KEYS[2]) or false}
local a = 1
for i = 3, #KEYS do
  local op = ARGV[a]
  if op == 'c' then
    out[#out + 1] = redis.call('GET', KEYS[i]) or false
    a = a + 1
  elseif op == 'h' then
    out[#out + 1] = redis.call('HGETALL', KEYS[i])
    a = a + 1
  elseif op == 'f' then
    out[#out + 1] = redis.call('HGET', KEYS[i], ARGV[a + 1]) or false
    a = a + 2
  else
    return redis.error_reply('TALLIES bad call: read op')
  end
end
return out
"""


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
