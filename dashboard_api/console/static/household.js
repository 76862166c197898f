// The household page, `#household/<id>`: the owner (contact masked by the API for viewers),
// the devices with their health and last reading, methane and flow charts by hour, day or
// year (time-bucketed by the API), the valve with close and reopen by role (a refusal shows
// the interlock's reason), alarm history, valve commands, notifications with their delivery
// state and, for operators, the household's audit trail.
import { addStrings, t } from "./i18n.js";
import { api, el, registerView, session } from "./shell.js";
import { code, dv, getJson, lineChart, panel, problemText, row, table, when } from "./ui.js";

const RANGES = { // name -> [window seconds, bucket]
  hour: [3600, "1m"], day: [86400, "15m"], year: [365 * 86400, "1d"],
};
const COLORS = ["#e5484d", "#f5a524", "#3e8ed0", "#30a46c"];

let current = null;  // the household id shown
let range = "day";
let refreshTimer = null;
let parts = null;    // the section's containers
let valveSaid = null; // {meter, said, refused}: the answer to this page's last valve action,
                      // kept across the live refreshes that follow it

function build() {
  const section = el("section", { class: "household" });
  parts = {
    head: el("div", { class: "hh-head" }),
    owner: el("div", { class: "hh-owner" }),
    valve: el("div", { class: "hh-valve" }),
    devices: el("div"),
    charts: el("div", { class: "charts" }),
    alarms: el("div"), commands: el("div"), notices: el("div"), audit: el("div"),
  };
  const ranges = el("div", { class: "ranges" }, ...Object.keys(RANGES).map((name) =>
    el("button", { type: "button", "data-range": name, "data-i18n": "hh.range." + name,
      onclick: () => { range = name; drawCharts(); } }, t("hh.range." + name))));
  section.append(parts.head,
    el("div", { class: "hh-top" }, panel("hh.owner", parts.owner), panel("hh.valve", parts.valve)),
    panel("hh.devices", parts.devices),
    panel("hh.charts", ranges, parts.charts),
    panel("hh.alarms", parts.alarms),
    panel("hh.commands", parts.commands),
    panel("hh.notifications", parts.notices),
    el("div", { class: "hh-audit" }, panel("hh.audit", parts.audit)));
  return section;
}

let detail = null;

async function load(arg) {
  if (arg !== current) valveSaid = null;
  current = arg;
  if (!current) { parts.head.replaceChildren(el("p", { class: "empty" }, t("hh.none"))); return; }
  const id = encodeURIComponent(current);
  const r = await api(`/households/${id}`);
  if (!r.ok) {
    detail = null;
    parts.head.replaceChildren(el("p", { class: "error" }, t("hh.missing"), " ", dv(current)));
    for (const k of ["owner", "valve", "devices", "charts", "alarms", "commands", "notices", "audit"]) parts[k].replaceChildren();
    return;
  }
  detail = await r.json();
  if (detail.id !== current) return; // another household was asked for meanwhile
  const meter = detail.device_list.find((d) => d.kind === "meter");
  const [alarms, commands, requests, notices, audit] = await Promise.all([
    getJson(`/alarms?household_id=${id}&limit=50`),
    meter ? getJson(`/valves/${meter.id}/commands?limit=20`) : null,
    meter ? getJson(`/valves/${meter.id}/reopen-requests?limit=5`) : null,
    getJson(`/notifications?household_id=${id}&limit=30`),
    session.may("operator") ? getJson(`/households/${id}/audit?limit=50`) : null,
  ]);
  renderHead();
  renderOwner();
  renderValve(meter, requests ? requests.items : []);
  renderDevices();
  renderAlarms(alarms ? alarms.items : []);
  renderCommands(commands ? commands.items : []);
  renderNotices(notices ? notices.items : []);
  parts.audit.parentElement.parentElement.hidden = !session.may("operator");
  if (audit) renderAudit(audit.items);
  drawCharts();
}

function renderHead() {
  const h = detail;
  parts.head.replaceChildren(
    el("h1", {}, dv(h.address, { class: "hh-address" })),
    el("p", { class: "muted" }, t("hh.place"), " ",
      el("a", { href: "#city/" + encodeURIComponent(h.community) }, dv(`${h.community} / ${h.building} / ${h.unit}`)),
      " · ", t("hh.id"), " ", dv(h.id),
      " · ", t("hh.active_alarms"), " ", dv(h.active_alarms, { class: "num" }),
      " · ", t("hh.open_orders"), " ", dv(h.open_work_orders, { class: "num" })));
}

function renderOwner() {
  const h = detail;
  parts.owner.replaceChildren(el("dl", { class: "facts" },
    el("dt", {}, t("hh.owner_name")), el("dd", {}, dv(h.owner_name)),
    el("dt", {}, t("hh.owner_phone")), el("dd", {}, dv(h.owner_phone, { class: "owner-phone" })),
    el("dt", {}, t("hh.owner_email")), el("dd", {}, dv(h.owner_email)),
    el("dt", {}, t("hh.qmax")), el("dd", {}, dv(h.qmax_m3h), " m³/h")));
}

function renderValve(meter, requests) {
  if (!meter) { parts.valve.replaceChildren(el("p", { class: "muted" }, t("hh.no_meter"))); return; }
  const last = meter.health.last_reading;
  const state = last && last.valve;
  const status = el("p", { class: "valve-state v-" + (state || "unknown"), "data-valve": state || "unknown" },
    t("hh.valve_now"), " ", state ? t("hh.valve." + state) : t("hh.unknown"));
  const reason = el("input", { name: "reason", maxLength: 2000, placeholder: t("hh.reason") });
  const error = el("p", { class: "error", id: "hh-valve-error", role: "alert" });
  const note = el("p", { class: "note", id: "hh-valve-note" });
  if (valveSaid && valveSaid.meter === meter.id) {
    (valveSaid.refused ? error : note).append(valveSaid.said.cloneNode(true));
  }
  const send = async (action, what = action) => {
    error.textContent = ""; note.textContent = ""; valveSaid = null;
    if (!reason.value.trim()) { error.textContent = t("hh.reason_needed"); return; }
    const r = await api(`/valves/${encodeURIComponent(meter.id)}/${action}`, { method: "POST", json: { reason: reason.value.trim() } });
    if (!r.ok) {
      valveSaid = { meter: meter.id, refused: true,
        said: el("span", {}, t("hh.refused"), " ", dv(await problemText(r))) };
      error.replaceChildren(valveSaid.said.cloneNode(true));
      return;
    }
    const body = await r.json();
    valveSaid = { meter: meter.id, refused: false,
      said: el("span", {}, t(body.request ? "reopen.pending" : "hh.sent." + what), " ", dv(body.note)) };
    note.replaceChildren(valveSaid.said.cloneNode(true));
    reason.value = "";
    await load(current);
  };
  const buttons = [];
  if (session.may("operator")) {
    buttons.push(el("button", { type: "button", class: "valve-close danger", onclick: () => send("close") }, t("hh.close")));
  }
  if (session.may("engineer")) {
    buttons.push(el("button", { type: "button", class: "valve-reopen", onclick: () => send("reopen") }, t("hh.reopen")));
  }
  // a supervisor (admin, not the order's resolver: the API checks) confirms a held reopen
  const pending = requests.filter((q) => q.status === "pending").map((q) => el("li", { "data-request": q.id },
    t("hh.pending_by"), " ", dv(q.requested_by), " · ", when(q.requested_at), " · ", dv(q.reason),
    session.may("admin") ? el("button", { type: "button", class: "reopen-confirm",
      onclick: () => send(`reopen-requests/${q.id}/confirm`, "confirm") }, t("hh.confirm")) : ""));
  parts.valve.replaceChildren(status,
    el("p", { class: "muted" }, t("hh.meter"), " ", dv(meter.id)),
    ...(buttons.length ? [el("div", { class: "valve-form" }, reason, ...buttons)] : []),
    error, note,
    ...(pending.length ? [el("p", {}, t("hh.pending")), el("ul", {}, ...pending)] : []));
}

function reading(d) {
  const r = d.health.last_reading;
  if (!r) return dv(null);
  if (d.kind === "meter") {
    return el("span", {}, dv(r.flow_m3h), " m³/h · ", dv(r.vol_m3), " m³ · ",
      t("hh.valve_short"), " ", r.valve ? t("hh.valve." + r.valve) : dv(null));
  }
  return el("span", {}, dv(r.ch4_lel), " %LEL", r.fault ? el("span", { class: "bad" }, " · ", t("hh.fault"), " ", dv(r.fault)) : "");
}

function renderDevices() {
  parts.devices.replaceChildren(table(
    ["hh.col.device", "hh.col.kind", "hh.col.model", "hh.col.health", "hh.col.last_seen", "hh.col.reading",
      "hh.col.battery", "hh.col.life"],
    detail.device_list.map((d) => row({ "data-device": d.id },
      dv(d.id), t("device." + d.kind), dv(d.model),
      el("span", { class: d.health.online ? "ok" : "bad", "data-online": String(d.health.online) },
        t(d.health.online ? "hh.online" : (d.health.last_seen ? "hh.offline" : "hh.never_seen"))),
      when(d.health.last_seen), reading(d),
      el("span", { class: d.health.battery_low ? "bad" : "" }, dv(d.health.battery_v), d.health.battery_v ? " V" : ""),
      el("span", { class: d.health.past_service_life ? "bad" : "", "data-past-life": String(d.health.past_service_life) },
        dv(d.health.service_life_ends), " ",
        d.health.past_service_life ? t("hh.past_life") : t("hh.life_left", { d: d.health.service_life_remaining_days }))))));
}

function renderAlarms(items) {
  parts.alarms.replaceChildren(table(
    ["hh.col.raised", "col.severity", "col.kind", "col.value", "col.state", "hh.col.cleared", "hh.col.ack"],
    items.map((a) => row({ "data-alarm": a.id, class: "sev-" + a.severity },
      when(a.raised_at), el("span", { class: "sev" }, t("severity." + a.severity)), code("kind", a.kind),
      dv(a.value), t("state." + a.state), when(a.cleared_at),
      a.acknowledged_by ? el("span", {}, dv(a.acknowledged_by), " · ", dv(a.ack_comment)) : dv(null)))));
}

function renderCommands(items) {
  parts.commands.replaceChildren(table(
    ["hh.col.issued", "hh.col.action", "hh.col.cmd_state", "hh.col.by", "hh.col.reason", "hh.col.acked"],
    items.map((c) => row({ "data-cmd": c.cmd_id, "data-action": c.action, "data-state": c.state },
      when(c.issued_at), code("cmd", c.action), code("cmd_state", c.state), dv(c.requested_by), dv(c.reason),
      c.acked_at ? when(c.acked_at) : dv(c.ack_error)))));
}

function renderNotices(items) {
  parts.notices.replaceChildren(table(
    ["hh.col.created", "hh.col.notice", "hh.col.channel", "hh.col.recipient", "hh.col.delivery", "hh.col.attempts", "hh.col.delivered"],
    items.map((n) => row({ "data-notification": n.id, "data-state": n.state },
      when(n.created_at), code("notice", n.kind), code("channel", n.channel), dv(n.recipient, { class: "recipient" }),
      el("span", { class: "n-" + n.state }, t("nstate." + n.state)), dv(n.attempts), when(n.delivered_at)))));
}

function renderAudit(items) {
  parts.audit.replaceChildren(table(
    ["hh.col.at", "hh.col.actor", "hh.col.audit_action", "hh.col.entity", "hh.col.details"],
    items.map((e) => row({ "data-audit": e.id },
      when(e.at), dv(e.actor), dv(e.action), dv(`${e.entity} ${e.entity_id}`),
      dv(JSON.stringify(e.details), { class: "details" })))));
}

// ------------------------------------------------------------------ charts
async function series(device, start, end, bucket) {
  const q = new URLSearchParams({ bucket, start: start.toISOString(), end: end.toISOString() });
  const got = await getJson(`/devices/${encodeURIComponent(device.id)}/readings/buckets?${q}`);
  return got ? got.buckets : [];
}

function align(lists) { // buckets of several devices on one time axis (seconds)
  const times = [...new Set(lists.flatMap((l) => l.map((b) => Date.parse(b.bucket) / 1000)))].sort((a, b) => a - b);
  const at = new Map(times.map((x, i) => [x, i]));
  return [times, (list, pick) => {
    const out = new Array(times.length).fill(null);
    for (const b of list) out[at.get(Date.parse(b.bucket) / 1000)] = pick(b);
    return out;
  }];
}

let drawing = 0;
async function drawCharts() {
  if (!detail) return;
  const mine = ++drawing;
  for (const b of document.querySelectorAll(".household [data-range]")) b.classList.toggle("on", b.dataset.range === range);
  const [span, bucket] = RANGES[range];
  const end = new Date();
  const start = new Date(end.getTime() - span * 1000);
  const detectors = detail.device_list.filter((d) => d.kind === "detector");
  const meter = detail.device_list.find((d) => d.kind === "meter");
  const [det, met] = await Promise.all([
    Promise.all(detectors.map((d) => series(d, start, end, bucket))),
    meter ? series(meter, start, end, bucket) : [],
  ]);
  if (mine !== drawing) return;
  const width = Math.max(320, Math.min(900, (parts.charts.clientWidth || 900) / 2 - 24));
  const gasHost = el("div", { class: "chart", "data-chart": "methane" });
  const flowHost = el("div", { class: "chart", "data-chart": "flow" });
  parts.charts.replaceChildren(
    el("div", { class: "chart-box" }, el("h3", {}, t("hh.chart.methane")), gasHost),
    el("div", { class: "chart-box" }, el("h3", {}, t("hh.chart.flow")), flowHost));
  const [gt, gpick] = align(det);
  const [ft, fpick] = align([met]);
  try {
    if (gt.length) {
      await lineChart(gasHost, gt, det.map((list, i) => ({ label: detectors[i].id, stroke: COLORS[i % 4],
        values: gpick(list, (b) => b.max) })), width);
    } else gasHost.append(el("p", { class: "empty" }, t("hh.no_data")));
    if (ft.length) {
      await lineChart(flowHost, ft, [{ label: "max", stroke: COLORS[1], values: fpick(met, (b) => b.max) },
        { label: "avg", stroke: COLORS[2], values: fpick(met, (b) => b.avg) }], width);
    } else flowHost.append(el("p", { class: "empty" }, t("hh.no_data")));
  } catch (err) {
    parts.charts.append(el("p", { class: "error" }, t("hh.no_charts")));
  }
}

function onEvent(type, body) {
  if (!current || !body) return;
  const mine = body.household_id === current
    || (detail && detail.device_list.some((d) => d.id === body.meter_id || d.id === body.device_id));
  if (!mine) return;
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => load(current), 300);
}

registerView("household", { build, load, onEvent });

addStrings({
  "zh-CN": {
    "hh.none": "未指定住户", "hh.missing": "找不到住户", "hh.place": "位置", "hh.id": "户号",
    "hh.active_alarms": "活动告警", "hh.open_orders": "未结工单",
    "hh.owner": "户主", "hh.owner_name": "姓名", "hh.owner_phone": "电话", "hh.owner_email": "邮箱", "hh.qmax": "最大流量",
    "hh.valve": "阀门", "hh.valve_now": "当前状态：", "hh.valve_short": "阀门", "hh.unknown": "未知",
    "hh.valve.open": "开启", "hh.valve.closed": "关闭", "hh.valve.fault": "故障",
    "hh.no_meter": "该户没有燃气表", "hh.meter": "燃气表", "hh.reason": "原因（必填）", "hh.reason_needed": "请填写原因",
    "hh.close": "关阀", "hh.reopen": "申请开阀", "hh.refused": "被拒绝：",
    "hh.sent.close": "关阀指令已发出。", "hh.sent.confirm": "已确认，开阀指令已发出，需住户在现场按下阀门按钮。",
    "hh.confirm": "确认开阀", "hh.sent.reopen": "开阀指令已发出，需住户在现场按下阀门按钮。",
    "hh.pending": "等待主管确认的开阀申请：", "hh.pending_by": "申请人",
    "hh.devices": "设备", "hh.col.device": "设备", "hh.col.kind": "类型", "hh.col.model": "型号", "hh.col.health": "在线",
    "hh.col.last_seen": "最后上报", "hh.col.reading": "最新读数", "hh.col.battery": "电池", "hh.col.life": "使用寿命至",
    "hh.online": "在线", "hh.offline": "离线", "hh.never_seen": "从未上报", "hh.fault": "故障码",
    "hh.past_life": "已超期", "hh.life_left": "剩余 {d} 天",
    "device.meter": "燃气表", "device.detector": "探测器",
    "hh.charts": "曲线", "hh.range.hour": "近 1 小时", "hh.range.day": "近 1 天", "hh.range.year": "近 1 年",
    "hh.chart.methane": "甲烷浓度（%LEL，每段最大值）", "hh.chart.flow": "流量（m³/h，最大与平均）",
    "hh.no_data": "该时段没有读数", "hh.no_charts": "图表组件未安装",
    "hh.alarms": "告警历史", "hh.col.raised": "发生时间", "hh.col.cleared": "恢复时间", "hh.col.ack": "确认人/说明",
    "state.cleared": "已恢复",
    "hh.commands": "阀门指令", "hh.col.issued": "下发时间", "hh.col.action": "指令", "hh.col.cmd_state": "状态",
    "hh.col.by": "发起人", "hh.col.reason": "原因", "hh.col.acked": "应答",
    "cmd.valve_close": "关阀", "cmd.valve_open": "开阀", "cmd.self_test": "自检",
    "cmd_state.issued": "已生成", "cmd_state.sent": "已发送", "cmd_state.acked": "已应答", "cmd_state.failed": "失败",
    "cmd_state.timeout": "超时", "cmd_state.escalated": "已升级", "cmd_state.attached": "已合并",
    "hh.notifications": "通知", "hh.col.created": "时间", "hh.col.notice": "内容", "hh.col.channel": "渠道",
    "hh.col.recipient": "接收人", "hh.col.delivery": "送达状态", "hh.col.attempts": "尝试次数", "hh.col.delivered": "送达时间",
    "nstate.pending": "待发送", "nstate.sent": "已送达", "nstate.failed": "失败", "nstate.confirmed": "已确认", "nstate.escalated": "已升级",
    "channel.sms": "短信", "channel.voice": "语音电话", "channel.email": "邮件", "channel.push": "推送",
    "hh.audit": "操作记录", "hh.col.at": "时间", "hh.col.actor": "操作人", "hh.col.audit_action": "操作",
    "hh.col.entity": "对象", "hh.col.details": "详情",
    "common.none": "暂无",
  },
  en: {
    "hh.none": "No household named", "hh.missing": "No such household", "hh.place": "Place", "hh.id": "Household",
    "hh.active_alarms": "Active alarms", "hh.open_orders": "Open orders",
    "hh.owner": "Owner", "hh.owner_name": "Name", "hh.owner_phone": "Phone", "hh.owner_email": "Email", "hh.qmax": "Max flow",
    "hh.valve": "Valve", "hh.valve_now": "Now:", "hh.valve_short": "valve", "hh.unknown": "unknown",
    "hh.valve.open": "open", "hh.valve.closed": "closed", "hh.valve.fault": "fault",
    "hh.no_meter": "This household has no meter", "hh.meter": "Meter", "hh.reason": "Reason (required)",
    "hh.reason_needed": "Give a reason", "hh.close": "Close valve", "hh.reopen": "Request reopen", "hh.refused": "Refused:",
    "hh.sent.close": "Close command sent.", "hh.sent.confirm": "Confirmed: reopen command sent; the resident presses the valve button on site.",
    "hh.confirm": "Confirm reopen", "hh.sent.reopen": "Reopen command sent; the resident presses the valve button on site.",
    "hh.pending": "Reopen requests waiting for a supervisor:", "hh.pending_by": "Requested by",
    "hh.devices": "Devices", "hh.col.device": "Device", "hh.col.kind": "Kind", "hh.col.model": "Model", "hh.col.health": "Online",
    "hh.col.last_seen": "Last seen", "hh.col.reading": "Last reading", "hh.col.battery": "Battery", "hh.col.life": "Service life until",
    "hh.online": "online", "hh.offline": "offline", "hh.never_seen": "never seen", "hh.fault": "fault code",
    "hh.past_life": "past its life", "hh.life_left": "{d} days left",
    "device.meter": "meter", "device.detector": "detector",
    "hh.charts": "Charts", "hh.range.hour": "Last hour", "hh.range.day": "Last day", "hh.range.year": "Last year",
    "hh.chart.methane": "Methane (%LEL, bucket maximum)", "hh.chart.flow": "Flow (m³/h, maximum and average)",
    "hh.no_data": "No readings in this window", "hh.no_charts": "The chart package is not installed",
    "hh.alarms": "Alarm history", "hh.col.raised": "Raised", "hh.col.cleared": "Cleared", "hh.col.ack": "Acknowledged by",
    "state.cleared": "cleared",
    "hh.commands": "Valve commands", "hh.col.issued": "Issued", "hh.col.action": "Command", "hh.col.cmd_state": "State",
    "hh.col.by": "By", "hh.col.reason": "Reason", "hh.col.acked": "Acknowledged",
    "cmd.valve_close": "close", "cmd.valve_open": "open", "cmd.self_test": "self-test",
    "cmd_state.issued": "issued", "cmd_state.sent": "sent", "cmd_state.acked": "acknowledged", "cmd_state.failed": "failed",
    "cmd_state.timeout": "timed out", "cmd_state.escalated": "escalated", "cmd_state.attached": "joined",
    "hh.notifications": "Notifications", "hh.col.created": "Time", "hh.col.notice": "Notice", "hh.col.channel": "Channel",
    "hh.col.recipient": "Recipient", "hh.col.delivery": "Delivery", "hh.col.attempts": "Attempts", "hh.col.delivered": "Delivered",
    "nstate.pending": "pending", "nstate.sent": "delivered", "nstate.failed": "failed", "nstate.confirmed": "confirmed", "nstate.escalated": "escalated",
    "channel.sms": "SMS", "channel.voice": "voice call", "channel.email": "email", "channel.push": "push",
    "hh.audit": "Audit trail", "hh.col.at": "Time", "hh.col.actor": "Actor", "hh.col.audit_action": "Action",
    "hh.col.entity": "Subject", "hh.col.details": "Details",
    "common.none": "None",
  },
});
