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
