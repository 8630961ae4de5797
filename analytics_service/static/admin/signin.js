// Signing in: what a pasted token opens. The server token opens every site, a site's token
// that site. A wrong token costs one request and shows why on the form; nothing else is
// called with it.

import { Api, ApiError } from "./api.js";
import { byId, markInvalid, message } from "./dom.js";
import { t, withApiMessage } from "./i18n.js";

// -> {api, sites, site}: `site` is the one to show first, `wanted` if the token opens it.
export async function openToken(token, wanted) {
  if (!TOKEN_CHARACTERS.test(token)) throw new ApiError(401, "token_characters", "");
  const api = new Api(token);
  const scope = await api.scope();
  if (scope.scope === "site") {
    const site = await api.site(scope.site);
    return { api, sites: [site], site };
  }
  const { sites } = await api.sites();
  if (!sites.length) throw new ApiError(0, "no_sites", "");
  return { api, sites, site: sites.find((s) => s.id === wanted) || sites[0] };
}

// Every token is printable ASCII (the server's is refused otherwise, a site's is made so).
// A pasted one with anything else (an en dash for "-", a zero-width space a chat app
// added) is wrong: fetch cannot even send it, and its TypeError read as the service being
// unreachable.
const TOKEN_CHARACTERS = /^[\x20-\x7e]+$/;

export function signInError(error) {
  if (error.code === "no_sites") return t("errNoSites");
  if (error.code === "token_characters") return t("errTokenCharacters");
  if (error.code === "network") return t("errNetwork");
  if (error.status === 401) return t("errWrongToken");
  return withApiMessage("errLoad", error.message);
}

// onOpened({api, sites, site}, token) is called once the token has opened its sites;
// `wanted()` names the site to show first.
export function setUpSignIn(onOpened, wanted) {
  const form = byId("sign-in-form");
  const input = byId("sign-in-token");
  const error = byId("sign-in-error");
  const button = form.querySelector("button[type=submit]");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    // A token copied from an Authorization header (README's curl examples) comes with its
    // scheme; no token begins with one.
    const token = input.value.trim().replace(/^Bearer\s+/i, "");
    if (!token) {
      message(error, () => t("errNoToken"));
      markInvalid(input, error, true);
      input.focus();
      return;
    }
    message(error, "");
    markInvalid(input, error, false);
    button.disabled = true;
    button.textContent = t("signingIn");
    try {
      const opened = await openToken(token, wanted());
      input.value = "";
      onOpened(opened, token);
    } catch (failure) {
      message(error, () => signInError(failure));
      markInvalid(input, error, failure.status === 401);
      input.select();
    } finally {
      button.disabled = false;
      button.textContent = t("signIn");
    }
  });

  return {
    show(text) {
      message(error, text || "");
      markInvalid(input, error, false);
      input.focus();
    },
  };
}
