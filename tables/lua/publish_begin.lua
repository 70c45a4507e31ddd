-- A changefeed publication begins (tables/erase.py, PublicationFence.begin).
-- KEYS[1] the org's erased-students hash, KEYS[2] its publications under way; ARGV[1] a token, ARGV[2]
-- how old (ms) a token is when its worker is taken for dead, then the tombstones of the students the
-- records name. Drops the tokens older than that, adds this one scored by Redis's clock, and replies
-- which of those students are erased (1/0 each). Atomic with an erasure's erase.lua (same slot): a
-- publication either sees the tombstone or is one the erasure waits for.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], now, ARGV[1])
local out = {}
for i = 3, #ARGV do
  out[#out + 1] = redis.call('HEXISTS', KEYS[1], ARGV[i])
end
return out
