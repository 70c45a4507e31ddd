-- ZUNION of sorted sets of one slot, with scores (tables/queries.py, zunion). KEYS: the sets.
local args = {'ZUNION', #KEYS}
for i = 1, #KEYS do args[#args + 1] = KEYS[i] end
args[#args + 1] = 'WITHSCORES'
return redis.call(unpack(args))
