-- snapshot.lua: one site-local day as Redis holds it, read atomically with the restore
-- marker, for the rollup and the admin API.
--
-- KEYS (all share the site's hash tag; built by live.LiveStore.snapshot)
--   1 total  HASH  the site's totals and the restore marker
--   2 day    HASH  visits, pageviews, bots, rate_limited, duplicates of the day
--   3 uv     HLL   the day's distinct visitors
--   4 paths  HASH  path -> pageviews
--   5 refs   HASH  referrer host -> visits
--   6 batches HASH "writer:seq" -> "1" for the batches that counted hits of the day
-- ARGV
--   1 marker  the field of `total` present once the site's history is in Redis
-- Returns {intact (0/1), day fields (flat HGETALL), visitors, hll bytes or false,
--          paths (flat HGETALL), refs (flat HGETALL), batches (HKEYS),
--          the site's total {visits, pageviews} (each false when absent)}.

local intact = redis.call("HEXISTS", KEYS[1], ARGV[1])
-- PFCOUNT first: it stores the count in the HyperLogLog's header, so the bytes GET reads
-- next are the same on every rerun (absolute values, really).
local visitors = redis.call("PFCOUNT", KEYS[3])
return {
  intact,
  redis.call("HGETALL", KEYS[2]),
  visitors,
  redis.call("GET", KEYS[3]),
  redis.call("HGETALL", KEYS[4]),
  redis.call("HGETALL", KEYS[5]),
  redis.call("HKEYS", KEYS[6]),
  redis.call("HMGET", KEYS[1], "visits", "pageviews"),
}
