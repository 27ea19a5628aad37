-- rl_concurrency: take (or look at) one in-flight slot of a concurrency policy,
-- atomically. Each holder has a lease that expires on its own, so a holder that
-- dies without releasing frees its slot after the lease time (Stripe's
-- concurrent-requests limiter). Expiry is judged on the Redis clock.
--
-- KEYS[1]  leases (sorted set)  prefix .. "rl.cc{" .. policy .. ":" .. key .. "}"
--          member = lease token, score = expiry time in ms
-- ARGV[1]  mode: "acquire" | "peek"
-- ARGV[2]  limit: leases in flight at once
-- ARGV[3]  lease lifetime in ms
-- ARGV[4]  lease token (random, chosen by the daemon)
-- ARGV[5]  "" to use Redis TIME; a time in ms only from test builds
--
-- Returns { acquired (1|0), limit, remaining, reset_after_ms, retry_after_ms }:
-- reset_after_ms = until the last lease expires, retry_after_ms (not acquired) =
-- until the oldest lease expires.
--
-- Generated from lua/rl/concurrency.lua and lua/rl/preamble.lua by daemon/build.rs:
-- edit those, then `SHOAL_WRITE_LUA=1 cargo test -p shoald generated_scripts`.

-- ---- preamble (lua/rl/preamble.lua): shared by the rate-limit scripts ----
if redis.replicate_commands then
  pcall(redis.replicate_commands)
end

-- Now in ms on the fleet's one clock, Redis TIME; `test_now` (an ARGV, a time in
-- ms) only from test builds, "" otherwise.
local function now_ms(test_now)
  if test_now ~= '' then
    return tonumber(test_now)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- ceil(a / b) and floor(a / b) for integers, exact even where the float
-- quotient rounds.
local function ceil_div(a, b)
  local q = math.ceil(a / b)
  if q * b < a then
    q = q + 1
  elseif (q - 1) * b >= a then
    q = q - 1
  end
  return q
end

local function floor_div(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- ---- lua/rl/concurrency.lua ----
local mode = ARGV[1]
local limit = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])

local now = now_ms(ARGV[5])
local live = '(' .. string.format('%d', now)

if mode ~= 'peek' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
end
local held = redis.call('ZCOUNT', KEYS[1], live, '+inf')

local function reset_after()
  local e = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', live, 'WITHSCORES', 'LIMIT', 0, 1)
  if e[1] then
    return tonumber(e[2]) - now
  end
  return 0
end

local function retry_after()
  local e = redis.call('ZRANGEBYSCORE', KEYS[1], live, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if e[1] then
    return math.max(1, tonumber(e[2]) - now)
  end
  return 1
end

if held < limit then
  if mode == 'peek' then
    return { 1, limit, limit - held, reset_after(), 0 }
  end
  redis.call('ZADD', KEYS[1], now + lease_ms, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.max(1, reset_after()))
  return { 1, limit, limit - held - 1, reset_after(), 0 }
end
return { 0, limit, 0, reset_after(), retry_after() }
