-- A rebuild switches (agents/rebuild.py, step 4).
-- KEYS[1] the generations hash. ARGV[1] the generation built. Serves it from now on (`current`; `building`,
-- `until` and `started_ms` go); returns the new version (0: that generation is not the one being built).
if redis.call('HGET', KEYS[1], 'building') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'current', ARGV[1])
redis.call('HDEL', KEYS[1], 'building', 'until', 'started_ms')
return redis.call('HINCRBY', KEYS[1], 'v', 1)
