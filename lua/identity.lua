-- identity: which dataset and which server a daemon is talking to, in one
-- atomic step on the server that owns the epoch key (on Redis Cluster, the
-- shard of the key's slot). The dataset epoch is read, or created if missing
-- (SET NX); the server's run id and role come from INFO. A daemon
-- compares epoch and run id across reconnects: a change means Redis lost or
-- replaced data (restart without persistence, failover, a slot moved to
-- another shard), so what it cached from before cannot be trusted.
--
-- KEYS[1]  epoch key  prefix .. "epoch"
-- ARGV[1]  candidate epoch (random), used only if none exists
--
-- Returns { epoch, run_id, role } (role "master" or "slave").
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[1])
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
local role = string.match(redis.call('INFO', 'replication'), 'role:(%w+)') or ''
return { epoch, run, role }
