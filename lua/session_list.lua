-- session_list: the live sessions of a user, and index cleanup: members past their
-- absolute expiry, and members whose session is gone (idle expiry, revocation),
-- are removed, so the index does not grow without bound.
--
-- The caller reads one page of the index first (ZRANGE, a bounded count) and
-- passes its members, so that every key this script touches is in KEYS and no
-- call names every session of a user who has many. Sessions created in between
-- are simply not listed.
--
-- KEYS[1]     user index (zset)   prefix .. "su:" .. user
-- KEYS[2..n]  session hashes      prefix .. "s:" .. member, for each member below
-- ARGV[1..m]  the index members, in the order of KEYS[2..n]
--
-- Returns a flat array: session_hash, created, last_seen, expires_at, ... per live session.
local function ms(n) return string.format('%d', n) end
if #ARGV ~= #KEYS - 1 then
  return redis.error_reply('session_list: members and keys differ in number')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms(now))
local out = {}
for i = 2, #KEYS do
  local member = ARGV[i - 1]
  local f = redis.call('HMGET', KEYS[i], 'c', 's', 'i', 'a')
  if not f[1] then
    redis.call('ZREM', KEYS[1], member)
  else
    local expires = math.min(tonumber(f[2]) + tonumber(f[3]), tonumber(f[4]))
    out[#out + 1] = member
    out[#out + 1] = tonumber(f[1])
    out[#out + 1] = tonumber(f[2])
    out[#out + 1] = expires
  end
end
return out
