-- renew.lua: give a lock its full lifetime again, only if this run still holds it.
--
-- KEYS
--   1 lock   STRING  the lock (keys.lock)
-- ARGV
--   1 token  the random token the run set with SET NX PX
--   2 ms     the lifetime, in milliseconds
-- Returns 1 if the lock was ours and is renewed, 0 if it had expired or been taken by
-- another run (which keeps it).

if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
