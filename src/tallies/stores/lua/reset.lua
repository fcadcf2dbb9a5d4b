-- The reset script of redis:// (int64.lua is prepended): take a count,
-- exactly once per (writer, seq).  tallies/stores/_redis_lua.py explains it.
-- KEYS = [data key, reset record key]; ARGV = [mode, seq, ttl_ms, field?]
-- mode 'c': take a counter (returns its value; the key stays, at 0),
-- 'h': take a whole keyed counter (returns the flat HGETALL array; every
-- field stays, at 0), 'f': take one field of a keyed counter (returns its
-- value; the field stays at 0 if it was there),
-- 'q': take a rate (KEYS[1] its meta hash, KEYS[3..] its bucket keys):
-- returns its total, zeroes it and deletes the buckets,
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
local present = false
if mode == 'c' then
  if t ~= 'none' and t ~= 'string' then
    return redis.error_reply('TALLIES wrong type: ' .. key .. ' is a ' .. t .. ', not a counter')
  end
  result = redis.call('GET', key) or '0'
  if not canon(result) then return redis.error_reply('TALLIES not an integer: ' .. key) end
  body = result
elseif mode == 'q' then
  if t ~= 'none' and t ~= 'hash' then
    return redis.error_reply('TALLIES wrong type: ' .. key .. ' is a ' .. t .. ', not a rate')
  end
  result = redis.call('HGET', key, 't') or '0'
  if not canon(result) then return redis.error_reply('TALLIES not an integer: ' .. key) end
  body = result
  if t ~= 'none' then redis.call('HSET', key, 't', '0') end
  for i = 3, #KEYS do redis.call('DEL', KEYS[i]) end
  redis.call('SET', KEYS[2], seq_s .. ':' .. body, 'PX', ttl)
  return result
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
    local cur = redis.call('HGET', key, ARGV[4])
    present = cur ~= false and cur ~= nil
    result = cur or '0'
    if not canon(result) then
      return redis.error_reply('TALLIES not an integer: ' .. key .. ' field ' .. ARGV[4])
    end
    body = result
  end
else
  return redis.error_reply('TALLIES bad call: mode')
end
if mode == 'f' then
  if present and result ~= '0' then redis.call('HSET', key, ARGV[4], '0') end
elseif mode == 'h' then
  for i = 1, #result, 2 do
    if result[i + 1] ~= '0' then redis.call('HSET', key, result[i], '0') end
  end
elseif result ~= '0' then
  redis.call('SET', key, '0', 'KEEPTTL')
end
redis.call('SET', KEYS[2], seq_s .. ':' .. body, 'PX', ttl)
return result
