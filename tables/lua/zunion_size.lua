-- How many members the union of sorted sets of one slot has (tables/queries.py, union_sizes). KEYS: the
-- sets (one: its ZCARD). Reads only.
if #KEYS == 1 then return redis.call('ZCARD', KEYS[1]) end
local args = {'ZUNION', #KEYS}
for i = 1, #KEYS do args[#args + 1] = KEYS[i] end
return #redis.call(unpack(args))
