-- An erasure's tombstone (tables/erase.py, erase_student).
-- KEYS[1] an org's erased-students hash, KEYS[2] its publications under way. ARGV: the tombstone, its
-- record. Writes the tombstone and bumps the hash's version `v` (every apply is guarded on it). Returns
-- the publications under way (token, began, ...): the erasure waits for them.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'v', 1)
return redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
