-- The read script of redis://: values and writer records of one slot in one
-- atomic read.  tallies/stores/_redis_lua.py explains it.
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
