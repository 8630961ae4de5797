-- restore.lua: give a Redis that came back empty one site's history, exactly once; or raise
-- a Redis found behind the history (older than its last checkpoint) to it.
--
-- KEYS (all share the site's hash tag; built by live.LiveStore.restore)
--   1          total    HASH    visits, pageviews since the site began; the marker field
--   then six per restored day i (i = 1..n), at 1 + 6(i-1) + ...:
--     +1       day      HASH    the day's visits, pageviews, bots, rate_limited,
--                               duplicates (every DayCounts field but visitors)
--     +2       uv       HLL     the day's distinct visitors
--     +3       paths    HASH    path -> pageviews
--     +4       refs     HASH    referrer host -> visits
--     +5       restore  STRING  scratch key for the checkpoint's HyperLogLog bytes
--     +6       batches  HASH    "writer:seq" -> "1": the batches the day's row holds
-- ARGV
--   1          marker   the field of `total` that says the history is in Redis
--   2          plan     JSON: {"top_up": bool, "visits": "N", "pageviews": "N", "days": [{"ttl": "s",
--                       "counts": {field: "N"}, "paths": {path: "N"}, "refs": {host: "N"},
--                       "batches": ["writer:seq", ...], "batches_ttl": "s"}]}
--                       (numbers as strings: Lua would print large ones as 1e+15)
--   2 + i      hll      day i's HyperLogLog bytes from its last checkpoint, or ""
-- Returns 1 if this call restored the site, 0 if another already had (marker present).
--
-- Amounts are added (HINCRBY, PFMERGE), never set: hits counted after the wipe and before
-- this call are kept on top of the history.
--
-- With "top_up" (a Redis that holds the marker but less than the history: a replica
-- promoted before it had the last writes, a backup put back), each amount is raised to at
-- least the history's instead, marker or not: what that Redis counted since it fell behind
-- cannot be told from what it lost, so the larger of the two stands. Run again, it changes
-- nothing.

local BATCHES_PER_HSET = 1000

local plan = cjson.decode(ARGV[2])
-- A Redis wiped since it was found behind gets the history added, as after any wipe.
local top_up = plan.top_up and redis.call("HEXISTS", KEYS[1], ARGV[1]) == 1
if not top_up and redis.call("HSETNX", KEYS[1], ARGV[1], plan.mark) == 0 then
  return 0
end
if top_up then
  redis.call("HSET", KEYS[1], ARGV[1], plan.mark)
end

-- Adds `n` to the field, or with "top_up" raises it to `n` (n as a string: see ARGV).
local function give(key, field, n)
  if top_up then
    local short = tonumber(n) - tonumber(redis.call("HGET", key, field) or "0")
    if short > 0 then
      redis.call("HINCRBY", key, field, short)
    end
  else
    redis.call("HINCRBY", key, field, n)
  end
end

give(KEYS[1], "visits", plan.visits)
give(KEYS[1], "pageviews", plan.pageviews)

local function add_all(key, amounts, ttl)
  local any = false
  for field, n in pairs(amounts) do
    give(key, field, n)
    any = true
  end
  if any then
    redis.call("EXPIRE", key, ttl)
  end
end

for i, day in ipairs(plan.days) do
  local base = 1 + 6 * (i - 1)
  add_all(KEYS[base + 1], day.counts, day.ttl)
  if ARGV[2 + i] ~= "" then
    redis.call("SET", KEYS[base + 5], ARGV[2 + i], "EX", 60)
    redis.call("PFMERGE", KEYS[base + 2], KEYS[base + 2], KEYS[base + 5])
    redis.call("DEL", KEYS[base + 5])
    redis.call("EXPIRE", KEYS[base + 2], day.ttl)
  end
  add_all(KEYS[base + 3], day.paths, day.ttl)
  add_all(KEYS[base + 4], day.refs, day.ttl)
  if #day.batches > 0 then
    -- In steps: Lua unpacks at most about 8,000 values into one call, and a day written
    -- by many workers in turn (each replaced worker's last batches stay) holds thousands.
    -- A script that fails here has set the marker: the rest would never come back.
    for first = 1, #day.batches, BATCHES_PER_HSET do
      local fields = {}
      for j = first, math.min(first + BATCHES_PER_HSET - 1, #day.batches) do
        fields[#fields + 1] = day.batches[j]
        fields[#fields + 1] = "1"
      end
      redis.call("HSET", KEYS[base + 6], unpack(fields))
    end
    redis.call("EXPIRE", KEYS[base + 6], day.batches_ttl)
  end
end
return 1
