// The residents' page, phone-first: look up the community's upgrade places with the
// household number and the owner's phone, book a visit or cancel it; or sign in with a
// one-time code texted to that phone and see the household's gas use and safety notices.
// No operator session here: the resident's session token lives in this tab only.
import { addStrings, language, setLanguage, t } from "./i18n.js";
import { $, KEY, config, el } from "./shell.js";

addStrings({
  "zh-CN": {
    "res.title": "燃气安全 · 居民服务",
    "res.heading": "燃气表及报警器免费升级",
    "res.intro": "输入户号和登记的手机号，查询本小区剩余名额并预约上门时间；或获取验证码登录，查看用气量和安全通知。",
    "res.household": "户号",
    "res.phone": "手机号",
    "res.lookup": "查询名额",
    "res.get_code": "获取验证码",
    "res.code": "短信验证码",
    "res.sign_in": "登录",
    "res.code_sent": "验证码已发送至 {to}，{m} 分钟内有效",
    "res.places_heading": "升级名额",
    "res.community": "小区：{c}",
    "res.of_places": "个剩余名额（共 {n} 个）",
    "res.day": "日期",
    "res.time": "时段",
    "res.book": "预约",
    "res.cancel": "取消预约",
    "res.booked": "已预约上门：{t}",
    "res.done": "已完成升级（{t}）",
    "res.booked_ok": "预约成功",
    "res.cancelled_ok": "已取消预约，名额已退回小区",
    "res.full": "本小区名额已满，预约未成功",
    "res.none_left": "本小区暂无剩余名额",
    "res.already": "该户已有预约",
    "res.no_programme": "本小区暂无升级计划",
    "res.no_match": "户号与手机号不匹配",
    "res.throttled": "尝试次数过多，请 {s} 秒后重试",
    "res.sms_failed": "短信发送失败，请稍后重试",
    "res.code_wrong": "验证码错误，还可尝试 {n} 次",
    "res.code_dead": "验证码已失效，请重新获取",
    "res.error": "出错了：{e}",
    "res.home_heading": "我的燃气",
    "res.sign_out": "退出",
    "res.usage": "用气量",
    "res.by_day": "按日",
    "res.by_month": "按月",
    "res.total": "合计 {v} 立方米",
    "res.notices": "安全通知",
    "res.no_notices": "暂无通知",
    "res.no_booking": "未预约升级",
    "res.state.sent": "已送达",
    "res.state.pending": "发送中",
    "res.state.failed": "发送失败",
  },
  en: {
    "res.title": "Gas safety · Residents",
    "res.heading": "Free meter and detector upgrade",
    "res.intro": "Enter your household number and the phone number on file to see your community's places and book a visit; or get a code to sign in and see your gas use and safety notices.",
    "res.household": "Household number",
    "res.phone": "Phone number",
    "res.lookup": "See places",
    "res.get_code": "Get a sign-in code",
    "res.code": "Code from the SMS",
    "res.sign_in": "Sign in",
    "res.code_sent": "A code was sent to {to}; valid for {m} minutes",
    "res.places_heading": "Upgrade places",
    "res.community": "Community: {c}",
    "res.of_places": "places left (of {n})",
    "res.day": "Day",
    "res.time": "Time",
    "res.book": "Book",
    "res.cancel": "Cancel booking",
    "res.booked": "Visit booked: {t}",
    "res.done": "Upgrade done ({t})",
    "res.booked_ok": "Booked",
    "res.cancelled_ok": "Booking cancelled; the place went back to your community",
    "res.full": "No places left in your community: the booking was refused",
    "res.none_left": "No places left in your community",
    "res.already": "This household has a booking already",
    "res.no_programme": "Your community has no upgrade programme",
    "res.no_match": "No household matches this number and phone",
    "res.throttled": "Too many tries: try again in {s} s",
    "res.sms_failed": "The SMS could not be sent: try again later",
    "res.code_wrong": "Wrong code: {n} tries left",
    "res.code_dead": "This code no longer works: get a new one",
    "res.error": "Something went wrong: {e}",
    "res.home_heading": "My gas",
    "res.sign_out": "Sign out",
    "res.usage": "Gas use",
    "res.by_day": "By day",
    "res.by_month": "By month",
    "res.total": "Total {v} m³",
    "res.notices": "Safety notices",
    "res.no_notices": "No notices",
    "res.no_booking": "No upgrade booked",
    "res.state.sent": "delivered",
    "res.state.pending": "sending",
    "res.state.failed": "not delivered",
  },
});

const TOKEN = "gas-safety.resident.token";
const ZONE = config.timeZone || "Asia/Shanghai";
const TIMES = ["09:00", "10:30", "14:00", "15:30"];
const DAYS_AHEAD = 14;
let who = null;       // {household_id, phone} of the last good look-up
let places = null;    // the last look-up's answer
let home = null;      // {me, usage, notices} once signed in
let by = "month";

// ------------------------------------------------------------------ helpers
async function call(path, { method = "GET", json, token } = {}) {
  const headers = {};
  if (json !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, { method, headers, body: json === undefined ? undefined : JSON.stringify(json) });
  const body = r.status === 204 ? {} : await r.json().catch(() => ({}));
  return { ok: r.ok, status: r.status, body };
}

/** A refusal in the resident's words. */
function why(r) {
  const b = r.body || {};
  if (r.status === 429) return t("res.throttled", { s: b.retry_after_s ?? "" });
  if (r.status === 404 && /no household matches/.test(b.detail || "")) return t("res.no_match");
  if (r.status === 409 && b.remaining === 0) return t("res.full");
  if (r.status === 409 && /booking already/.test(b.detail || "")) return t("res.already");
  if (r.status === 409 && /no upgrade programme/.test(b.detail || "")) return t("res.no_programme");
  if (r.status === 503 && /SMS/.test(b.detail || "")) return t("res.sms_failed");
  if (r.status === 401 && b.reason === "wrong") return t("res.code_wrong", { n: b.attempts_left });
  if (r.status === 401 && b.reason) return t("res.code_dead");
  return t("res.error", { e: b.detail || r.status });
}

const slotFormat = () => new Intl.DateTimeFormat(language(), { timeZone: ZONE, year: "numeric",
  month: "2-digit", day: "2-digit", weekday: "short", hour: "2-digit", minute: "2-digit", hour12: false });

/** Milliseconds the utility's zone is ahead of UTC at instant `ms`. */
function zoneOffset(ms) {
  const parts = Object.fromEntries(new Intl.DateTimeFormat("en-US", { timeZone: ZONE, hourCycle: "h23",
    year: "numeric", month: "numeric", day: "numeric", hour: "numeric", minute: "numeric", second: "numeric" })
    .formatToParts(new Date(ms)).map((p) => [p.type, p.value]));
  const wall = Date.UTC(+parts.year, parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second);
  return wall - Math.floor(ms / 1000) * 1000;
}

/** The instant of wall time `y-m-d hh:mm` in the utility's zone, as an ISO string. */
function zonedInstant(day, time) {
  const [y, m, d] = day.split("-").map(Number);
  const [hh, mm] = time.split(":").map(Number);
  const guess = Date.UTC(y, m - 1, d, hh, mm);
  let ms = guess - zoneOffset(guess);
  ms = guess - zoneOffset(ms);
  return new Date(ms).toISOString();
}

function localDay(ms) {
  const p = Object.fromEntries(new Intl.DateTimeFormat("en-US", { timeZone: ZONE, year: "numeric",
    month: "2-digit", day: "2-digit" }).formatToParts(new Date(ms)).map((x) => [x.type, x.value]));
  return `${p.year}-${p.month}-${p.day}`;
}

function form() {
  const f = $("ask-form");
  if (!f.reportValidity()) return null;
  return { household_id: f.household_id.value.trim(), phone: f.phone.value.trim() };
}

function say(id, text) { $(id).textContent = text || ""; }

// ------------------------------------------------------------------ places and booking
async function lookup(event) {
  if (event) event.preventDefault();
  const check = form();
  if (!check) return;
  say("ask-error");
  const r = await call("/upgrades/resident/lookup", { method: "POST", json: check });
  if (!r.ok) { say("ask-error", why(r)); return; }
  who = check;
  places = r.body;
  renderPlaces();
}

function fillSlots() {
  const days = $("slot-day");
  if (days.options.length) return;
  for (let i = 1; i <= DAYS_AHEAD; i++) {
    const day = localDay(Date.now() + i * 86400_000);
    days.append(el("option", { value: day, textContent: day }));
  }
  for (const time of TIMES) $("slot-time").append(el("option", { value: time, textContent: time }));
}

function renderPlaces() {
  if (!places) return;
  $("places").hidden = false;
  $("community").textContent = t("res.community", { c: places.community });
  $("remaining").textContent = String(places.remaining);
  $("remaining").dataset.remaining = String(places.remaining);
  $("of-places").textContent = t("res.of_places", { n: places.places });
  const b = places.booking;
  $("booked").hidden = !b;
  $("book-form").hidden = Boolean(b);
  if (b) {
    const at = slotFormat().format(new Date(b.slot_start));
    $("booking-text").textContent = b.status === "done" ? t("res.done", { t: at }) : t("res.booked", { t: at });
    $("cancel").hidden = b.status !== "booked";
  } else {
    fillSlots();
  }
  $("book").disabled = places.remaining <= 0;
  if (!b && places.remaining <= 0 && !$("places-error").textContent) say("places-msg", t("res.none_left"));
}

async function book(event) {
  event.preventDefault();
  say("places-msg"); say("places-error");
  const slot = zonedInstant($("slot-day").value, $("slot-time").value);
  const r = await call("/upgrades/resident/bookings", { method: "POST", json: { ...who, slot_start: slot } });
  if (r.ok) say("places-msg", t("res.booked_ok")); else say("places-error", why(r));
  await refreshPlaces();
}

async function cancel() {
  say("places-msg"); say("places-error");
  const r = await call("/upgrades/resident/cancel", { method: "POST", json: who });
  if (r.ok) say("places-msg", t("res.cancelled_ok")); else say("places-error", why(r));
  await refreshPlaces();
}

async function refreshPlaces() {
  const r = await call("/upgrades/resident/lookup", { method: "POST", json: who });
  if (r.ok) { places = r.body; renderPlaces(); }
}

// ------------------------------------------------------------------ sign-in with a code
async function getCode() {
  const check = form();
  if (!check) return;
  say("ask-error"); say("code-error");
  const r = await call("/resident/code", { method: "POST", json: check });
  if (!r.ok) { say("ask-error", why(r)); return; }
  who = check;
  $("code").hidden = false;
  $("code-sent").textContent = t("res.code_sent", { to: r.body.sent_to, m: Math.round(r.body.expires_in / 60) });
  $("code-form").code.focus();
}

async function verify(event) {
  event.preventDefault();
  say("code-error");
  const code = $("code-form").code.value.trim();
  const r = await call("/resident/session", { method: "POST", json: { household_id: who.household_id, code } });
  if (!r.ok) { say("code-error", why(r)); return; }
  sessionStorage.setItem(TOKEN, r.body.access_token);
  $("code-form").reset();
  $("code").hidden = true;
  await loadHome();
}

async function loadHome() {
  const token = sessionStorage.getItem(TOKEN);
  if (!token) return;
  const [me, usage, notices] = await Promise.all([
    call("/resident/me", { token }), call(`/resident/usage?by=${by}`, { token }), call("/resident/notices", { token })]);
  if (me.status === 401) { signOut(); return; }
  if (!me.ok || !usage.ok || !notices.ok) { say("ask-error", why([me, usage, notices].find((x) => !x.ok))); return; }
  home = { me: me.body, usage: usage.body, notices: notices.body };
  $("ask").hidden = true;
  $("home").hidden = false;
  renderHome();
}

function renderHome() {
  if (!home) return;
  const { me, usage, notices } = home;
  $("address").textContent = `${me.address} · ${me.community}`;
  const b = me.booking;
  $("home-booking").textContent = b ? t(b.status === "done" ? "res.done" : "res.booked",
    { t: slotFormat().format(new Date(b.slot_start)) }) : t("res.no_booking");
  $("by-day").setAttribute("aria-selected", String(by === "day"));
  $("by-month").setAttribute("aria-selected", String(by === "month"));
  $("usage-total").textContent = t("res.total", { v: usage.total_m3.toFixed(3) });
  const top = Math.max(...usage.items.map((p) => p.volume_m3), 0.001);
  $("usage").replaceChildren(...[...usage.items].reverse().map((p) => {
    const fill = el("div", { class: "bar-fill" });
    fill.style.width = `${(100 * p.volume_m3) / top}%`;
    return el("li", { "data-period": p.period },
      el("span", { class: "period", textContent: by === "day" ? p.period.slice(5) : p.period }),
      el("div", { class: "bar-track" }, fill),
      el("span", { class: "vol", textContent: `${p.volume_m3.toFixed(3)} m³` }));
  }));
  const when = slotFormat();
  $("notices").replaceChildren(...(notices.length ? notices.map((n) => el("li", { "data-notice": String(n.id) },
    el("div", { textContent: n.body }),
    el("small", { class: "muted", textContent: `${when.format(new Date(n.created_at))} · ${t("res.state." + n.state)}` })))
    : [el("li", { class: "muted", textContent: t("res.no_notices") })]));
}

async function switchUsage(to) {
  by = to;
  const r = await call(`/resident/usage?by=${by}`, { token: sessionStorage.getItem(TOKEN) });
  if (r.status === 401) { signOut(); return; }
  if (r.ok && home) { home.usage = r.body; renderHome(); }
}

async function signOut() {
  const token = sessionStorage.getItem(TOKEN);
  sessionStorage.removeItem(TOKEN);
  if (token) await call("/resident/session", { method: "DELETE", token }).catch(() => null);
  home = null;
  $("home").hidden = true;
  $("ask").hidden = false;
}

// ------------------------------------------------------------------ start
function init() {
  $("lang").value = setLanguage(localStorage.getItem(KEY.lang) || config.language || "zh-CN");
  $("lang").addEventListener("change", (e) => {
    localStorage.setItem(KEY.lang, setLanguage(e.target.value));
    renderPlaces();
    renderHome();
  });
  $("ask-form").addEventListener("submit", lookup);
  $("get-code").addEventListener("click", getCode);
  $("code-form").addEventListener("submit", verify);
  $("book-form").addEventListener("submit", book);
  $("cancel").addEventListener("click", cancel);
  $("sign-out").addEventListener("click", signOut);
  $("by-day").addEventListener("click", () => switchUsage("day"));
  $("by-month").addEventListener("click", () => switchUsage("month"));
  loadHome();
}

init();
