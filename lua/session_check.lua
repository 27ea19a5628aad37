-- session_check: what the revocation reader verifies after every XREAD, in one
-- atomic step on its own connection: that Redis still holds the dataset its
-- cursor belongs to (the epoch key, kept as identity.lua keeps it: a missing epoch
-- means Redis lost data, and a new one is created), whether revocation-stream
-- entries the reader may not have seen were removed (trimmed or deleted), and
-- which token hash key the fleet uses.
--
-- A fleet hash key is put back only if none exists, and only the one the daemon
-- already uses (ARGV[3]): a key deleted or evicted while daemons run comes back
-- unchanged, so sessions stay readable; a daemon that finds another key adopts it.
--
-- KEYS[1]  dataset epoch       prefix .. "epoch"
-- KEYS[2]  fleet hash key      prefix .. "skey"
-- KEYS[3]  revocation stream   prefix .. "srev"
-- ARGV[1]  candidate epoch (random), set only if the epoch is missing
-- ARGV[2]  "1": the fleet hash key lives in Redis (session.token_hash_key is not
--          configured); "0": KEYS[2] is neither read nor written
-- ARGV[3]  the daemon's current fleet hash key, set only if none exists; "" when
--          the daemon has none yet (then KEYS[2] is only read)
--
-- Returns { epoch, hash_key, exists, length, first_id, last_generated_id,
-- max_deleted_id, entries_added }: hash_key "" when absent or not managed;
-- exists 0 when the stream is missing (the other stream fields are then "" / 0);
-- first_id "" when the stream is empty.
local prefix = string.sub(KEYS[1], 1, -6)
if string.sub(KEYS[1], -5) ~= 'epoch' or KEYS[2] ~= prefix .. 'skey'
    or KEYS[3] ~= prefix .. 'srev' then
  return redis.error_reply('session_check: KEYS are not epoch, skey and srev of one prefix')
end
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[1])
local key = ''
if ARGV[2] == '1' then
  if ARGV[3] ~= '' then
    redis.call('SET', KEYS[2], ARGV[3], 'NX')
  end
  key = redis.call('GET', KEYS[2]) or ''
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  return { epoch, key, 0, 0, '', '', '', 0 }
end
local info = redis.call('XINFO', 'STREAM', KEYS[3])
local f = {}
for i = 1, #info, 2 do
  f[info[i]] = info[i + 1]
end
local first = ''
if type(f['first-entry']) == 'table' then
  first = f['first-entry'][1]
end
return { epoch, key, 1, f['length'], first, f['last-generated-id'],
  f['max-deleted-entry-id'], f['entries-added'] }
