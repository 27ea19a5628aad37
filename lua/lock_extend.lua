-- lock_extend: the lock lives ttl ms from now (Redis's clock), only if the
-- caller's token still holds it.
--
-- KEYS[1]  lock  prefix .. "lk{" .. name .. "}"
-- ARGV[1]  token
-- ARGV[2]  ttl in ms (>= 1)
--
-- Returns 1 when extended, 0 when the token no longer holds the lock.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
