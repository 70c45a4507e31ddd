-- A rebuild starts (agents/rebuild.py, step 2).
-- KEYS[1] the generations hash. ARGV[1] the generation to build. Refuses (0) when one is being built, else
-- marks it `building` and returns the generations' new version (`v`).
if redis.call('HGET', KEYS[1], 'building') then return 0 end
redis.call('HSET', KEYS[1], 'building', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'v', 1)
