-- The state a batch is planned from, for one org (tables/state.py, StateReader.read).
-- KEYS: the offsets hash, the observations hash, the erased-students hash, the org's copy of the
-- generations' version, then conversation buckets. ARGV[1]: JSON {o: offset fields, b: observation ids,
-- e: erased-students fields (the version, then the batch's students), c: each conversation's bucket (an
-- index into KEYS)}; ARGV[2..]: each conversation's field. Replies {offsets, observations, erased,
-- conversations, generations' version} (nil where absent): values as stored, decoded in Python.
local a = cjson.decode(ARGV[1])
local function hmget(key, ids)
  local vals = {}
  for j = 1, #ids, 1000 do
    local part = redis.call('HMGET', key, unpack(ids, j, math.min(j + 999, #ids)))
    for n = 1, #part do vals[#vals + 1] = part[n] end
  end
  return vals
end
local offsets = {}
if #a.o > 0 then offsets = redis.call('HMGET', KEYS[1], unpack(a.o)) end
local convs = {}
for i, k in ipairs(a.c) do convs[i] = redis.call('HGET', KEYS[k], ARGV[i + 1]) end
return {offsets, hmget(KEYS[2], a.b), hmget(KEYS[3], a.e), convs, redis.call('HGET', KEYS[4], 'v')}
