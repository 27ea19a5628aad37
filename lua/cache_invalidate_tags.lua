-- cache_invalidate_tags: invalidate every key of some tags as one change (one log
-- entry, one message). The caller reads the tag sets first and passes their members
-- as keys (scripts name every key in KEYS, as Redis Cluster requires); the script
-- checks that the sets still hold exactly those members and otherwise asks the
-- caller to retry, so a key tagged in between is never missed.
--
-- KEYS[1]              invalidation log  prefix .. "log"
-- KEYS[2..t+1]         tag sets          prefix .. "t:" .. tag
-- KEYS[t+2i], [t+2i+1] value and lease key of member i (i = 1..m)
-- ARGV[1]  approximate log length (XADD MAXLEN ~)
-- ARGV[2]  invalidation channel  prefix .. "inv"
-- ARGV[3]  origin node id
-- ARGV[4]  t, the number of tags
-- ARGV[5..m+4]  the members (cache keys), same order as their value/lease keys
--
-- Returns { 1, log_id, m } when done, { 0, false, current_member_count } to retry.
-- On Redis Cluster (a prefix ending in a bucket's hash tag, "{bN}:") the
-- channel is sharded: SPUBLISH, received with SSUBSCRIBE on the slot's shard.
local t = tonumber(ARGV[4])
local members = {}
for i = 5, #ARGV do
  members[#members + 1] = ARGV[i]
end
-- KEYS and ARGV must name the same things under one prefix (taken from the log
-- key), so a mis-called script never changes L2 while telling no daemon.
local prefix = string.match(KEYS[1], '^(.*)log$')
if not prefix or ARGV[2] ~= prefix .. 'inv' or not t or t < 1 or #KEYS ~= 1 + t + 2 * #members then
  return redis.error_reply('ERR cache_invalidate_tags: KEYS must be PREFIX.."log", t tag sets, then a value and lease key per member; ARGV[2] PREFIX.."inv"')
end
local publish = string.match(prefix, '{b%d+}:$') and 'SPUBLISH' or 'PUBLISH'
for i = 2, t + 1 do
  if string.sub(KEYS[i], 1, #prefix + 2) ~= prefix .. 't:' then
    return redis.error_reply('ERR cache_invalidate_tags: KEYS[' .. i .. '] must be a tag set PREFIX.."t:"..tag')
  end
end
for i, m in ipairs(members) do
  if KEYS[t + 2 * i] ~= prefix .. 'c:' .. m or KEYS[t + 2 * i + 1] ~= prefix .. 'l:' .. m then
    return redis.error_reply('ERR cache_invalidate_tags: value and lease keys must match member ARGV[' .. (i + 4) .. ']')
  end
end
local current = redis.call('SUNION', unpack(KEYS, 2, t + 1))
local given = {}
for _, m in ipairs(members) do
  given[m] = true
end
if #current ~= #members then
  return { 0, false, #current }
end
for _, m in ipairs(current) do
  if not given[m] then
    return { 0, false, #current }
  end
end
for i = t + 2, #KEYS do
  redis.call('DEL', KEYS[i])
end
for i = 2, t + 1 do
  redis.call('DEL', KEYS[i])
end
local pos = '0-0'
if #members == 0 then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if last[1] then
    pos = last[1][1]
  end
  return { 1, pos, 0 }
end
-- The entry before this one ("0-0": none), published with it: a subscriber
-- whose position is not `prev` missed something and replays the log.
local before = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = before[1] and before[1][1] or '0-0'
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'keys', cjson.encode(members), 'node', ARGV[3])
redis.call(publish, ARGV[2], cjson.encode({ id = id, prev = prev, node = ARGV[3], keys = members }))
return { 1, id, #members }
