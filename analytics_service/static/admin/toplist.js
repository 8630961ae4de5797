// A top list (pages by pageviews, referrers by visits) with each row's share of the period's
// total: 10 rows, and "show more" for more.

import { el, focusLost, message, whileBusy } from "./dom.js";
import { formatNumber, formatShare, t } from "./i18n.js";

const FIRST_ROWS = 10;
const MAX_ROWS = 1000; // the API's limit
const MORE_FACTOR = 5;

// A share too small to show at one decimal reads "<0.1 %", not "0 %".
const SMALLEST_SHOWN = 0.001;

function shareText(share) {
  return share > 0 && share < SMALLEST_SHOWN / 2 ? `<${formatShare(SMALLEST_SHOWN)}` : formatShare(share);
}

export class TopList {
  #table;
  #more;
  #empty;
  #spec;
  #limit = FIRST_ROWS;
  #rows = [];
  #total = 0;
  #request = 0;

  // spec: {key(row) -> what tells the row from the others, shown(row) -> its name as people
  //        read it, amount, nameColumn, load(limit) -> Promise of {rows, total: what their
  //        shares are of (the period's days with pages, not imported ones)}, onError(error)}
  constructor(section, spec) {
    this.#table = section.querySelector("table");
    this.#more = section.querySelector(".more");
    this.#empty = section.querySelector(".empty");
    this.#spec = spec;
    this.#more.addEventListener("click", () => this.#showMore());
  }

  reset() {
    this.#limit = FIRST_ROWS;
  }

  // Nothing shown, and rows still on their way for what was shown are dropped.
  clear() {
    this.reset();
    this.#request++;
    this.#rows = [];
    this.#total = 0;
    this.#table.replaceChildren();
    this.#table.hidden = true;
    message(this.#empty, "");
    this.#more.hidden = true;
  }

  // Asks for one row more than it shows, to know whether "show more" has anything to add.
  async load() {
    const request = ++this.#request;
    const { rows, total } = await this.#spec.load(Math.min(this.#limit + 1, MAX_ROWS));
    if (request !== this.#request) return; // a newer period's rows are on their way
    this.#total = total;
    this.#rows = rows;
    this.render();
  }

  async #showMore() {
    const shownBefore = Math.min(this.#rows.length, this.#limit);
    this.#limit = Math.min(this.#limit * MORE_FACTOR, MAX_ROWS);
    await whileBusy(this.#more, async () => {
      try {
        await this.load();
      } catch (error) {
        this.#spec.onError(error);
      }
    });
    // Nothing more to show, the button is gone: reading goes on at the first new row (which
    // render gave the focus if the browser had not yet taken it off the disabled button).
    const firstNew = this.#bodyRows()[shownBefore];
    if (this.#more.hidden && firstNew && focusLost()) focusRow(firstNew);
  }

  // Drawn anew (a refresh every 30 s, a language switch, "show more"), the focus stays in the
  // list: a row that had it (set by "show more") passes it to the row with its key, wherever
  // that now is, or else to the row now in its place; "show more", hidden with the focus on
  // it, to the first row after those it had. Dropped to <body>, a keyboard user would start
  // again at the top of the page.
  render() {
    const focused = document.activeElement?.closest("tr");
    const inList = focused && focused.parentElement === this.#table.tBodies[0];
    const [key, index] = inList ? [focused.dataset.key, focused.sectionRowIndex] : [];
    const onMore = document.activeElement === this.#more;
    const before = this.#bodyRows().length;
    this.#draw();
    const rows = this.#bodyRows();
    if (inList) {
      const row = rows.find((r) => r.dataset.key === key) ?? rows[Math.min(index, rows.length - 1)];
      // Not scrolled to: a refresh must not move the page under the reader.
      if (row) focusRow(row, { preventScroll: true });
    } else if (onMore && this.#more.hidden && rows.length) {
      focusRow(rows[Math.min(before, rows.length - 1)]);
    }
  }

  #bodyRows() {
    return [...(this.#table.tBodies[0]?.rows ?? [])];
  }

  #draw() {
    const { key, shown: name, amount, nameColumn } = this.#spec;
    const shown = this.#rows.slice(0, this.#limit);
    this.#table.replaceChildren(
      el("thead", {}, [
        el("tr", {}, [
          el("th", { text: t(nameColumn), attrs: { scope: "col" } }),
          el("th", { text: t(amount), attrs: { scope: "col" } }),
          el("th", { text: t("share"), attrs: { scope: "col" } }),
        ]),
      ]),
      el("tbody", {}, shown.map((row) => this.#row(key(row), name(row), row[amount]))),
    );
    this.#table.hidden = shown.length === 0;
    message(this.#empty, shown.length ? "" : () => t("empty"));
    this.#more.hidden = this.#rows.length <= this.#limit;
  }

  #row(key, name, count) {
    const share = this.#total > 0 ? count / this.#total : 0;
    const bar = el("span", { className: "bar" });
    bar.style.width = `${Math.min(100, share * 100)}%`;
    return el("tr", { attrs: { "data-key": key } }, [
      el("th", { className: "name", attrs: { scope: "row" } }, [bar, el("span", { text: name })]),
      el("td", { text: formatNumber(count) }),
      el("td", { text: this.#total > 0 ? shareText(share) : "–" }),
    ]);
  }
}

// A row is no stop of the Tab key; it takes the focus only when given it.
function focusRow(row, options) {
  row.tabIndex = -1;
  row.focus(options);
}
