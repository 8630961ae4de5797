// The export button: the period's days as the API's CSV file, downloaded by the browser.
// The request needs the Bearer header, so the file is fetched and handed over as a blob.

import { el } from "./dom.js";

// Long enough for the browser to have taken the file.
const REVOKE_AFTER_MS = 60000;

export async function downloadExport(api, siteId, period, separator) {
  const { blob, filename } = await api.exportCsv(siteId, period, separator);
  const url = URL.createObjectURL(blob);
  const link = el("a", { attrs: { href: url, download: filename } });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), REVOKE_AFTER_MS);
}
