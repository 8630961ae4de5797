// The baseline form: what the old counter had reached, which the all-time total adds.

import { markInvalid, message, whileBusy } from "./dom.js";
import { formatNumber, t } from "./i18n.js";

const WHOLE = /^\d{1,16}$/;
// 30.545 or 30 545 as the dashboard shows it (30,545 in English): groups of three digits.
const GROUPED = /^\d{1,3}(?:[.,\s\u00a0\u202f]\d{3})+$/;

function whole(text) {
  const digits = GROUPED.test(text) ? text.replace(/\D/g, "") : text;
  return WHOLE.test(digits) ? digits : null;
}

// context: {api, siteId() -> the site shown, saved(siteId, baseline) -> Promise of the new
// total, or of null when it is not known (or that site is no longer shown), failed(error)}
export function setUpBaseline(form, context) {
  const visits = form.elements.visits;
  const pageviews = form.elements.pageviews;
  const button = form.querySelector("button");
  const status = form.querySelector(".status");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = [visits, pageviews];
    const values = fields.map((input) => whole(input.value.trim()));
    const wrong = fields.filter((input, i) => values[i] === null);
    for (const input of fields) markInvalid(input, status, wrong.includes(input));
    if (wrong.length) {
      const names = () => wrong.map((input) => input.labels[0].textContent).join(", ");
      message(status, () => t("baselineInvalid", { fields: names() }));
      wrong[0].focus();
      return;
    }
    message(status, () => t("working"));
    // Another site may be picked while this one saves: the form is that site's then.
    const siteId = context.siteId();
    await whileBusy(button, async () => {
      try {
        const { baseline } = await context.api.setBaseline(siteId, {
          visits: Number(values[0]),
          pageviews: Number(values[1]),
        });
        const total = await context.saved(siteId, baseline);
        if (context.siteId() !== siteId) return;
        message(status, () =>
          total === null ? t("baselineSavedOnly") : t("baselineSaved", { total: formatNumber(total) }),
        );
      } catch (error) {
        if (context.siteId() === siteId) message(status, context.failed(error));
      }
    });
  });

  return {
    fill(baseline) {
      visits.value = String(baseline.visits);
      pageviews.value = String(baseline.pageviews);
      message(status, "");
      for (const input of [visits, pageviews]) markInvalid(input, status, false);
    },
  };
}
