// The console: sign-in, the live board, live updates over /events. Plain ES module, no build.
// The access token lives in sessionStorage (this tab only) and is refreshed before it
// expires (POST /auth/refresh); the API's gate checks it on every request, so a revoked
// user is signed out at the next request or by the event stream's `stream.closed`.
import { language, setLanguage, t } from "./i18n.js";
import { $, KEY, api, config, duration, el, fmtTime, route, session, views, whenUnauthorized } from "./shell.js";
import "./pages.js";

let board = null;          // the last GET /board
let lastEventId = null;    // for Last-Event-ID on reconnect
let stream = null;         // AbortController of the open /events request
let refreshTimer = null;
let reloading = null;
let reloadAgain = false;
let known = null;          // alarm ids on the board at the last render (null: first render)
let flashing = new Set();  // new critical alarm ids to flash

async function signIn(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const user = form.get("username");
  $("login-error").textContent = "";
  const r = await api("/auth/token", { method: "POST", form: { username: user, password: form.get("password") } });
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    $("login-error").textContent = r.status === 429
      ? t("auth.throttled", { s: body.retry_after_s ?? "" }) : (r.status === 401 ? t("auth.failed") : body.detail || r.status);
    return;
  }
  session.save(user, await r.json());
  event.target.reset();
  start();
}

whenUnauthorized(() => signOut());

function signOut(message) {
  session.clear();
  clearTimeout(refreshTimer);
  if (stream) stream.abort();
  stream = null;
  board = null;
  known = null;
  show("login");
  if (message) $("login-error").textContent = message;
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  const left = Number(sessionStorage.getItem(KEY.expires)) - Date.now();
  refreshTimer = setTimeout(refresh, Math.max(5000, left * 0.6));
}

async function refresh() {
  try {
    const r = await api("/auth/refresh", { method: "POST" });
    if (!r.ok) return scheduleRefresh();
    session.save(session.user, await r.json());
    if (stream) stream.abort(); // reopen the stream with the new token (it replays the gap)
    scheduleRefresh();
  } catch (err) {
    if (session.token) setTimeout(refresh, 5000);
  }
}

// ------------------------------------------------------------------ views
const OWN = ["board", "orders", "mine"]; // the pages of this module; others: views (shell.js)
let view = "board";

function allowed(name) {
  if (OWN.includes(name)) return name !== "mine" || session.may("engineer");
  const v = views.get(name);
  return Boolean(v) && session.may(v.minRole);
}

function currentView() {
  const [wanted] = route();
  if (allowed(wanted)) return wanted;
  return session.role === "engineer" ? "mine" : "board";
}

function navLinks() { // the registered pages' links, before the API's
  for (const [name, v] of views) {
    if (!v.nav) continue;
    let link = document.querySelector(`#nav a[href="#${name}"]`);
    if (!link) {
      link = el("a", { href: "#" + name, "data-i18n": v.nav });
      $("nav").insertBefore(link, $("nav").querySelector('a[href="/docs"]'));
    }
    link.textContent = t(v.nav);
    link.hidden = !session.may(v.minRole);
  }
}

function show(name) {
  view = name;
  const page = views.get(name);
  if (page && !page.section) {
    page.section = page.build();
    page.section.id = name;
    document.querySelector("main").append(page.section);
  }
  for (const v of ["login", ...OWN]) $(v).hidden = v !== name;
  for (const [n, v] of views) if (v.section) v.section.hidden = n !== name;
  $("nav-mine").hidden = !session.may("engineer");
  navLinks();
  const signedIn = name !== "login";
  $("nav").hidden = !signedIn;
  $("signout").hidden = !signedIn;
  $("live").hidden = !signedIn;
  $("who").textContent = signedIn ? `${session.user} · ${t("role." + session.role)}` : "";
}

function start() {
  if (location.hash === "#docs") { location.href = "/docs"; return; }
  show(currentView());
  scheduleRefresh();
  reload(true); // at once; the stream reads it again once open, so nothing raised between is missed
  listen();
}

// ------------------------------------------------------------------ live events
async function listen() {
  let delay = 500;
  while (session.token) {
    const ctl = new AbortController();
    stream = ctl;
    try {
      const headers = { Authorization: "Bearer " + session.token, Accept: "text/event-stream" };
      if (lastEventId) headers["Last-Event-ID"] = lastEventId;
      const r = await fetch("/events", { headers, signal: ctl.signal });
      if (r.status === 401) { signOut(); return; }
      if (!r.ok) throw new Error("events " + r.status);
      setLive(true);
      delay = 500;
      // loaded once the stream is open, so nothing raised in between is missed; after a
      // reconnect, whatever happened while disconnected
      reload(true);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          onFrame(buf.slice(0, end));
          buf = buf.slice(end + 2);
        }
      }
    } catch (err) {
      // aborted (token refreshed, signed out) or the API went away: retry below
    }
    setLive(false);
    if (!session.token) return;
    if (!ctl.signal.aborted) {
      await new Promise((ok) => setTimeout(ok, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
}

function onFrame(frame) {
  let id = null, type = "message", data = "";
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const at = line.indexOf(":");
    const name = at < 0 ? line : line.slice(0, at);
    let value = at < 0 ? "" : line.slice(at + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "id") id = value;
    else if (name === "event") type = value;
    else if (name === "data") data += value;
  }
  if (id) lastEventId = id;
  const body = data ? JSON.parse(data) : {};
  if (type === "stream.open") return;
  if (type === "stream.closed") {
    if (/expired/.test(body.reason || "")) { if (stream) stream.abort(); return; }
    signOut(t("auth.ended", { reason: body.reason || "" }));
    return;
  }
  if (type === "alarm.raised" && body.severity === "critical") alertNew();
  const page = views.get(view);
  if (page) { if (page.onEvent) page.onEvent(type, body); return; }
  changed(body.household_id);
}

// What live events named since the last read: households, or "everything" (a gap, an
// event without a household). The board then reads only those households' rows.
const pending = { households: new Set(), all: false };

function changed(household) {
  if (household && view === "board" && board) pending.households.add(household);
  else pending.all = true;
  reload();
}

function setLive(on) {
  $("live").textContent = on ? t("live.on") : t("live.off");
  $("live").className = on ? "live on" : "live off";
  document.body.dataset.live = on ? "on" : "off";
}

let audio = null;
function alertNew() {
  try {
    audio = audio || new AudioContext();
    const osc = audio.createOscillator();
    osc.frequency.value = 880;
    osc.connect(audio.destination);
    osc.start();
    osc.stop(audio.currentTime + 0.25);
  } catch (err) { /* no sound before the user touched the page */ }
}

// ------------------------------------------------------------------ the board
function reload(full = false) {
  if (full) pending.all = true;
  if (reloading) { reloadAgain = true; return reloading; }
  reloading = (async () => {
    try {
      if (view === "orders") await loadOrders();
      else if (view === "mine") await loadMine();
      else if (views.has(view)) await views.get(view).load(route()[1]);
      else await loadBoard();
    } catch (err) { /* signed out or unreachable: the stream's reconnect reloads */ }
    reloading = null;
    if (reloadAgain) { reloadAgain = false; reload(); }
  })();
  return reloading;
}

async function loadBoard() {
  const houses = [...pending.households];
  const whole = !board || pending.all || !houses.length || houses.length > 200;
  pending.households.clear();
  pending.all = false;
  performance.mark("board-fetch");
  const query = whole ? "" : "?" + houses.map((h) => "household_id=" + encodeURIComponent(h)).join("&");
  const r = await api("/board" + query);
  if (!r.ok) { if (!whole) pending.all = true; return; }
  const got = await r.json();
  if (whole) {
    board = got;
  } else { // those households' rows replaced; the counts and incidents are always whole
    const named = new Set(houses);
    const rows = board.alarms.filter((a) => !named.has(a.household_id)).concat(got.alarms);
    rows.sort(boardOrder);
    board = { ...got, alarms: rows, truncated: board.truncated };
  }
  performance.mark("board-render");
  render();
  performance.measure(whole ? "board.fetch" : "board.delta", "board-fetch", "board-render");
  performance.measure("board.render", "board-render");
}

const RANK = { critical: 0, warning: 1, info: 2 };
function boardOrder(a, b) { // as the API sorts: severity, unacknowledged first, newest first
  return RANK[a.severity] - RANK[b.severity]
    || Number(a.acknowledged_at !== null) - Number(b.acknowledged_at !== null)
    || (a.raised_at < b.raised_at ? 1 : a.raised_at > b.raised_at ? -1 : b.id - a.id);
}

function render() {
  if (!board) return;
  const c = board.counts;
  $("counts").replaceChildren(...["critical", "warning", "info", "returned_to_normal", "shelved", "lifecycle"]
    .map((k) => el("span", { class: "count " + k, "data-count": k },
      el("b", {}, String(c[k])), " ", t("count." + k))));
  $("board-note").textContent = board.truncated ? t("board.truncated", { n: board.alarms.length }) : "";
  const ids = new Set(board.alarms.map((a) => a.id));
  if (known) for (const a of board.alarms) if (!known.has(a.id) && a.severity === "critical") flashing.add(a.id);
  known = ids;
  for (const id of rowCache.keys()) if (!ids.has(id)) rowCache.delete(id);
  const incidents = new Map(board.incidents.map((i) => [i.id, i]));
  const rows = [];
  const grouped = new Set();
  for (const a of board.alarms) {
    const inc = a.incident_id !== null ? incidents.get(a.incident_id) : undefined;
    if (inc) {
      if (grouped.has(inc.id)) continue;
      grouped.add(inc.id);
      const members = board.alarms.filter((x) => x.incident_id === inc.id);
      rows.push(incidentRow(inc, members));
    } else {
      rows.push(alarmRow(a));
    }
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 10, class: "empty" }, t("board.empty"))));
  $("rows").replaceChildren(...rows);
  tick();
}

function valveCell(a) {
  if (!a.valve) return el("td", { class: "valve" }, t("valve.none"));
  return el("td", { class: "valve v-" + a.valve.view, "data-valve": a.valve.view }, t("valve." + a.valve.view));
}

function orderCell(a) {
  const w = a.work_order;
  if (!w) return el("td", { class: "order" }, "—");
  const clocks = [];
  if (w.arrive_in_s !== null) clocks.push(el("span", { class: "sla", "data-deadline": w.arrive_by, "data-what": "arrive" }));
  else if (w.resolve_in_s !== null) clocks.push(el("span", { class: "sla", "data-deadline": w.resolve_by, "data-what": "resolve" }));
  return el("td", { class: "order", "data-order": w.id }, `#${w.id} ${t("order." + w.status)} `, ...clocks);
}

function stateText(a) {
  if (a.returned_to_normal) return t("state.returned");
  return t("state." + a.state);
}

function actionsCell(a) {
  const td = el("td", { class: "actions" });
  if (!session.may("operator")) return td;
  if (!a.acknowledged_at) td.append(el("button", { type: "button", class: "ack", onclick: () => act("ack", a) }, t("action.ack")));
  if (a.severity !== "critical" && !a.cleared_at) {
    td.append(el("button", { type: "button", class: "shelve", onclick: () => act("shelve", a) }, t("action.shelve")));
  }
  return td;
}

const rowCache = new Map(); // alarm id -> {sig, tr}: unchanged rows are not built again

function alarmRow(a) {
  const sig = JSON.stringify(a) + language() + session.role;
  const cached = rowCache.get(a.id);
  if (cached && cached.sig === sig) return cached.tr;
  const tr = buildAlarmRow(a);
  rowCache.set(a.id, { sig, tr });
  return tr;
}

function buildAlarmRow(a) {
  const tr = el("tr", { class: `sev-${a.severity}${a.acknowledged_at ? " acked" : ""}${a.returned_to_normal ? " rtn" : ""}`,
    "data-alarm": a.id, "data-household": a.household_id },
    el("td", { class: "sev" }, t("severity." + a.severity)),
    el("td", {}, t("kind." + a.kind) === "kind." + a.kind ? a.kind : t("kind." + a.kind)),
    el("td", { class: "addr" }, householdLink(a.household_id, a.address)),
    el("td", {}, `${a.community} / ${a.building}`),
    el("td", { class: "num" }, a.value === null ? "—" : String(a.value)),
    el("td", { class: "since", "data-since": a.raised_at, title: fmtTime().format(new Date(a.raised_at)) }),
    valveCell(a), orderCell(a),
    el("td", { class: "state" }, stateText(a)),
    actionsCell(a));
  if (flashing.has(a.id)) { tr.classList.add("flash"); setTimeout(() => { flashing.delete(a.id); tr.classList.remove("flash"); }, 6000); }
  return tr;
}

function incidentRow(inc, members) {
  const first = members[0];
  const households = el("ul", { class: "households" },
    ...members.map((m) => el("li", { "data-household": m.household_id, "data-alarm": m.id },
      householdLink(m.household_id, m.address), ` · ${m.value ?? ""} · `, valveCell(m).textContent, " · ",
      ...(session.may("operator") && !m.acknowledged_at
        ? [el("button", { type: "button", class: "ack", onclick: () => act("ack", m) }, t("action.ack"))] : []))));
  const tr = el("tr", { class: `incident sev-${first.severity}`, "data-incident": inc.id },
    el("td", { class: "sev" }, t("severity." + first.severity)),
    el("td", {}, t("kind." + inc.kind)),
    el("td", { class: "addr" }, el("div", {}, t("incident.title", { building: inc.building, n: inc.households })), households),
    el("td", {}, `${inc.community} / ${inc.building}`),
    el("td", { class: "num" }, String(Math.max(...members.map((m) => m.value ?? 0)))),
    el("td", { class: "since", "data-since": inc.opened_at }),
    valveCell(first), orderCell(first),
    el("td", { class: "state" }, stateText(first)),
    el("td", { class: "actions" }));
  if (members.some((m) => flashing.has(m.id))) tr.classList.add("flash");
  return tr;
}

/** An address that leads to its household's page (#household/<id>). */
function householdLink(id, text) {
  return id ? el("a", { href: "#household/" + encodeURIComponent(id), class: "hh-link" }, text) : text;
}

function tick() {
  const now = Date.now();
  for (const node of document.querySelectorAll("[data-since]")) {
    node.textContent = duration((now - Date.parse(node.dataset.since)) / 1000);
  }
  for (const node of document.querySelectorAll("[data-deadline]")) {
    const left = (Date.parse(node.dataset.deadline) - now) / 1000;
    node.textContent = left < 0 ? t("order.late", { t: duration(left) })
      : t("order." + node.dataset.what, { t: duration(left) });
    node.classList.toggle("late", left < 0);
  }
}

// ------------------------------------------------------------------ acknowledge, shelve
const ACTS = {
  ack: { title: "ack.title", label: "ack.comment",
    send: (a, d) => api(`/alarms/${a.id}/acknowledge`, { method: "POST", json: { comment: d.get("text") } }) },
  shelve: { title: "shelve.title", label: "shelve.reason", minutes: true,
    send: (a, d) => api(`/alarms/${a.id}/shelve`, { method: "POST",
      json: { minutes: Number(d.get("minutes")), reason: d.get("text") } }) },
  resolve: { title: "resolve.title", label: "resolve.findings",
    send: (o, d) => api(`/work-orders/${o.id}/resolve`, { method: "POST",
      json: { findings: d.get("text"), expected_version: o.version } }) },
  reopen: { title: "reopen.title", label: "reopen.reason",
    send: (o, d) => api(`/valves/${o.meter_id}/reopen`, { method: "POST", json: { reason: d.get("text") } }) },
};

function act(kind, subject, done) {
  const spec = ACTS[kind];
  const dialog = $("act");
  const form = $("act-form");
  form.reset();
  $("act-error").textContent = "";
  $("act-title").textContent = t(spec.title);
  $("act-subject").textContent = subject.kind ? `${t("kind." + subject.kind)} · ${subject.address}`
    : `#${subject.id} · ${subject.address}`;
  $("act-minutes-row").hidden = !spec.minutes;
  $("act-text-label").textContent = t(spec.label);
  form.onsubmit = async (event) => {
    if (event.submitter && event.submitter.value === "cancel") return;
    event.preventDefault();
    const r = await spec.send(subject, new FormData(form));
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      // the API's own words: an interlock's reason, a state that changed meanwhile
      $("act-error").textContent = body.detail || String(r.status);
      return;
    }
    dialog.close();
    if (done) done(body);
    reload(true);
  };
  dialog.showModal();
}

// ------------------------------------------------------------------ work orders
let orders = null;

function fillSelect(select, values, labelOf) {
  const keep = select.value;
  select.replaceChildren(el("option", { value: "" }, t("filter.all")),
    ...values.map((v) => el("option", { value: v }, labelOf ? labelOf(v) : v)));
  select.value = values.includes(keep) ? keep : "";
}

async function loadOrders() {
  const q = new URLSearchParams();
  for (const [id, key] of [["f-community", "community"], ["f-priority", "priority"], ["f-cause", "cause"]]) {
    if ($(id).value) q.set(key, $(id).value);
  }
  const r = await api("/dispatch?" + q);
  if (!r.ok) return;
  orders = await r.json();
  renderOrders();
}

function slaSpans(o) {
  const out = [];
  if (o.arrive_in_s !== null) out.push(el("span", { class: "sla", "data-deadline": o.arrive_by, "data-what": "arrive" }));
  if (o.resolve_in_s !== null) out.push(" ", el("span", { class: "sla", "data-deadline": o.resolve_by, "data-what": "resolve" }));
  return out;
}

function orderCard(o, buttons) {
  return el("div", { class: `card p-${o.priority}${o.overdue ? " overdue" : ""}`, "data-order": o.id },
    el("div", { class: "card-head" }, `#${o.id} · ${t("priority." + o.priority)} · ${t("kind." + o.cause) === "kind." + o.cause ? o.cause : t("kind." + o.cause)}`),
    el("div", { class: "addr" }, householdLink(o.household_id, o.address)),
    el("div", { class: "muted" }, `${o.community} / ${o.building}`),
    el("div", { class: "status", "data-status": o.status }, t("order." + o.status)),
    el("div", {}, ...slaSpans(o)),
    el("div", { class: "assignee" }, o.assignee ? t("order.assignee", { name: o.assignee }) : t("order.unassigned"),
      o.crew ? " · " + t("order.crew", { crew: o.crew }) : ""),
    el("div", { class: "buttons" }, ...buttons));
}

function renderOrders() {
  if (!orders) return;
  const all = orders.orders;
  fillSelect($("f-community"), [...new Set(all.map((o) => o.community))].sort());
  fillSelect($("f-priority"), ["urgent", "high", "normal"], (p) => t("priority." + p));
  fillSelect($("f-cause"), [...new Set(all.map((o) => o.cause))].sort());
  const columns = [["open", (o) => o.status === "open"], ["dispatched", (o) => o.status === "dispatched"],
    ["on_site", (o) => o.status === "on_site"], ["closed", (o) => o.status === "resolved" || o.status === "cancelled"]];
  $("columns").replaceChildren(...columns.map(([name, match]) => {
    const mine = all.filter(match);
    return el("div", { class: "column", "data-column": name },
      el("h3", {}, `${t("column." + name)} (${mine.length})`),
      ...mine.map((o) => orderCard(o, [
        ...(session.may("operator") && name !== "closed"
          ? [el("button", { type: "button", class: "assign", onclick: () => assign(o) }, t("action.assign"))] : []),
        el("button", { type: "button", class: "timeline", onclick: () => timeline(o) }, t("action.timeline")),
      ])));
  }));
  tick();
}

async function assign(o) {
  const dialog = $("assign");
  const form = $("assign-form");
  form.reset();
  $("assign-error").textContent = "";
  $("assign-subject").textContent = `#${o.id} · ${o.address}`;
  const r = await api("/engineers");
  const engineers = r.ok ? await r.json() : [];
  form.elements.engineer.replaceChildren(...engineers.map((e) =>
    el("option", { value: e.username }, `${e.username} (${e.open_orders})`)));
  if (o.assignee) form.elements.engineer.value = o.assignee;
  form.onsubmit = async (event) => {
    if (event.submitter && event.submitter.value === "cancel") return;
    event.preventDefault();
    const data = new FormData(form);
    const body = { engineer: data.get("engineer"), expected_version: o.version };
    if (data.get("crew")) body.crew = data.get("crew");
    const res = await api(`/work-orders/${o.id}/assign`, { method: "POST", json: body });
    if (!res.ok) {
      $("assign-error").textContent = (await res.json().catch(() => ({}))).detail || String(res.status);
      return;
    }
    dialog.close();
    reload();
  };
  dialog.showModal();
}

async function timeline(o) {
  const r = await api(`/work-orders/${o.id}`);
  if (!r.ok) return;
  const detail = await r.json();
  $("timeline-title").textContent = `#${o.id} · ${o.address}`;
  $("timeline-steps").replaceChildren(...detail.steps.map((step) => el("li", {},
    `${fmtTime().format(new Date(step.at))} · ${step.actor} · ${step.action}`,
    step.to_status ? ` → ${t("order." + step.to_status)}` : "", step.note ? ` · ${step.note}` : "")));
  $("timeline").showModal();
}

// ------------------------------------------------------------------ my orders (phone)
let notes = new Map(); // order id -> a message shown on its card (reopen pending...)

async function loadMine() {
  const r = await api("/me/work-orders");
  if (!r.ok) return;
  const mine = await r.json();
  const cards = mine.map((o) => {
    const buttons = [];
    if (o.status === "dispatched") {
      buttons.push(el("button", { type: "button", class: "on-site", onclick: () => onSite(o) }, t("action.on_site")));
    }
    if (o.status === "on_site") {
      buttons.push(el("button", { type: "button", class: "resolve", onclick: () => act("resolve", o) }, t("action.resolve")));
    }
    if (o.meter_id && o.status !== "cancelled") {
      buttons.push(el("button", { type: "button", class: "reopen",
        onclick: () => act("reopen", o, (res) => { notes.set(o.id, res.request ? "reopen.pending" : "reopen.sent"); }) },
        t("action.reopen")));
    }
    buttons.push(el("button", { type: "button", class: "timeline", onclick: () => timeline(o) }, t("action.timeline")));
    const card = orderCard(o, buttons);
    card.insertBefore(el("ul", { class: "devices" },
      ...o.devices.map((d) => el("li", {}, `${d.kind} ${d.id} · ${d.model}`))), card.lastChild);
    if (notes.has(o.id)) card.append(el("p", { class: "note" }, t(notes.get(o.id))));
    return card;
  });
  $("my-orders").replaceChildren(...(cards.length ? cards : [el("p", { class: "empty" }, t("mine.empty"))]));
  tick();
}

async function onSite(o) {
  const r = await api(`/work-orders/${o.id}/on-site`, { method: "POST", json: { expected_version: o.version } });
  if (!r.ok) alert((await r.json().catch(() => ({}))).detail || r.status);
  reload();
}

// ------------------------------------------------------------------ start
function init() {
  const lang = localStorage.getItem(KEY.lang) || config.language || "zh-CN";
  $("lang").value = setLanguage(lang);
  $("lang").addEventListener("change", (e) => {
    localStorage.setItem(KEY.lang, setLanguage(e.target.value));
    show(session.token ? currentView() : "login");
    setLive(document.body.dataset.live === "on");
    render();
    if (session.token && view !== "board") reload();
  });
  $("login-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", () => { if (session.token) { show(currentView()); reload(true); } });
  // a whole read now and then: shelving that ran out, clocks that moved a row between states
  setInterval(() => { if (session.token) reload(true); }, 60_000);
  for (const id of ["f-community", "f-priority", "f-cause"]) $(id).addEventListener("change", () => reload());
  setInterval(tick, 1000);
  if (session.token) start(); else show("login");
}

init();
