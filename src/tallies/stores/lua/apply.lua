-- The apply script of redis:// (int64.lua is prepended): one part of one
-- batch, applied exactly once.  tallies/stores/_redis_lua.py explains the
-- key layout and the protocol.
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
local hexp = {}  -- 'e' (a rate bucket): its PEXPIREAT time in ms, else false
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
  elseif kind == 'h' or kind == 'e' then
    local at = false
    if kind == 'e' then
      at = ARGV[a + 1]
      if not small(at, 15) then return redis.error_reply('TALLIES bad call: expiry') end
      a = a + 1
    end
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
    hexp[#hexp + 1] = at
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
local hcur = {}  -- each keyed op's HMGET reply: false for a field not there
for i = 1, #hkeys do
  local key, fields, base = hkeys[i], hfields[i], hbase[i]
  local cur = redis.pcall('HMGET', key, unpack(fields))
  if cur.err then
    return redis.error_reply('TALLIES wrong type: ' .. key .. ' is a ' ..
      redis.call('TYPE', key).ok .. ', not a keyed counter')
  end
  hcur[i] = cur
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
-- A field that was not there is set to its delta, all of one key's in one
-- HSET (the sum is the delta: nothing to compute); the others HINCRBY.
for i = 1, #hkeys do
  local key, fields, base, cur = hkeys[i], hfields[i], hbase[i], hcur[i]
  local new, n = {}, 0
  for j = 1, #fields do
    if cur[j] then
      redis.call('HINCRBY', key, fields[j], ARGV[base + 2 * j])
    else
      new[n + 1] = fields[j]
      new[n + 2] = ARGV[base + 2 * j]
      n = n + 2
    end
  end
  if n > 0 then redis.call('HSET', key, unpack(new)) end
  if hexp[i] then redis.call('PEXPIREAT', key, hexp[i]) end
end
for j = 1, #ckeys do
  redis.call('INCRBY', ckeys[j], cdeltas[j])
end
redis.call('SET', KEYS[1], seq_s .. ':' .. part_s, 'PX', ttl_s)
if big then return 'big' end
return 'ok'
