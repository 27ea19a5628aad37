-- cache_mget: read several L2 values with their remaining TTLs and the invalidation
-- log position in one atomic step (one round trip for all L1 misses of a cache.mget).
--
-- KEYS[1]     invalidation log prefix .. "log"
-- KEYS[2..n]  value keys       prefix .. "c:" .. key
-- ARGV        none
--
-- Returns { log_position, value_1 | nil, pttl_1, value_2 | nil, pttl_2, ... }
local pos = '0-0'
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] then
  pos = last[1][1]
end
local out = { pos }
for i = 2, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then
    out[#out + 1] = v
    out[#out + 1] = redis.call('PTTL', KEYS[i])
  else
    out[#out + 1] = false
    out[#out + 1] = -2
  end
end
return out
