-- heartbeat: a daemon's proof that its subscription delivers and that Redis still
-- holds the data it trusts. Published on the daemon's private channel; because
-- Pub/Sub delivers in order, hearing it back proves every change published before
-- it has been applied. It carries what the daemon must re-check while subscribed:
-- the dataset epoch (missing or changed: Redis lost data, e.g. FLUSHALL or an
-- evicted epoch key) and the log's last id (a daemon whose applied position lies
-- beyond it took a bogus id and must treat that as a gap), and which server ran
-- it (run id and role: a beat from a demoted or replaced primary proves nothing
-- about the changes acknowledged by the new one).
--
-- KEYS[1]  epoch key         prefix .. "epoch"
-- KEYS[2]  invalidation log  prefix .. "log"
-- ARGV[1]  the daemon's heartbeat channel  prefix .. "hb:" .. node .. ":" .. instance
-- ARGV[2]  token (the daemon's send time; returned unchanged)
--
-- Publishes {"t": token, "epoch": epoch or "", "last": last log id or "",
--            "run": run id, "role": "master" | "slave"}.
-- Returns the number of receivers (0 or 1).
-- On Redis Cluster (a prefix ending in a bucket's hash tag, "{bN}:") the
-- channel is sharded: SPUBLISH, received with SSUBSCRIBE on the slot's shard.
local epoch = redis.call('GET', KEYS[1]) or ''
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local last_id = ''
if #last > 0 then
  last_id = last[1][1]
end
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
local role = string.match(redis.call('INFO', 'replication'), 'role:(%w+)') or ''
local prefix = string.match(KEYS[2] or '', '^(.*)log$') or ''
local publish = string.match(prefix, '{b%d+}:$') and 'SPUBLISH' or 'PUBLISH'
return redis.call(publish, ARGV[1],
  cjson.encode({ t = ARGV[2], epoch = epoch, last = last_id, run = run, role = role }))
