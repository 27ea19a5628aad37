-- rl_override: set or clear the runtime override of one key of a policy, and bump
-- the policy's override version so every daemon's refresh notices the change.
-- The version lives in the same hash under the empty field (keys are never empty).
--
-- KEYS[1]  overrides (hash)  prefix .. "rlo{" .. policy .. "}"
--          field = key, value = "limit" or "limit:burst"; field "" = version
-- ARGV[1]  "set" | "clear"
-- ARGV[2]  key
-- ARGV[3]  value ("set" only)
--
-- Returns { existed (1|0), version }.
local existed = redis.call('HEXISTS', KEYS[1], ARGV[2])
if ARGV[1] == 'set' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
elseif existed == 0 then
  return { 0, tonumber(redis.call('HGET', KEYS[1], '') or '0') }
else
  redis.call('HDEL', KEYS[1], ARGV[2])
end
return { existed, redis.call('HINCRBY', KEYS[1], '', 1) }
