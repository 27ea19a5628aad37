-- cache_set: write one L2 value and announce the change to every daemon, atomically.
-- The value is in L2 before any daemon hears that its copy is old; the change is
-- logged (XADD, trimmed) for daemons that were disconnected, then published.
-- With a lease token, the write is a fill: it happens only if that lease still
-- exists (an invalidation or a plain set deletes leases), which refuses stale sets.
--
-- KEYS[1]     value key        prefix .. "c:" .. key
-- KEYS[2]     lease key        prefix .. "l:" .. key
-- KEYS[3]     invalidation log prefix .. "log"
-- KEYS[4..n]  tag sets         prefix .. "t:" .. tag   (the key joins each)
-- ARGV[1]  value
-- ARGV[2]  ttl in ms
-- ARGV[3]  lease token, or "" for a plain set
-- ARGV[4]  approximate log length (XADD MAXLEN ~)
-- ARGV[5]  invalidation channel  prefix .. "inv"
-- ARGV[6]  origin node id
-- ARGV[7]  the key as the application names it
--
-- Returns { 1, log_id } when stored, { 0, false } when the lease was gone.
-- KEYS and ARGV must name the same things under one prefix (taken from the log
-- key), so a mis-called script never changes L2 while telling no daemon.
-- On Redis Cluster (a prefix ending in a bucket's hash tag, "{bN}:") the
-- channel is sharded: SPUBLISH, received with SSUBSCRIBE on the slot's shard.
local prefix = string.match(KEYS[3] or '', '^(.*)log$')
if not prefix or ARGV[5] ~= prefix .. 'inv' or KEYS[1] ~= prefix .. 'c:' .. ARGV[7]
    or KEYS[2] ~= prefix .. 'l:' .. ARGV[7] then
  return redis.error_reply('ERR cache_set: KEYS[1..3] must be PREFIX.."c:"..key, PREFIX.."l:"..key, PREFIX.."log" for key ARGV[7], and ARGV[5] PREFIX.."inv"')
end
local publish = string.match(prefix, '{b%d+}:$') and 'SPUBLISH' or 'PUBLISH'
for i = 4, #KEYS do
  if string.sub(KEYS[i], 1, #prefix + 2) ~= prefix .. 't:' then
    return redis.error_reply('ERR cache_set: KEYS[' .. i .. '] must be a tag set PREFIX.."t:"..tag')
  end
end
if not tonumber(ARGV[2]) or tonumber(ARGV[2]) <= 0 then
  return redis.error_reply('ERR cache_set: ARGV[2] must be a positive ttl in ms')
end
if ARGV[3] ~= '' then
  if redis.call('GET', KEYS[2]) ~= ARGV[3] then
    return { 0, false }
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
local ttl = tonumber(ARGV[2])
for i = 4, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[7])
  local left = redis.call('PTTL', KEYS[i])
  if left >= 0 and left < ttl or left == -1 then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
local keys = cjson.encode({ ARGV[7] })
-- The entry before this one ("0-0": none), published with it: a subscriber
-- whose position is not `prev` missed something and replays the log.
local before = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local prev = before[1] and before[1][1] or '0-0'
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'keys', keys, 'node', ARGV[6])
redis.call(publish, ARGV[5], cjson.encode({ id = id, prev = prev, node = ARGV[6], keys = { ARGV[7] } }))
return { 1, id }
