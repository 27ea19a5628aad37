-- rl_token_bucket: one rate-limit decision of a token-bucket policy, atomically.
-- The bucket holds `burst` tokens and refills `limit` per `window`. To stay exact
-- in integers, tokens are counted in units of 1/window token: the bucket holds
-- burst * window units and refills `limit` units per ms. A reservation may take
-- the bucket below zero; later requests wait until it has refilled.
-- A denied request never consumes; `peek` writes nothing. "penalty" takes
-- `cost` tokens without asking (the bucket may go below zero); "reward" puts
-- back `cost` tokens, never above `burst`. Both answer like "peek" after. The key expires when
-- the bucket would be full again, which is the same as no state.
--
-- KEYS[1]  state hash  prefix .. "rl.tb{" .. policy .. ":" .. key .. "}"
--          fields u (units in the bucket at time t), t (ms)
-- ARGV[1]  mode: "check" | "peek" | "reserve" | "penalty" | "reward"
-- ARGV[2]  cost (or points) in tokens (1 <= cost <= burst, checked by the
--          daemon; peek uses 1)
-- ARGV[3]  limit: tokens per window (the sustained rate)
-- ARGV[4]  window in ms
-- ARGV[5]  burst: bucket capacity in tokens
-- ARGV[6]  reserve: longest acceptable wait in ms
-- ARGV[7]  "" to use Redis TIME; a time in ms only from test builds
--
-- Returns { allowed (1|0), burst, remaining, reset_after_ms, retry_after_ms }
-- ("reserve": allowed = granted, retry_after_ms = the wait).
--
-- Generated from lua/rl/token_bucket.lua and lua/rl/preamble.lua by daemon/build.rs:
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

-- ---- lua/rl/token_bucket.lua ----
local mode = ARGV[1]
local cost = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local burst = tonumber(ARGV[5])
local max_wait = tonumber(ARGV[6])

local now = now_ms(ARGV[7])

local cap = burst * window
local st = redis.call('HMGET', KEYS[1], 'u', 't')
local u, t = tonumber(st[1]), tonumber(st[2])
if u == nil or t == nil then
  u, t = cap, now
end
if now > t then
  u = u + (now - t) * limit
  t = now
end
if u > cap then
  u = cap
end

local function remaining()
  if u <= 0 then
    return 0
  end
  return floor_div(u, window)
end

local function reset_after()
  if u >= cap then
    return 0
  end
  return ceil_div(cap - u, limit)
end

local function wait_for(units)
  if u >= units then
    return 0
  end
  return ceil_div(units - u, limit)
end

local function take(units)
  u = u - units
  redis.call('HSET', KEYS[1], 'u', u, 't', t)
  redis.call('PEXPIRE', KEYS[1], math.max(1, reset_after()))
end

if mode == 'penalty' then
  take(cost * window)
elseif mode == 'reward' then
  u = math.min(cap, u + cost * window)
  if u >= cap then
    redis.call('DEL', KEYS[1])
  else
    redis.call('HSET', KEYS[1], 'u', u, 't', t)
    redis.call('PEXPIRE', KEYS[1], math.max(1, reset_after()))
  end
end

if mode == 'peek' or mode == 'penalty' or mode == 'reward' then
  local wait = wait_for(window)
  return { wait == 0 and 1 or 0, burst, remaining(), reset_after(), wait }
end

local need = cost * window
local wait = wait_for(need)
if mode == 'check' then
  if wait > 0 then
    return { 0, burst, remaining(), reset_after(), wait }
  end
  take(need)
  return { 1, burst, remaining(), reset_after(), 0 }
end

-- reserve
if wait > max_wait then
  return { 0, burst, remaining(), reset_after(), wait }
end
take(need)
return { 1, burst, remaining(), reset_after(), wait }
