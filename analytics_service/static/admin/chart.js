// The chart of visits, pageviews and visitors over the period, drawn by uPlot (the shipped
// static/vendor/uplot, loaded before this module), one point per row of the series, with a
// tooltip per point: the period and its three numbers.

import { el } from "./dom.js";
import { METRICS } from "./tiles.js";
import { formatNumber, formatPeriod, formatShortPeriod, t } from "./i18n.js";

const HEIGHT = 280;
// At least 3:1 on white, as lines and legend marks must be (WCAG 1.4.11).
const COLOURS = { visits: "#1c5a9e", pageviews: "#c0701f", visitors: "#2f8a57" };
// Points are drawn while there is room for them; the tooltip works either way.
const MAX_MARKED_POINTS = 62;

// `reopen`: where the last drawing of the chart had its tooltip open ({index, top}), or null.
function tooltip(rows, interval, reopen) {
  let tip;
  // Escape hides it without moving the pointer, for one who needs to see what it covers
  // (WCAG 1.4.13); the next point the pointer reaches shows it again.
  const dismiss = (event) => {
    if (event.key === "Escape") tip.hidden = true;
  };
  return {
    hooks: {
      init(u) {
        tip = el("div", { className: "chart-tip" });
        tip.hidden = true;
        u.over.append(tip);
        document.addEventListener("keydown", dismiss);
      },
      ready(u) {
        if (reopen) u.setCursor({ left: u.valToPos(reopen.index, "x"), top: reopen.top });
      },
      destroy() {
        document.removeEventListener("keydown", dismiss);
      },
      setCursor(u) {
        const i = u.cursor.idx;
        if (i == null || !rows[i]) {
          tip.hidden = true;
          return;
        }
        const row = rows[i];
        tip.replaceChildren(
          el("p", { className: "chart-tip-title", text: formatPeriod(row, interval) }),
          ...METRICS.map((metric) =>
            el("p", { className: `chart-tip-row ${metric}` }, [
              el("span", { text: t(metric) }),
              el("b", { text: formatNumber(row[metric]) }),
            ]),
          ),
        );
        tip.hidden = false;
        // Beside the point, on whichever side leaves it inside the plot.
        const x = u.valToPos(i, "x");
        const left = x + tip.offsetWidth + 16 > u.over.clientWidth ? x - tip.offsetWidth - 12 : x + 12;
        tip.style.transform = `translate(${Math.max(0, left)}px, 8px)`;
      },
    },
  };
}

function options(width, rows, interval, reopen) {
  const marked = rows.length <= MAX_MARKED_POINTS;
  return {
    width,
    height: HEIGHT,
    // The x values are row numbers: the axis and the tooltip show each row's own period.
    scales: {
      x: { time: false, range: (u, min, max) => [min - 0.5, max + 0.5] },
      y: { range: (u, min, max) => [0, Math.max(1, max) * 1.1] },
    },
    axes: [
      {
        incrs: [1, 2, 3, 5, 7, 10, 14, 20, 30, 50, 100, 200, 365, 500, 1000],
        space: 64,
        values: (u, splits) =>
          splits.map((i) => (Number.isInteger(i) && rows[i] ? formatShortPeriod(rows[i], interval) : "")),
      },
      {
        incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 1e7, 1e8],
        size: 64,
        values: (u, splits) => splits.map((n) => formatNumber(n)),
      },
    ],
    series: [
      { label: t("periodColumn") },
      ...METRICS.map((metric) => ({
        label: t(metric),
        stroke: COLOURS[metric],
        width: 2,
        points: { show: marked, size: 6, fill: COLOURS[metric] },
      })),
    ],
    legend: { live: false },
    cursor: { drag: { x: false, y: false } },
    plugins: [tooltip(rows, interval, reopen)],
  };
}

export class Chart {
  #container;
  #plot = null;
  #rows = [];

  constructor(container) {
    this.#container = container;
    new ResizeObserver(() => this.#resize()).observe(container);
  }

  #width() {
    return Math.max(200, this.#container.clientWidth);
  }

  #resize() {
    if (this.#plot && this.#plot.width !== this.#width()) {
      this.#plot.setSize({ width: this.#width(), height: HEIGHT });
    }
  }

  // Drawn anew for each series: the labels and formats may have changed with the language.
  // A tooltip open on a point stays open on it, with its new numbers (the refresh every
  // 30 s), if the new rows still have its period.
  show(rows, interval) {
    const open = this.#openPoint();
    const index = open ? rows.findIndex((row) => row.period === open.period) : -1;
    this.#rows = rows;
    if (this.#plot) this.#plot.destroy();
    const data = [rows.map((row, i) => i), ...METRICS.map((metric) => rows.map((row) => row[metric]))];
    const reopen = index < 0 ? null : { index, top: open.top };
    this.#plot = new window.uPlot(options(this.#width(), rows, interval, reopen), data, this.#container);
  }

  clear() {
    if (this.#plot) this.#plot.destroy();
    this.#plot = null;
    this.#rows = [];
  }

  #openPoint() {
    const tip = this.#container.querySelector(".chart-tip");
    const { idx, top } = this.#plot?.cursor ?? {};
    if (!tip || tip.hidden || idx == null || !this.#rows[idx]) return null;
    return { period: this.#rows[idx].period, top };
  }
}
