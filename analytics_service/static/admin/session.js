// The signed-in token, kept in sessionStorage only: this tab, until sign-out or the tab
// closes. Never a cookie, never in a URL, never logged. The site last looked at is kept
// beside it so that a reload comes back to it.

const TOKEN = "analytics.token";
const SITE = "analytics.site";

function read(key) {
  try {
    return sessionStorage.getItem(key);
  } catch (e) {
    return null; // storage disabled: signed in for this page only
  }
}

function write(key, value) {
  try {
    sessionStorage.setItem(key, value);
  } catch (e) {
    // as above
  }
}

export function savedToken() {
  return read(TOKEN);
}

export function savedSite() {
  return read(SITE);
}

export function rememberToken(token) {
  write(TOKEN, token);
}

export function rememberSite(site) {
  write(SITE, site);
}

export function forget() {
  try {
    sessionStorage.removeItem(TOKEN);
    sessionStorage.removeItem(SITE);
  } catch (e) {
    // nothing was stored
  }
}
