-- counter.lua: the three numbers of the box, read in one round trip.
--
-- KEYS (all share the site's hash tag; built by live.LiveStore.counts)
--   1 seen   ZSET  visitor id -> unix time (s) of last hit
--   2 day    HASH  today's visits, pageviews
--   3 uv     HLL   today's distinct visitors
--   4 total  HASH  visits, pageviews since the site began (baseline not included), and
--                  the restore marker
-- ARGV
--   1 since   unix time (s): visitors whose last hit is at or after it are online
--   2 marker  the field of `total` present once the site's history is in Redis
-- Returns {online, today_visits, today_pageviews, today_visitors, total_visits,
--          total_pageviews, mark}; missing values are 0. mark is the marker's value, the
--          token of the restore that set it, or "" when Redis lacks the site's history
--          (came back empty, or a new site): see recovery.py.

local day = redis.call("HMGET", KEYS[2], "visits", "pageviews")
local total = redis.call("HMGET", KEYS[4], "visits", "pageviews", ARGV[2])
return {
  redis.call("ZCOUNT", KEYS[1], ARGV[1], "+inf"),
  tonumber(day[1]) or 0,
  tonumber(day[2]) or 0,
  redis.call("PFCOUNT", KEYS[3]),
  tonumber(total[1]) or 0,
  tonumber(total[2]) or 0,
  total[3] or "",
}
