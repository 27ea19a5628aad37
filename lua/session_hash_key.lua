-- session_hash_key: the fleet's key for hashing session tokens, when none is
-- configured (session.token_hash_key): created once with a random value, then
-- read by every daemon. A configured key never touches Redis.
--
-- KEYS[1]  hash key   prefix .. "skey"
-- ARGV[1]  candidate key (random), used only if none exists
--
-- Returns the key.
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
