-- session_revoke_user: revoke every session of a user by raising the user's
-- revocation epoch, announced on the revocation stream in the same step. From
-- this moment session_get refuses (and deletes) every session that recorded a
-- lower epoch, listed in the user index or not, and daemons drop every cached
-- session of that user whose epoch is below the new one.
--
-- The sessions themselves are deleted afterwards, a page at a time, by
-- session_revoke_page, so no single call names every session of a user who has
-- many (the index of a user with 100k sessions would be 100k KEYS here).
--
-- KEYS[1]  user epoch          prefix .. "se:" .. user
-- KEYS[2]  revocation stream   prefix .. "srev"
-- ARGV[1]  user
-- ARGV[2]  approximate stream length (XADD MAXLEN ~)
-- ARGV[3]  origin node id
-- ARGV[4]  how long (ms) the epoch key lives at least (session_create extends it
--          to cover every session that records it)
--
-- Returns { stream_id, epoch }.
-- Stream entry: k = "u" (user revoked), u = user, e = new epoch, n = node.
local function ms(n) return string.format('%d', n) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prev = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
-- Strictly above every earlier epoch; the clock keeps it above epochs of a key
-- that expired (it expires only after every session that recorded it).
local epoch = math.max(prev + 1, now)
local keep_until = now + tonumber(ARGV[4])
local cur = redis.call('PEXPIRETIME', KEYS[1])
if cur > keep_until then
  keep_until = cur
end
redis.call('SET', KEYS[1], ms(epoch), 'PXAT', ms(keep_until))
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
  'k', 'u', 'u', ARGV[1], 'e', ms(epoch), 'n', ARGV[3])
return { id, epoch }
