-- Remove a conversation everywhere it is kept, unless it was written since it was read (tables/state.py:
-- expire_conversations past the history retention, and tables/erase.py: an erased student's).
-- KEYS[1] its conversation bucket, KEYS[2] the org's chat-history index, KEYS[3] its student's session
-- starts (tables/aggregates/student_activity.py), then its filter sets, then the per-mentor session-cost
-- sets it is in, then (when ARGV[6] is 1) its transcript (tables/aggregates/transcripts.py). ARGV: its
-- field, the version it was read at, its index member, how many filter sets, its session-cost member,
-- whether the last key is its transcript, its member in the session starts. Returns 1 when it was
-- removed, 0 when it has another version now (or is gone): read it again.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur or conversation_version(cur) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[7])
local nf = tonumber(ARGV[4])
for i = 4, 3 + nf do redis.call('SREM', KEYS[i], ARGV[3]) end
local last = #KEYS
if ARGV[6] == '1' then
  redis.call('DEL', KEYS[last])
  last = last - 1
end
for i = 4 + nf, last do redis.call('ZREM', KEYS[i], ARGV[5]) end
return 1
