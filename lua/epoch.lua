-- epoch: read the dataset epoch, creating it if missing. A daemon compares the
-- epoch (and the server's run_id) across reconnects: a changed or newly created
-- epoch means Redis lost data (restart without persistence, failover to a replica
-- that missed writes), so the daemon cannot trust its L1 and flushes it.
--
-- KEYS[1]  epoch key  prefix .. "epoch"
-- ARGV[1]  candidate epoch (random), used only if none exists
--
-- Returns the epoch.
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
