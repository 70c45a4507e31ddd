-- Drop the event digests of quiet conversations (tables/state.py, prune_conversations).
-- KEYS[1] a conversation bucket. ARGV: n, then n fields, the version each was read at, each one's new
-- value. A conversation written since (another version, or gone) is left as it is. Returns how many were
-- replaced.
local n, done = tonumber(ARGV[1]), 0
for i = 1, n do
  local cur = redis.call('HGET', KEYS[1], ARGV[1 + i])
  if cur and conversation_version(cur) == tonumber(ARGV[1 + n + i]) then
    redis.call('HSET', KEYS[1], ARGV[1 + i], ARGV[1 + 2 * n + i])
    done = done + 1
  end
end
return done
