// The import form: an old counter's CSV sent as a file part; a refusal lists every bad
// line's message as the API gives it (and nothing was written).

import { el, markInvalid, message, whileBusy } from "./dom.js";
import { formatDate, t } from "./i18n.js";

// The API's limit (api/admin.py MAX_IMPORT_BYTES): a bigger file is not sent at all.
const MAX_BYTES = 4 * 1024 * 1024;

// context: {api, siteId() -> the site shown, imported(result), failed(error) -> text or null}
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
      report(t("importChoose"), [], true);
      return;
    }
    if (file.size > MAX_BYTES) {
      report(t("importTooBig"), [], true);
      return;
    }
    report(t("working"));
    await whileBusy(button, async () => {
      try {
        const result = await context.api.importCsv(context.siteId(), file);
        report(
          t("importDone", {
            count: result.imported,
            from: formatDate(result.from),
            to: formatDate(result.to),
          }),
        );
        form.reset();
        context.imported(result);
      } catch (error) {
        if (error.code === "invalid_csv") {
          report(t("importRejected"), error.details.length ? error.details : [error.message], true);
        } else {
          report(context.failed(error));
        }
      }
    });
  });

  return { clear: () => report("") };
}
