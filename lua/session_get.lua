-- session_get: read a session and, when due, slide its idle expiry; report the
-- revocation log position the read saw (atomically with it), so a daemon keeps
-- the read in its local cache only if it applied no later revocation of it.
--
-- A session created before its user's last session_revoke_user (its recorded
-- epoch below the user's epoch) is refused and deleted, even when it was missing
-- from the user index that session_revoke_user deleted from.
--
-- The user's epoch key must be named in KEYS, but only the session knows its
-- user: a caller that does not know the user (yet) passes two keys and gets
-- { -1, log_pos, user } back, with nothing written, then calls again with the
-- user's epoch key. A caller that knows it (a cached copy) needs one call.
--
-- KEYS[1]  session hash        prefix .. "s:" .. session_hash
-- KEYS[2]  revocation stream   prefix .. "srev"
-- KEYS[3]  user epoch          prefix .. "se:" .. ARGV[3]   (optional, with ARGV[3])
-- ARGV[1]  "1": refresh the idle expiry if due; "0": read only
-- ARGV[2]  touch fraction: the share of the idle window that must have passed
--          since the last refresh before this read refreshes it again
-- ARGV[3]  the session's user as the caller believes it (optional, with KEYS[3])
--
-- Returns { 0, log_pos } when there is no such session (or it was refused),
-- { -1, log_pos, user } when KEYS[3] is missing or names another user, else
-- { 1, log_pos, now, user, data, created, last_seen, idle, abs_at, epoch, touched }.
-- The key's PEXPIREAT is min(last_seen + idle, abs_at): Redis drops the session
-- exactly at the expiry the daemon reports.
local function ms(n) return string.format('%d', n) end
local function last_id(stream)
  local e = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #e == 0 then return '0-0' end
  return e[1][1]
end

local prefix = string.sub(KEYS[2], 1, -5)
if string.sub(KEYS[2], -4) ~= 'srev' or string.sub(KEYS[1], 1, #prefix + 2) ~= prefix .. 's:'
    or (KEYS[3] and KEYS[3] ~= prefix .. 'se:' .. (ARGV[3] or '')) then
  return redis.error_reply('session_get: KEYS do not match one prefix and ARGV[3]')
end
local pos = last_id(KEYS[2])
local f = redis.call('HMGET', KEYS[1], 'u', 'd', 'c', 's', 'i', 'a', 'e')
if not f[1] then
  return { 0, pos }
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seen = tonumber(f[4])
local idle = tonumber(f[5])
local abs_at = tonumber(f[6])
if abs_at <= now or seen + idle <= now then
  return { 0, pos }
end
if not KEYS[3] or f[1] ~= ARGV[3] then
  return { -1, pos, f[1] }
end
local epoch = tonumber(f[7]) or 0
if epoch < (tonumber(redis.call('GET', KEYS[3]) or '0') or 0) then
  redis.call('DEL', KEYS[1])
  return { 0, pos }
end
local touched = 0
if ARGV[1] == '1' and now - seen >= math.floor(idle * tonumber(ARGV[2])) then
  seen = now
  redis.call('HSET', KEYS[1], 's', ms(now))
  redis.call('PEXPIREAT', KEYS[1], ms(math.min(now + idle, abs_at)))
  touched = 1
end
return { 1, pos, now, f[1], f[2], tonumber(f[3]), seen, idle, abs_at, epoch, touched }
