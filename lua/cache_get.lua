-- cache_get: read one L2 value, its remaining TTL and the invalidation log position,
-- atomically; on a miss, optionally take a fill lease (SET NX PX).
-- The log position lets the daemon refuse to fill L1 from a read that raced an
-- invalidation it has already applied (DESIGN.md, coherence point 3).
--
-- KEYS[1]  value key        prefix .. "c:" .. key
-- KEYS[2]  lease key        prefix .. "l:" .. key
-- KEYS[3]  invalidation log prefix .. "log"
-- ARGV[1]  "1" to take a lease on a miss, "0" not to
-- ARGV[2]  lease token (random, chosen by the caller)
-- ARGV[3]  lease lifetime in ms
-- ARGV[4]  longest wait in ms to suggest to a caller that finds the lease taken
--
-- Returns { value | nil, pttl_ms, log_position, lease_token | nil, wait_ms | nil }
local pos = '0-0'
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if last[1] then
  pos = last[1][1]
end
local v = redis.call('GET', KEYS[1])
if v then
  return { v, redis.call('PTTL', KEYS[1]), pos, false, false }
end
if ARGV[1] == '1' then
  if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
    return { false, -2, pos, ARGV[2], false }
  end
  local wait = redis.call('PTTL', KEYS[2])
  local cap = tonumber(ARGV[4])
  if wait < 1 then
    wait = 1
  end
  if wait > cap then
    wait = cap
  end
  return { false, -2, pos, false, wait }
end
return { false, -2, pos, false, false }
