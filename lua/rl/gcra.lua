-- rl_gcra: one rate-limit decision of a GCRA policy (generic cell rate algorithm),
-- atomically. The state is one time, the theoretical arrival time (TAT): requests
-- are spaced by the emission interval T = window / limit, and a request conforms
-- while TAT - now stays within burst * T. T need not be a whole number of ms, so
-- the TAT is kept exactly as m + r / limit ms (0 <= r < limit). A reservation
-- advances the TAT past now; the caller waits until its slot.
-- A denied request never consumes; `peek` writes nothing. "penalty" advances
-- the TAT by `cost` cells without asking (it may go past the burst); "reward"
-- moves it back by `cost` cells, never before now. Both answer like "peek"
-- after. The key expires at the
-- TAT, after which it is the same as no state.
--
-- KEYS[1]  state hash  prefix .. "rl.gcra{" .. policy .. ":" .. key .. "}"
--          fields m (TAT, whole ms), r (TAT remainder, in 1/l ms), l (the limit
--          r is counted in: an override may change the limit, and the remainder
--          is then converted, rounded up, never reread in the new units)
-- ARGV[1]  mode: "check" | "peek" | "reserve" | "penalty" | "reward"
-- ARGV[2]  cost, or points for penalty/reward (1 <= cost <= burst, checked by
--          the daemon; peek uses 1)
-- ARGV[3]  limit per window (the sustained rate)
-- ARGV[4]  window in ms
-- ARGV[5]  burst: how many may pass at once
-- ARGV[6]  reserve: longest acceptable wait in ms
-- ARGV[7]  "" to use Redis TIME; a time in ms only from test builds
--
-- Returns { allowed (1|0), burst, remaining, reset_after_ms, retry_after_ms }
-- ("reserve": allowed = granted, retry_after_ms = the wait).
local mode = ARGV[1]
local cost = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local burst = tonumber(ARGV[5])
local max_wait = tonumber(ARGV[6])

local now = now_ms(ARGV[7])

-- Everything below is in units of 1/limit ms, relative to now: T = window units.
local tau = burst * window
local st = redis.call('HMGET', KEYS[1], 'm', 'r', 'l')
local m, r, l = tonumber(st[1]), tonumber(st[2]) or 0, tonumber(st[3])
local d = 0
if m ~= nil then
  if l ~= nil and l ~= limit then
    -- r / l ms in units of 1/limit ms, rounded up (never admits early).
    r = ceil_div(r * limit, l)
  end
  -- max(TAT, now) - now.
  d = math.max(0, (m - now) * limit + r)
end

local function remaining(dd)
  return math.min(burst, math.max(0, floor_div(tau - dd, window)))
end

local function reset_after(dd)
  return ceil_div(dd, limit)
end

local function wait_for(dd, units)
  if dd + units <= tau then
    return 0
  end
  return ceil_div(dd + units - tau, limit)
end

local function store(dd)
  local whole = floor_div(dd, limit)
  redis.call('HSET', KEYS[1], 'm', now + whole, 'r', dd - whole * limit, 'l', limit)
  redis.call('PEXPIRE', KEYS[1], math.max(1, reset_after(dd)))
end

if mode == 'penalty' then
  d = d + cost * window
  store(d)
elseif mode == 'reward' then
  d = math.max(0, d - cost * window)
  if d == 0 then
    redis.call('DEL', KEYS[1])
  else
    store(d)
  end
end

if mode == 'peek' or mode == 'penalty' or mode == 'reward' then
  local wait = wait_for(d, window)
  return { wait == 0 and 1 or 0, burst, remaining(d), reset_after(d), wait }
end

local inc = cost * window
local wait = wait_for(d, inc)
if mode == 'check' then
  if wait > 0 then
    return { 0, burst, remaining(d), reset_after(d), wait }
  end
  store(d + inc)
  return { 1, burst, remaining(d + inc), reset_after(d + inc), 0 }
end

-- reserve
if wait > max_wait then
  return { 0, burst, remaining(d), reset_after(d), wait }
end
store(d + inc)
return { 1, burst, remaining(d + inc), reset_after(d + inc), wait }
