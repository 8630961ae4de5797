// The chart's numbers as a plain table, for screen readers and for copying.

import { el } from "./dom.js";
import { formatNumber, formatPeriod, t } from "./i18n.js";
import { METRICS } from "./tiles.js";

function row(cells, header) {
  const [first, ...rest] = cells;
  return el("tr", {}, [
    el("th", { text: first, attrs: { scope: header ? "col" : "row" } }),
    ...rest.map((text) => el(header ? "th" : "td", { text, attrs: header ? { scope: "col" } : {} })),
  ]);
}

export function renderSeriesTable(table, rows, interval, totals) {
  table.replaceChildren(
    el("caption", { className: "visually-hidden", text: t("overTime") }),
    el("thead", {}, [row([t("periodColumn"), ...METRICS.map((m) => t(m))], true)]),
    el(
      "tbody",
      {},
      rows.map((r) => row([formatPeriod(r, interval), ...METRICS.map((m) => formatNumber(r[m]))])),
    ),
    el("tfoot", {}, [row([t("totalRow"), ...METRICS.map((m) => formatNumber(totals[m]))])]),
  );
}
