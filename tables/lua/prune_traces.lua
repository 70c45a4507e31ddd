-- Forget what the observations and traces endpoints list past the observation retention (tables/traces.py,
-- prune_traces). KEYS: the observation index, the trace index, the trace sessions (tables/keys.py).
-- ARGV: the first time kept (ms), how many of each to remove at most. Removes the observations and the
-- traces scored before that time, and each removed trace's sessions (members starting with
-- `<byte length of the trace id>|<trace id>|`); returns how many observations and traces it removed (0: done).
local before = '(' .. ARGV[1]
local n = 0
local gone = redis.call('ZRANGE', KEYS[1], '-inf', before, 'BYSCORE', 'LIMIT', 0, ARGV[2])
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  n = n + #gone
end
local traces = redis.call('ZRANGE', KEYS[2], '-inf', before, 'BYSCORE', 'LIMIT', 0, ARGV[2])
for _, trace in ipairs(traces) do
  local p = string.len(trace) .. '|' .. trace .. '|'
  redis.call('ZREMRANGEBYLEX', KEYS[3], '[' .. p, '(' .. p .. '\255')
end
if #traces > 0 then
  redis.call('ZREM', KEYS[2], unpack(traces))
  n = n + #traces
end
return n
