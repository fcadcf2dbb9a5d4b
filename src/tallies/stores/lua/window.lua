-- Fixed windows of redis:// (what the limits package calls a fixed window:
-- it starts at its first hit and lasts expiry_ms).  KEYS[1] = the window's
-- counter; ARGV = mode ('i' incr, 'g' get, 'c' clear), amount, expiry_ms.
-- Returns {count, expires at (Unix ms)}.
pcall(redis.replicate_commands)
local mode, key = ARGV[1], KEYS[1]
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if mode == 'c' then
  redis.call('DEL', key)
  return {0, now_ms}
end
local c
if mode == 'i' then
  local amount, expiry = tonumber(ARGV[2]), tonumber(ARGV[3])
  if amount == nil or expiry == nil or expiry < 1 then
    return redis.error_reply('TALLIES bad call: amount, expiry')
  end
  c = redis.call('INCRBY', key, ARGV[2])
  if c == amount then redis.call('PEXPIRE', key, ARGV[3]) end
else
  c = tonumber(redis.call('GET', key) or '0')
end
local ttl = redis.call('PTTL', key)
if ttl < 0 then return {c, now_ms} end
return {c, now_ms + ttl}
