// Small building blocks of the operator pages (household, city, fleet, admin): tables, data
// cells, panels, API errors, downloads and the uPlot loader. Labels come from i18n.js; data
// (ids, addresses, names, reasons) is wrapped in an element with `data-v`, so a test can
// tell data from labels when it checks that a language switch changed every label.
import { t } from "./i18n.js";
import { api, config, el, fmtTime } from "./shell.js";

/** A data value in a <span data-v>: "—" when missing. */
export function dv(value, attrs = {}) {
  return el("span", { "data-v": "", ...attrs }, value === null || value === undefined || value === "" ? "—" : String(value));
}

/** A time as the utility's zone shows it, as data. */
export function when(iso) {
  return dv(iso ? fmtTime().format(new Date(iso)) : null);
}

/** A label of a code (`kind.leak`), or the code itself as data when no label exists. */
export function code(prefix, value) {
  if (value === null || value === undefined) return dv(null);
  const key = `${prefix}.${value}`;
  const text = t(key);
  return text === key ? dv(value) : el("span", {}, text);
}

/** A panel: a <section> with a heading (i18n key) and its body. */
export function panel(titleKey, ...body) {
  return el("section", { class: "panel" }, el("h2", { "data-i18n": titleKey }, t(titleKey)), ...body);
}

/** A table: header labels (i18n keys) and rows of cells (nodes or strings). */
export function table(headKeys, rows, emptyKey = "common.none", attrs = {}) {
  const body = rows.length ? rows
    : [el("tr", {}, el("td", { colSpan: headKeys.length, class: "empty" }, t(emptyKey)))];
  return el("table", { class: "grid", ...attrs },
    el("thead", {}, el("tr", {}, ...headKeys.map((k) => el("th", {}, t(k))))),
    el("tbody", {}, ...body));
}

export function row(attrs, ...cells) {
  return el("tr", attrs, ...cells.map((c) => (c instanceof HTMLTableCellElement ? c : el("td", {}, c))));
}

/** GET a JSON answer, or null (signed out, refused, unreachable). */
export async function getJson(path) {
  try {
    const r = await api(path);
    return r.ok ? await r.json() : null;
  } catch (err) {
    return null;
  }
}

/** The API's own words for a refusal (an interlock's reason, a rule broken). */
export async function problemText(r) {
  const body = await r.json().catch(() => ({}));
  return body.detail || `${r.status}`;
}

/** Fetch a file with the session's token and hand it to the browser as a download. */
export async function download(path, fallbackName) {
  const r = await api(path);
  if (!r.ok) throw new Error(await problemText(r));
  const blob = await r.blob();
  const name = /filename="([^"]+)"/.exec(r.headers.get("Content-Disposition") || "")?.[1] || fallbackName;
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ------------------------------------------------------------------ charts (uPlot)
let uplot = null;

/** uPlot, loaded once from the pinned package (a classic script: window.uPlot). */
export function loadUPlot() {
  if (!uplot) {
    uplot = new Promise((ok, fail) => {
      document.head.append(el("link", { rel: "stylesheet", href: "/console/vendor/uPlot.min.css" }));
      const s = el("script", { src: "/console/vendor/uPlot.iife.min.js" });
      s.onload = () => ok(window.uPlot);
      s.onerror = () => { uplot = null; fail(new Error("uPlot")); };
      document.head.append(s);
    });
  }
  return uplot;
}

/** A line chart of buckets into `host`: series [{label, values, stroke}], times in seconds. */
export async function lineChart(host, times, series, width) {
  const U = await loadUPlot();
  host.replaceChildren();
  const zone = config.timeZone || "Asia/Shanghai";
  return new U({
    width, height: 180, legend: { show: false },
    tzDate: (ts) => U.tzDate(new Date(ts * 1000), zone),
    scales: { x: { time: true } },
    axes: [{ stroke: "#8b9bab", grid: { stroke: "#243140" } }, { stroke: "#8b9bab", grid: { stroke: "#243140" } }],
    series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 1.5, spanGaps: false }))],
  }, [times, ...series.map((s) => s.values)], host);
}
