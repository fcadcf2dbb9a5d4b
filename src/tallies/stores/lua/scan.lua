-- The page read of redis://: one HSCAN page of a keyed counter's hash as one
-- JSON string (a flat [field, value, ...] array), which the client decodes in
-- C (json.loads) instead of parsing a RESP array field by field.
-- tallies/stores/_redis_backend.py (_scan_hash) explains why.
-- KEYS = [data key]; ARGV = [cursor, count].  Returns {next cursor, json}.
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
if #r[2] == 0 then
  return {r[1], '[]'}
end
return {r[1], cjson.encode(r[2])}
