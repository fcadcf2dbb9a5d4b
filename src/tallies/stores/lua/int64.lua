-- Exact int64 checks in Redis' Lua 5.1, where numbers are doubles: prepended
-- to apply.lua and reset.lua when they are loaded (tallies/stores/_redis_lua.py).
-- A decimal is split into hi * 10^9 + lo (each exact in a double).
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
