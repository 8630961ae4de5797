// The dashboard page: signing in and out, the site and the period chosen, and drawing what
// the admin API answers for them. Each part is drawn by its own module.

import { readCounter } from "./api.js";
import { setUpBaseline } from "./baseline.js";
import { Chart } from "./chart.js";
import { byId, markInvalid, message, show, whileBusy } from "./dom.js";
import { downloadExport } from "./export.js";
import {
  formatDate,
  language,
  onLanguageChange,
  switchLanguage,
  t,
  translate,
  withApiMessage,
} from "./i18n.js";
import { setUpImport } from "./import.js";
import { watchCounter } from "./online.js";
import {
  DEFAULT_PRESET,
  INTERVALS,
  PRESETS,
  autoInterval,
  isValidPeriod,
  presetPeriod,
  previousPeriod,
} from "./period.js";
import { renderSeriesTable } from "./series-table.js";
import { forget, rememberSite, rememberToken, savedSite, savedToken } from "./session.js";
import { openToken, setUpSignIn, signInError } from "./signin.js";
import { clearTiles, clearTotals, renderCounter, renderOnlinePaused, renderTotals } from "./tiles.js";
import { TopList } from "./toplist.js";

const view = {
  api: null,
  sites: [],
  site: null,
  today: null,
  counter: null,
  preset: DEFAULT_PRESET,
  period: null,
  interval: "day",
  intervalChosen: false,
  stats: null,
  previous: null,
  generation: 0,
  selection: 0,
  showTable: false,
  stopWatching: () => {},
};

const dashboard = byId("dashboard");
const signInSection = byId("sign-in");
const signOutButton = byId("sign-out");
const picker = byId("site-picker");
const title = byId("dashboard-title");
const loadError = byId("load-error");
const chart = new Chart(byId("chart"));
// The site to open first: ?site= of the address (kept up to date as sites are picked, so a
// reload comes back to the site on screen), else the one last looked at in this tab.
function wantedSite() {
  return new URLSearchParams(location.search).get("site") || savedSite();
}

// The period on screen is in the address too (?period=7d, or ?from=&to= for dates typed; the
// default 30 days leaves it out; ?interval= once the admin picked one): a reload, the back
// button after a link, or the address sent to a colleague shows that view, not 30 days.
const PERIOD_PARAMS = ["period", "from", "to", "interval"];

function periodInAddress() {
  const query = new URLSearchParams(location.search);
  const interval = INTERVALS.includes(query.get("interval")) ? query.get("interval") : null;
  const period = { from: query.get("from") || "", to: query.get("to") || "" };
  if (isValidPeriod(period)) return { preset: "custom", period, interval };
  const preset = PRESETS.includes(query.get("period")) ? query.get("period") : DEFAULT_PRESET;
  return { preset, period: null, interval };
}

// `newEntry`: a view the admin picked is an entry of the tab's history of its own, which Back
// comes back to; the view a page opens with, or one Back or Forward went to, replaces it.
function showInAddress({ newEntry = false } = {}) {
  const url = new URL(location.href);
  url.searchParams.set("site", view.site.id);
  for (const name of PERIOD_PARAMS) url.searchParams.delete(name);
  if (view.preset === "custom") {
    url.searchParams.set("from", view.period.from);
    url.searchParams.set("to", view.period.to);
  } else if (view.preset !== DEFAULT_PRESET) {
    url.searchParams.set("period", view.preset);
  }
  if (view.intervalChosen) url.searchParams.set("interval", view.interval);
  if (url.href === location.href) return; // the view on screen picked again: no entry
  if (newEntry) history.pushState(null, "", url);
  else history.replaceState(history.state, "", url);
}

// What the address asked for, taken by the first site this page opens (and by the view
// Back or Forward goes to).
let addressed = periodInAddress();

function takeAddressed() {
  ({ preset: view.preset, period: view.period } = addressed);
  view.intervalChosen = addressed.interval !== null;
  if (addressed.interval) view.interval = addressed.interval;
  addressed = null;
}

// The sign-in form (and the focus in it) is hidden at once: the focus goes to the top of
// what replaces it.
const signIn = setUpSignIn((opened, token) => enter(opened, token, { focusTitle: true }), wantedSite);

// What to tell the person about a failed call (for `message`, in either language); a token
// that stopped working signs out.
// `what`: the message for a load (the default), a save or an import the API refused.
function failed(error, what = "errLoad") {
  if (error.status === 401) {
    signOut(() => t("errSessionEnded"));
    return "";
  }
  if (error.code === "network") return () => t("errNetwork");
  return () => withApiMessage(what, error.message);
}

// A path as the reader's address bar shows it: /tin-tức, not /tin-t%E1%BB%A9c. decodeURI
// keeps escapes of / ? # and the like, and a path whose text would hide how it differs
// from another (a "ứ" typed decomposed, as some Vietnamese keyboards do; an invisible
// character; a word mixing Latin letters with look-alikes of another script, /admin with
// a Cyrillic "a") is shown as sent, so two different paths never read the same.
const HIDDEN_DIFFERENCE = /[\p{Cc}\p{Cf}]|[^\S ]/u;
const WORD = /[\p{L}\p{M}]+/gu;
const LATIN = /\p{Script=Latin}/u;
// A letter of neither Latin nor the scripts browsers let a name mix with it (Chinese,
// Japanese, Korean writing; Common: the kana length mark): in a word with Latin letters,
// a disguise.
const NOT_WITH_LATIN =
  /[^\P{L}\p{Script=Latin}\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}\p{Script=Bopomofo}\p{Script=Common}]/u;

function mixesScripts(text) {
  return (text.match(WORD) || []).some((word) => LATIN.test(word) && NOT_WITH_LATIN.test(word));
}

function readablePath(path) {
  let text;
  try {
    text = decodeURI(path);
  } catch (e) {
    return path; // not UTF-8 once decoded: shown as sent
  }
  const hides = text.normalize("NFC") !== text || HIDDEN_DIFFERENCE.test(text) || mixesScripts(text);
  return hides ? path : text;
}

const topPages = new TopList(byId("top-pages"), {
  key: (row) => row.path,
  shown: (row) => readablePath(row.path),
  amount: "pageviews",
  nameColumn: "pageColumn",
  load: (limit) =>
    view.api
      .top(view.site.id, "pages", view.period, limit)
      .then((r) => ({ rows: r.pages, total: r.pageviews })),
  onError: (error) => message(loadError, failed(error)),
});
const topReferrers = new TopList(byId("top-referrers"), {
  key: (row) => row.host,
  shown: (row) => row.display_host,
  amount: "visits",
  nameColumn: "referrerColumn",
  load: (limit) =>
    view.api
      .top(view.site.id, "referrers", view.period, limit)
      .then((r) => ({ rows: r.referrers, total: r.visits })),
  onError: (error) => message(loadError, failed(error)),
});
const importer = setUpImport(byId("import-form"), {
  get api() {
    return view.api;
  },
  siteId: () => view.site.id,
  imported: () => load(),
  failed: (error) => failed(error, "errImport"),
});
const baseline = setUpBaseline(byId("baseline-form"), {
  get api() {
    return view.api;
  },
  siteId: () => view.site.id,
  // The answer may come once another site is picked: the baseline is still the saving
  // site's (the picker's copy of it, which the form shows when it is picked again).
  async saved(siteId, values) {
    view.sites = view.sites.map((site) => (site.id === siteId ? { ...site, baseline: values } : site));
    if (view.site.id !== siteId) return null;
    view.site = { ...view.site, baseline: values };
    let counter;
    try {
      counter = await readCounter(siteId);
    } catch (error) {
      return null; // saved all the same: the counter's next read shows the new total
    }
    if (view.site.id !== siteId) return null;
    showCounter(counter);
    return counter.total.visits;
  },
  failed: (error) => failed(error, "errSave"),
});

function showCounter(counter) {
  view.counter = counter;
  renderCounter(counter, view.site.timezone);
}

// The counter's date is the site's today (its time zone, the service's clock). The first
// one loads the period; a new one (midnight passed) moves a preset period along with it.
function counterRead(counter) {
  const last = view.counter;
  showCounter(counter);
  const today = counter.today.date;
  if (today === view.today) {
    // Today's numbers moved: a period that takes today in is read again, or its tiles, chart
    // and lists stay at the sign-in's numbers beside an "Đã truy cập" that moves on. A
    // period that failed to load is tried again.
    const stale = () => view.stats === null || todayMoved(last.today, counter.today);
    if (last && view.period && view.period.to >= today && stale()) {
      load({ refresh: true });
    }
    return;
  }
  view.today = today;
  // Midnight moves the period on screen, not the interval the person picked for it (the
  // first read keeps what selectSite set: the period's own, or the one the address names).
  if (view.preset !== "custom") choosePreset(view.preset, { keepInterval: true });
}

function todayMoved(before, now) {
  return ["visits", "pageviews", "visitors"].some((metric) => before[metric] !== now[metric]);
}

// What was drawn for the last site (or the last token), and answers still on their way for
// it: gone.
function clearDrawn() {
  view.generation++;
  clearPeriod();
  view.counter = null;
  view.today = null;
  view.period = null;
  clearTiles();
}

// What is drawn of the period. While the next period's numbers are on their way (a slow
// database holds them for seconds) it is marked busy, and dimmed: the controls already show
// the next period, and must not be read as its numbers.
const PERIOD_SHOWN =
  "#period-label, #tile-visits, #tile-pageviews, #tile-visitors, #chart, #series-table, .top-list";

function markLoading(loading) {
  for (const node of document.querySelectorAll(PERIOD_SHOWN)) {
    if (loading) node.setAttribute("aria-busy", "true");
    else node.removeAttribute("aria-busy");
  }
}

// What is drawn of the period: gone when a period fails to load, so that the controls (and
// the export, which takes them) never show another period than the numbers.
function clearPeriod() {
  markLoading(false);
  view.stats = null;
  view.previous = null;
  clearTotals();
  chart.clear();
  byId("series-table").querySelector("table").replaceChildren();
  byId("period-label").textContent = "";
  topPages.clear();
  topReferrers.clear();
}

function signOut(text) {
  view.stopWatching();
  view.stopWatching = () => {};
  view.selection++;
  clearDrawn();
  forget();
  view.api = null;
  show(dashboard, false);
  show(signOutButton, false);
  show(signInSection, true);
  signIn.show(text);
}

function fillPicker() {
  picker.replaceChildren(
    ...view.sites.map((site) => {
      const option = document.createElement("option");
      option.value = site.id;
      option.textContent = site.name === site.id ? site.id : `${site.name} (${site.id})`;
      return option;
    }),
  );
  picker.disabled = view.sites.length < 2;
}

async function enter(opened, token, { focusTitle = false } = {}) {
  rememberToken(token);
  view.api = opened.api;
  view.sites = opened.sites;
  fillPicker();
  show(signInSection, false);
  show(dashboard, true);
  show(signOutButton, true);
  const selecting = selectSite(opened.site);
  if (focusTitle) title.focus();
  await selecting;
}

async function selectSite(site, { newEntry = false } = {}) {
  // A site picked while another's first read is still on its way: that read's answer must
  // not be drawn, nor start a second refresh timer.
  const selection = ++view.selection;
  view.stopWatching();
  view.stopWatching = () => {};
  clearDrawn();
  // A site switched to starts at its period's own interval; the first one the page opens,
  // at what the address names.
  view.intervalChosen = false;
  if (addressed) takeAddressed();
  // Dates chosen belonged to the last site.
  if (view.preset === "custom" && view.period === null) view.preset = DEFAULT_PRESET;
  view.site = site;
  title.textContent = site.name;
  rememberSite(site.id);
  showInAddress({ newEntry });
  picker.value = site.id;
  baseline.fill(site.baseline);
  importer.clear();
  message(loadError, "");
  // Dates the address named need no today: read at once, as dates typed in are.
  if (view.period) load();
  let counter = null;
  try {
    counter = await readCounter(site.id);
  } catch (error) {
    // The periods wait for the site's today: the watcher's next read brings it.
    if (selection === view.selection) message(loadError, failed(error));
  }
  if (selection !== view.selection) return;
  view.stopWatching = watchCounter(site.id, {
    onCounter: counterRead,
    onError: () => {}, // the tile keeps its last numbers; the next read tries again
    onPause: renderOnlinePaused,
  });
  if (counter) counterRead(counter);
}

function choosePreset(name, { keepInterval = false } = {}) {
  view.preset = name;
  // Before the site's first counter read there is no today to count the period back from.
  if (view.today === null) return;
  choosePeriod(presetPeriod(name, view.today), { keepInterval });
}

function choosePeriod(period, { keepInterval = false } = {}) {
  view.period = period;
  if (!keepInterval) view.intervalChosen = false;
  topPages.reset();
  topReferrers.reset();
  load();
}

// Back or Forward to another view of this page: the view its address names, loaded.
function showAddressedView() {
  addressed = periodInAddress();
  if (view.api === null) return; // signed out: the next sign-in opens it
  const site = view.sites.find((s) => s.id === wantedSite()) || view.site;
  if (site.id !== view.site.id) {
    selectSite(site);
    return;
  }
  takeAddressed();
  showInAddress();
  if (view.preset === "custom") choosePeriod(view.period, { keepInterval: true });
  else choosePreset(view.preset, { keepInterval: true });
}

function showControls() {
  for (const button of document.querySelectorAll("[data-preset]")) {
    button.setAttribute("aria-pressed", String(button.dataset.preset === view.preset));
  }
  for (const [id, date] of [["range-from", view.period.from], ["range-to", view.period.to]]) {
    byId(id).value = date;
    markInvalid(byId(id), loadError, false);
  }
  byId("interval").value = view.interval;
}

// `refresh`: the same period read again (today's numbers moved): the controls, where the
// admin may be typing another period, are left as they are.
async function load({ refresh = false } = {}) {
  if (view.period === null) return; // chosen once the site's today is known
  const generation = ++view.generation;
  const { api, site, period } = view;
  if (!refresh) {
    if (!view.intervalChosen) view.interval = autoInterval(period);
    showControls();
    message(loadError, "");
    markLoading(true);
  }
  try {
    const before = previousPeriod(period);
    // Before the first date the API knows there is nothing to compare with, nor before the
    // site's numbers begin: days never counted here are not days without visits.
    const comparable = before && before.from >= site.history_from;
    const [stats, previous] = await Promise.all([
      api.stats(site.id, period, view.interval),
      comparable ? api.stats(site.id, before, "month") : null,
    ]);
    if (generation !== view.generation) return; // another period was chosen meanwhile
    if (refresh && view.stats === null) message(loadError, ""); // the last read's failure
    view.stats = stats;
    view.previous = previous;
    render();
    await Promise.all([topPages.load(), topReferrers.load()]);
  } catch (error) {
    if (generation !== view.generation) return;
    clearPeriod();
    message(loadError, failed(error));
  } finally {
    if (generation === view.generation) markLoading(false);
  }
}

function render() {
  const { stats, previous, site } = view;
  const oneDay = stats.from === stats.to;
  const label = t(oneDay ? "periodLabelOneDay" : "periodLabel", {
    from: formatDate(stats.from),
    to: formatDate(stats.to),
    timezone: site.timezone,
  });
  // A live region: the same words put in again (a refresh every 30 s) are read out again.
  const periodLabel = byId("period-label");
  if (periodLabel.textContent !== label) periodLabel.textContent = label;
  renderTotals(stats.totals, previous && previous.totals, site.history_from);
  renderSeriesTable(byId("series-table").querySelector("table"), stats.series, stats.interval, stats.totals);
  if (!view.showTable) chart.show(stats.series, stats.interval);
}

function showView() {
  // The name says what a press does; with aria-pressed too it would contradict it ("Xem
  // biểu đồ, pressed" while the table shows).
  byId("view-toggle").textContent = t(view.showTable ? "showChart" : "showTable");
  show(byId("chart"), !view.showTable);
  show(byId("series-table"), view.showTable);
  if (!view.showTable && view.stats) chart.show(view.stats.series, view.stats.interval);
}

function showLanguageSwitch() {
  byId("lang-switch").lang = language() === "vi" ? "en" : "vi";
}

function wire() {
  byId("lang-switch").addEventListener("click", switchLanguage);
  signOutButton.addEventListener("click", () => signOut(""));
  picker.addEventListener("change", () => {
    const site = view.sites.find((s) => s.id === picker.value);
    if (site) selectSite(site, { newEntry: true });
  });
  for (const button of document.querySelectorAll("[data-preset]")) {
    button.addEventListener("click", () => {
      choosePreset(button.dataset.preset);
      showInAddress({ newEntry: true });
    });
  }
  byId("custom-range").addEventListener("submit", (event) => {
    event.preventDefault();
    const fields = [byId("range-from"), byId("range-to")];
    const period = { from: fields[0].value, to: fields[1].value };
    if (!isValidPeriod(period)) {
      for (const input of fields) markInvalid(input, loadError, true);
      message(loadError, () => t("errRange"));
      (fields.find((input) => !input.value) || fields[0]).focus();
      return;
    }
    view.preset = "custom";
    choosePeriod(period);
    showInAddress({ newEntry: true });
  });
  byId("interval").addEventListener("change", (event) => {
    view.interval = event.target.value;
    view.intervalChosen = true;
    load();
    showInAddress({ newEntry: true });
  });
  window.addEventListener("popstate", showAddressedView);
  byId("view-toggle").addEventListener("click", () => {
    view.showTable = !view.showTable;
    showView();
  });
  byId("export").addEventListener("click", (event) =>
    whileBusy(event.currentTarget, async () => {
      if (view.period === null) return;
      try {
        const separator = byId("export-semicolon").checked ? "semicolon" : "comma";
        await downloadExport(view.api, view.site.id, view.period, separator);
      } catch (error) {
        message(loadError, failed(error));
      }
    }),
  );
  onLanguageChange(() => {
    showLanguageSwitch();
    showView();
    if (!view.stats) return;
    render();
    topPages.render();
    topReferrers.render();
    if (view.counter) showCounter(view.counter);
  });
}

async function start() {
  translate();
  showLanguageSwitch();
  showView();
  wire();
  const token = savedToken();
  if (!token) {
    show(signInSection, true);
    signIn.show("");
    return;
  }
  try {
    await enter(await openToken(token, wantedSite()), token);
  } catch (error) {
    if (error.status === 401) {
      // A token this tab signed in with has stopped working (rotated): nothing was mistyped.
      signOut(() => t("errSessionEnded"));
      return;
    }
    // The service could not answer (down, restarting): the token is kept, and a reload
    // tries it again. Only a token that stopped working signs the tab out.
    show(signInSection, true);
    signIn.show(() => {
      // The reason may hold the API's own message, an element marked lang="en": put in
      // the sentence as such, not as its string ("[object HTMLSpanElement]").
      const reason = signInError(error);
      const [before, after] = t("errReload").split("{message}");
      return [before, ...(Array.isArray(reason) ? reason : [reason]), after];
    });
  }
}

start();
