-- session_revoke_user: delete every session of a user and raise the user's
-- revocation epoch, announced on the revocation stream in the same step. Daemons
-- drop every cached session of that user whose epoch is below the new one, so the
-- revocation covers sessions created on any node, listed or not.
--
-- The caller reads the index first and passes its members (so that every key this
-- script touches is in KEYS); if the index changed in between, nothing is done and
-- the caller reads it again.
--
-- KEYS[1]     user index (zset)   prefix .. "su:" .. user
-- KEYS[2]     user epoch          prefix .. "se:" .. user
-- KEYS[3]     revocation stream   prefix .. "srev"
-- KEYS[4..n]  session hashes      prefix .. "s:" .. member, for each member below
-- ARGV[1]     user
-- ARGV[2]     approximate stream length (XADD MAXLEN ~)
-- ARGV[3]     origin node id
-- ARGV[4]     how long (ms) the epoch key lives at least (session_create extends it
--             to cover every session that records it)
-- ARGV[5..m]  the index members the caller read, in the order of KEYS[4..n]
--
-- Returns { 0 } when the index changed (retry), else { 1, stream_id, deleted, epoch }.
-- Stream entry: k = "u" (user revoked), u = user, e = new epoch, n = node.
local function ms(n) return string.format('%d', n) end
local given = {}
for i = 5, #ARGV do
  given[#given + 1] = ARGV[i]
end
if #given ~= #KEYS - 3 then
  return redis.error_reply('session_revoke_user: members and keys differ in number')
end
local current = redis.call('ZRANGE', KEYS[1], 0, -1)
if #current ~= #given then
  return { 0 }
end
table.sort(current)
local sorted = {}
for i = 1, #given do
  sorted[i] = given[i]
end
table.sort(sorted)
for i = 1, #sorted do
  if current[i] ~= sorted[i] then
    return { 0 }
  end
end
local deleted = 0
for i = 4, #KEYS do
  deleted = deleted + redis.call('DEL', KEYS[i])
end
redis.call('DEL', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prev = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
-- Strictly above every earlier epoch; the clock keeps it above epochs of a key
-- that expired (it expires only after every session that recorded it).
local epoch = math.max(prev + 1, now)
local keep_until = now + tonumber(ARGV[4])
local cur = redis.call('PEXPIRETIME', KEYS[2])
if cur > keep_until then
  keep_until = cur
end
redis.call('SET', KEYS[2], ms(epoch), 'PXAT', ms(keep_until))
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*',
  'k', 'u', 'u', ARGV[1], 'e', ms(epoch), 'n', ARGV[3])
return { 1, id, deleted, epoch }
