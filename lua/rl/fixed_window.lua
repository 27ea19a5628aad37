-- rl_fixed_window: one rate-limit decision of a fixed-window policy, atomically.
-- Windows are aligned to multiples of the window length on the Redis clock, so
-- every daemon of the fleet agrees on where a window starts. The state holds one
-- count per window: the current one, and future ones booked by reservations.
-- A denied request never consumes; `peek` writes nothing. "penalty" counts
-- `cost` in the current window without asking (it may go over the limit);
-- "reward" gives back up to `cost` of the current window's count. Both answer
-- like "peek" after the change.
--
-- KEYS[1]  state hash  prefix .. "rl.fw{" .. policy .. ":" .. key .. "}"
--          field = window start (ms, decimal), value = cost counted in it
-- ARGV[1]  mode: "check" | "peek" | "reserve" | "penalty" | "reward"
-- ARGV[2]  cost, or points for penalty/reward (1 <= cost <= limit, checked by
--          the daemon; peek uses 1)
-- ARGV[3]  limit per window
-- ARGV[4]  window in ms
-- ARGV[5]  burst (unused by this algorithm)
-- ARGV[6]  reserve: longest acceptable wait in ms
-- ARGV[7]  "" to use Redis TIME; a time in ms only from test builds
--
-- Returns { allowed (1|0), limit, remaining, reset_after_ms, retry_after_ms }.
-- For "reserve": allowed = granted and retry_after_ms = the wait before the
-- booked slot (when not granted: how far away the first free slot was).
local mode = ARGV[1]
local cost = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[6])
-- Reservations book at most this many windows ahead, which bounds the state.
local horizon = 1000

local now = now_ms(ARGV[7])
local start = now - (now % window)

local function field(w)
  return string.format('%d', w)
end

local counts = {}
local last = nil
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local w = tonumber(flat[i])
  if w < start then
    if mode ~= 'peek' then
      redis.call('HDEL', KEYS[1], flat[i])
    end
  else
    counts[w] = tonumber(flat[i + 1])
    if last == nil or w > last then
      last = w
    end
  end
end
local used = counts[start] or 0

-- The first window at or after `from` with room for `c`. Booked windows form
-- runs, so the loop ends at the first window nobody booked.
local function first_fit(from, c)
  local w = from
  while counts[w] and counts[w] + c > limit do
    w = w + window
  end
  return w
end

local function reset_after()
  if last == nil then
    return 0
  end
  return last + window - now
end

local function book(w, c)
  redis.call('HINCRBY', KEYS[1], field(w), c)
  counts[w] = (counts[w] or 0) + c
  if last == nil or w > last then
    last = w
  end
  redis.call('PEXPIRE', KEYS[1], last + window - now)
end

local function remaining()
  return math.max(0, limit - (counts[start] or 0))
end

if mode == 'penalty' then
  book(start, cost)
  used = counts[start]
elseif mode == 'reward' then
  used = math.max(0, used - cost)
  if used == 0 then
    redis.call('HDEL', KEYS[1], field(start))
    counts[start] = nil
  else
    redis.call('HSET', KEYS[1], field(start), used)
    counts[start] = used
  end
end

if mode == 'peek' or mode == 'penalty' or mode == 'reward' then
  if used + 1 <= limit then
    return { 1, limit, remaining(), reset_after(), 0 }
  end
  return { 0, limit, remaining(), reset_after(), first_fit(start + window, 1) - now }
end

if mode == 'check' then
  if used + cost <= limit then
    book(start, cost)
    return { 1, limit, remaining(), reset_after(), 0 }
  end
  return { 0, limit, remaining(), reset_after(), first_fit(start + window, cost) - now }
end

-- reserve
local w = first_fit(start, cost)
local wait = 0
if w > start then
  wait = w - now
end
if wait > max_wait or (w - start) / window > horizon then
  return { 0, limit, remaining(), reset_after(), wait }
end
book(w, cost)
return { 1, limit, remaining(), reset_after(), wait }
