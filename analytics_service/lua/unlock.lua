-- unlock.lua: release a lock only if this run still holds it.
--
-- KEYS
--   1 lock   STRING  the lock (keys.lock)
-- ARGV
--   1 token  the random token the run set with SET NX PX
-- Returns 1 if the lock was ours and is now released, 0 if it had expired or been taken
-- by another run (which keeps it).

if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
