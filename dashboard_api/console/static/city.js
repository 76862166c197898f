// The city view, `#city` and `#city/<community>`: a schematic (no map tiles: the machines are
// offline) of communities, then of one community's buildings with a square per household,
// coloured by the worst of its states (GET /city). A household's square leads to its page.
import { addStrings, t } from "./i18n.js";
import { el, registerView } from "./shell.js";
import { dv, getJson } from "./ui.js";

const STATES = ["leak", "valve_cut", "offline", "past_life", "ok"];
let parts = null;
let timer = null;
let shown = "";

function build() {
  const section = el("section", { class: "city" });
  parts = { crumbs: el("p", { class: "crumbs" }), legend: el("div", { class: "legend" }), body: el("div") };
  section.append(parts.crumbs, parts.legend, parts.body);
  return section;
}

function worst(states) {
  return STATES.find((s) => s !== "ok" && states[s] > 0) || "ok";
}

function legend(states) {
  return STATES.map((s) => el("span", { class: "legend-item", "data-state": s },
    el("i", { class: "swatch st-" + s }), t("city.state." + s), " ", dv(states[s], { class: "num" })));
}

function bar(states, total) {
  return el("div", { class: "stack" }, ...STATES.filter((s) => states[s] > 0).map((s) => {
    const part = el("i", { class: "st-" + s });
    part.style.width = `${(100 * states[s]) / Math.max(total, 1)}%`;
    return part;
  }));
}

async function load(arg) {
  shown = arg || "";
  const q = shown ? "?community=" + encodeURIComponent(shown) : "";
  const city = await getJson("/city" + q);
  if (!city) {
    parts.body.replaceChildren(el("p", { class: "error" }, t("city.missing"), " ", dv(shown)));
    return;
  }
  if (!shown) {
    parts.crumbs.replaceChildren(t("city.title"), " · ", dv(city.households, { class: "num" }), " ", t("city.households"));
    parts.legend.replaceChildren(...legend(city.states));
    parts.body.replaceChildren(el("div", { class: "tiles" }, ...city.communities.map((c) =>
      el("a", { href: "#city/" + encodeURIComponent(c.community), class: "tile st-border-" + worst(c.states),
        "data-community": c.community },
      el("strong", {}, dv(c.community)),
      el("span", { class: "muted" }, dv(c.buildings, { class: "num" }), " ", t("city.buildings"), " · ",
        dv(c.households, { class: "num" }), " ", t("city.households")),
      bar(c.states, c.households),
      el("span", { class: "tile-counts" }, ...STATES.filter((s) => s !== "ok" && c.states[s] > 0).map((s) =>
        el("span", { class: "tag st-" + s }, t("city.state." + s), " ", dv(c.states[s], { class: "num" }))))))));
    return;
  }
  const here = city.communities.find((c) => c.community === shown);
  parts.crumbs.replaceChildren(el("a", { href: "#city" }, t("city.title")), " › ", dv(shown), " · ",
    dv(here.households, { class: "num" }), " ", t("city.households"));
  parts.legend.replaceChildren(...legend(here.states));
  parts.body.replaceChildren(el("div", { class: "buildings" }, ...city.buildings.map((b) =>
    el("div", { class: "building st-border-" + worst(b.states), "data-building": b.building },
      el("div", { class: "building-head" }, dv(b.building), " ", el("span", { class: "muted" },
        dv(b.households, { class: "num" }), " ", t("city.households"))),
      el("div", { class: "cells" }, ...b.household_list.map((h) =>
        el("a", { href: "#household/" + encodeURIComponent(h.id), class: "cell st-" + h.state,
          "data-household": h.id, "data-state": h.state, title: `${h.unit} · ${h.id}` }))))))); 
}

function onEvent(type) { // states change with alarms, commands and device health: re-read, at most every 2 s
  if (timer || !/^(alarm|command|valve|device)/.test(type)) return;
  timer = setTimeout(() => { timer = null; load(shown); }, 2000);
}

registerView("city", { build, load, onEvent, nav: "nav.city" });

addStrings({
  "zh-CN": {
    "nav.city": "城市总览", "city.title": "城市总览", "city.households": "户", "city.buildings": "栋楼",
    "city.missing": "找不到小区", "city.state.leak": "泄漏", "city.state.valve_cut": "已关阀",
    "city.state.offline": "离线/无保护", "city.state.past_life": "超期服役", "city.state.ok": "正常",
  },
  en: {
    "nav.city": "City", "city.title": "City", "city.households": "households", "city.buildings": "buildings",
    "city.missing": "No such community", "city.state.leak": "leak", "city.state.valve_cut": "valve cut",
    "city.state.offline": "offline/unprotected", "city.state.past_life": "past service life", "city.state.ok": "normal",
  },
});
