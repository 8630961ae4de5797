// Signing in: what a pasted token opens. The server token lists every site; a site's token
// opens that site, whose id the person gives. A wrong token costs one request and shows
// why on the form; nothing else is called with it.

import { Api, ApiError } from "./api.js";
import { byId, message } from "./dom.js";
import { t } from "./i18n.js";

// -> {api, sites, server, site}: the site to show first (the one asked for, else the first).
export async function openToken(token, siteId) {
  const api = new Api(token);
  let sites = null;
  try {
    sites = (await api.sites()).sites;
  } catch (error) {
    // 403: a valid token, but a site's; anything else is the answer.
    if (!(error instanceof ApiError) || error.status !== 403) throw error;
  }
  if (sites) {
    if (!sites.length) throw new ApiError(0, "no_sites", "");
    const asked = sites.find((s) => s.id === siteId);
    if (siteId && !asked) throw new ApiError(404, "unknown_site", "");
    return { api, sites, server: true, site: asked || sites[0] };
  }
  if (!siteId) throw new ApiError(0, "need_site", "");
  const site = await api.site(siteId);
  return { api, sites: [site], server: false, site };
}

export function signInError(error, siteId) {
  const site = siteId || "";
  if (error.code === "need_site") return t("errNeedSite");
  if (error.code === "no_sites") return t("errNoSites");
  if (error.code === "network") return t("errNetwork");
  if (error.status === 401) return t("errWrongToken");
  if (error.status === 403) return t("errOtherSite", { site });
  if (error.status === 404) return t("errUnknownSite", { site });
  return t("errLoad", { message: error.message });
}

// onOpened({api, sites, server, site}, token) is called once the token has opened a site.
export function setUpSignIn(onOpened) {
  const form = byId("sign-in-form");
  const siteInput = byId("sign-in-site");
  const tokenInput = byId("sign-in-token");
  const error = byId("sign-in-error");
  const button = form.querySelector("button[type=submit]");
  siteInput.value = new URLSearchParams(location.search).get("site") || "";

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = tokenInput.value.trim();
    const siteId = siteInput.value.trim().toLowerCase();
    if (!token) {
      message(error, t("errWrongToken"));
      tokenInput.focus();
      return;
    }
    message(error, "");
    button.disabled = true;
    button.textContent = t("signingIn");
    try {
      const opened = await openToken(token, siteId);
      tokenInput.value = "";
      onOpened(opened, token);
    } catch (failure) {
      message(error, signInError(failure, siteId));
      tokenInput.select();
    } finally {
      button.disabled = false;
      button.textContent = t("signIn");
    }
  });

  return {
    show(text) {
      message(error, text || "");
      (siteInput.value ? tokenInput : siteInput).focus();
    },
  };
}
