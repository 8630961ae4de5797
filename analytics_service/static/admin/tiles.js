// The number tiles: the period's visits, pageviews and visitors, each against the previous
// period of the same length; online now and the all-time total from the public counter.

import { byId } from "./dom.js";
import { formatDate, formatNumber, formatChange, formatTime, t } from "./i18n.js";

export const METRICS = ["visits", "pageviews", "visitors"];

function change(now, before) {
  if (now === before) return { text: t("sameAsPrevious"), trend: "" };
  if (before === 0) return { text: t("noPrevious"), trend: "" };
  const ratio = (now - before) / before;
  return {
    text: t("changeVsPrevious", { change: formatChange(ratio) }),
    trend: ratio > 0 ? "up" : "down",
  };
}

// `previous` is null when there is no whole previous period: it would begin before the
// site's numbers do (`historyFrom`, its creation or its imported history's first day).
export function renderTotals(totals, previous, historyFrom) {
  for (const metric of METRICS) {
    const tile = byId(`tile-${metric}`);
    tile.querySelector(".value").textContent = formatNumber(totals[metric]);
    const { text, trend } = previous
      ? change(totals[metric], previous[metric])
      : { text: t("noWholePrevious", { date: formatDate(historyFrom) }), trend: "" };
    const note = tile.querySelector(".change");
    note.textContent = text;
    note.dataset.trend = trend;
  }
}

export function renderCounter(counter, timeZone) {
  byId("tile-online").querySelector(".value").textContent = formatNumber(counter.online);
  byId("online-as-of").textContent = t("onlineAsOf", { time: formatTime(counter.readAt, timeZone) });
  byId("tile-total").querySelector(".value").textContent = formatNumber(counter.total.visits);
}

export function renderOnlinePaused() {
  byId("online-as-of").textContent = t("onlinePaused");
}

// The period's numbers back to "–": a period that failed to load must not leave the last
// one's numbers under its dates.
export function clearTotals() {
  for (const metric of METRICS) byId(`tile-${metric}`).querySelector(".value").textContent = "–";
  for (const note of document.querySelectorAll(".tile .change")) {
    note.textContent = "";
    note.dataset.trend = "";
  }
}

// Every number back to "–": a site switched to, or a sign-out, must not leave the last
// site's numbers under the new name while its own are on their way (or failed).
export function clearTiles() {
  clearTotals();
  for (const name of ["online", "total"]) {
    byId(`tile-${name}`).querySelector(".value").textContent = "–";
  }
  byId("online-as-of").textContent = "";
}
