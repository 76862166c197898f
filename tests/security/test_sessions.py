"""Sessions end when they should, against the real API and database: a token minted before a
password change, a disable, a role change (by the API or by SQL) is refused afterwards and
re-enabling does not revive it; an open /events stream ends within seconds of its user
being disabled, its token revoked, or its token expiring."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import httpx
import psycopg
import pytest
from api_fixtures import JWT_SECRET, PASSWORD

from dashboard_api import identity
from dashboard_api.identity import Role
from dashboard_api.users import create_user

pytestmark = pytest.mark.services


@pytest.fixture
def new_user(dsn: str, prefix: str) -> Callable[..., str]:
    """`new_user(name, role="operator")`: a user of this test's own, password PASSWORD."""
    def make(name: str, role: str = "operator") -> str:
        username = f"{prefix.lower()}.{name}"
        create_user(dsn, username, role, PASSWORD, actor="tests")
        return username

    return make


async def _token(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> dict:
    r = await client.post("/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def _revoked(client: httpx.AsyncClient, headers: dict[str, str]) -> bool:
    r = await client.get("/auth/me", headers=headers)
    if r.status_code == 200:
        return False
    assert r.status_code == 401, r.text
    return True


async def test_a_password_change_revokes_earlier_tokens(client, as_role, new_user) -> None:
    name = new_user("changer")
    old = await _token(client, name)
    assert not await _revoked(client, old)
    new_password = "a quite different passphrase"
    r = await client.patch(f"/users/{name}", json={"password": new_password},
                           headers=as_role["admin"])
    assert r.status_code == 200
    r = await client.get("/auth/me", headers=old)
    assert r.status_code == 401
    assert r.json()["detail"] == (
        "token revoked: the user's password, role or status changed after it was issued;"
        " request a new one at POST /auth/token")
    fresh = await _token(client, name, new_password)
    assert not await _revoked(client, fresh)
    audit = (await client.get("/audit", params={"entity_id": name, "limit": 5},
                              headers=as_role["admin"])).json()["items"]
    assert any(a["details"].get("sessions_revoked") for a in audit), audit


async def test_disabling_revokes_and_re_enabling_does_not_revive(client, as_role,
                                                                 new_user) -> None:
    admin = as_role["admin"]
    name = new_user("sleeper")
    old = await _token(client, name)
    await client.patch(f"/users/{name}", json={"disabled": True}, headers=admin)
    r = await client.get("/auth/me", headers=old)
    assert r.status_code == 401 and r.json()["detail"] == "user unknown or disabled"
    r = await client.post("/auth/token", data={"username": name, "password": PASSWORD})
    assert r.status_code == 401
    await client.patch(f"/users/{name}", json={"disabled": False}, headers=admin)
    r = await client.get("/auth/me", headers=old)
    assert r.status_code == 401 and r.json()["detail"].startswith("token revoked")
    assert not await _revoked(client, await _token(client, name))


async def test_a_role_change_revokes_even_when_made_in_sql(client, as_role, new_user,
                                                           dsn) -> None:
    name = new_user("climber", "engineer")
    by_api = await _token(client, name)
    await client.patch(f"/users/{name}", json={"role": "viewer"}, headers=as_role["admin"])
    assert await _revoked(client, by_api)
    by_sql = await _token(client, name)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("UPDATE users SET role = 'operator' WHERE username = %s", (name,))
    assert await _revoked(client, by_sql)
    # A change that changes nothing revokes nothing.
    same = await _token(client, name)
    await client.patch(f"/users/{name}", json={"role": "operator"}, headers=as_role["admin"])
    assert not await _revoked(client, same)


async def test_tokens_without_a_version_are_refused(client, new_user) -> None:
    import jwt

    name = new_user("legacy")
    now = int(time.time())
    legacy = jwt.encode({"sub": name, "role": "operator", "iss": identity.TOKEN_ISSUER,
                         "iat": now, "exp": now + 600}, JWT_SECRET, algorithm="HS256")
    r = await client.get("/auth/me", headers={"Authorization": f"Bearer {legacy}"})
    assert r.status_code == 401 and "no version" in r.json()["detail"]


async def _closes_within(api, headers: dict[str, str], sse_reader, act, limit_s: float) -> str:
    """Open /events with `headers`, run `act()`, and return the reason the stream gives when
    it ends; fail unless it ends (cleanly) within limit_s of the act."""
    async with (httpx.AsyncClient(base_url=api.base_url, timeout=10) as c,
                c.stream("GET", "/events", headers=headers) as stream):
        assert stream.status_code == 200
        sse = sse_reader(stream)
        assert (await sse.next())[0] == "stream.open"
        start = time.monotonic()
        await act()
        _, data = await sse.until(lambda e, d: e == "stream.closed", timeout=limit_s)
        with pytest.raises(EOFError):
            await sse.next(timeout=2)
        print(f"\nstream closed after {time.monotonic() - start:.2f} s: {data['reason']}")
        assert time.monotonic() - start < limit_s
        return str(data["reason"])


async def test_a_disabled_users_stream_closes_within_seconds(api, client, as_role, new_user,
                                                             sse_reader) -> None:
    name = new_user("watcher", "viewer")
    headers = await _token(client, name)

    async def disable() -> None:
        r = await client.patch(f"/users/{name}", json={"disabled": True},
                               headers=as_role["admin"])
        assert r.status_code == 200

    assert await _closes_within(api, headers, sse_reader, disable, 5) == "user disabled"


async def test_a_revoked_tokens_stream_closes(api, client, as_role, new_user,
                                              sse_reader) -> None:
    name = new_user("watcher", "viewer")
    headers = await _token(client, name)

    async def change_password() -> None:
        r = await client.patch(f"/users/{name}", json={"password": "another long passphrase"},
                               headers=as_role["admin"])
        assert r.status_code == 200

    reason = await _closes_within(api, headers, sse_reader, change_password, 5)
    assert reason.startswith("token revoked")


async def test_an_expiring_tokens_stream_closes(api, new_user, sse_reader) -> None:
    name = new_user("watcher", "viewer")
    now = dt.datetime.now(dt.UTC)
    short, expires = identity.issue_token(JWT_SECRET, name, Role.viewer, 3, now)
    headers = {"Authorization": f"Bearer {short}"}

    async def nothing() -> None:
        return None

    assert await _closes_within(api, headers, sse_reader, nothing, 6) == "token expired"
    assert dt.datetime.now(dt.UTC) >= expires.replace(microsecond=0)  # `exp` is whole seconds


async def test_a_revoked_api_keys_stream_closes(api, client, as_role, new_user,
                                                sse_reader) -> None:
    name = new_user("scraper", "viewer")
    key = (await client.post("/api-keys", json={"username": name},
                             headers=as_role["admin"])).json()

    async def revoke() -> None:
        r = await client.delete(f"/api-keys/{key['id']}", headers=as_role["admin"])
        assert r.status_code == 200

    reason = await _closes_within(api, {"X-API-Key": key["key"]}, sse_reader, revoke, 5)
    assert reason == "API key revoked"
