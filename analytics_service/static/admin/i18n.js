// The dashboard's words and number and date formats, in Vietnamese (the default) and
// English. The choice comes from ?lang= or the switch, and is remembered in localStorage.

const MESSAGES = {
  vi: {
    title: "Thống kê truy cập – Quản trị",
    brand: "Thống kê truy cập",
    otherLanguage: "English",
    signOut: "Đăng xuất",
    signInTitle: "Đăng nhập trang quản trị",
    signInIntro:
      "Dán mã quản trị của trang (in ra một lần khi tạo trang, hoặc một mã mới bằng lệnh dưới đây) hoặc mã quản trị máy chủ (ANALYTICS_ADMIN_TOKEN).",
    siteArgument: "TRANG",
    tokenLabel: "Mã truy cập (token)",
    tokenHint:
      "Mã chỉ được giữ trong thẻ trình duyệt này cho đến khi bạn đăng xuất hoặc đóng thẻ; không lưu cookie, không gửi đi đâu khác.",
    signIn: "Đăng nhập",
    signingIn: "Đang kiểm tra…",
    errWrongToken: "Mã truy cập không đúng. Hãy kiểm tra lại và dán đủ cả mã.",
    errNoToken: "Hãy dán mã truy cập vào ô trên.",
    errTokenCharacters:
      "Mã truy cập không đúng: có ký tự không thể có trong mã (dấu gạch dài – thay cho -, hoặc ký tự ẩn). Hãy sao chép lại mã.",
    errNoSites: "Chưa có trang nào. Tạo trang bằng lệnh: analytics-service site create",
    errSessionEnded: "Phiên làm việc đã kết thúc: mã truy cập không còn dùng được. Hãy đăng nhập lại.",
    errNetwork: "Không kết nối được dịch vụ thống kê. Hãy thử lại sau.",
    errReload: "{message} Tải lại trang để thử lại.",
    errLoad: "Không tải được số liệu: {message}",
    errSave: "Chưa lưu được: {message}",
    errImport: "Chưa nhập được tệp: {message}",
    site: "Trang",
    period: "Khoảng thời gian",
    today: "Hôm nay",
    last7: "7 ngày",
    last30: "30 ngày",
    thisMonth: "Tháng này",
    last12: "12 tháng",
    from: "Từ",
    to: "Đến",
    show: "Xem",
    interval: "Theo",
    day: "Ngày",
    week: "Tuần",
    month: "Tháng",
    errRange: "Ngày bắt đầu phải từ 01/01/1900, trước hoặc bằng ngày kết thúc, và khoảng tối đa 5 năm.",
    periodLabel: "{from} – {to} · giờ {timezone}",
    periodLabelOneDay: "{from} · giờ {timezone}",
    online: "Đang online",
    onlineAsOf: "Cập nhật lúc {time}",
    onlinePaused: "Tạm dừng khi thẻ bị ẩn",
    visits: "Lượt truy cập",
    pageviews: "Lượt xem trang",
    visitors: "Người truy cập",
    total: "Đã truy cập",
    totalSub: "Từ trước tới nay, gồm số của bộ đếm cũ",
    changeVsPrevious: "{change} so với kỳ trước",
    noPrevious: "Kỳ trước chưa có số liệu",
    noWholePrevious: "Số liệu bắt đầu từ {date}: chưa có trọn kỳ trước để so sánh",
    sameAsPrevious: "Bằng kỳ trước",
    overTime: "Theo thời gian",
    showTable: "Xem dạng bảng",
    showChart: "Xem biểu đồ",
    chartLabel: "Biểu đồ lượt truy cập, lượt xem trang và người truy cập; bấm “Xem dạng bảng” để đọc từng số.",
    periodColumn: "Kỳ",
    totalRow: "Tổng",
    topPages: "Trang được xem nhiều",
    topReferrers: "Nguồn truy cập",
    pageColumn: "Trang",
    referrerColumn: "Trang giới thiệu",
    share: "Tỷ lệ",
    showMore: "Xem thêm",
    empty: "Chưa có số liệu trong khoảng này.",
    transfer: "Xuất và nhập số liệu",
    exportHint: "Mỗi ngày của khoảng đang xem là một dòng:",
    exportButton: "Tải tệp CSV",
    exportSemicolon: "Các cột cách nhau bằng dấu chấm phẩy (;), cho Excel cài tiếng Việt",
    importLabel: "Nhập lịch sử của bộ đếm cũ, tệp CSV với các cột",
    importHint: "Các cột cách nhau bằng dấu phẩy (,) hoặc dấu chấm phẩy (;), như bảng tính lưu ra; ngày viết 2025-01-31 hoặc 31/01/2025, số viết 30545 hoặc 30.545. Tệp CSV tải từ đây cũng nhập được (nguyên các cột), với các ngày đến hôm qua: dòng của hôm nay vẫn đang được đếm, chưa phải số cuối.",
    importButton: "Nhập tệp",
    importChoose: "Hãy chọn một tệp CSV.",
    importTooBig: "Tệp lớn hơn 4 MB: hãy chia theo khoảng ngày rồi nhập từng tệp.",
    importDone: "Đã nhập {count} ngày, từ {from} đến {to}.",
    importDoneOne: "Đã nhập 1 ngày: {from}.",
    importRejected: "Không nhập gì. Các dòng lỗi:",
    baseline: "Số của bộ đếm cũ",
    baselineHint: "Con số bộ đếm cũ đã đạt được; “Đã truy cập” đếm tiếp từ đó.",
    baselineVisits: "Lượt truy cập",
    baselinePageviews: "Lượt xem trang",
    baselineSave: "Lưu",
    baselineSaved: "Đã lưu. “Đã truy cập” bây giờ là {total}.",
    baselineSavedOnly: "Đã lưu.",
    baselineInvalid: "{fields}: hãy nhập số nguyên từ 0 trở lên.",
    working: "Đang xử lý…",
  },
  en: {
    title: "Visitor statistics – Dashboard",
    brand: "Visitor statistics",
    otherLanguage: "Tiếng Việt",
    signOut: "Sign out",
    signInTitle: "Sign in to the dashboard",
    signInIntro:
      "Paste the site's admin token (printed once when the site was created, or a new one from the command below) or the server's admin token (ANALYTICS_ADMIN_TOKEN).",
    siteArgument: "SITE",
    tokenLabel: "Token",
    tokenHint:
      "The token is kept in this browser tab only, until you sign out or close the tab; no cookie, sent nowhere else.",
    signIn: "Sign in",
    signingIn: "Checking…",
    errWrongToken: "This token is not valid. Check it and paste it whole.",
    errNoToken: "Paste a token into the field above.",
    errTokenCharacters:
      "This token is not valid: it holds a character no token has (a long dash – for -, or an invisible one). Copy it again.",
    errNoSites: "There is no site yet. Create one with: analytics-service site create",
    errSessionEnded: "Your session ended: the token no longer works. Please sign in again.",
    errNetwork: "The statistics service cannot be reached. Try again later.",
    errReload: "{message} Reload the page to try again.",
    errLoad: "The numbers could not be loaded: {message}",
    errSave: "Not saved: {message}",
    errImport: "The file was not imported: {message}",
    site: "Site",
    period: "Period",
    today: "Today",
    last7: "7 days",
    last30: "30 days",
    thisMonth: "This month",
    last12: "12 months",
    from: "From",
    to: "To",
    show: "Show",
    interval: "By",
    day: "Day",
    week: "Week",
    month: "Month",
    errRange: "The start must be 1900-01-01 or later and on or before the end, and the period at most 5 years.",
    periodLabel: "{from} – {to} · {timezone} time",
    periodLabelOneDay: "{from} · {timezone} time",
    online: "Online now",
    onlineAsOf: "Updated at {time}",
    onlinePaused: "Paused while the tab is hidden",
    visits: "Visits",
    pageviews: "Pageviews",
    visitors: "Visitors",
    total: "Total visits",
    totalSub: "Since the beginning, the old counter's included",
    changeVsPrevious: "{change} vs previous period",
    noPrevious: "No numbers in the previous period",
    noWholePrevious: "Numbers begin on {date}: no whole previous period to compare with",
    sameAsPrevious: "Same as the previous period",
    overTime: "Over time",
    showTable: "Show as a table",
    showChart: "Show the chart",
    chartLabel: "Chart of visits, pageviews and visitors; press “Show as a table” to read every number.",
    periodColumn: "Period",
    totalRow: "Total",
    topPages: "Top pages",
    topReferrers: "Top referrers",
    pageColumn: "Page",
    referrerColumn: "Referrer",
    share: "Share",
    showMore: "Show more",
    empty: "No numbers in this period yet.",
    transfer: "Export and import",
    exportHint: "One line per day of the period shown:",
    exportButton: "Download CSV",
    exportSemicolon: "Columns separated by semicolons (;), for Excel set to Vietnamese",
    importLabel: "Import an old counter's history, a CSV file with the columns",
    importHint: "Columns separated by commas (,) or semicolons (;), as spreadsheets save them; dates as 2025-01-31 or 31/01/2025, counts as 30545 or 30.545. A CSV file downloaded here imports too (every column), for the days up to yesterday: today's line is still being counted, not final.",
    importButton: "Import file",
    importChoose: "Choose a CSV file first.",
    importTooBig: "The file is over 4 MB: split it by date and import each part.",
    importDone: "Imported {count} days, from {from} to {to}.",
    importDoneOne: "Imported 1 day: {from}.",
    importRejected: "Nothing was imported. The bad lines:",
    baseline: "Old counter",
    baselineHint: "What the old counter had reached; “Total visits” goes on from there.",
    baselineVisits: "Visits",
    baselinePageviews: "Pageviews",
    baselineSave: "Save",
    baselineSaved: "Saved. “Total visits” is now {total}.",
    baselineSavedOnly: "Saved.",
    baselineInvalid: "{fields}: enter a whole number, 0 or more.",
    working: "Working…",
  },
};
const STORE = "analytics.lang";

function saved() {
  try {
    return localStorage.getItem(STORE);
  } catch (e) {
    return null; // storage disabled: the choice lasts for this page only
  }
}

function remember(value) {
  try {
    localStorage.setItem(STORE, value);
  } catch (e) {
    // as above
  }
}

function initial() {
  const asked = new URLSearchParams(location.search).get("lang");
  if (Object.hasOwn(MESSAGES, asked)) {
    remember(asked);
    return asked;
  }
  const kept = saved();
  return Object.hasOwn(MESSAGES, kept) ? kept : "vi";
}

function formats(language) {
  const percent = { style: "percent", maximumFractionDigits: 1 };
  return {
    numbers: new Intl.NumberFormat(language),
    changes: new Intl.NumberFormat(language, { ...percent, signDisplay: "exceptZero" }),
    // One decimal always, so that a column of shares lines up (25,0% above 6,3%).
    shares: new Intl.NumberFormat(language, { ...percent, minimumFractionDigits: 1 }),
  };
}

let lang = initial();
let { numbers, changes, shares } = formats(lang);
const listeners = [];

export function language() {
  return lang;
}

export function t(key, vars = {}) {
  const text = MESSAGES[lang][key] ?? MESSAGES.vi[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
}

// The text of `key` with the API's message in place of {message}. The API answers in
// English whatever the page's language: the message is marked so, for screen readers to
// read it with an English voice.
export function withApiMessage(key, apiMessage) {
  const english = document.createElement("span");
  english.lang = "en";
  english.textContent = apiMessage;
  const [before, after] = t(key).split("{message}");
  return [before, english, after ?? ""];
}

// Every element marked data-i18n gets its text, data-i18n-label its aria-label.
export function translate(root = document) {
  document.documentElement.lang = lang;
  document.title = t("title");
  for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of root.querySelectorAll("[data-i18n-label]")) {
    node.setAttribute("aria-label", t(node.dataset.i18nLabel));
  }
}

export function switchLanguage() {
  lang = lang === "vi" ? "en" : "vi";
  remember(lang);
  ({ numbers, changes, shares } = formats(lang));
  // A ?lang= left in the address would undo the choice on the next reload.
  const url = new URL(location.href);
  if (url.searchParams.has("lang")) {
    url.searchParams.delete("lang");
    history.replaceState(null, "", url);
  }
  translate();
  for (const listener of listeners) listener(lang);
}

export function onLanguageChange(listener) {
  listeners.push(listener);
}

export function formatNumber(n) {
  return numbers.format(n);
}

// A change against the previous period: +12 %, -3 %.
export function formatChange(fraction) {
  return changes.format(fraction);
}

// A part of a whole: 12 %.
export function formatShare(fraction) {
  return shares.format(fraction);
}

// Dates of the API are site-local calendar days (YYYY-MM-DD): formatted as such, in UTC,
// so that the browser's own time zone never shifts them.
function utc(iso) {
  const [y, m, d] = iso.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d));
}

export function formatDate(iso) {
  if (lang === "vi") {
    const [y, m, d] = iso.split("-");
    return `${d}/${m}/${y}`;
  }
  return utc(iso).toLocaleDateString("en", {
    timeZone: "UTC",
    day: "numeric",
    month: "short",
    year: "numeric",
  });
}

function formatShortDate(iso) {
  if (lang === "vi") {
    const [, m, d] = iso.split("-");
    return `${d}/${m}`;
  }
  return utc(iso).toLocaleDateString("en", { timeZone: "UTC", day: "numeric", month: "short" });
}

function formatMonth(iso) {
  if (lang === "vi") {
    const [y, m] = iso.split("-");
    return `Tháng ${Number(m)}/${y}`;
  }
  return utc(iso).toLocaleDateString("en", { timeZone: "UTC", month: "long", year: "numeric" });
}

// A series row ({period, from, to}) as a person reads it for the interval.
function lastOfMonth(iso) {
  const [y, m] = iso.split("-").map(Number);
  return new Date(Date.UTC(y, m, 0)).toISOString().slice(0, 10);
}

// A month the period takes whole by its name; a week, or a month the period takes part of
// (at its start or end), by its dates: "Tháng 3/2025" over 15-31 March read as a month.
export function formatPeriod(row, interval) {
  if (interval === "day") return formatDate(row.period);
  if (interval === "month" && row.from === row.period && row.to === lastOfMonth(row.period)) {
    return formatMonth(row.period);
  }
  // A week across New Year names both years: 29/12/2025 – 04/01/2026.
  const start = row.from.slice(0, 4) === row.to.slice(0, 4) ? formatShortDate(row.from) : formatDate(row.from);
  return `${start} – ${formatDate(row.to)}`;
}

export function formatShortPeriod(row, interval) {
  if (interval === "month") {
    const [y, m] = row.period.split("-");
    return lang === "vi" ? `${Number(m)}/${y}` : utc(row.period).toLocaleDateString("en", {
      timeZone: "UTC",
      month: "short",
      year: "2-digit",
    });
  }
  return formatShortDate(interval === "week" ? row.from : row.period);
}

// An instant (ISO date-time) as the clock time of the site's own time zone.
export function formatTime(instant, timeZone) {
  return new Date(instant).toLocaleTimeString(lang, {
    timeZone,
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}
