"""Authentication and roles: passwords, token expiry, API keys (shown once, expiring,
revocable), the role ladder, disabled and demoted users, the CLI, and the production secret
rule. Throttling, token revocation and the password rules in depth: tests/security."""

from __future__ import annotations

import datetime as dt

import httpx
import psycopg
import pytest

from dashboard_api import identity
from dashboard_api.identity import Role
from dashboard_api.main import StartupRefused, create_app, jwt_secret
from dashboard_api.users import create_user_cli
from gateway.settings import Settings

JWT_SECRET = "test-secret-" + "x" * 32
PASSWORD = "correct horse battery staple"


@pytest.mark.services
async def test_token_login_and_me(client: httpx.AsyncClient, users) -> None:
    r = await client.post("/auth/token", data={"username": users["engineer"],
                                               "password": PASSWORD})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 4 * 3600
    assert body["role"] == "engineer"
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json() == {"username": users["engineer"], "role": "engineer", "via": "token"}


@pytest.mark.services
async def test_wrong_password_and_unknown_user_look_the_same(client, users) -> None:
    wrong = await client.post("/auth/token", data={"username": users["admin"],
                                                   "password": "not the password"})
    unknown = await client.post("/auth/token", data={"username": "nobody.here",
                                                     "password": "whatever it is"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]
    assert wrong.headers["content-type"] == "application/problem+json"


@pytest.mark.services
async def test_token_form_errors_are_precise(client) -> None:
    r = await client.post("/auth/token", data={"username": "someone"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "password"
    assert r.json()["errors"][0]["in"] == "body"
    r = await client.post("/auth/token", json={"username": "a", "password": "b"})
    assert r.status_code == 415


@pytest.mark.services
async def test_expired_and_forged_tokens_are_refused(client, users) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    expired, _ = identity.issue_token(JWT_SECRET, users["admin"], Role.admin, 3600, past)
    r = await client.get("/auth/me", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["detail"]

    forged, _ = identity.issue_token("another-secret-" + "y" * 32, users["admin"], Role.admin,
                                     3600, dt.datetime.now(dt.UTC))
    r = await client.get("/auth/me", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and "invalid token" in r.json()["detail"]

    r = await client.get("/auth/me", headers={"Authorization": "Bearer not.a.token"})
    assert r.status_code == 401


def test_token_expiry_is_computed_from_the_given_clock() -> None:
    now = dt.datetime(2026, 11, 1, 10, 0, tzinfo=dt.UTC)
    token, expires = identity.issue_token("s" * 32, "ana", Role.viewer, 60, now)
    assert expires == now + dt.timedelta(seconds=60)
    assert identity.read_token("s" * 32, token, now + dt.timedelta(seconds=59))["sub"] == "ana"
    with pytest.raises(identity.TokenError, match="expired"):
        identity.read_token("s" * 32, token, now + dt.timedelta(seconds=60))


@pytest.mark.services
async def test_api_key_lifecycle(client, as_role, users, dsn) -> None:
    admin = as_role["admin"]
    r = await client.post("/api-keys", json={"username": users["operator"],
                                             "expires_in_days": 30}, headers=admin)
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    assert key.startswith("gsk_") and created["prefix"] in key

    # Shown once: listings carry the prefix, never the key, and the table holds a digest.
    listed = (await client.get("/api-keys", headers=admin, params={"limit": 500})).json()
    mine = [k for k in listed["items"] if k["id"] == created["id"]]
    assert mine and "key" not in mine[0]
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        stored = (await (await conn.execute("SELECT key_hash FROM api_keys WHERE id = %s",
                                            (created["id"],))).fetchone())[0]
    assert key not in stored and stored == identity.api_key_digest(key)

    # Works as X-API-Key and as a bearer credential, with the user's role.
    for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
        me = await client.get("/auth/me", headers=headers)
        assert me.json() == {"username": users["operator"], "role": "operator", "via": "api_key"}
    r = await client.get("/users", headers={"X-API-Key": key})
    assert r.status_code == 403

    # A tampered key is unknown.
    r = await client.get("/auth/me", headers={"X-API-Key": key[:-2] + "zz"})
    assert r.status_code == 401

    # Expiry.
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second'"
                           " WHERE id = %s", (created["id"],))
    r = await client.get("/auth/me", headers={"X-API-Key": key})
    assert r.status_code == 401 and "expired" in r.json()["detail"]

    # Revocation (of a fresh key), once.
    fresh = (await client.post("/api-keys", json={"username": users["viewer"]},
                               headers=admin)).json()
    assert (await client.get("/auth/me", headers={"X-API-Key": fresh["key"]})).status_code == 200
    r = await client.delete(f"/api-keys/{fresh['id']}", headers=admin)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    r = await client.get("/auth/me", headers={"X-API-Key": fresh["key"]})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert (await client.delete(f"/api-keys/{fresh['id']}", headers=admin)).status_code == 409
    assert (await client.delete("/api-keys/999999999", headers=admin)).status_code == 404


@pytest.mark.services
async def test_only_admins_manage_users_and_keys(client, as_role) -> None:
    for role in ("viewer", "operator", "engineer"):
        h = as_role[role]
        assert (await client.get("/users", headers=h)).status_code == 403
        assert (await client.post("/users", json={"username": "x.y.z", "password": "p" * 12,
                                                  "role": "admin"}, headers=h)).status_code == 403
        assert (await client.post("/api-keys", json={"username": "viewer.one"},
                                  headers=h)).status_code == 403
        assert (await client.get("/audit", headers=h)).status_code == 403


@pytest.mark.services
async def test_users_created_disabled_and_demoted(client, as_role, prefix) -> None:
    admin = as_role["admin"]
    name = f"{prefix.lower()}.dispatch"
    r = await client.post("/users", json={"username": name, "password": "short",
                                          "role": "operator"}, headers=admin)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "password"
    r = await client.post("/users", json={"username": name, "password": PASSWORD,
                                          "role": "operator"}, headers=admin)
    assert r.status_code == 201 and "password" not in r.text
    assert (await client.post("/users", json={"username": name, "password": PASSWORD,
                                              "role": "operator"},
                              headers=admin)).status_code == 409
    token = (await client.post("/auth/token", data={"username": name, "password": PASSWORD})
             ).json()["access_token"]
    mine = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/alarms", headers=mine)).status_code == 200

    # Demoted: tokens issued before are revoked; a new one carries the new role.
    r = await client.patch(f"/users/{name}", json={"role": "viewer"}, headers=admin)
    assert r.json()["role"] == "viewer"
    r = await client.get("/auth/me", headers=mine)
    assert r.status_code == 401 and r.json()["detail"].startswith("token revoked")
    token = (await client.post("/auth/token", data={"username": name, "password": PASSWORD})
             ).json()["access_token"]
    mine = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/auth/me", headers=mine)).json()["role"] == "viewer"
    # Disabled: the token stops working at once.
    await client.patch(f"/users/{name}", json={"disabled": True}, headers=admin)
    assert (await client.get("/auth/me", headers=mine)).status_code == 401
    assert (await client.patch("/users/no.such.user", json={"role": "viewer"},
                               headers=admin)).status_code == 404


@pytest.mark.services
async def test_the_last_admin_cannot_be_removed(client, as_role, users, dsn) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        others = [r[0] for r in await (await conn.execute(
            "UPDATE users SET disabled = true WHERE role = 'admin' AND NOT disabled"
            " AND username <> %s RETURNING username", (users["admin"],))).fetchall()]
        try:
            for change in ({"role": "engineer"}, {"disabled": True}):
                r = await client.patch(f"/users/{users['admin']}", json=change,
                                       headers=as_role["admin"])
                assert r.status_code == 409 and "no enabled admin" in r.json()["detail"]
        finally:
            await conn.execute("UPDATE users SET disabled = false WHERE username = ANY(%s)",
                               (others,))
    me = await client.get("/auth/me", headers=as_role["admin"])
    assert me.json()["role"] == "admin"


@pytest.mark.services
async def test_nothing_without_a_credential(client) -> None:
    assert (await client.get("/healthz")).status_code == 200
    for path in ("/openapi.json", "/metrics", "/no/such/route", "/households", "/devices",
                 "/fleet/summary", "/notifications", "/upgrades/bookings", "/audit"):
        r = await client.get(path)
        assert r.status_code == 401, path
        assert r.json()["status"] == 401
    # Even a malformed body is not looked at before the credential.
    r = await client.post("/users", content=b"{not json", headers={"content-type":
                                                                   "application/json"})
    assert r.status_code == 401


@pytest.mark.services
async def test_metrics_and_openapi_for_viewers(client, as_role) -> None:
    r = await client.get("/metrics", headers=as_role["viewer"])
    assert r.status_code == 200 and "gas_api_requests_total" in r.text
    doc = (await client.get("/openapi.json", headers=as_role["viewer"])).json()
    assert doc["components"]["schemas"]["Problem"]
    unauthorized = doc["paths"]["/alarms"]["get"]["responses"]["401"]
    assert "application/problem+json" in unauthorized["content"]


@pytest.mark.services
def test_production_refuses_to_start_without_a_secret(dsn) -> None:
    with pytest.raises(StartupRefused, match="JWT"):
        create_app(Settings(environment="production", db={"dsn": dsn}))
    with pytest.raises(StartupRefused, match="at least"):
        jwt_secret(Settings(environment="production", api={"jwt_secret": "short"}))
    assert jwt_secret(Settings(environment="production", api={"jwt_secret": "z" * 40})) == "z" * 40
    # Elsewhere: a random one per process, never a fixed default.
    a, b = (jwt_secret(Settings(environment="development")) for _ in range(2))
    assert a != b and len(a) >= 32


@pytest.mark.services
def test_user_create_cli(monkeypatch, dsn, prefix, capsys) -> None:
    monkeypatch.setenv("GAS_SAFETY_DB__DSN", dsn)
    name = f"{prefix.lower()}.cli"
    monkeypatch.setenv("GAS_SAFETY_NEW_PASSWORD", "short")
    assert create_user_cli(name, "admin") == 2
    assert "at least 12" in capsys.readouterr().err
    monkeypatch.setenv("GAS_SAFETY_NEW_PASSWORD", "password1234")
    assert create_user_cli(name, "admin") == 2
    assert "password: one of the 20,000 most common passwords" in capsys.readouterr().err
    monkeypatch.setenv("GAS_SAFETY_NEW_PASSWORD", PASSWORD)
    assert create_user_cli(name, "admin") == 0
    assert create_user_cli(name, "admin") == 2  # exists
    assert create_user_cli("Bad Name", "admin") == 2
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT password_hash, role FROM users WHERE username = %s",
                              (name,)).fetchone()
    assert stored[0].startswith("$argon2id$") and stored[1] == "admin"
    assert identity.verify_password(stored[0], PASSWORD)
