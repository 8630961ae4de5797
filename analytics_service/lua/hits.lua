#!lua
-- hits.lua: count a batch of one site's hits, in order, each with its own time. The whole
-- of the batch's Redis work, in one call. (The shebang makes Redis refuse the whole script
-- up front when it is out of memory, rather than at its first write.)
--
-- KEYS (all share the site's hash tag; built by live.HitBatch)
--   1 seen     ZSET    visitor id -> unix time (s) of last hit
--   2 total    HASH    visits, pageviews since the site began
--   3 writer   HASH    `seq` and `out` of the last batch this writer applied for the site
--   4...       the batch's day, rate and ids keys, referred to by index from each hit:
--     day      HASH    visits, pageviews, bots, rate_limited, duplicates of a site-local
--                      day, then
--              at day + 1: uv     HLL   the day's distinct visitors
--                 day + 2: paths  HASH  path -> pageviews of the day
--                 day + 3: refs   HASH  external referrer host -> visits of the day
--     rate     HASH    the flood guards' counts of a minute: visitor id -> pageviews,
--                      "@" .. address id -> visits started from that address
--     ids      HASH    hit ids (hashed with the visitor) seen in a 5-minute bucket
-- ARGV
--   1 seq            this batch's number among the writer's batches for the site, or ""
--                    when the caller does not retry (no replay check)
--   2 writer_ttl     seconds the writer hash lives after a batch
--   3 seen_horizon   seconds a visitor stays in `seen` (>= visit idle time, >= online window)
--   4 visitor_limit  pageviews a visitor may make in a sliding minute
--   5 address_limit  visits that may start from one address in a sliding minute
--   6 cap            distinct paths / referrer hosts per day before "(other)"
--   7 visit_idle     seconds without a hit after which the next hit starts a new visit
--   8 other          the field name that collects what is over the cap
--   9 rate_ttl       seconds a rate hash lives (longer than its minute and the next)
--  10 ids_ttl        seconds an ids hash lives (longer than its bucket and the next)
--  11 n              how many hits follow, FIELDS (14) values each, at 12 + 14 (i - 1):
--     +0  now        unix time of the hit's arrival, seconds (decimal, ms precision)
--     +1  visitor    visitor id (8 raw bytes), or "" for a robot (tallied as a bot only)
--     +2  address    address id (8 raw bytes: the client address hashed with the salt)
--     +3  previous   the visitor's id under yesterday's salt, or "" (sent only shortly
--                    after midnight, so a reader online across it counts once)
--     +4  hit_id     the client's hit id hashed with the visitor (8 bytes), or ""
--     +5  path       normalised URL path
--     +6  ref_host   external referrer host, or ""
--     +7  day        index in KEYS of the hit's day hash (uv, paths, refs follow it)
--     +8  day_start  unix time (s) of the site-local midnight that began the hit's day
--     +9  day_ttl    seconds the day keys must live from the hit's time
--     +10 rate_prev  index in KEYS of the rate hash of the minute before the hit's
--     +11 rate       index in KEYS of the rate hash of the hit's minute
--     +12 ids_prev   index in KEYS of the ids hash of the bucket before the hit's
--     +13 ids        index in KEYS of the ids hash of the hit's bucket
-- Returns one letter per hit: "v" counted and began a visit, "p" counted, "b" robot,
-- "d" duplicate, "r" rate-limited. A batch whose seq the writer hash already holds was
-- applied before (its reply was lost): nothing is counted again, and the letters stored
-- then are returned.
--
-- Per hit, every check comes before any write, so a refused hit changes nothing but its
-- day's tally. Keys that expire at a fixed moment get their TTL once, when created:
-- EXPIRE ... NX changes nothing on later hits and so adds nothing to the AOF (Redis 7.0).

local FIELDS = 14
local seq = ARGV[1]
if seq ~= "" then
  local last = redis.call("HGET", KEYS[3], "seq")
  if last and tonumber(last) >= tonumber(seq) then
    return redis.call("HGET", KEYS[3], "out") or ""
  end
end

local horizon = tonumber(ARGV[3])
local visitor_limit = tonumber(ARGV[4])
local address_limit = tonumber(ARGV[5])
local cap = tonumber(ARGV[6])
local visit_idle = tonumber(ARGV[7])
local other = ARGV[8]
local rate_ttl = tonumber(ARGV[9])
local ids_ttl = tonumber(ARGV[10])
local n = tonumber(ARGV[11])

-- Each TTL once per key and batch: the first hit that writes a key sets it.
local expiring = {}
local function expire_once(key, ttl)
  if not expiring[key] then
    expiring[key] = true
    redis.call("EXPIRE", key, ttl, "NX")
  end
end

local function tally(day_key, day_ttl, field)
  redis.call("HINCRBY", day_key, field, 1)
  expire_once(day_key, day_ttl)
end

local function add_capped(key, field, day_ttl)
  if redis.call("HEXISTS", key, field) == 0 and redis.call("HLEN", key) >= cap then
    field = other
  end
  redis.call("HINCRBY", key, field, 1)
  expire_once(key, day_ttl)
end

local function count(base)
  local now = tonumber(ARGV[base])
  local visitor = ARGV[base + 1]
  local day = tonumber(ARGV[base + 7])
  local day_key = KEYS[day]
  local day_ttl = tonumber(ARGV[base + 9])
  if visitor == "" then
    tally(day_key, day_ttl, "bots")
    return "b"
  end

  -- The flood guards count over a sliding minute, estimated from two fixed ones: the
  -- previous minute weighs in with the part of it that still lies within the last 60 s,
  -- so a burst across a minute boundary is not given two minutes' allowance.
  local rate_prev, rate = KEYS[tonumber(ARGV[base + 10])], KEYS[tonumber(ARGV[base + 11])]
  local previous_weight = 1 - (now % 60) / 60
  local function last_minute(field)
    local before = tonumber(redis.call("HGET", rate_prev, field)) or 0
    local current = tonumber(redis.call("HGET", rate, field)) or 0
    return before * previous_weight + current
  end

  if last_minute(visitor) >= visitor_limit then
    tally(day_key, day_ttl, "rate_limited")
    return "r"
  end

  -- A visit goes on while the visitor's previous hit is under visit_idle seconds old and
  -- happened on the same day; otherwise this hit starts a new one (Matomo's rule).
  local last = tonumber(redis.call("ZSCORE", KEYS[1], visitor))
  local new_visit = last == nil
    or last <= now - visit_idle
    or last < tonumber(ARGV[base + 8])

  -- Visits from one address: what a client rotating its User-Agent would multiply. A
  -- reader carried across midnight (known under yesterday's id) is not a new arrival.
  local address = "@" .. ARGV[base + 2]
  local previous = ARGV[base + 3]
  local carried = previous ~= "" and redis.call("ZSCORE", KEYS[1], previous)
  local arrival = new_visit and not carried
  if arrival and last_minute(address) >= address_limit then
    tally(day_key, day_ttl, "rate_limited")
    return "r"
  end

  local hit_id = ARGV[base + 4]
  if hit_id ~= "" then
    local ids = KEYS[tonumber(ARGV[base + 13])]
    if redis.call("HEXISTS", KEYS[tonumber(ARGV[base + 12])], hit_id) == 1
      or redis.call("HSETNX", ids, hit_id, "1") == 0 then
      tally(day_key, day_ttl, "duplicates")
      return "d"
    end
    expire_once(ids, ids_ttl)
  end

  redis.call("HINCRBY", rate, visitor, 1)
  if arrival then
    redis.call("HINCRBY", rate, address, 1)
  end
  expire_once(rate, rate_ttl)

  if previous ~= "" then
    redis.call("ZREM", KEYS[1], previous)
  end
  -- GT: a late, out-of-order hit never moves a visitor's last-seen time backwards.
  redis.call("ZADD", KEYS[1], "GT", now, visitor)

  redis.call("HINCRBY", KEYS[2], "pageviews", 1)
  redis.call("PFADD", KEYS[day + 1], visitor)
  expire_once(KEYS[day + 1], day_ttl)
  add_capped(KEYS[day + 2], ARGV[base + 5], day_ttl)
  if new_visit then
    redis.call("HINCRBY", day_key, "visits", 1)
    redis.call("HINCRBY", KEYS[2], "visits", 1)
    if ARGV[base + 6] ~= "" then
      add_capped(KEYS[day + 3], ARGV[base + 6], day_ttl)
    end
  end
  tally(day_key, day_ttl, "pageviews")
  if new_visit then
    return "v"
  end
  return "p"
end

local out = {}
local latest = nil
for i = 1, n do
  local base = 12 + FIELDS * (i - 1)
  local letter = count(base)
  out[i] = letter
  if letter == "v" or letter == "p" then
    latest = math.max(latest or 0, tonumber(ARGV[base]))
  end
end

-- Once per batch that added to the online set: members past the horizon of its latest
-- counted hit leave it (the visit rule above never needs them: the horizon is at least
-- the visit idle time), and the set expires that long after it.
if latest then
  redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", "(" .. (latest - horizon))
  redis.call("EXPIRE", KEYS[1], math.ceil(horizon))
end

local letters = table.concat(out)
if seq ~= "" then
  redis.call("HSET", KEYS[3], "seq", seq, "out", letters)
  redis.call("EXPIRE", KEYS[3], tonumber(ARGV[2]))
end
return letters
