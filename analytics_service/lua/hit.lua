#!lua
-- hit.lua: count one page view. The whole of a hit's Redis work, in one round trip.
-- (The shebang makes Redis refuse the whole script up front when it is out of memory,
-- rather than at its first write.)
--
-- KEYS (all share the site's hash tag; built by keys.SiteKeys.hit_script_keys)
--   1 seen      ZSET  visitor id -> unix time (s) of last hit
--   2 day       HASH  visits, pageviews, bots, rate_limited of the site-local day
--   3 uv        HLL   the day's distinct visitors
--   4 total     HASH  visits, pageviews since the site began
--   5 paths     HASH  path -> pageviews of the day
--   6 refs      HASH  external referrer host -> visits of the day
--   7 rate_prev HASH  the flood guards' counts of the previous minute
--   8 rate      HASH  the same for the current minute: visitor id -> pageviews,
--                     "@" .. address id -> visits started from that address
--   9 ids_prev  HASH  hit ids (hashed with the visitor) seen in the previous 5-minute bucket
--  10 ids       HASH  the same for the current bucket
-- ARGV
--   1 now            unix time, seconds (decimal, ms precision)
--   2 visitor        visitor id (8 raw bytes)
--   3 address        address id (8 raw bytes: the client address, hashed with the day's salt)
--   4 day_start      unix time (s) of the site-local midnight that began today
--   5 path           normalised URL path
--   6 ref_host       external referrer host, or "" when none
--   7 day_ttl        seconds the day keys must live from now
--   8 seen_horizon   seconds a visitor stays in `seen` (>= visit idle time, >= online window)
--   9 mode           "hit", or "bot" to count only a dropped robot hit
--  10 visitor_limit  pageviews a visitor may make in a minute
--  11 address_limit  visits that may start from one address in a minute
--  12 cap            distinct paths / referrer hosts per day before "(other)"
--  13 visit_idle     seconds without a hit after which the next hit starts a new visit
--  14 other          the field name that collects what is over the cap
--  15 rate_ttl       seconds a rate hash lives (longer than its minute and the next)
--  16 previous       the same visitor's id under yesterday's salt, or "" (sent only
--                    shortly after midnight, so a reader online across it counts once)
--  17 hit_id         the client's hit id hashed with the visitor (8 bytes), or "" for none
--  18 ids_ttl        seconds an ids hash lives (longer than its bucket and the next)
-- Returns one of: "visit" (counted, began a visit), "pageview" (counted), "bot",
-- "duplicate", "rate_limited".
--
-- Every check comes before any write, so a refused hit changes nothing but its day's tally.

-- Day keys and the guards' hashes expire at a fixed moment (the day's end + grace, the
-- bucket's end + slack), so their TTL is set once, when the key is created: EXPIRE ... NX
-- changes nothing on later hits and so adds nothing to the AOF. (NX needs Redis 7.0.)
local now = tonumber(ARGV[1])
local visitor = ARGV[2]
local day_ttl = tonumber(ARGV[7])

local function tally(field)
  redis.call("HINCRBY", KEYS[2], field, 1)
  redis.call("EXPIRE", KEYS[2], day_ttl, "NX")
end

if ARGV[9] == "bot" then
  tally("bots")
  return "bot"
end

-- The flood guards count over a sliding minute, estimated from two fixed ones: the
-- previous minute weighs in with the part of it that still lies within the last 60 s,
-- so a burst across a minute boundary is not given two minutes' allowance.
local previous_weight = 1 - (now % 60) / 60
local function last_minute(field)
  local before = tonumber(redis.call("HGET", KEYS[7], field)) or 0
  local current = tonumber(redis.call("HGET", KEYS[8], field)) or 0
  return before * previous_weight + current
end

if last_minute(visitor) >= tonumber(ARGV[10]) then
  tally("rate_limited")
  return "rate_limited"
end

-- A visit goes on while the visitor's previous hit is under visit_idle seconds old and
-- happened today; otherwise this hit starts a new one (Matomo's rule).
local last = tonumber(redis.call("ZSCORE", KEYS[1], visitor))
local new_visit = last == nil
  or last <= now - tonumber(ARGV[13])
  or last < tonumber(ARGV[4])

-- Visits from one address: what a client rotating its User-Agent would multiply. A reader
-- carried across midnight (known under yesterday's id) is not a new arrival.
local address = "@" .. ARGV[3]
local carried = ARGV[16] ~= "" and redis.call("ZSCORE", KEYS[1], ARGV[16])
if new_visit and not carried and last_minute(address) >= tonumber(ARGV[11]) then
  tally("rate_limited")
  return "rate_limited"
end

local rate_ttl = tonumber(ARGV[15])
if ARGV[17] ~= "" then
  if redis.call("HEXISTS", KEYS[9], ARGV[17]) == 1
    or redis.call("HSETNX", KEYS[10], ARGV[17], "1") == 0 then
    return "duplicate"
  end
  redis.call("EXPIRE", KEYS[10], tonumber(ARGV[18]), "NX")
end

redis.call("HINCRBY", KEYS[8], visitor, 1)
if new_visit and not carried then
  redis.call("HINCRBY", KEYS[8], address, 1)
end
redis.call("EXPIRE", KEYS[8], rate_ttl, "NX")

if ARGV[16] ~= "" then
  redis.call("ZREM", KEYS[1], ARGV[16])
end

local horizon = tonumber(ARGV[8])
-- GT: a late, out-of-order hit never moves a visitor's last-seen time backwards.
redis.call("ZADD", KEYS[1], "GT", now, visitor)
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", "(" .. (now - horizon))
redis.call("EXPIRE", KEYS[1], math.ceil(horizon))

local cap = tonumber(ARGV[12])
local function add_capped(key, field)
  if redis.call("HEXISTS", key, field) == 0 and redis.call("HLEN", key) >= cap then
    field = ARGV[14]
  end
  redis.call("HINCRBY", key, field, 1)
  redis.call("EXPIRE", key, day_ttl, "NX")
end

redis.call("HINCRBY", KEYS[4], "pageviews", 1)
redis.call("PFADD", KEYS[3], visitor)
redis.call("EXPIRE", KEYS[3], day_ttl, "NX")
add_capped(KEYS[5], ARGV[5])

if new_visit then
  redis.call("HINCRBY", KEYS[2], "visits", 1)
  redis.call("HINCRBY", KEYS[4], "visits", 1)
  if ARGV[6] ~= "" then
    add_capped(KEYS[6], ARGV[6])
  end
end
tally("pageviews")

if new_visit then
  return "visit"
end
return "pageview"
