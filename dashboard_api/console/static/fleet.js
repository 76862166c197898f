// Fleet health, `#fleet`: by community, homes offline or unprotected (no detector online),
// devices never seen or offline, meters with low batteries, devices past their service life
// (meters 10 years, detectors 5: the gateway's settings). Each row, and the whole fleet,
// downloads as CSV for replacement planning (GET /fleet/health.csv).
import { addStrings, t } from "./i18n.js";
import { el, registerView } from "./shell.js";
import { download, dv, getJson, row, table } from "./ui.js";

const COLS = ["households", "offline_households", "unprotected_households", "never_seen", "offline_devices",
  "low_battery", "past_life_meters", "past_life_detectors"];
let parts = null;

function build() {
  const section = el("section", { class: "fleet" });
  const issue = el("select", { id: "fleet-issue" });
  const all = el("button", { type: "button", class: "csv-all", onclick: () => csv(null, issue.value) });
  parts = { note: el("p", { class: "muted" }), error: el("p", { class: "error", role: "alert" }), body: el("div"), issue, all };
  section.append(el("div", { class: "filters" },
    el("label", {}, el("span", { "data-i18n": "fleet.issue" }, t("fleet.issue")), " ", issue), all),
    parts.note, parts.error, parts.body);
  return section;
}

async function csv(community, issue) {
  parts.error.textContent = "";
  const q = new URLSearchParams();
  if (community) q.set("community", community);
  if (issue) q.set("issue", issue);
  try {
    await download("/fleet/health.csv?" + q, "fleet-health.csv");
  } catch (err) {
    parts.error.replaceChildren(t("fleet.failed"), " ", dv(err.message));
  }
}

async function load() {
  const keep = parts.issue.value;
  parts.issue.replaceChildren(el("option", { value: "" }, t("fleet.issue.all")),
    ...["offline", "never_seen", "low_battery", "past_service_life"].map((i) => el("option", { value: i }, t("fleet.issue." + i))));
  parts.issue.value = keep;
  parts.all.textContent = t("fleet.csv_all");
  const got = await getJson("/fleet/health");
  if (!got) return;
  parts.note.replaceChildren(t("fleet.rules", { m: got.meter_life_years, d: got.detector_life_years, v: got.battery_low_v }));
  const total = Object.fromEntries(COLS.map((c) => [c, got.communities.reduce((n, r) => n + r[c], 0)]));
  const cells = (r) => COLS.map((c) => el("td", { class: "num" + (c !== "households" && r[c] > 0 ? " bad" : ""), "data-col": c }, dv(r[c])));
  parts.body.replaceChildren(table(["fleet.col.community", ...COLS.map((c) => "fleet.col." + c), "fleet.col.export"], [
    ...got.communities.map((r) => row({ "data-community": r.community },
      el("a", { href: "#city/" + encodeURIComponent(r.community) }, dv(r.community)), ...cells(r),
      el("button", { type: "button", class: "csv", onclick: () => csv(r.community, parts.issue.value) }, "CSV"))),
    row({ class: "total" }, el("strong", {}, t("fleet.total")), ...cells(total), ""),
  ], "common.none", { class: "grid fleet-table" }));
}

registerView("fleet", { build, load, nav: "nav.fleet" });

addStrings({
  "zh-CN": {
    "nav.fleet": "设备健康", "fleet.issue": "问题", "fleet.issue.all": "全部问题", "fleet.issue.offline": "离线",
    "fleet.issue.never_seen": "从未上报", "fleet.issue.low_battery": "电池电量低", "fleet.issue.past_service_life": "超过使用寿命",
    "fleet.csv_all": "导出全部 CSV", "fleet.failed": "导出失败：", "fleet.total": "合计",
    "fleet.rules": "使用寿命：燃气表 {m} 年，探测器 {d} 年；电池低于 {v} V 为电量低。",
    "fleet.col.community": "小区", "fleet.col.households": "户数", "fleet.col.offline_households": "离线住户",
    "fleet.col.unprotected_households": "无保护住户", "fleet.col.never_seen": "从未上报设备",
    "fleet.col.offline_devices": "离线设备", "fleet.col.low_battery": "电量低燃气表",
    "fleet.col.past_life_meters": "超期燃气表", "fleet.col.past_life_detectors": "超期探测器", "fleet.col.export": "导出",
  },
  en: {
    "nav.fleet": "Fleet health", "fleet.issue": "Issue", "fleet.issue.all": "All issues", "fleet.issue.offline": "offline",
    "fleet.issue.never_seen": "never seen", "fleet.issue.low_battery": "low battery", "fleet.issue.past_service_life": "past service life",
    "fleet.csv_all": "Export all as CSV", "fleet.failed": "Export failed:", "fleet.total": "Total",
    "fleet.rules": "Service life: meters {m} years, detectors {d} years; a battery under {v} V is low.",
    "fleet.col.community": "Community", "fleet.col.households": "Households", "fleet.col.offline_households": "Homes offline",
    "fleet.col.unprotected_households": "Homes unprotected", "fleet.col.never_seen": "Devices never seen",
    "fleet.col.offline_devices": "Devices offline", "fleet.col.low_battery": "Meters low on battery",
    "fleet.col.past_life_meters": "Meters past life", "fleet.col.past_life_detectors": "Detectors past life", "fleet.col.export": "Export",
  },
});
