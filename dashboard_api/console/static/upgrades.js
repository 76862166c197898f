// The upgrade programme for operators: places per community (admins edit them; the API
// refuses fewer places than are booked) and the bookings by visit slot (operators cancel a
// booking, its place going back to the community, or mark the visit done).
import { addStrings, t } from "./i18n.js";
import { api, el, fmtTime, registerView, session } from "./shell.js";

addStrings({
  "zh-CN": {
    "nav.upgrades": "升级计划",
    "upg.quotas": "各小区名额",
    "upg.bookings": "预约",
    "upg.community": "小区",
    "upg.places": "名额",
    "upg.booked": "已预约",
    "upg.remaining": "剩余",
    "upg.save": "保存",
    "upg.add": "新增小区名额",
    "upg.slot": "上门时间",
    "upg.household": "户号",
    "upg.status": "状态",
    "upg.by": "预约人",
    "upg.actions": "操作",
    "upg.cancel": "取消预约",
    "upg.done": "已完成",
    "upg.all": "全部",
    "upg.empty": "暂无",
    "upg.saved": "已保存：{c} 共 {n} 个名额",
    "booking.booked": "已预约",
    "booking.done": "已完成",
    "booking.cancelled": "已取消",
  },
  en: {
    "nav.upgrades": "Upgrades",
    "upg.quotas": "Places per community",
    "upg.bookings": "Bookings",
    "upg.community": "Community",
    "upg.places": "Places",
    "upg.booked": "Booked",
    "upg.remaining": "Left",
    "upg.save": "Save",
    "upg.add": "Add a community's places",
    "upg.slot": "Visit",
    "upg.household": "Household",
    "upg.status": "Status",
    "upg.by": "Booked by",
    "upg.actions": "Actions",
    "upg.cancel": "Cancel booking",
    "upg.done": "Done",
    "upg.all": "All",
    "upg.empty": "None",
    "upg.saved": "Saved: {c} has {n} places",
    "booking.booked": "booked",
    "booking.done": "done",
    "booking.cancelled": "cancelled",
  },
});

const STATUSES = ["booked", "done", "cancelled"];
let parts = null;

function label(key, tag = "span") { return el(tag, { "data-i18n": key, textContent: t(key) }); }

function head(...keys) { return el("thead", {}, el("tr", {}, ...keys.map((k) => label(k, "th")))); }

function build() {
  const status = el("select", { id: "upg-status" });
  status.addEventListener("change", () => load());
  const add = el("form", { id: "upg-add", class: "filters" },
    el("label", {}, label("upg.community"), " ", el("input", { name: "community", required: true, maxLength: 100 })),
    el("label", {}, label("upg.places"), " ",
      el("input", { name: "places", type: "number", min: 0, max: 1000000, required: true })),
    el("button", { type: "submit", "data-i18n": "upg.add", textContent: t("upg.add") }));
  add.addEventListener("submit", (e) => {
    e.preventDefault();
    save(add.community.value.trim(), add.places.value).then((ok) => { if (ok) add.reset(); });
  });
  parts = {
    quotas: el("tbody", { id: "upg-quotas" }),
    bookings: el("tbody", { id: "upg-bookings" }),
    status, add,
    msg: el("p", { id: "upg-msg", class: "note", role: "status" }),
    error: el("p", { id: "upg-error", class: "error", role: "alert" }),
  };
  return el("section", { class: "upgrades" },
    label("upg.quotas", "h2"),
    el("table", { class: "list" }, head("upg.community", "upg.places", "upg.booked", "upg.remaining"), parts.quotas),
    add, parts.msg, parts.error,
    label("upg.bookings", "h2"),
    el("div", { class: "filters" }, el("label", {}, label("upg.status"), " ", status)),
    el("table", { class: "list" },
      head("upg.slot", "upg.household", "upg.community", "upg.status", "upg.by", "upg.actions"), parts.bookings));
}

async function save(community, places) {
  parts.msg.textContent = ""; parts.error.textContent = "";
  const r = await api(`/upgrades/quotas/${encodeURIComponent(community)}`, { method: "PUT", json: { places: Number(places) } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { parts.error.textContent = body.detail || String(r.status); return false; }
  parts.msg.textContent = t("upg.saved", { c: body.community, n: body.places });
  await load();
  return true;
}

async function finish(booking, action) {
  parts.msg.textContent = ""; parts.error.textContent = "";
  const r = await api(`/upgrades/bookings/${booking.id}/${action}`, { method: "POST" });
  if (!r.ok) parts.error.textContent = (await r.json().catch(() => ({}))).detail || String(r.status);
  await load();
}

function quotaRow(q) {
  let places = String(q.places);
  if (session.may("admin")) {
    const input = el("input", { type: "number", min: q.booked, max: 1000000, value: q.places, class: "places" });
    const button = el("button", { type: "button", class: "save", textContent: t("upg.save") });
    button.addEventListener("click", () => save(q.community, input.value));
    places = el("span", {}, input, " ", button);
  }
  return el("tr", { "data-community": q.community },
    el("td", { textContent: q.community }), el("td", {}, places),
    el("td", { class: "num booked", textContent: String(q.booked) }),
    el("td", { class: "num remaining", textContent: String(q.remaining) }));
}

function bookingRow(b) {
  const actions = el("td", {});
  if (b.status === "booked" && session.may("operator")) {
    for (const [action, key] of [["cancel", "upg.cancel"], ["done", "upg.done"]]) {
      const button = el("button", { type: "button", class: action, textContent: t(key) });
      button.addEventListener("click", () => finish(b, action));
      actions.append(button, " ");
    }
  }
  return el("tr", { "data-booking": String(b.id) },
    el("td", { textContent: fmtTime().format(new Date(b.slot_start)) }),
    el("td", {}, el("a", { href: `#household/${b.household_id}`, textContent: b.household_id })),
    el("td", { textContent: b.community }),
    el("td", { class: "status", textContent: t("booking." + b.status) }),
    el("td", { textContent: b.created_by }), actions);
}

function empty(cols) { return el("tr", {}, el("td", { colSpan: cols, class: "empty", textContent: t("upg.empty") })); }

async function load() {
  const { status } = parts;
  const chosen = status.value || "booked";
  status.replaceChildren(el("option", { value: "all", textContent: t("upg.all") }),
    ...STATUSES.map((s) => el("option", { value: s, textContent: t("booking." + s) })));
  status.value = chosen;
  parts.add.hidden = !session.may("admin");
  const query = chosen === "all" ? "" : `&status=${chosen}`;
  const [quotas, bookings] = await Promise.all([
    api("/upgrades/quotas?limit=500"), api(`/upgrades/bookings?limit=500${query}`)]);
  if (!quotas.ok || !bookings.ok) { parts.error.textContent = String(quotas.ok ? bookings.status : quotas.status); return; }
  const q = (await quotas.json()).items, b = (await bookings.json()).items;
  parts.quotas.replaceChildren(...(q.length ? q.map(quotaRow) : [empty(4)]));
  parts.bookings.replaceChildren(...(b.length ? b.map(bookingRow) : [empty(6)]));
}

registerView("upgrades", { build, load, nav: "nav.upgrades", minRole: "viewer" });
