-- session_create: store a new session under the keyed hash of its token, index it
-- under its user, and report the revocation log position the write saw.
-- The token itself never reaches Redis: the daemon hashes it (HMAC) first.
-- Redis's clock (TIME) is the only clock: every timestamp below is Redis time.
--
-- KEYS[1]  session hash        prefix .. "s:" .. session_hash
-- KEYS[2]  user index (zset)   prefix .. "su:" .. user   (member: session_hash, score: absolute expiry)
-- KEYS[3]  user epoch          prefix .. "se:" .. user   (created at 0 if missing, and
--          kept alive at least until this session's absolute expiry)
-- KEYS[4]  revocation stream   prefix .. "srev"
-- ARGV[1]  user
-- ARGV[2]  data (opaque bytes)
-- ARGV[3]  idle ttl, ms
-- ARGV[4]  absolute ttl, ms
-- ARGV[5]  session hash (the index member; the same hash KEYS[1] is named by)
--
-- Returns { 0 } when a session with that hash exists (the caller draws a new
-- token), else { 1, log_pos, now, user, data, created, last_seen, idle, abs_at, epoch, 0 }
-- (the shape of session_get's answer).
local function ms(n) return string.format('%d', n) end
local function last_id(stream)
  local e = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #e == 0 then return '0-0' end
  return e[1][1]
end
-- Extend a key's expiry to at least `at` (never shorten it).
local function extend(key, at)
  local cur = redis.call('PEXPIRETIME', key)
  if cur == -1 or (cur >= 0 and cur < at) then
    redis.call('PEXPIREAT', key, ms(at))
  end
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  return { 0 }
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idle = tonumber(ARGV[3])
local abs_at = now + tonumber(ARGV[4])
local expires = math.min(now + idle, abs_at)
local epoch = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
redis.call('HSET', KEYS[1], 'u', ARGV[1], 'd', ARGV[2], 'c', ms(now), 's', ms(now),
  'i', ms(idle), 'a', ms(abs_at), 'e', ms(epoch))
redis.call('PEXPIREAT', KEYS[1], ms(expires))
-- Members past their absolute expiry can only be dead sessions: drop them here,
-- so the index of a user who logs in often stays small.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms(now))
redis.call('ZADD', KEYS[2], ms(abs_at), ARGV[5])
extend(KEYS[2], abs_at)
-- The epoch key must outlive every session of the user, so that a later
-- session_revoke_user (which keeps it at least as long as it already lives)
-- covers sessions with any absolute lifetime, listed in the index or not.
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SET', KEYS[3], ms(epoch), 'PXAT', ms(abs_at))
else
  extend(KEYS[3], abs_at)
end
return { 1, last_id(KEYS[4]), now, ARGV[1], ARGV[2], now, now, idle, abs_at, epoch, 0 }
