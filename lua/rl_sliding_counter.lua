-- rl_sliding_counter: one rate-limit decision of a sliding-counter policy, atomically.
-- Two aligned fixed windows; the previous one's count is weighted by how much of
-- it the sliding window still covers: estimate = prev * (window - elapsed) / window
-- + current. Constant memory per key, but an approximation: it assumes the
-- previous window's requests were spread evenly. Bound: within one aligned window
-- at most `limit` pass (exactly like a fixed window); over any sliding window of
-- length `window`, fewer than 2 * limit pass (the worst case is a previous window
-- whose requests all came at its very end); with evenly spread traffic it is exact.
-- All comparisons are done in integers (units of 1/window request).
-- A denied request never consumes; `peek` writes nothing. No reservations.
-- "penalty" counts `cost` in the current window without asking; "reward" gives
-- back `cost` from the current window's count, then the previous one's. Both
-- answer like "peek" after the change.
--
-- KEYS[1]  state hash  prefix .. "rl.sc{" .. policy .. ":" .. key .. "}"
--          fields s (current window start, ms), p (previous count), n (current count)
-- ARGV[1]  mode: "check" | "peek" | "penalty" | "reward"
-- ARGV[2]  cost, or points for penalty/reward (1 <= cost <= limit, checked by
--          the daemon; peek uses 1)
-- ARGV[3]  limit per window
-- ARGV[4]  window in ms
-- ARGV[5]  burst (unused by this algorithm)
-- ARGV[6]  unused (reservations are not offered by this algorithm)
-- ARGV[7]  "" to use Redis TIME; a time in ms only from test builds
--
-- Returns { allowed (1|0), limit, remaining, reset_after_ms, retry_after_ms }.
--
-- Generated from lua/rl/sliding_counter.lua and lua/rl/preamble.lua by daemon/build.rs:
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

-- ---- lua/rl/sliding_counter.lua ----
local mode = ARGV[1]
local cost = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local window = tonumber(ARGV[4])

local now = now_ms(ARGV[7])
local start = now - (now % window)

local p, n = 0, 0
local st = redis.call('HMGET', KEYS[1], 's', 'p', 'n')
local s = tonumber(st[1])
if s then
  local sp, sn = tonumber(st[2]) or 0, tonumber(st[3]) or 0
  if s == start then
    p, n = sp, sn
  elseif s == start - window then
    p, n = sn, 0
  elseif s > start then
    -- The clock stepped back: keep counting in the newer window.
    start = s
    p, n = sp, sn
  end
end
local elapsed = math.max(0, now - start)

-- estimate * window, in integers
local function load(cur)
  return p * (window - elapsed) + cur * window
end

local function remaining(cur)
  return math.max(0, floor_div(limit * window - load(cur), window))
end

local function reset_after()
  if n > 0 then
    return start + 2 * window - now
  elseif p > 0 then
    return start + window - now
  end
  return 0
end

-- Until `c` more fit, assuming no other request: either later in this window,
-- as the previous window's weight decays, or in the next one.
local function retry_for(c)
  if n + c <= limit then
    local at = window - floor_div((limit - n - c) * window, p)
    return math.max(1, start + at - now)
  end
  local at = window - floor_div((limit - c) * window, n)
  return math.max(1, start + window + math.max(0, at) - now)
end

if mode == 'penalty' or mode == 'reward' then
  if mode == 'penalty' then
    n = n + cost
  else
    local back = math.min(n, cost)
    n = n - back
    p = math.max(0, p - (cost - back))
  end
  if n == 0 and p == 0 then
    redis.call('DEL', KEYS[1])
  else
    redis.call('HSET', KEYS[1], 's', start, 'p', p, 'n', n)
    redis.call('PEXPIRE', KEYS[1], start + 2 * window - now)
  end
  mode = 'peek'
end

local c = cost
if mode == 'peek' then
  c = 1
end
if load(n + c) <= limit * window then
  if mode == 'peek' then
    return { 1, limit, remaining(n), reset_after(), 0 }
  end
  n = n + c
  redis.call('HSET', KEYS[1], 's', start, 'p', p, 'n', n)
  redis.call('PEXPIRE', KEYS[1], start + 2 * window - now)
  return { 1, limit, remaining(n), reset_after(), 0 }
end
return { 0, limit, remaining(n), reset_after(), retry_for(c) }
