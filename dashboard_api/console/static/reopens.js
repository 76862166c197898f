// The supervisor's queue of reopen requests (#reopens): an engineer who resolved a cut's
// order and asks to reopen its valve waits here for a second person. A supervisor (admin)
// other than the resolver confirms with a reason; the API judges every interlock again and
// its refusal (another leak since, the same person...) is shown as it says it.
import { addStrings, t } from "./i18n.js";
import { api, el, fmtTime, registerView, session } from "./shell.js";

addStrings({
  "zh-CN": {
    "nav.reopens": "复通确认",
    "reopens.title": "等待第二人确认的复通申请",
    "reopens.empty": "没有复通申请",
    "reopens.col.place": "住户",
    "reopens.col.meter": "表具",
    "reopens.col.order": "工单",
    "reopens.col.requested": "申请",
    "reopens.col.reason": "理由",
    "reopens.col.status": "状态",
    "reopens.col.actions": "操作",
    "reopens.by": "{who} · {at}",
    "reopens.resolved_by": "处理人 {who}",
    "reopens.confirm": "确认复通",
    "reopens.dialog": "确认复通 {meter}",
    "reopens.reason": "确认理由（现场核实情况）",
    "reopens.status.pending": "待确认",
    "reopens.status.confirmed": "已确认",
    "reopens.status.superseded": "已作废",
    "reopens.decided": "{who} 于 {at}：{note}",
    "reopens.sent": "已下发开阀指令 {cmd}；住户需在现场按下表上的开阀按钮",
  },
  en: {
    "nav.reopens": "Reopens",
    "reopens.title": "Reopen requests waiting for a second person",
    "reopens.empty": "No reopen requests",
    "reopens.col.place": "Household",
    "reopens.col.meter": "Meter",
    "reopens.col.order": "Order",
    "reopens.col.requested": "Requested",
    "reopens.col.reason": "Reason",
    "reopens.col.status": "Status",
    "reopens.col.actions": "Actions",
    "reopens.by": "{who} · {at}",
    "reopens.resolved_by": "resolved by {who}",
    "reopens.confirm": "Confirm reopen",
    "reopens.dialog": "Confirm the reopen of {meter}",
    "reopens.reason": "Reason (what was checked on site)",
    "reopens.status.pending": "Pending",
    "reopens.status.confirmed": "Confirmed",
    "reopens.status.superseded": "Superseded",
    "reopens.decided": "{who} at {at}: {note}",
    "reopens.sent": "Valve open {cmd} sent; the resident presses the meter's valve button on site",
  },
});

let section, rows, note, dialog, form, error, subject;
let current = null; // the request the dialog confirms

function build() {
  rows = el("tbody", { id: "reopen-rows" });
  note = el("p", { id: "reopens-note", class: "note", role: "status" });
  const head = el("tr", {}, ...["place", "meter", "order", "requested", "reason", "status", "actions"]
    .map((k) => el("th", { "data-i18n": "reopens.col." + k }, t("reopens.col." + k))));
  subject = el("h2", { id: "reopen-subject" });
  error = el("p", { id: "reopen-error", class: "error", role: "alert" });
  const text = el("textarea", { name: "text", rows: 3, required: true, maxLength: 500 });
  form = el("form", { method: "dialog", id: "reopen-form" }, subject,
    el("label", {}, el("span", { "data-i18n": "reopens.reason" }, t("reopens.reason")), text),
    error,
    el("menu", {},
      el("button", { value: "cancel", formNoValidate: true, "data-i18n": "common.cancel" }, t("common.cancel")),
      el("button", { value: "ok", id: "reopen-ok", "data-i18n": "common.confirm" }, t("common.confirm"))));
  form.addEventListener("submit", confirmCurrent);
  dialog = el("dialog", { id: "reopen-dialog" }, form);
  section = el("section", {},
    el("h2", { "data-i18n": "reopens.title" }, t("reopens.title")), note,
    el("table", { class: "list reopens" }, el("thead", {}, head), rows), dialog);
  return section;
}

async function load() {
  const r = await api("/valves/reopen-requests?limit=200");
  if (!r.ok) return;
  const list = await r.json();
  const out = list.map((q) => {
    const decided = q.decided_by
      ? el("div", { class: "muted" }, t("reopens.decided",
        { who: q.decided_by, at: fmtTime().format(new Date(q.decided_at)), note: q.decision_note || "" }))
      : null;
    const actions = el("td", { class: "actions" });
    if (q.status === "pending" && session.may("admin")) {
      actions.append(el("button", { type: "button", class: "confirm-reopen",
        onclick: () => open(q) }, t("reopens.confirm")));
    }
    return el("tr", { "data-request": String(q.id), "data-status": q.status },
      el("td", {}, el("a", { href: "#household/" + q.household_id }, q.address),
        el("div", { class: "muted" }, `${q.community} / ${q.building}`)),
      el("td", {}, q.meter_id),
      el("td", {}, "#" + q.work_order_id, el("div", { class: "muted" }, t("reopens.resolved_by", { who: q.resolved_by }))),
      el("td", {}, t("reopens.by", { who: q.requested_by, at: fmtTime().format(new Date(q.requested_at)) })),
      el("td", {}, q.reason),
      el("td", { class: "state" }, t("reopens.status." + q.status), decided),
      actions);
  });
  if (!out.length) out.push(el("tr", {}, el("td", { colSpan: 7, class: "empty" }, t("reopens.empty"))));
  rows.replaceChildren(...out);
}

function open(q) {
  current = q;
  form.reset();
  error.textContent = "";
  subject.textContent = t("reopens.dialog", { meter: q.meter_id });
  dialog.showModal();
}

async function confirmCurrent(event) {
  if (event.submitter && event.submitter.value === "cancel") return;
  event.preventDefault();
  const q = current;
  const reason = new FormData(form).get("text");
  const r = await api(`/valves/${encodeURIComponent(q.meter_id)}/reopen-requests/${q.id}/confirm`,
    { method: "POST", json: { reason } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { // the interlock's own words
    error.textContent = body.detail || String(r.status);
    return;
  }
  dialog.close();
  note.textContent = t("reopens.sent", { cmd: body.command ? body.command.cmd_id : "" });
  await load();
}

function onEvent(type) {
  if (type.startsWith("command.") || type.startsWith("work_order.")) load();
}

registerView("reopens", { build, load, onEvent, nav: "nav.reopens", minRole: "admin" });
