-- Forget observations past the dedup window (tables/state.py, prune_observations).
-- KEYS[1] an org's observations hash. ARGV: cursor, how many to scan, the oldest arrival day to keep.
-- An entry's value (tables/aggregates/llm_cost.py, AppliedObservation) is the byte 0x02, the day it
-- arrived (unsigned 32-bit big-endian), then msgpack; or, as kept before, the JSON array `[cost, in, out,
-- unpriced, ts, offset, model, session, arrival day]`, decoded with cjson. Deletes the entries that arrived
-- before the oldest day kept (one that is neither is kept); returns the next cursor ("0" when the scan is
-- through).
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local oldest = tonumber(ARGV[3])
local gone = {}
for i = 1, #r[2], 2 do
  local raw = r[2][i + 1]
  local arrived
  if string.byte(raw, 1) == 2 then
    arrived = #raw >= 5 and struct.unpack('>I4', raw, 2)
  else
    local ok, value = pcall(cjson.decode, raw)
    arrived = ok and type(value) == 'table' and tonumber(value[9])
  end
  if arrived and arrived < oldest then gone[#gone + 1] = r[2][i] end
end
if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
return r[1]
