-- lock_acquire: take a lock if it is free, with a fencing token.
--
-- The lock is a string holding the holder's token, expiring on Redis's clock
-- (PX). The fence counter never expires: each acquisition of the name gets the
-- next integer, so a resource can refuse a write from a holder that paused past
-- its TTL (its fence is older than the one it has already seen).
--
-- KEYS[1]  lock           prefix .. "lk{" .. name .. "}"
-- KEYS[2]  fence counter  prefix .. "lkf{" .. name .. "}"
-- ARGV[1]  token (random, from the daemon)
-- ARGV[2]  ttl in ms (>= 1)
--
-- Returns { 1, fence, 0 } when acquired, { 0, 0, ms left of the holder's lock }.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return { 1, redis.call('INCR', KEYS[2]), 0 }
end
local left = redis.call('PTTL', KEYS[1])
if left < 1 then
  left = 1
end
return { 0, 0, left }
