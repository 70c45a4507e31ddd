-- Who evaluates the alert rules (agents/alerts.py, AlertEngine.tick); released by tables/lua/unlock.lua.
-- KEYS[1] the lease; ARGV: holder id, ttl ms. 1 when ARGV[1] holds it (taken or renewed), else 0.
local cur = redis.call('GET', KEYS[1])
if cur == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
