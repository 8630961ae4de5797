// Periods of site-local calendar days ({from, to}, inclusive, YYYY-MM-DD): the presets, the
// previous period of the same length, and the interval that suits a length.

export const DEFAULT_PRESET = "30d";
export const PRESETS = ["today", "7d", "30d", "month", "12m"];
export const INTERVALS = ["day", "week", "month"];
// The API's first date.
const FIRST_DATE = "1900-01-01";
// The API's limit: five years, leap days included.
const MAX_DAYS = 5 * 365 + 2;
const DAY_MS = 86400000;

function toTime(iso) {
  const [y, m, d] = iso.split("-").map(Number);
  return Date.UTC(y, m - 1, d);
}

function toIso(time) {
  return new Date(time).toISOString().slice(0, 10);
}

function addDays(iso, days) {
  return toIso(toTime(iso) + days * DAY_MS);
}

function lengthInDays(period) {
  return Math.round((toTime(period.to) - toTime(period.from)) / DAY_MS) + 1;
}

function firstOfMonth(iso, monthsBack = 0) {
  const [y, m] = iso.split("-").map(Number);
  return toIso(Date.UTC(y, m - 1 - monthsBack, 1));
}

// `today` is the site's own date (from the service), never the browser's.
export function presetPeriod(name, today) {
  switch (name) {
    case "today":
      return { from: today, to: today };
    case "7d":
      return { from: addDays(today, -6), to: today };
    case "month":
      return { from: firstOfMonth(today), to: today };
    case "12m":
      return { from: firstOfMonth(today, 11), to: today };
    default:
      return { from: addDays(today, -29), to: today };
  }
}

// null when it would begin before the first date the API takes.
export function previousPeriod(period) {
  const to = addDays(period.from, -1);
  const from = addDays(to, 1 - lengthInDays(period));
  return from < FIRST_DATE ? null : { from, to };
}

export function autoInterval(period) {
  const days = lengthInDays(period);
  if (days <= 31) return "day";
  if (days <= 190) return "week";
  return "month";
}

export function isValidPeriod(period) {
  const iso = /^\d{4}-\d{2}-\d{2}$/;
  return (
    iso.test(period.from) &&
    iso.test(period.to) &&
    FIRST_DATE <= period.from &&
    period.from <= period.to &&
    lengthInDays(period) <= MAX_DAYS
  );
}
