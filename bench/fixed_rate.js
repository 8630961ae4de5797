// fixed_rate.js: k6 sends requests at a fixed rate (open loop) and writes its summary.
//
// k6's constant-arrival-rate executor starts iteration i at start + i / RATE whether or
// not earlier requests have been answered, each on a virtual user of its own with its own
// keep-alive connection; when every virtual user is busy it adds one (up to MAX_VUS) and
// counts the iterations it could not start on time as dropped_iterations, which the bench
// reports. So a slow server shows as queueing in the latencies, not as a lower rate
// ("coordinated omission", what wrk2 corrects for; wrk2 is not in Debian).
//
// Environment: BASE, RATE, SECONDS, TARGET ("hit" or a GET path), SITE, VISITORS, PATHS,
// IP_PREFIX, SUMMARY (the file the JSON summary goes to).
import http from "k6/http";
import exec from "k6/execution";

const base = __ENV.BASE;
const visitors = Number(__ENV.VISITORS || 10000);
const paths = Number(__ENV.PATHS || 500);
const prefix = Number(__ENV.IP_PREFIX || 198);
// Real browsers, as in hit.lua: the crawler filter lets every one of them through.
const agents = [
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (Linux; Android 14; SM-A546E) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 Firefox/133.0",
];
const referrers = ["", "", "", "https://www.google.com/", "https://www.facebook.com/"];

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ["min", "med", "p(90)", "p(99)", "max", "avg"],
  scenarios: {
    fixed: {
      executor: "constant-arrival-rate",
      rate: Number(__ENV.RATE),
      timeUnit: "1s",
      duration: `${__ENV.SECONDS}s`,
      preAllocatedVUs: Number(__ENV.VUS || 64),
      maxVUs: Number(__ENV.MAX_VUS || 1000),
    },
  },
};

export default function () {
  if (__ENV.TARGET !== "hit") {
    http.get(base + __ENV.TARGET);
    return;
  }
  const n = exec.scenario.iterationInTest;
  const v = n % visitors;
  const hit = { site: __ENV.SITE, url: `https://bench.example/p/${(n * 7919) % paths}` };
  const ref = referrers[n % referrers.length];
  if (ref) hit.referrer = ref;
  http.post(base + "/api/v1/hit", JSON.stringify(hit), {
    headers: {
      // As navigator.sendBeacon sends it: no CORS preflight.
      "Content-Type": "text/plain",
      "User-Agent": agents[v % agents.length],
      "X-Forwarded-For": `${prefix}.${(v >> 16) & 255}.${(v >> 8) & 255}.${v & 255}`,
    },
  });
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY]: JSON.stringify(data) };
}
