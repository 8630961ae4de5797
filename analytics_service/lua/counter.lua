-- counter.lua: the three numbers of the box, read in one round trip.
--
-- KEYS (built by keys.SiteKeys.counter_script_keys)
--   1 seen   ZSET  visitor id -> unix time (s) of last hit
--   2 day    HASH  today's visits, pageviews
--   3 uv     HLL   today's distinct visitors
--   4 total  HASH  visits, pageviews since the site began (baseline not included)
-- ARGV
--   1 since  unix time (s): visitors whose last hit is at or after it are online
-- Returns {online, today_visits, today_pageviews, today_visitors, total_visits,
--          total_pageviews}; missing values are 0.

local day = redis.call("HMGET", KEYS[2], "visits", "pageviews")
local total = redis.call("HMGET", KEYS[4], "visits", "pageviews")
return {
  redis.call("ZCOUNT", KEYS[1], ARGV[1], "+inf"),
  tonumber(day[1]) or 0,
  tonumber(day[2]) or 0,
  redis.call("PFCOUNT", KEYS[3]),
  tonumber(total[1]) or 0,
  tonumber(total[2]) or 0,
}
