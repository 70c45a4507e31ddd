-- The state a batch is planned from, for one org (tables/state.py, StateReader.read).
-- KEYS: the offsets hash, the observations hash, the erased-students hash, the org's copy of the
-- generations' version, the observations hash as kept before (tables/keys.observations_before), then
-- conversation buckets. ARGV[1]: JSON {o: offset fields, b: how many observations, e: erased-students
-- fields (the version, then the batch's students), c: each conversation's bucket (an index into KEYS)};
-- then each conversation's field; then per observation its field (keys.observation_field) and its event
-- id as the hash before kept it. Replies {offsets, observations, erased, conversations, generations'
-- version} (nil where absent): values as stored, decoded in Python.
-- An observation found only in the hash before is moved to the observations hash here, as it is: so a
-- batch planned on it expects it there (a batch planned before the move finds the field changed, and is
-- planned again).
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
local fields, before = {}, {}
for i = 1, a.b do
  fields[i] = ARGV[#a.c + 2 * i]
  before[i] = ARGV[#a.c + 2 * i + 1]
end
local obs = hmget(KEYS[2], fields)
if a.b > 0 and redis.call('EXISTS', KEYS[5]) == 1 then
  local old = hmget(KEYS[5], before)
  for i = 1, a.b do
    if not obs[i] and old[i] then
      redis.call('HSET', KEYS[2], fields[i], old[i])
      redis.call('HDEL', KEYS[5], before[i])
      obs[i] = old[i]
    end
  end
end
return {offsets, obs, hmget(KEYS[3], a.e), convs, redis.call('HGET', KEYS[4], 'v')}
