-- A rule's crossing (agents/alerts.py, AlertEngine._decide): its new state and its alert, in one step.
-- KEYS[1] the org's rule states, KEYS[2] its outbox; ARGV: rule, its state as read before ('' for none),
-- its new state, the alert. Writes nothing (0) when the state is no longer the one read, else 1.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (cur or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[4])
return 1
