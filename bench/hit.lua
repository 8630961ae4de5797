-- hit.lua: POST /api/v1/hit from a rotating set of visitors and paths.
--
-- A visitor is (X-Forwarded-For, User-Agent): the bench runs the service with
-- ANALYTICS_TRUSTED_PROXIES=1, as behind one reverse proxy, so each address is a reader.
-- Visitor k always has the same address and browser, so there are exactly BENCH_VISITORS
-- of them; the path index runs on a different stride, so visitors move between pages.
-- Environment: BENCH_DIR, BENCH_SITE, BENCH_VISITORS, BENCH_PATHS, BENCH_IP_PREFIX.
dofile(os.getenv("BENCH_DIR") .. "/report.lua")

local site = os.getenv("BENCH_SITE") or "bench"
local visitors = tonumber(os.getenv("BENCH_VISITORS") or "10000")
local paths = tonumber(os.getenv("BENCH_PATHS") or "500")
local prefix = tonumber(os.getenv("BENCH_IP_PREFIX") or "10")

-- Real browsers: the crawler filter must let every one of them through.
local agents = {
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (Linux; Android 14; SM-A546E) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 Firefox/133.0",
}
local referrers = { "", "", "", "https://www.google.com/", "https://www.facebook.com/" }

-- Request n's visitor, path and referrer repeat with n modulo the cycle below (10,000 with
-- the bench's sizes), so the requests of one cycle are built once, in init: wrk's own advice
-- for a script that would otherwise format every request, and here the generator shares
-- the machine's two cores with the service it measures.
local function gcd(a, b)
  while b ~= 0 do
    a, b = b, a % b
  end
  return a
end
local function lcm(a, b)
  return a / gcd(a, b) * b
end
local cycle = lcm(lcm(visitors, paths), #referrers)
local requests = {}
local n = 0

local function build(i)
  local v = i % visitors
  local p = (i * 7919) % paths
  local ref = referrers[(i % #referrers) + 1]
  local body
  if ref == "" then
    body = string.format('{"site":"%s","url":"https://bench.example/p/%d"}', site, p)
  else
    body = string.format('{"site":"%s","url":"https://bench.example/p/%d","referrer":"%s"}',
      site, p, ref)
  end
  return wrk.format("POST", "/api/v1/hit", {
    ["Content-Type"] = "text/plain",
    ["User-Agent"] = agents[(v % #agents) + 1],
    ["X-Forwarded-For"] = string.format("%d.%d.%d.%d", prefix, math.floor(v / 65536) % 256,
      math.floor(v / 256) % 256, v % 256),
  }, body)
end

setup = function(thread)
  thread:set("thread_offset", math.random(0, 1000000))
end

init = function(args)
  -- thread_offset is set by setup() in this thread's own Lua state.
  n = thread_offset or 0
  for i = 0, cycle - 1 do
    requests[i] = build(i)
  end
end

request = function()
  n = n + 1
  return requests[n % cycle]
end
