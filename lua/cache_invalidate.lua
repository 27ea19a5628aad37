-- cache_invalidate: delete L2 values and their fill leases, log the change and
-- publish it, atomically. L2 is gone before any daemon hears; a daemon that was
-- disconnected finds the change in the log when it resubscribes.
-- Callable by any Redis client (external writers): pass the keys as shown.
--
-- KEYS[1]        invalidation log  prefix .. "log"
-- KEYS[2i]       value key of cache key i   prefix .. "c:" .. key_i   (i = 1..n)
-- KEYS[2i+1]     lease key of cache key i   prefix .. "l:" .. key_i
-- ARGV[1]  approximate log length (XADD MAXLEN ~)
-- ARGV[2]  invalidation channel  prefix .. "inv"
-- ARGV[3]  origin node id (any label for external writers)
-- ARGV[4..n+3]  the cache keys as the application names them, same order
--
-- Returns the log id of the change (the `seq` of cache.invalidate).
-- On Redis Cluster (a prefix ending in a bucket's hash tag, "{bN}:") the
-- channel is sharded: SPUBLISH, received with SSUBSCRIBE on the slot's shard.
local keys = {}
for i = 4, #ARGV do
  keys[#keys + 1] = ARGV[i]
end
if #keys == 0 or #KEYS ~= 1 + 2 * #keys then
  return redis.error_reply('ERR cache_invalidate: KEYS must be the log then a value and lease key per cache key')
end
-- KEYS and ARGV must name the same things under one prefix (taken from the log
-- key), so a mis-called script never changes L2 while telling no daemon.
local prefix = string.match(KEYS[1], '^(.*)log$')
if not prefix or ARGV[2] ~= prefix .. 'inv' then
  return redis.error_reply('ERR cache_invalidate: KEYS[1] must be PREFIX.."log" and ARGV[2] PREFIX.."inv"')
end
local publish = string.match(prefix, '{b%d+}:$') and 'SPUBLISH' or 'PUBLISH'
for i, k in ipairs(keys) do
  if KEYS[2 * i] ~= prefix .. 'c:' .. k or KEYS[2 * i + 1] ~= prefix .. 'l:' .. k then
    return redis.error_reply('ERR cache_invalidate: KEYS[' .. (2 * i) .. '] and KEYS[' .. (2 * i + 1) .. '] must be PREFIX.."c:"..key and PREFIX.."l:"..key for ARGV[' .. (i + 3) .. ']')
  end
end
for i = 2, #KEYS do
  redis.call('DEL', KEYS[i])
end
-- The entry before this one ("0-0": none), published with it: a subscriber
-- whose position is not `prev` missed something and replays the log.
local before = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = before[1] and before[1][1] or '0-0'
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'keys', cjson.encode(keys), 'node', ARGV[3])
redis.call(publish, ARGV[2], cjson.encode({ id = id, prev = prev, node = ARGV[3], keys = keys }))
return id
