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
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'keys', keys, 'node', ARGV[6])
redis.call('PUBLISH', ARGV[5], cjson.encode({ id = id, node = ARGV[6], keys = { ARGV[7] } }))
return { 1, id }
