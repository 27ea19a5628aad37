-- rl_release: give back one lease of a concurrency policy.
--
-- KEYS[1]  leases (sorted set)  prefix .. "rl.cc{" .. policy .. ":" .. key .. "}"
-- ARGV[1]  lease token
-- ARGV[2]  "" to use Redis TIME; a time in ms only from test builds
--
-- Returns 1 when the lease was held and had not expired, else 0.
--
-- Generated from lua/rl/release.lua and lua/rl/preamble.lua by daemon/build.rs:
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

-- ---- lua/rl/release.lua ----
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
