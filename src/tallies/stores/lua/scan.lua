-- The page read of redis:// where redis-py's own parser reads the replies, and
-- on a cluster: one HSCAN page of a keyed counter's hash as one JSON string (a
-- flat [field, value, ...] array), which the client decodes in C (json.loads)
-- instead of parsing a RESP array field by field in Python.  Where hiredis
-- parses the replies a plain HSCAN is cheaper for Redis.
-- tallies/stores/_redis_backend.py (_scan_hash) explains why.
-- KEYS = [data key]; ARGV = [cursor, count].  Returns {next cursor, json}.
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
if #r[2] == 0 then
  return {r[1], '[]'}
end
return {r[1], cjson.encode(r[2])}
