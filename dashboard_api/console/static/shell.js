// What every page of the console shares: the session, the API client, DOM and time helpers,
// and the registry of pages (views) that the shell shows by the URL's hash (`#name/arg`).
// A page module calls registerView() when imported (pages.js imports them all).
import { language } from "./i18n.js";

export const config = JSON.parse(document.documentElement.dataset.config || "{}");
export const KEY = { token: "gas-safety.token", role: "gas-safety.role", user: "gas-safety.user",
  expires: "gas-safety.expires", lang: "gas-safety.lang" };
export const ROLES = { viewer: 1, operator: 2, engineer: 3, admin: 4 };
export const $ = (id) => document.getElementById(id);


// ------------------------------------------------------------------ session
export const session = {
  get token() { return sessionStorage.getItem(KEY.token); },
  get role() { return sessionStorage.getItem(KEY.role) || "viewer"; },
  get user() { return sessionStorage.getItem(KEY.user) || ""; },
  may(role) { return ROLES[this.role] >= ROLES[role]; },
  save(user, tok) {
    sessionStorage.setItem(KEY.token, tok.access_token);
    sessionStorage.setItem(KEY.role, tok.role);
    sessionStorage.setItem(KEY.user, user);
    sessionStorage.setItem(KEY.expires, String(Date.now() + tok.expires_in * 1000));
  },
  clear() { for (const k of [KEY.token, KEY.role, KEY.user, KEY.expires]) sessionStorage.removeItem(k); },
};

let onUnauthorized = () => {};
/** What the shell does when the API answers 401 (sign out): set once by app.js. */
export function whenUnauthorized(fn) { onUnauthorized = fn; }

/** A request to the API with the session's bearer token; a 401 signs the page out. */
export async function api(path, { method = "GET", json, form } = {}) {
  const headers = {};
  if (session.token) headers.Authorization = "Bearer " + session.token;
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) {
    headers["Content-Type"] = "application/x-www-form-urlencoded";
    body = new URLSearchParams(form).toString();
  }
  const r = await fetch(path, { method, headers, body });
  if (r.status === 401 && path !== "/auth/token") {
    onUnauthorized();
    throw new Error("signed out");
  }
  return r;
}

// ------------------------------------------------------------------ DOM and time
const formats = new Map(); // one formatter per language: making one costs about a millisecond
export function fmtTime() {
  if (!formats.has(language())) {
    formats.set(language(), new Intl.DateTimeFormat(language(), {
      timeZone: config.timeZone || "Asia/Shanghai", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }));
  }
  return formats.get(language());
}

export function duration(seconds) {
  const s = Math.abs(Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(r).padStart(2, "0")}s`;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// ------------------------------------------------------------------ pages
/**
 * The pages besides the board, orders and "mine" (which app.js owns). `build()` returns the
 * page's <section> (made once, on first show); `load(arg)` fills it from the API, `arg` being
 * what follows the name in the hash (`#household/H000001`); `onEvent(body)` (optional) is
 * called for each live event while the page is shown. `nav` (an i18n key) puts a link in the
 * header for roles at or above `minRole`.
 */
export const views = new Map();

export function registerView(name, { build, load, onEvent = null, nav = null, minRole = "viewer" }) {
  views.set(name, { build, load, onEvent, nav, minRole, section: null });
}

/** The hash's name and argument: `#household/H1` -> ["household", "H1"]. */
export function route() {
  const hash = decodeURIComponent(location.hash.slice(1));
  const at = hash.indexOf("/");
  return at < 0 ? [hash, ""] : [hash.slice(0, at), hash.slice(at + 1)];
}
