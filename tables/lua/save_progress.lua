-- A consumer group's progress (tables/state.py, save_progress).
-- KEYS[1] the group's progress hash. ARGV: field, offset, field, offset, ... Moves each field up, never down.
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > cur then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
