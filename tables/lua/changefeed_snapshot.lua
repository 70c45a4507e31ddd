-- Step 2 of a changefeed publication (tables/changefeed.py).
-- KEYS[1] the org's marks; then the counters' keys. ARGV: the marks (`keys.counter_mark`), then for each
-- the index of its key in KEYS. A mark is fixed fields: its first byte the kind ('h' a hash counter, 'z' a
-- sorted set), then its key (the one at that index, so its length is known), then for a hash counter a
-- NUL byte and the field. Replies {the marks' apply numbers, the hash counters' values} (false where
-- there is none, and for a set, whose members are read after the script: a set of thousands of students
-- would hold Redis for milliseconds here; read later, it is only newer).
local n = (#ARGV) / 2
local seqs, values = {}, {}
for i = 1, n do
  local mark = ARGV[i]
  seqs[i] = redis.call('HGET', KEYS[1], mark)
  if string.byte(mark, 1) == 104 then  -- 'h'
    local key = KEYS[tonumber(ARGV[n + i])]
    values[i] = redis.call('HGET', key, string.sub(mark, #key + 3))
  else
    values[i] = false
  end
end
return {seqs, values}
