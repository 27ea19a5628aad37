-- session_update: replace a session's data and tell every daemon (through the
-- revocation stream) to drop its cached copy. The expiry is left as it is. A
-- session created before its user's last session_revoke_user is refused (and
-- deleted), as in session_get.
--
-- Like session_get, the user's epoch key must be in KEYS: a caller that does not
-- know the session's user passes two keys and gets { -1, user } back (nothing
-- written), then calls again.
--
-- KEYS[1]  session hash        prefix .. "s:" .. session_hash
-- KEYS[2]  revocation stream   prefix .. "srev"
-- KEYS[3]  user epoch          prefix .. "se:" .. ARGV[5]   (optional, with ARGV[5])
-- ARGV[1]  new data
-- ARGV[2]  session hash (named in the stream entry; the hash KEYS[1] is named by)
-- ARGV[3]  approximate stream length (XADD MAXLEN ~)
-- ARGV[4]  origin node id
-- ARGV[5]  the session's user as the caller believes it (optional, with KEYS[3])
--
-- Returns { 0 } when there is no such session (or it was refused), { -1, user }
-- when KEYS[3] is missing or names another user, else { 1, stream_id }.
-- Stream entry: k = "d" (data changed), h = session hash, n = node.
local prefix = string.sub(KEYS[2], 1, -5)
if string.sub(KEYS[2], -4) ~= 'srev' or KEYS[1] ~= prefix .. 's:' .. ARGV[2]
    or (KEYS[3] and KEYS[3] ~= prefix .. 'se:' .. (ARGV[5] or '')) then
  return redis.error_reply('session_update: KEYS do not match one prefix and ARGV')
end
local f = redis.call('HMGET', KEYS[1], 'u', 'e')
if not f[1] then
  return { 0 }
end
if not KEYS[3] or f[1] ~= ARGV[5] then
  return { -1, f[1] }
end
if (tonumber(f[2]) or 0) < (tonumber(redis.call('GET', KEYS[3]) or '0') or 0) then
  redis.call('DEL', KEYS[1])
  return { 0 }
end
redis.call('HSET', KEYS[1], 'd', ARGV[1])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
  'k', 'd', 'h', ARGV[2], 'n', ARGV[4])
return { 1, id }
