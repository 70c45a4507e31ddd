-- One org's write (tables/writer.py, OrgWrite): every guard checked first, then everything or nothing.
-- KEYS[1] the org's offsets hash, then every key the write touches. ARGV[1] JSON of the write (below), then
-- the fields and new values of the conversations it writes (`c`: bucket, its field's ARGV, the version it
-- was planned on, its value's ARGV; its version read with conversation.lua), then the observations' fields
-- with their values expected and new (`d`: the hash, its first ARGV, how many).
local p = cjson.decode(ARGV[1])
local offsets = KEYS[1]
local function same(cur, expected)
  if expected == cjson.null then return cur == false end
  return cur == expected
end
for _, w in ipairs(p.w) do
  if not same(redis.call('HGET', offsets, w[1]), w[2]) then return {0, 'offset ' .. w[1]} end
end
for _, g in ipairs(p.g) do
  if not same(redis.call('HGET', KEYS[g[1]], g[2]), g[3]) then return {0, 'guard ' .. KEYS[g[1]] .. ' ' .. g[2]} end
end
for _, c in ipairs(p.c) do
  local cur = redis.call('HGET', KEYS[c[1]], ARGV[c[2]])
  if conversation_version(cur) ~= (c[3] ~= cjson.null and tonumber(c[3])) then
    return {0, 'conversation in ' .. KEYS[c[1]]}
  end
end
for _, d in ipairs(p.d) do  -- ARGV from d[2]: d[3] triples (field, value expected or '' for none, new value)
  local key, first, n = KEYS[d[1]], d[2], d[3]
  for i = 0, n - 1, 1000 do
    local fields = {}
    for j = i, math.min(i + 999, n - 1) do fields[#fields + 1] = ARGV[first + 3 * j] end
    local cur = redis.call('HMGET', key, unpack(fields))
    for m = 1, #cur do
      local expected = ARGV[first + 3 * (i + m - 1) + 1]
      if cur[m] ~= (expected ~= '' and expected) then return {0, 'seen ' .. key} end
    end
  end
end
-- The counters first, each by pcall: one that would leave 64 bits (hostile values) undoes those before it
-- and refuses the whole write before anything else is written (a script's error keeps what it wrote).
for n, o in ipairs(p.i) do
  local v = redis.pcall('HINCRBY', KEYS[o[1]], o[2], o[3])
  if type(v) == 'table' and v.err then
    for m = n - 1, 1, -1 do  -- negated as text: a double would round increments past 2^53
      local d = p.i[m][3]
      redis.call('HINCRBY', KEYS[p.i[m][1]], p.i[m][2], string.sub(d, 1, 1) == '-' and string.sub(d, 2) or '-' .. d)
    end
    return redis.error_reply('ERR apply script refused: ' .. KEYS[o[1]] .. ' ' .. o[2] .. ': ' .. v.err)
  end
end
for _, w in ipairs(p.w) do redis.call('HSET', offsets, w[1], w[3]) end
for _, c in ipairs(p.c) do redis.call('HSET', KEYS[c[1]], ARGV[c[2]], ARGV[c[4]]) end
for _, d in ipairs(p.d) do
  local key, first, n = KEYS[d[1]], d[2], d[3]
  for i = 0, n - 1, 500 do
    local args = {}
    for j = i, math.min(i + 499, n - 1) do
      args[#args + 1] = ARGV[first + 3 * j]
      args[#args + 1] = ARGV[first + 3 * j + 2]
    end
    redis.call('HSET', key, unpack(args))
  end
end
for _, o in ipairs(p.z) do
  local key = KEYS[o[1]]
  for i = 2, #o, 2 do redis.call('ZINCRBY', key, o[i + 1], o[i]) end
end
for _, o in ipairs(p.s) do redis.call('HSET', KEYS[o[1]], o[2], o[3]) end
for _, o in ipairs(p.r) do redis.call('ZREM', KEYS[o[1]], o[2]) end
for _, o in ipairs(p.a) do redis.call('ZADD', KEYS[o[1]], o[3], o[2]) end
for _, o in ipairs(p.lt) do  -- o: the key, then score, member, score, member, ...: each added, or lowered to it
  for i = 2, #o, 1000 do redis.call('ZADD', KEYS[o[1]], 'LT', unpack(o, i, math.min(i + 999, #o))) end
end
local function members(command, o)
  for i = 2, #o, 1000 do redis.call(command, KEYS[o[1]], unpack(o, i, math.min(i + 999, #o))) end
end
for _, o in ipairs(p.sr) do members('SREM', o) end
for _, o in ipairs(p.sa) do members('SADD', o) end
for _, o in ipairs(p.m) do
  local cur = tonumber(redis.call('HGET', KEYS[o[1]], o[2]) or '-1')
  if tonumber(o[3]) > cur then redis.call('HSET', KEYS[o[1]], o[2], o[3]) end
end
for _, o in ipairs(p.x) do redis.call('EXPIREAT', KEYS[o[1]], o[2]) end
-- The published counters it changed are marked with this apply's number, atomically with the change: the
-- changefeed publishes them from these marks (tables/changefeed.py), whoever applied and whenever.
if p.mk then
  local marks = KEYS[p.mk]
  local seq = redis.call('HINCRBY', marks, '#', 1)
  for i = 1, #p.pub, 500 do
    local args = {}
    for n = i, math.min(i + 499, #p.pub) do
      args[#args + 1] = p.pub[n]
      args[#args + 1] = seq
    end
    redis.call('HSET', marks, unpack(args))
  end
end
return {1, ''}
