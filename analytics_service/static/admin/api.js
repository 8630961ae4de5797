// The admin API, called with the signed-in token as a Bearer header, and the public counter.
// Errors come back as ApiError with the API's status, code, message and details.

// Relative to this file (static/admin/api.js), so a service mounted under a path works.
const BASE = new URL("../../api/v1/", import.meta.url);

export class ApiError extends Error {
  constructor(status, code, message, details = []) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

async function failure(response) {
  try {
    const { error } = await response.json();
    return new ApiError(response.status, error.code, error.message, error.details || []);
  } catch (e) {
    return new ApiError(response.status, "http_" + response.status, response.statusText);
  }
}

async function call(path, init = {}, query = {}) {
  const url = new URL(path, BASE);
  for (const [name, value] of Object.entries(query)) url.searchParams.set(name, value);
  let response;
  try {
    response = await fetch(url, { credentials: "omit", cache: "no-store", ...init });
  } catch (e) {
    throw new ApiError(0, "network", e.message);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

function range(period, extra = {}) {
  return { from: period.from, to: period.to, ...extra };
}

export class Api {
  #auth;

  constructor(token) {
    this.#auth = { Authorization: "Bearer " + token };
  }

  async #json(path, init = {}, query = {}) {
    const headers = { ...this.#auth, ...(init.headers || {}) };
    return (await call(path, { ...init, headers }, query)).json();
  }

  // {scope: "server"}, or {scope: "site", site: id}: what this token opens.
  scope() {
    return this.#json("token");
  }

  sites() {
    return this.#json("sites");
  }

  site(id) {
    return this.#json(`sites/${encodeURIComponent(id)}`);
  }

  stats(id, period, interval) {
    return this.#json(`sites/${encodeURIComponent(id)}/stats`, {}, range(period, { interval }));
  }

  top(id, kind, period, limit) {
    return this.#json(`sites/${encodeURIComponent(id)}/${kind}`, {}, range(period, { limit }));
  }

  async exportCsv(id, period, separator) {
    const response = await call(
      `sites/${encodeURIComponent(id)}/export.csv`,
      { headers: this.#auth },
      range(period, { separator }),
    );
    const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
    return { blob: await response.blob(), filename: named ? named[1] : "export.csv" };
  }

  importCsv(id, file) {
    const form = new FormData();
    form.append("file", file);
    return this.#json(`sites/${encodeURIComponent(id)}/import`, { method: "POST", body: form });
  }

  setBaseline(id, baseline) {
    return this.#json(`sites/${encodeURIComponent(id)}/baseline`, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(baseline),
    });
  }
}

// The public numbers the widget shows: online now, today, the all-time total.
export async function readCounter(id) {
  const response = await call(`sites/${encodeURIComponent(id)}/counter`, { cache: "no-cache" });
  // readAt, not as_of: revalidated (304), the body is the stored one, whose as_of is its
  // first read's (the ETag leaves as_of out, so that unchanged numbers cost nothing).
  return { ...(await response.json()), readAt: new Date().toISOString() };
}
