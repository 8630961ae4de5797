// The import form: an old counter's CSV sent as a file part; a refusal lists every bad
// line's message as the API gives it (and nothing was written).

import { el, markInvalid, message, whileBusy } from "./dom.js";
import { formatDate, t } from "./i18n.js";

// The API's limit (api/admin.py MAX_IMPORT_BYTES): a bigger file is not sent at all.
const MAX_BYTES = 4 * 1024 * 1024;

// context: {api, siteId() -> the site shown, imported(result), failed(error) -> what `message`
// shows}
export function setUpImport(form, context) {
  const input = form.querySelector("input[type=file]");
  const button = form.querySelector("button");
  const status = form.querySelector(".status");
  const problems = form.querySelector(".problems");

  // `lines` are the API's, in English whatever the page's language.
  function report(text, lines = [], fileInvalid = false) {
    message(status, text);
    problems.replaceChildren(...lines.map((line) => el("li", { text: line, attrs: { lang: "en" } })));
    problems.hidden = lines.length === 0;
    markInvalid(input, status, fileInvalid);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = input.files[0];
    if (!file) {
      report(() => t("importChoose"), [], true);
      return;
    }
    if (file.size > MAX_BYTES) {
      report(() => t("importTooBig"), [], true);
      return;
    }
    report(() => t("working"));
    // Another site may be picked while the file goes in: the form is that site's then.
    const siteId = context.siteId();
    await whileBusy(button, async () => {
      try {
        const result = await context.api.importCsv(siteId, file);
        if (context.siteId() !== siteId) return;
        report(() =>
          t(result.imported === 1 ? "importDoneOne" : "importDone", {
            count: result.imported,
            from: formatDate(result.from),
            to: formatDate(result.to),
          }),
        );
        form.reset();
        context.imported(result);
      } catch (error) {
        const text = error.code === "invalid_csv" ? () => t("importRejected") : context.failed(error);
        if (context.siteId() !== siteId) return;
        if (error.code === "invalid_csv") {
          report(text, error.details.length ? error.details : [error.message], true);
        } else {
          report(text);
        }
      }
    });
  });

  // Another site picked: a file chosen for the last one is not sent to it by mistake.
  return {
    clear() {
      form.reset();
      report("");
    },
  };
}
