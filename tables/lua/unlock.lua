-- Release a lock or lease (tables/changefeed.py's publication lock, agents/alerts.py's lease).
-- KEYS[1] the lock; ARGV[1] the holder's token. Deletes it only while that token holds it; returns 1 if
-- it did, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
