-- session_update: replace a session's data and tell every daemon (through the
-- revocation stream) to drop its cached copy. The expiry is left as it is.
--
-- KEYS[1]  session hash        prefix .. "s:" .. session_hash
-- KEYS[2]  revocation stream   prefix .. "srev"
-- ARGV[1]  new data
-- ARGV[2]  session hash (named in the stream entry)
-- ARGV[3]  approximate stream length (XADD MAXLEN ~)
-- ARGV[4]  origin node id
--
-- Returns { 0 } when there is no such session, else { 1, stream_id }.
-- Stream entry: k = "d" (data changed), h = session hash, n = node.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return { 0 }
end
redis.call('HSET', KEYS[1], 'd', ARGV[1])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
  'k', 'd', 'h', ARGV[2], 'n', ARGV[4])
return { 1, id }
