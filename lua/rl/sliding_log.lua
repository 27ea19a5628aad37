-- rl_sliding_log: one rate-limit decision of a sliding-log policy, atomically.
-- Exact: a request at time t is counted against every entry with a timestamp
-- after t - window. Entries carry their cost, so a weighted request is one entry.
-- Reservations add entries in the future; counting every entry after t - window
-- (future ones included) keeps any window of real time within the limit.
-- A denied request never consumes; `peek` writes nothing. "penalty" adds an
-- entry of `cost` now without asking (the total may go over the limit);
-- "reward" takes `cost` back from the newest entries. Both answer like "peek"
-- after the change.
--
-- KEYS[1]  log (sorted set)  prefix .. "rl.sl{" .. policy .. ":" .. key .. "}"
--          score = time in ms, member = "<seq>:<cost>"
-- KEYS[2]  meta (hash)       KEYS[1] .. ":n"   fields n (total cost in the log), s (seq)
-- ARGV[1]  mode: "check" | "peek" | "reserve" | "penalty" | "reward"
-- ARGV[2]  cost, or points for penalty/reward (1 <= cost <= limit, checked by
--          the daemon; peek uses 1)
-- ARGV[3]  limit per window
-- ARGV[4]  window in ms
-- ARGV[5]  burst (unused by this algorithm)
-- ARGV[6]  reserve: longest acceptable wait in ms
-- ARGV[7]  "" to use Redis TIME; a time in ms only from test builds
--
-- Returns { allowed (1|0), limit, remaining, reset_after_ms, retry_after_ms }
-- ("reserve": allowed = granted, retry_after_ms = the wait).
local mode = ARGV[1]
local cost = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[6])

local now = now_ms(ARGV[7])
-- Entries at or before `edge` have left the window.
local edge = string.format('%d', now - window)

local function cost_of(member)
  return tonumber(string.match(member, ':(%d+)$')) or 1
end

local n = tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
local card = redis.call('ZCARD', KEYS[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', edge)
for _, m in ipairs(old) do
  n = n - cost_of(m)
end
-- The two keys expire together; should the meta ever disagree with the log,
-- an empty log wins.
if card == #old or n < 0 then
  n = 0
end
if #old > 0 and mode ~= 'peek' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', edge)
  redis.call('HSET', KEYS[2], 'n', n)
end

local function newest()
  local e = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(' .. edge, 'WITHSCORES', 'LIMIT', 0, 1)
  if e[1] then
    return tonumber(e[2])
  end
  return nil
end

local function reset_after()
  local t = newest()
  if t == nil then
    return 0
  end
  return math.max(0, t + window - now)
end

-- Until enough of the oldest entries have left for `c` more to fit.
local function retry_for(c)
  local entries = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. edge, '+inf', 'WITHSCORES')
  local freed = 0
  for i = 1, #entries, 2 do
    freed = freed + cost_of(entries[i])
    if n - freed + c <= limit then
      return math.max(1, tonumber(entries[i + 1]) + window - now)
    end
  end
  return window
end

local function add(at, c)
  local seq = redis.call('HINCRBY', KEYS[2], 's', 1)
  redis.call('ZADD', KEYS[1], at, seq .. ':' .. c)
  n = n + c
  redis.call('HSET', KEYS[2], 'n', n)
  local ttl = math.max(1, newest() + window - now)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end

if mode == 'penalty' then
  add(now, cost)
elseif mode == 'reward' then
  local left = cost
  local entries = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(' .. edge, 'WITHSCORES')
  for i = 1, #entries, 2 do
    if left == 0 then
      break
    end
    local c = cost_of(entries[i])
    redis.call('ZREM', KEYS[1], entries[i])
    if c <= left then
      n = n - c
      left = left - c
    else
      -- Part of this entry stays: it is written back with what is left of it.
      local seq = redis.call('HINCRBY', KEYS[2], 's', 1)
      redis.call('ZADD', KEYS[1], entries[i + 1], seq .. ':' .. (c - left))
      n = n - left
      left = 0
    end
  end
  if n <= 0 or redis.call('ZCARD', KEYS[1]) == 0 then
    n = 0
    redis.call('DEL', KEYS[1], KEYS[2])
  else
    redis.call('HSET', KEYS[2], 'n', n)
  end
end

if mode == 'peek' or mode == 'penalty' or mode == 'reward' then
  if n + 1 <= limit then
    return { 1, limit, limit - n, reset_after(), 0 }
  end
  return { 0, limit, math.max(0, limit - n), reset_after(), retry_for(1) }
end

if mode == 'check' then
  if n + cost <= limit then
    add(now, cost)
    return { 1, limit, limit - n, reset_after(), 0 }
  end
  return { 0, limit, math.max(0, limit - n), reset_after(), retry_for(cost) }
end

-- reserve
local wait = 0
if n + cost > limit then
  wait = retry_for(cost)
end
if wait > max_wait then
  return { 0, limit, math.max(0, limit - n), reset_after(), wait }
end
add(now + wait, cost)
return { 1, limit, math.max(0, limit - n), reset_after(), wait }
