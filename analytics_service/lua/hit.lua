-- hit.lua: count one page view. The whole of a hit's Redis work, in one round trip.
--
-- KEYS (all share the site's hash tag; built by keys.SiteKeys.hit_script_keys)
--   1 seen    ZSET  visitor id -> unix time (s) of last hit
--   2 day     HASH  visits, pageviews, bots, rate_limited of the site-local day
--   3 uv      HLL   the day's distinct visitors
--   4 total   HASH  visits, pageviews since the site began
--   5 paths   HASH  path -> pageviews of the day
--   6 refs    HASH  external referrer host -> visits of the day
--   7 rate    HASH  visitor id -> pageviews in the current minute
--   8 hit     STRING (optional) the client's hit id, for deduplication
-- ARGV
--   1 now            unix time, seconds (decimal, ms precision)
--   2 visitor        visitor id (8 raw bytes)
--   3 day_start      unix time (s) of the site-local midnight that began today
--   4 path           normalised URL path
--   5 ref_host       external referrer host, or "" when none
--   6 day_ttl        seconds the day keys must live from now
--   7 seen_horizon   seconds a visitor stays in `seen` (>= visit idle time, >= online window)
--   8 mode           "hit", or "bot" to count only a dropped robot hit
--   9 rate_limit     pageviews a visitor may make in one minute
--  10 cap            distinct paths / referrer hosts per day before "(other)"
--  11 dedup_ttl      seconds a hit id is remembered
--  12 visit_idle     seconds without a hit after which the next hit starts a new visit
--  13 other          the field name that collects what is over the cap
--  14 rate_ttl       seconds the rate hash lives (longer than its minute)
--  15 previous       the same visitor's id under yesterday's salt, or "" (sent only
--                    shortly after midnight, so a reader online across it counts once)
-- Returns one of: "visit" (counted, began a visit), "pageview" (counted), "bot",
-- "duplicate", "rate_limited".

-- Day keys and the rate hash expire at a fixed moment (the day's end + grace, the minute's
-- end + slack), so their TTL is set once, when the key is created: EXPIRE ... NX changes
-- nothing on later hits and so adds nothing to the AOF. (NX needs Redis 7.0 or Valkey.)
local now = tonumber(ARGV[1])
local visitor = ARGV[2]
local day_ttl = tonumber(ARGV[6])

if ARGV[8] == "bot" then
  redis.call("HINCRBY", KEYS[2], "bots", 1)
  redis.call("EXPIRE", KEYS[2], day_ttl, "NX")
  return "bot"
end

if KEYS[8] and not redis.call("SET", KEYS[8], "1", "NX", "EX", tonumber(ARGV[11])) then
  return "duplicate"
end

local in_minute = redis.call("HINCRBY", KEYS[7], visitor, 1)
redis.call("EXPIRE", KEYS[7], tonumber(ARGV[14]), "NX")
if in_minute > tonumber(ARGV[9]) then
  redis.call("HINCRBY", KEYS[2], "rate_limited", 1)
  redis.call("EXPIRE", KEYS[2], day_ttl, "NX")
  return "rate_limited"
end

-- A visit goes on while the visitor's previous hit is under visit_idle seconds old and
-- happened today; otherwise this hit starts a new one (Matomo's rule).
local last = tonumber(redis.call("ZSCORE", KEYS[1], visitor))
local new_visit = last == nil
  or last <= now - tonumber(ARGV[12])
  or last < tonumber(ARGV[3])

if ARGV[15] ~= "" then
  redis.call("ZREM", KEYS[1], ARGV[15])
end

local horizon = tonumber(ARGV[7])
-- GT: a late, out-of-order hit never moves a visitor's last-seen time backwards.
redis.call("ZADD", KEYS[1], "GT", now, visitor)
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", "(" .. (now - horizon))
redis.call("EXPIRE", KEYS[1], math.ceil(horizon))

local cap = tonumber(ARGV[10])
local function add_capped(key, field, by)
  if redis.call("HEXISTS", key, field) == 0 and redis.call("HLEN", key) >= cap then
    field = ARGV[13]
  end
  redis.call("HINCRBY", key, field, by)
  redis.call("EXPIRE", key, day_ttl, "NX")
end

redis.call("HINCRBY", KEYS[2], "pageviews", 1)
redis.call("HINCRBY", KEYS[4], "pageviews", 1)
redis.call("PFADD", KEYS[3], visitor)
redis.call("EXPIRE", KEYS[3], day_ttl, "NX")
add_capped(KEYS[5], ARGV[4], 1)

if new_visit then
  redis.call("HINCRBY", KEYS[2], "visits", 1)
  redis.call("HINCRBY", KEYS[4], "visits", 1)
  if ARGV[5] ~= "" then
    add_capped(KEYS[6], ARGV[5], 1)
  end
end
redis.call("EXPIRE", KEYS[2], day_ttl, "NX")

if new_visit then
  return "visit"
end
return "pageview"
