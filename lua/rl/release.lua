-- rl_release: give back one lease of a concurrency policy.
--
-- KEYS[1]  leases (sorted set)  prefix .. "rl.cc{" .. policy .. ":" .. key .. "}"
-- ARGV[1]  lease token
-- ARGV[2]  "" to use Redis TIME; a time in ms only from test builds
--
-- Returns 1 when the lease was held and had not expired, else 0.
local now = now_ms(ARGV[2])
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(expiry) > now then
  return 1
end
return 0
