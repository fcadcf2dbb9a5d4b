-- The limiter script of redis:// (tallies/stores/_limiter.py explains leases).
-- KEYS[1] = one key's slots: a hash, field = slot, value = units counted
-- there; it expires a window after its newest slot.  Slots follow this
-- server's clock (TIME), so writers' clock skew does not matter.
-- ARGV = mode, res_us, buckets, limit, need, want, give_slot, give_units
-- mode 'a' (acquire): give back give_units of give_slot (an earlier grant's
-- unused units; give_slot -1: none), then grant g units in the current slot:
-- 0 if used + need > limit, else min(want, max(need, floor((limit - used)/2))).
-- mode 'r' (read): nothing written; mode 'z' (reset): delete the key.
-- Returns {granted, used (after), slot, now_us, oldest slot with units or -1}.
local function num(s, what)
  if type(s) ~= 'string' or not string.find(s, '^%-?%d+$') or #s > 16 then
    error('TALLIES bad call: ' .. what)
  end
  return tonumber(s)
end
pcall(redis.replicate_commands)  -- TIME then writes (Redis < 5); a no-op since 7
local mode = ARGV[1]
local res_us, buckets, limit = num(ARGV[2], 'res'), num(ARGV[3], 'buckets'), num(ARGV[4], 'limit')
local need, want = num(ARGV[5], 'need'), num(ARGV[6], 'want')
local give_slot, give_units = num(ARGV[7], 'give slot'), num(ARGV[8], 'give units')
if res_us < 1 or buckets < 1 or limit < 1 then return redis.error_reply('TALLIES bad call: spec') end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local s = math.floor(now_us / res_us)
local lo = s - buckets
local key = KEYS[1]
local h = redis.pcall('HGETALL', key)
if h.err then
  return redis.error_reply('TALLIES wrong type: ' .. key .. ' is a ' ..
    redis.call('TYPE', key).ok .. ', not a limiter key')
end
local used, oldest = 0, -1
local stale = {}
for i = 1, #h, 2 do
  local slot, v = tonumber(h[i]), tonumber(h[i + 1])
  if slot == nil or v == nil then
    return redis.error_reply('TALLIES not an integer: ' .. key .. ' field ' .. h[i])
  end
  if slot < lo then
    stale[#stale + 1] = h[i]
  else
    if mode == 'a' and slot == give_slot and give_units > 0 then
      local back = math.min(v, give_units)
      v = v - back
      if v > 0 then
        redis.call('HINCRBY', key, h[i], -back)
      else
        redis.call('HDEL', key, h[i])
      end
    end
    if v > 0 then
      used = used + v
      if oldest < 0 or slot < oldest then oldest = slot end
    end
  end
end
if mode == 'z' then
  redis.call('DEL', key)
  return {0, used, s, now_us, -1}
end
if mode ~= 'a' then return {0, used, s, now_us, oldest} end
if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
local g = 0
if need > 0 and used + need <= limit then
  g = math.min(math.max(want, need), math.max(need, math.floor((limit - used) / 2)))
  redis.call('HINCRBY', key, string.format('%d', s), g)
  used = used + g
  if oldest < 0 or s < oldest then oldest = s end
end
if used > 0 then
  -- the key lives until its newest slot has left the window, plus a second
  redis.call('PEXPIREAT', key, math.floor((s + buckets + 1) * res_us / 1000) + 1000)
else
  redis.call('DEL', key)
end
return {g, used, s, now_us, oldest}
