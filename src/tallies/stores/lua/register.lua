-- Registering a rate or a limiter of redis:// under its name: the first
-- spec asked for is kept; every caller gets the kept one.
-- KEYS[1] = the spec's hash, KEYS[2] = the name's data key (a counter or
-- keyed counter of that name makes a rate refuse: 'clash'); ARGV = field,
-- value pairs.  Returns the kept values in ARGV's field order.
if #KEYS > 1 and redis.call('EXISTS', KEYS[2]) == 1 then
  return redis.error_reply('TALLIES clash: ' .. redis.call('TYPE', KEYS[2]).ok)
end
local fields = {}
for i = 1, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
  fields[#fields + 1] = ARGV[i]
end
return redis.call('HMGET', KEYS[1], unpack(fields))
