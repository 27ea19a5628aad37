-- session_revoke_page: after session_revoke_user raised a user's epoch, delete
-- one page of that user's sessions and their index members. The caller reads
-- the page from the index (ZRANGE, a bounded count) and passes its members, so
-- every key touched is in KEYS and no call names more than one page of them.
--
-- Only sessions that recorded an epoch below ARGV[1] are deleted: a session
-- created after the revocation (its epoch is the new one) stays, with its
-- member. Members whose session is gone are removed.
--
-- KEYS[1]     user index (zset)   prefix .. "su:" .. user
-- KEYS[2..n]  session hashes      prefix .. "s:" .. member, for each member below
-- ARGV[1]     the epoch session_revoke_user set
-- ARGV[2..m]  the index members, in the order of KEYS[2..n]
--
-- Returns { deleted, kept }: sessions deleted, members left in the index.
if #ARGV ~= #KEYS then
  return redis.error_reply('session_revoke_page: members and keys differ in number')
end
local epoch = tonumber(ARGV[1])
local deleted = 0
local kept = 0
for i = 2, #KEYS do
  local e = redis.call('HGET', KEYS[i], 'e')
  if not e then
    redis.call('ZREM', KEYS[1], ARGV[i])
  elseif (tonumber(e) or 0) < epoch then
    deleted = deleted + redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[1], ARGV[i])
  else
    kept = kept + 1
  end
end
return { deleted, kept }
