#!lua
-- hits.lua: count a batch of one site's hits, in order, each with its own time. The whole
-- of the batch's Redis work, in one call. (The shebang makes Redis refuse the whole script
-- up front when it is out of memory, rather than at its first write.)
--
-- Three steps, so that the Redis commands grow with the keys a batch touches, not with its
-- hits: (1) read every value the hits' rules will look at, one command per key (HMGET,
-- ZMSCORE); (2) apply the hits in order to those values, held in Lua tables, each hit
-- seeing what the ones before it wrote; (3) write back what changed, one command per key.
-- The script runs atomically, so nothing can change a key between its read and its write,
-- and the result is the same as applying the hits one by one.
--
-- KEYS (all share the site's hash tag; built by live._HitBatch)
--   1 seen     ZSET    visitor id -> unix time (s) of last hit
--   2 total    HASH    visits, pageviews since the site began
--   3 writer   HASH    batch number -> this script's answer, for the writer's last batches
--   4 late     SET     days written to after they may have been closed into SQL history
--   5 removed  STRING  the creation time of the last removed site of the id (ARGV 20's form)
--   6...       the batch's day keys (7 per day), then its rate keys (one per minute from
--              the minute before its first hit's to its last hit's), then its ids keys
--              (likewise per dedup bucket, and the bucket after the last hit's); each hit
--              refers to them by index:
--     day      HASH    visits, pageviews, bots, rate_limited, duplicates of a site-local
--                      day, then
--              at day + 1: uv     HLL   the day's distinct visitors
--                 day + 2: paths  HASH  path -> pageviews of the day
--                 day + 3: refs   HASH  external referrer host -> visits of the day
--                 day + 4: batches HASH "writer:seq" -> "1" for the last batches of
--                                  each writer that counted hits of the day
--                 day + 5: carried ZSET the readers carried into the day: their id
--                                  under the day before's salt -> its last hit; 0 for
--                                  a reader not in `seen` whose first hit of the day
--                                  came within ARGV 19 of its midnight
--                 day + 6: the next day's `carried`, where a hit of the day written
--                                  after its reader's first hit of the next day looks
--     rate     HASH    the flood guards' counts of a minute: visitor id -> pageviews,
--                      "@" .. address id -> visits started from that address; the hash
--                      of the minute before is at rate - 1
--     ids      HASH    hit ids (hashed with the visitor) seen in a 5-minute bucket; the
--                      bucket before is at ids - 1, the one after at ids + 1
-- ARGV
--   1 seq            this batch's number among the writer's batches for the site
--   2 writer_ttl     seconds the writer hash lives after a batch (and a day's `carried`
--                    after the day began: as long as a writer may hold a 23:59 hit)
--   3 replay         how many of its latest batches' answers the writer hash keeps
--   4 seen_horizon   seconds a visitor stays in `seen` (>= visit idle time, >= online window)
--   5 visitor_limit  pageviews a visitor may make in a sliding minute
--   6 address_limit  visits that may start from one address in a sliding minute
--   7 cap            distinct paths / referrer hosts per day before "(other)"
--   8 visit_idle     seconds without a hit after which the next hit starts a new visit
--   9 other          the field name that collects what is over the cap
--  10 rate_ttl       seconds a rate hash lives (longer than its minute and the next)
--  11 ids_ttl        seconds an ids hash lives (longer than its bucket and the next)
--  12 hits           the hits, MessagePack: an array of arrays, each
--     [1]  now        unix time of the hit's arrival, seconds (ms precision)
--     [2]  visitor    visitor id (8 raw bytes), or "" for a robot (tallied as a bot only)
--     [3]  address    address id (8 raw bytes: the client address hashed with the salt)
--     [4]  previous   the visitor's id under yesterday's salt, or "" (sent only shortly
--                     after midnight, so a reader online across it counts once)
--     [5]  hit_id     the client's hit id hashed with the visitor (8 bytes), or ""
--     [6]  path       normalised URL path
--     [7]  ref_host   external referrer host, or ""
--     [8]  day        index in KEYS of the hit's day hash (uv, paths, refs follow it)
--     [9]  day_start  unix time (s) of the site-local midnight that began the hit's day
--     [10] day_ttl    seconds the day keys must live from the hit's time
--     [11] rate       index in KEYS of the rate hash of the hit's minute (0 for a robot)
--     [12] ids        index in KEYS of the ids hash of the hit's bucket (0 for a robot)
--     [13] previous_address  the address id under yesterday's salt, or "" (with [4])
--     [14] previous_hit_id   the hit id hashed with [4], or "": the guards and the dedup
--                     see the reader's hits of before midnight under those ids
--  13 late_days      the batch's days that may already be closed (ISO dates, comma-separated,
--                    or ""): added to `late`, for the next finalise to close again
--  14 late_ttl       seconds `late` lives after its last addition
--  15 writer_id      the writer's id (its part of the `batches` fields)
--  16 resent         "1" when the writer sent this batch before (its reply was lost or
--                    Redis was unavailable), else "0"
--  17 restored       the field of `total` that says the site's history is in Redis
--  18 batches_ttl    seconds a day's `batches` lives at least after the batch
--  19 carry_new      seconds after midnight within which a reader's first hit of the day
--                    notes them in `carried` (score 0) though they were not in `seen`
--  20 created        when the site the hits were checked for was created (unix time, six
--                    decimals): a new site of a removed one's id is another site
--  21 expired_days   the KEYS indexes of the batch's days that ended too long ago to be
--                    written (comma-separated, or ""): their keys are gone or about to go,
--                    and their closed rows are final; their hits are dropped ("o")
-- Returns one letter per hit: "v" counted and began a visit, "p" counted, "b" robot,
-- "d" duplicate, "r" rate-limited, "a" applied before Redis lost its data and given back
-- by the restore, "x" a hit of a removed site, dropped, "o" a hit of an expired day,
-- dropped. A batch whose number the writer hash holds was applied before (its reply was
-- lost): nothing is counted again, and the letters stored then are returned.
--
-- Redis wiped between two sends of a batch takes the writer hash with it; the `batches`
-- hash of each day is what tells, then, whether the batch is in the day's history: the
-- rollup copies it to SQL with the day, atomically with the counts, and the restore puts
-- it back. So a batch sent again to a site whose history is not back yet is not applied
-- (the answer is "!", and the writer has the history restored and sends it again), and
-- once it is back, the hits of a day whose `batches` holds the batch are not counted.
--
-- Per hit, every check comes before any change, so a refused hit changes nothing but its
-- day's tally. Keys that expire at a fixed moment get their TTL once, when created:
-- EXPIRE ... NX changes nothing on later batches and so adds nothing to the AOF.

-- The batch's days that may be closed already, marked for the next finalise to close
-- again. Also when the batch was applied before: Redis may have run it, with the late days
-- of an earlier send, after the scheduler had closed a day (Redis stalled, the writer's
-- read timed out); this send is the first to know that day is late.
local function mark_late()
  if ARGV[13] == "" then
    return
  end
  local late = {}
  for day in string.gmatch(ARGV[13], "[^,]+") do
    late[#late + 1] = day
  end
  redis.call("SADD", KEYS[4], unpack(late))
  redis.call("EXPIRE", KEYS[4], tonumber(ARGV[14]))
end

local seq = ARGV[1]
local writer = KEYS[3]
local answered = redis.call("HGET", writer, seq)
if answered then
  mark_late()
  return answered
end

-- A removed site's hits, which a worker that could not write while it was removed sends
-- now, are dropped: they would bring its keys back, under a new site of its id too.
-- `removed` holds the last removed site's creation time only; a site of the id created
-- before it was removed before it (ids are taken again only once a delete has finished),
-- and its hits held through two removals counted for the third site of the id.
local hits = cmsgpack.unpack(ARGV[12])
local removed = redis.call("GET", KEYS[5])
if removed and tonumber(ARGV[20]) <= tonumber(removed) then
  return string.rep("x", #hits)
end

if ARGV[16] == "1" and redis.call("HEXISTS", KEYS[2], ARGV[17]) == 0 then
  return "!"
end

-- KEYS index of a day hash -> true, for the days whose hits are dropped.
local expired = {}
for day in string.gmatch(ARGV[21], "[^,]+") do
  expired[tonumber(day)] = true
end

local horizon = tonumber(ARGV[4])
local visitor_limit = tonumber(ARGV[5])
local address_limit = tonumber(ARGV[6])
local cap = tonumber(ARGV[7])
local visit_idle = tonumber(ARGV[8])
local other = ARGV[9]
local rate_ttl = tonumber(ARGV[10])
local ids_ttl = tonumber(ARGV[11])
local seen_key, total_key = KEYS[1], KEYS[2]

-- (0) Which of the batch's days hold it already (only a batch sent again can). ---------------

local batch_field = ARGV[15] .. ":" .. seq
local applied_before = {} -- KEYS index of a day hash -> whether its `batches` has this batch
for _, hit in ipairs(hits) do
  local day = hit[8]
  if applied_before[day] == nil then
    applied_before[day] = ARGV[16] == "1"
      and redis.call("HEXISTS", KEYS[day + 4], batch_field) == 1
  end
end

-- (1) Read. -------------------------------------------------------------------------------

-- t[key], a table, made empty the first time.
local function table_at(t, key)
  local inner = t[key]
  if not inner then
    inner = {}
    t[key] = inner
  end
  return inner
end

local function keys_of(set)
  local list = {}
  for item in pairs(set) do
    list[#list + 1] = item
  end
  return list
end

local wanted = {} -- hash key -> set of its fields the hits may read
local function want(key, field)
  table_at(wanted, key)[field] = true
end

local members = {} -- visitor ids whose last-seen time the hits may read
local carried_wanted = {} -- carried key -> set of visitor ids the hits may look up there
for _, hit in ipairs(hits) do
  local visitor = hit[2]
  if visitor ~= "" and not applied_before[hit[8]] and not expired[hit[8]] then
    table_at(carried_wanted, KEYS[hit[8] + 6])[visitor] = true
    if hit[4] ~= "" then
      table_at(carried_wanted, KEYS[hit[8] + 5])[hit[4]] = true
    end
    local rate, address = hit[11], "@" .. hit[3]
    for back = -1, 1 do
      if hit[5] ~= "" then
        want(KEYS[hit[12] - back], hit[5])
      end
      if hit[14] ~= "" then
        want(KEYS[hit[12] - back], hit[14])
      end
    end
    for back = 0, 1 do
      want(KEYS[rate - back], visitor)
      want(KEYS[rate - back], address)
      if hit[4] ~= "" then
        want(KEYS[rate - back], hit[4])
        want(KEYS[rate - back], "@" .. hit[13])
      end
    end
    members[visitor] = true
    if hit[4] ~= "" then
      members[hit[4]] = true
    end
    want(KEYS[hit[8] + 2], hit[6])
    want(KEYS[hit[8] + 2], other)
    if hit[7] ~= "" then
      want(KEYS[hit[8] + 3], hit[7])
      want(KEYS[hit[8] + 3], other)
    end
  end
end

-- The values `command` (HMGET, ZMSCORE) reads for `names` of `key`, as numbers in
-- `into`: name -> number, for the names it holds (an absent one stays nil).
local function read_numbers(command, key, names, into)
  local got = redis.call(command, key, unpack(names))
  for i, name in ipairs(names) do
    if got[i] then
      into[name] = tonumber(got[i])
    end
  end
  return into
end

-- hash key -> field -> number, for the fields the hash holds.
local values = {}
for key, set in pairs(wanted) do
  values[key] = read_numbers("HMGET", key, keys_of(set), {})
end

-- visitor id -> last-seen time, for those in `seen`.
local last_seen = {}
local seen_read = keys_of(members)
if #seen_read > 0 then
  read_numbers("ZMSCORE", seen_key, seen_read, last_seen)
end

-- Yesterday's visitor id -> its last hit, for the readers carried into today. A day's
-- `carried` exists only from its first minutes on: a batch of today's hits finds none
-- for tomorrow, and one EXISTS tells.
local carried_seen = {}
for key, set in pairs(carried_wanted) do
  if redis.call("EXISTS", key) == 1 then
    read_numbers("ZMSCORE", key, keys_of(set), carried_seen)
  end
end

-- (2) Apply each hit, in order. --------------------------------------------------------------

local changed = {} -- hash key -> set of fields to write back from `values`
local added = {} -- hash key -> field -> increment (day hashes, total)
local visitors = {} -- HyperLogLog key -> set of visitor ids to add
local seen_changed = {} -- members of `seen` to write back from `last_seen`
local carried_changed = {} -- member of a `carried` -> that key, to write back from `carried_seen`
local lengths = {} -- capped hash key -> its number of fields
local expiring = {} -- key -> the TTL it takes if this batch creates it (EXPIRE NX)

local function expire_once(key, ttl)
  if not expiring[key] then
    expiring[key] = ttl
  end
end

local function get(key, field)
  return values[key][field] or 0
end

local function put(key, field, value)
  values[key][field] = value
  table_at(changed, key)[field] = true
end

local function add(key, field)
  local fields = table_at(added, key)
  fields[field] = (fields[field] or 0) + 1
end

local function tally(day_key, day_ttl, field)
  add(day_key, field)
  expire_once(day_key, day_ttl)
end

local function add_capped(key, field, day_ttl)
  local held = values[key]
  if held[field] == nil then
    if not lengths[key] then
      lengths[key] = redis.call("HLEN", key)
    end
    if lengths[key] >= cap then
      field = other
    end
    if held[field] == nil then
      lengths[key] = lengths[key] + 1
    end
  end
  put(key, field, get(key, field) + 1)
  expire_once(key, day_ttl)
end

local function set_seen(member, time)
  last_seen[member] = time
  seen_changed[member] = true
end

local function set_carried(key, member, time)
  carried_seen[member] = time
  carried_changed[member] = key
end

local function count(hit)
  local now, visitor, day = hit[1], hit[2], hit[8]
  local day_key, day_ttl = KEYS[day], hit[10]
  if expired[day] then
    return "o"
  end
  if applied_before[day] then
    return "a"
  end
  if visitor == "" then
    tally(day_key, day_ttl, "bots")
    return "b"
  end

  -- A resend of a counted hit is a duplicate before anything else: over a flood guard
  -- too (the guards count counted hits only, so it takes nothing of the allowance).
  local hit_id, yesterdays_id = hit[5], hit[14]
  local ids_prev, ids, ids_next = KEYS[hit[12] - 1], KEYS[hit[12]], KEYS[hit[12] + 1]
  if hit_id ~= "" then
    -- The bucket after this hit's holds the id when a resend of it, sent later, was
    -- written first (two workers' buffers).
    local function seen_id(id)
      return id ~= ""
        and (get(ids_prev, id) ~= 0 or get(ids, id) ~= 0 or get(ids_next, id) ~= 0)
    end
    if seen_id(hit_id) or seen_id(yesterdays_id) then
      tally(day_key, day_ttl, "duplicates")
      return "d"
    end
  end

  -- The flood guards count over a sliding minute, estimated from two fixed ones: the
  -- previous minute weighs in with the part of it that still lies within the last 60 s,
  -- so a burst across a minute boundary is not given two minutes' allowance.
  -- Shortly after midnight a reader's hits of before it count under yesterday's ids: a
  -- guard adds the two, or a burst across midnight would get two minutes' allowance.
  local rate_prev, rate = KEYS[hit[11] - 1], KEYS[hit[11]]
  local previous_weight = 1 - (now % 60) / 60
  local function last_minute(field, yesterdays)
    local n = get(rate_prev, field) * previous_weight + get(rate, field)
    if yesterdays ~= "" then
      n = n + get(rate_prev, yesterdays) * previous_weight + get(rate, yesterdays)
    end
    return n
  end

  if last_minute(visitor, hit[4]) >= visitor_limit then
    tally(day_key, day_ttl, "rate_limited")
    return "r"
  end

  -- A visit goes on while the visitor's previous hit is under visit_idle seconds old and
  -- happened on the same day; otherwise this hit starts a new one (Matomo's rule).
  -- A hit of before midnight written after the reader's first hit of the new day (which
  -- moved it to today's id): its visit goes on from the time the move recorded.
  local last = last_seen[visitor]
  local moved = last == nil and carried_seen[visitor] ~= nil
  if moved then
    last = carried_seen[visitor]
  end
  local new_visit = last == nil or last <= now - visit_idle or last < hit[9]

  -- Visits from one address: what a client rotating its User-Agent would multiply. A
  -- reader carried across midnight (known under yesterday's id) is not a new arrival.
  local address, previous = "@" .. hit[3], hit[4]
  -- Nor is a hit of before midnight that comes after the reader's first of the day when
  -- that one was their arrival (moved with score 0: they were not in `seen` then).
  local carried = previous ~= "" and last_seen[previous] ~= nil
  local arrival = new_visit and not carried and not (moved and last == 0)
  local previous_address = previous ~= "" and "@" .. hit[13] or ""
  if arrival and last_minute(address, previous_address) >= address_limit then
    tally(day_key, day_ttl, "rate_limited")
    return "r"
  end

  if hit_id ~= "" then
    put(ids, hit_id, 1)
    expire_once(ids, ids_ttl)
    if yesterdays_id ~= "" then
      -- The reader's send of before midnight may reach Redis after this resend (two
      -- workers' buffers): it looks under yesterday's id in its own bucket and the one
      -- before, which are this one or the one before this.
      put(ids, yesterdays_id, 1)
      put(ids_prev, yesterdays_id, 1)
      expire_once(ids_prev, ids_ttl)
    end
  end

  put(rate, visitor, get(rate, visitor) + 1)
  if arrival then
    put(rate, address, get(rate, address) + 1)
  end
  expire_once(rate, rate_ttl)

  -- A reader's first hit of the day carries them from yesterday's id to today's. Their
  -- hits of before midnight that are still on their way (another worker's buffer, a
  -- resend) then find them here: online under today's id only, and in the visit they
  -- belong to (none yet, for a reader first seen just after midnight: score 0).
  if previous ~= "" and carried_seen[previous] == nil
    and (last_seen[previous] ~= nil or now - hit[9] < tonumber(ARGV[19])) then
    local carried_key = KEYS[day + 5]
    set_carried(carried_key, previous, last_seen[previous] or 0)
    expire_once(carried_key, math.ceil(hit[9] + tonumber(ARGV[2]) - now))
    if last_seen[previous] ~= nil then
      set_seen(previous, nil)
    end
  end
  -- As ZADD GT: a late, out-of-order hit never moves a visitor's last-seen time backwards.
  if moved then
    if now > last then
      set_carried(KEYS[day + 6], visitor, now)
    end
  elseif last == nil or now > last then
    set_seen(visitor, now)
  end

  add(total_key, "pageviews")
  table_at(visitors, KEYS[day + 1])[visitor] = true
  expire_once(KEYS[day + 1], day_ttl)
  add_capped(KEYS[day + 2], hit[6], day_ttl)
  if new_visit then
    add(day_key, "visits")
    add(total_key, "visits")
    if hit[7] ~= "" then
      add_capped(KEYS[day + 3], hit[7], day_ttl)
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
for i, hit in ipairs(hits) do
  local letter = count(hit)
  out[i] = letter
  if letter == "v" or letter == "p" then
    latest = math.max(latest or 0, hit[1])
  end
end

-- (3) Write back. ----------------------------------------------------------------------------

for key, set in pairs(changed) do
  local pairs_ = {}
  for field in pairs(set) do
    pairs_[#pairs_ + 1] = field
    pairs_[#pairs_ + 1] = values[key][field]
  end
  redis.call("HSET", key, unpack(pairs_))
end
for key, fields in pairs(added) do
  for field, n in pairs(fields) do
    redis.call("HINCRBY", key, field, n)
  end
end
for key, set in pairs(visitors) do
  redis.call("PFADD", key, unpack(keys_of(set)))
end
local scores, gone = {}, {}
for member in pairs(seen_changed) do
  local time = last_seen[member]
  if time then
    scores[#scores + 1] = time
    scores[#scores + 1] = member
  else
    gone[#gone + 1] = member
  end
end
if #gone > 0 then
  redis.call("ZREM", seen_key, unpack(gone))
end
if #scores > 0 then
  redis.call("ZADD", seen_key, unpack(scores))
end
local carried_scores = {} -- carried key -> its ZADD arguments
for member, key in pairs(carried_changed) do
  local args = table_at(carried_scores, key)
  args[#args + 1] = carried_seen[member]
  args[#args + 1] = member
end
for key, args in pairs(carried_scores) do
  redis.call("ZADD", key, unpack(args))
end
-- Each day the batch counted hits of records it, for the rollup to copy with the day's
-- counts; the writer's batch of REPLAY_BATCHES before leaves it.
local older_field = ARGV[15] .. ":" .. (tonumber(seq) - tonumber(ARGV[3]))
for _, hit in ipairs(hits) do
  local day = hit[8]
  if applied_before[day] == false and not expired[day] then
    applied_before[day] = true -- once per day
    redis.call("HSET", KEYS[day + 4], batch_field, "1")
    redis.call("HDEL", KEYS[day + 4], older_field)
    -- Not shortened: a restore gives the record as long as a writer's (restore.lua).
    if redis.call("TTL", KEYS[day + 4]) < tonumber(ARGV[18]) then
      redis.call("EXPIRE", KEYS[day + 4], tonumber(ARGV[18]))
    end
  end
end
for key, ttl in pairs(expiring) do
  redis.call("EXPIRE", key, ttl, "NX")
end

-- Once per batch that added to the online set: members past the horizon of its latest
-- counted hit leave it (the visit rule above never needs them: the horizon is at least
-- the visit idle time), and the set expires that long after it.
if latest then
  redis.call("ZREMRANGEBYSCORE", seen_key, "-inf", "(" .. (latest - horizon))
  redis.call("EXPIRE", seen_key, math.ceil(horizon))
end

mark_late()

local letters = table.concat(out)
redis.call("HSET", writer, seq, letters)
redis.call("HDEL", writer, tostring(tonumber(seq) - tonumber(ARGV[3])))
redis.call("EXPIRE", writer, tonumber(ARGV[2]))
return letters
