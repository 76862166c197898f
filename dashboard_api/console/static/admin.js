// Administration, `#admin` (admins only): users (create, change role, disable or enable,
// reset the password: each change ends the user's sessions), API keys (create: shown once;
// revoke), and a search of the audit trail. Only existing routes: /users, /api-keys, /audit.
import { addStrings, t } from "./i18n.js";
import { api, el, registerView, session } from "./shell.js";
import { dv, getJson, panel, problemText, row, table, when } from "./ui.js";

const ROLE_NAMES = ["viewer", "operator", "engineer", "admin"];
let parts = null;
let auditCursor = null;

function input(name, attrs = {}) {
  return el("input", { name, ...attrs });
}

function labelled(key, control) {
  return el("label", {}, el("span", { "data-i18n": key }, t(key)), " ", control);
}

function roleSelect(value) {
  const s = el("select", { name: "role" }, ...ROLE_NAMES.map((r) => el("option", { value: r }, t("role." + r))));
  s.value = value;
  return s;
}

function build() {
  const section = el("section", { class: "admin" });
  const createUser = el("form", { class: "inline-form", id: "user-create" },
    labelled("admin.username", input("username", { required: true, maxLength: 64, autocomplete: "off" })),
    labelled("admin.password", input("password", { type: "password", required: true, minLength: 12, autocomplete: "new-password" })),
    labelled("admin.role", roleSelect("viewer")),
    el("button", { type: "submit", "data-i18n": "admin.create" }, t("admin.create")));
  createUser.addEventListener("submit", (e) => { e.preventDefault(); send(createUser, "/users", "POST", formJson(createUser)); });
  const createKey = el("form", { class: "inline-form", id: "key-create" },
    labelled("admin.username", input("username", { required: true, maxLength: 64 })),
    labelled("admin.days", input("expires_in_days", { type: "number", min: 1, max: 366, value: 90 })),
    el("button", { type: "submit", "data-i18n": "admin.create_key" }, t("admin.create_key")));
  createKey.addEventListener("submit", (e) => {
    e.preventDefault();
    const body = formJson(createKey);
    body.expires_in_days = Number(body.expires_in_days);
    send(createKey, "/api-keys", "POST", body, (got) => parts.newKey.replaceChildren(
      t("admin.key_once"), " ", el("code", { "data-v": "", class: "new-key" }, got.key)));
  });
  const search = el("form", { class: "inline-form", id: "audit-search" },
    ...["actor", "action", "entity", "entity_id"].map((f) => labelled("admin.audit." + f, input(f, { maxLength: 100 }))),
    el("button", { type: "submit", "data-i18n": "admin.search" }, t("admin.search")));
  search.addEventListener("submit", (e) => { e.preventDefault(); auditSearch(false); });
  parts = {
    error: el("p", { class: "error", id: "admin-error", role: "alert" }),
    users: el("div"), keys: el("div"), newKey: el("p", { class: "note" }), audit: el("div"),
    more: el("button", { type: "button", hidden: true, "data-i18n": "admin.more", onclick: () => auditSearch(true) }, t("admin.more")),
    search,
  };
  section.append(parts.error,
    panel("admin.users", createUser, parts.users),
    panel("admin.keys", createKey, parts.newKey, parts.keys),
    panel("admin.audit", search, parts.audit, parts.more));
  return section;
}

function formJson(form) {
  return Object.fromEntries([...new FormData(form)].filter(([, v]) => v !== ""));
}

async function send(form, path, method, json, done) {
  parts.error.textContent = "";
  const r = await api(path, { method, json });
  if (!r.ok) { parts.error.replaceChildren(t("admin.refused"), " ", dv(await problemText(r))); return false; }
  const got = await r.json().catch(() => ({}));
  if (form) form.reset();
  if (done) done(got);
  await load();
  return true;
}

function patchUser(u, body) {
  return send(null, `/users/${encodeURIComponent(u.username)}`, "PATCH", body);
}

function userRow(u) {
  const role = roleSelect(u.role);
  role.addEventListener("change", () => patchUser(u, { role: role.value }));
  const password = input("password", { type: "password", minLength: 12, placeholder: t("admin.new_password"), autocomplete: "new-password" });
  return row({ "data-user": u.username, class: u.disabled ? "disabled" : "" },
    dv(u.username), role,
    el("span", { class: u.disabled ? "bad" : "ok", "data-disabled": String(u.disabled) }, t(u.disabled ? "admin.disabled" : "admin.enabled")),
    when(u.created_at),
    el("span", { class: "buttons" },
      u.username === session.user ? "" : el("button", { type: "button", class: u.disabled ? "enable" : "disable",
        onclick: () => patchUser(u, { disabled: !u.disabled }) }, t(u.disabled ? "admin.enable" : "admin.disable")),
      password,
      el("button", { type: "button", class: "reset", onclick: () => password.value && patchUser(u, { password: password.value }) },
        t("admin.reset"))));
}

async function load() {
  for (const node of parts.search.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  const [users, keys] = await Promise.all([getJson("/users?limit=500"), getJson("/api-keys?limit=200")]);
  if (users) {
    parts.users.replaceChildren(table(["admin.username", "admin.role", "admin.status", "admin.created", "admin.actions"],
      users.items.map(userRow)));
  }
  if (keys) {
    parts.keys.replaceChildren(table(["admin.key_id", "admin.prefix", "admin.username", "admin.expires", "admin.revoked", "admin.actions"],
      keys.items.map((k) => row({ "data-key": k.id }, dv(k.id), dv(k.prefix), dv(k.username), when(k.expires_at),
        k.revoked_at ? when(k.revoked_at) : t("admin.active"),
        k.revoked_at ? "" : el("button", { type: "button", class: "revoke",
          onclick: () => send(null, `/api-keys/${k.id}`, "DELETE") }, t("admin.revoke"))))));
  }
  await auditSearch(false);
}

async function auditSearch(more) {
  const q = new URLSearchParams({ ...formJson(parts.search), limit: "50" });
  if (more && auditCursor) q.set("cursor", auditCursor);
  const r = await api("/audit?" + q);
  if (!r.ok) { parts.error.replaceChildren(t("admin.refused"), " ", dv(await problemText(r))); return; }
  const got = await r.json();
  auditCursor = got.next_cursor;
  parts.more.hidden = !auditCursor;
  const rows = got.items.map((e) => row({ "data-audit": e.id }, when(e.at), dv(e.actor), dv(e.action),
    dv(`${e.entity} ${e.entity_id}`), dv(JSON.stringify(e.details), { class: "details" })));
  if (more && parts.audit.querySelector("tbody")) { parts.audit.querySelector("tbody").append(...rows); return; }
  parts.audit.replaceChildren(table(["hh.col.at", "hh.col.actor", "hh.col.audit_action", "hh.col.entity", "hh.col.details"], rows));
}

registerView("admin", { build, load, nav: "nav.admin", minRole: "admin" });

addStrings({
  "zh-CN": {
    "nav.admin": "系统管理", "admin.users": "用户", "admin.keys": "接口密钥", "admin.audit": "审计查询",
    "admin.username": "用户名", "admin.password": "密码", "admin.role": "角色", "admin.create": "创建用户",
    "admin.status": "状态", "admin.created": "创建时间", "admin.actions": "操作", "admin.enabled": "启用",
    "admin.disabled": "已停用", "admin.disable": "停用", "admin.enable": "启用", "admin.reset": "重置密码",
    "admin.new_password": "新密码（至少 12 位）", "admin.refused": "未执行：",
    "admin.days": "有效天数", "admin.create_key": "创建密钥", "admin.key_once": "新密钥（只显示这一次）：",
    "admin.key_id": "编号", "admin.prefix": "前缀", "admin.expires": "到期", "admin.revoked": "吊销",
    "admin.active": "有效", "admin.revoke": "吊销",
    "admin.audit.actor": "操作人", "admin.audit.action": "操作", "admin.audit.entity": "对象类型",
    "admin.audit.entity_id": "对象编号", "admin.search": "查询", "admin.more": "更多",
  },
  en: {
    "nav.admin": "Admin", "admin.users": "Users", "admin.keys": "API keys", "admin.audit": "Audit search",
    "admin.username": "User name", "admin.password": "Password", "admin.role": "Role", "admin.create": "Create user",
    "admin.status": "Status", "admin.created": "Created", "admin.actions": "Actions", "admin.enabled": "enabled",
    "admin.disabled": "disabled", "admin.disable": "Disable", "admin.enable": "Enable", "admin.reset": "Reset password",
    "admin.new_password": "New password (12+ characters)", "admin.refused": "Not done:",
    "admin.days": "Valid for days", "admin.create_key": "Create key", "admin.key_once": "New key (shown only now):",
    "admin.key_id": "Id", "admin.prefix": "Prefix", "admin.expires": "Expires", "admin.revoked": "Revoked",
    "admin.active": "active", "admin.revoke": "Revoke",
    "admin.audit.actor": "Actor", "admin.audit.action": "Action", "admin.audit.entity": "Subject kind",
    "admin.audit.entity_id": "Subject id", "admin.search": "Search", "admin.more": "More",
  },
});
