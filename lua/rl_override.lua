-- rl_override: set or clear the runtime override of one key of a policy, or
-- only announce a change (a reset), and move the policy's version so every
-- daemon's refresh notices it: the daemons then reload the overrides and drop
-- the policy's cached denials. The version lives in the same hash under the
-- empty field (keys are never empty). It is Redis TIME in microseconds (or the
-- last version + 1 if that is not larger), so it never repeats after Redis
-- loses its data: a daemon that knew version V cannot mistake a new hash that
-- happens to reach V for the one it loaded.
--
-- KEYS[1]  overrides (hash)  prefix .. "rlo{" .. policy .. "}"
--          field = key, value = "limit" or "limit:burst"; field "" = version
-- ARGV[1]  "set" | "clear" | "bump"
-- ARGV[2]  key ("set", "clear")
-- ARGV[3]  value ("set" only)
--
-- Returns { existed (1|0), version }.
local function bump()
  local t = redis.call('TIME')
  local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local old = tonumber(redis.call('HGET', KEYS[1], '') or '0') or 0
  if v <= old then
    v = old + 1
  end
  redis.call('HSET', KEYS[1], '', string.format('%d', v))
  return v
end

if ARGV[1] == 'bump' then
  return { 0, bump() }
end
local existed = redis.call('HEXISTS', KEYS[1], ARGV[2])
if ARGV[1] == 'set' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
elseif existed == 0 then
  return { 0, tonumber(redis.call('HGET', KEYS[1], '') or '0') }
else
  redis.call('HDEL', KEYS[1], ARGV[2])
end
return { existed, bump() }
