-- Step 4 of a changefeed publication (tables/changefeed.py).
-- KEYS[1] the org's marks. ARGV: mark, apply number, mark, apply number, ... Clears each mark still
-- holding that number (one re-marked meanwhile stays). Returns how many were cleared.
local cleared = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    cleared = cleared + 1
  end
end
return cleared
