-- session_revoke: delete one session and announce it on the revocation stream,
-- atomically: the session is gone from Redis before any daemon hears. External
-- tools may call this script too (an operator expiring a session by its id).
--
-- KEYS[1]  session hash        prefix .. "s:" .. session_hash
-- KEYS[2]  revocation stream   prefix .. "srev"
-- ARGV[1]  session hash (named in the stream entry)
-- ARGV[2]  approximate stream length (XADD MAXLEN ~)
-- ARGV[3]  origin node id
--
-- Returns { 0 } when there was no such session, else { 1, stream_id, user }
-- (the caller removes the member from the user's index; a leftover member is
-- harmless and cleaned by session_list / session_create).
-- Stream entry: k = "s" (session revoked), h = session hash, n = node.
local user = redis.call('HGET', KEYS[1], 'u')
if not user then
  return { 0 }
end
redis.call('DEL', KEYS[1])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
  'k', 's', 'h', ARGV[1], 'n', ARGV[3])
return { 1, id, user }
