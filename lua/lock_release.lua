-- lock_release: delete the lock, only if the caller's token still holds it (a
-- holder whose lock expired and was taken by another cannot release theirs).
--
-- KEYS[1]  lock  prefix .. "lk{" .. name .. "}"
-- ARGV[1]  token
--
-- Returns 1 when released, 0 when the token no longer held the lock.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
