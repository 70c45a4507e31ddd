-- Forget observations past the dedup window (tables/state.py, prune_observations).
-- KEYS[1] an org's observations hash. ARGV: cursor, how many to scan, the oldest arrival day to keep.
-- An entry's value is the JSON array `[cost, in, out, unpriced, ts, offset, model, session, arrival day]`
-- (tables/keys.observations): decoded with cjson, its 9th element is the day it arrived. Deletes the
-- entries that arrived before the oldest day kept (one that is not such an array is kept); returns the
-- next cursor ("0" when the scan is through).
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local oldest = tonumber(ARGV[3])
local gone = {}
for i = 1, #r[2], 2 do
  local ok, value = pcall(cjson.decode, r[2][i + 1])
  local arrived = ok and type(value) == 'table' and tonumber(value[9])
  if arrived and arrived < oldest then gone[#gone + 1] = r[2][i] end
end
if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
return r[1]
