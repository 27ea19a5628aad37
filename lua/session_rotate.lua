-- session_rotate: move a session to a new token (new hash), keeping its user, data,
-- creation time, epoch and absolute expiry; the old token is revoked and announced
-- on the revocation stream in the same step. A session created before its user's
-- last session_revoke_user (its epoch below the user's) is refused and deleted, so
-- it cannot be renewed into a fresh token.
--
-- KEYS[1]  old session hash    prefix .. "s:" .. old_hash
-- KEYS[2]  new session hash    prefix .. "s:" .. new_hash
-- KEYS[3]  user index (zset)   prefix .. "su:" .. user
-- KEYS[4]  revocation stream   prefix .. "srev"
-- KEYS[5]  user epoch          prefix .. "se:" .. user
-- ARGV[1]  user, as the caller read it (confirmed here: the index key names it)
-- ARGV[2]  old session hash
-- ARGV[3]  new session hash
-- ARGV[4]  approximate stream length (XADD MAXLEN ~)
-- ARGV[5]  origin node id
--
-- Returns { 0 } when the old session does not exist (or was refused), { -1 } when its user is not
-- ARGV[1] (read again and retry), { -2 } when the new hash is taken (draw another
-- token), else { 1, stream_id, now, user, data, created, last_seen, idle, abs_at,
-- epoch, 1 } describing the new session (the shape of session_get's answer).
-- Stream entry: k = "s" (session revoked), h = old session hash, n = node.
local function ms(n) return string.format('%d', n) end
local prefix = string.sub(KEYS[4], 1, -5)
if string.sub(KEYS[4], -4) ~= 'srev' or KEYS[1] ~= prefix .. 's:' .. ARGV[2]
    or KEYS[2] ~= prefix .. 's:' .. ARGV[3] or KEYS[3] ~= prefix .. 'su:' .. ARGV[1]
    or KEYS[5] ~= prefix .. 'se:' .. ARGV[1] then
  return redis.error_reply('session_rotate: KEYS do not match one prefix and ARGV')
end
local f = redis.call('HMGET', KEYS[1], 'u', 'd', 'c', 's', 'i', 'a', 'e')
if not f[1] then
  return { 0 }
end
if f[1] ~= ARGV[1] then
  return { -1 }
end
if (tonumber(f[7]) or 0) < (tonumber(redis.call('GET', KEYS[5]) or '0') or 0) then
  redis.call('DEL', KEYS[1])
  return { 0 }
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return { -2 }
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idle = tonumber(f[5])
local abs_at = tonumber(f[6])
if abs_at <= now then
  return { 0 }
end
redis.call('HSET', KEYS[2], 'u', f[1], 'd', f[2], 'c', f[3], 's', ms(now),
  'i', f[5], 'a', f[6], 'e', f[7])
redis.call('PEXPIREAT', KEYS[2], ms(math.min(now + idle, abs_at)))
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[3], ms(abs_at), ARGV[3])
local cur = redis.call('PEXPIRETIME', KEYS[3])
if cur == -1 or (cur >= 0 and cur < abs_at) then
  redis.call('PEXPIREAT', KEYS[3], ms(abs_at))
end
local id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*',
  'k', 's', 'h', ARGV[2], 'n', ARGV[5])
return { 1, id, now, f[1], f[2], tonumber(f[3]), now, idle, abs_at, tonumber(f[7]), 1 }
