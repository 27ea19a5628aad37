-- log_replay: one batch of the invalidation log after a position, with proof that
-- nothing between the position and the batch was trimmed away. Bounds and batch
-- are read in one atomic step, so a trim racing a daemon's replay cannot make it
-- skip entries silently (XRANGE alone returns whatever survived).
--
-- KEYS[1]  invalidation log  prefix .. "log"
-- ARGV[1]  the daemon's applied position (a stream id, "0-0" for none)
-- ARGV[2]  batch size
--
-- Returns one of:
--   { "ok", entries }   entries after ARGV[1] (XRANGE shape), at most ARGV[2];
--                       the log still reaches back to ARGV[1], so none was skipped
--   { "trimmed" }       the oldest entry is after ARGV[1]: entries may be lost
--   { "beyond", last }  ARGV[1] is after the log's last id (a bogus position)
--   { "empty" }         no log at all while ARGV[1] is not "0-0"
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then
    return nil
  end
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local after = ARGV[1]
if not parse(after) then
  return redis.error_reply('ERR log_replay: ARGV[1] must be a stream id')
end
local count = tonumber(ARGV[2])
if not count or count < 1 then
  return redis.error_reply('ERR log_replay: ARGV[2] must be a positive batch size')
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then
  if after == '0-0' then
    return { 'ok', {} }
  end
  return { 'empty' }
end
if less(last[1][1], after) then
  return { 'beyond', last[1][1] }
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if after ~= '0-0' and less(after, first[1][1]) then
  return { 'trimmed' }
end
return { 'ok', redis.call('XRANGE', KEYS[1], '(' .. after, '+', 'COUNT', count) }
