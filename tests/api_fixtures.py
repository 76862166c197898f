"""API test fixtures, a pytest plugin for tests/api and tests/security: the operator API
served by a real uvicorn (in a thread, with its own event loop and pool) over the session's
private TimescaleDB, one user per role, and a small stand-in for the gateway: `raise_alarm`
inserts what the gateway would (an alarm, its work order) and NOTIFYs gas_events, as the real
gateway will.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from psycopg.types.json import Jsonb
from support import wait_until

from dashboard_api.main import create_app
from dashboard_api.users import create_user
from gateway.ops.provision import Household, generate_city, provision
from gateway.settings import Settings
from simulator.phones import PhoneGateway

JWT_SECRET = "test-secret-" + "x" * 32
ROLES = ("viewer", "operator", "engineer", "admin")
PASSWORD = "correct horse battery staple"


@dataclass
class Api:
    base_url: str
    settings: Settings
    app: Any


class _ServerThread(threading.Thread):
    def __init__(self, app: Any) -> None:
        super().__init__(name="api-under-test", daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=2))

    def run(self) -> None:
        self.server.run(sockets=[self.sock])


@pytest.fixture(scope="session")
def phones() -> Iterator[PhoneGateway]:
    """The fake SMS and voice gateway the API texts residents' one-time codes through."""
    with PhoneGateway() as gw:
        yield gw


@pytest.fixture(scope="session")
def api_settings(dsn: str, phones: PhoneGateway) -> Settings:
    return Settings(environment="test", db={"dsn": dsn},
                    response={"notify_channel": "webhook",
                              "notify_sms_url": phones.url + "/sms",
                              "notify_voice_url": phones.url + "/voice",
                              "notify_sms_timeout_s": 3.0},
                    # the session's tokens outlive a whole run (a slow one takes well over 10 min)
                    api={"jwt_secret": JWT_SECRET, "token_ttl_s": 4 * 3600, "max_points": 1000,
                         "max_range_days": 400,
                         # every test client is 127.0.0.1: trusting it as a proxy lets a test
                         # act as other clients with X-Forwarded-For (the sign-in and
                         # resident limiters count per client)
                         "trusted_proxies": ["127.0.0.1"]})


@pytest.fixture(scope="session")
def api(api_settings: Settings) -> Iterator[Api]:
    app = create_app(api_settings, sse_keepalive_s=0.5, rollups_every_s=None)
    thread = _ServerThread(app)
    thread.start()
    wait_until(lambda: thread.server.started or not thread.is_alive(), 30, interval_s=0.02,
               what="the API under test to start")
    if not thread.server.started:
        raise RuntimeError("the API under test did not start")
    try:
        yield Api(f"http://127.0.0.1:{thread.port}", api_settings, app)
    finally:
        thread.server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def users(dsn: str) -> dict[str, str]:
    """role -> username, one user per role (password PASSWORD)."""
    names = {role: f"{role}.one" for role in ROLES}
    for role, name in names.items():
        create_user(dsn, name, role, PASSWORD, actor="tests")
    return names


@pytest.fixture(scope="session")
def tokens(api: Api, users: dict[str, str]) -> dict[str, str]:
    out = {}
    with httpx.Client(base_url=api.base_url) as c:
        for role, name in users.items():
            r = c.post("/auth/token", data={"username": name, "password": PASSWORD})
            assert r.status_code == 200, r.text
            out[role] = r.json()["access_token"]
    return out


@pytest.fixture(scope="session")
def as_role(tokens: dict[str, str]) -> dict[str, dict[str, str]]:
    """role -> Authorization header."""
    return {role: {"Authorization": f"Bearer {t}"} for role, t in tokens.items()}


@pytest.fixture
async def client(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=20) as c:
        yield c


@pytest.fixture
def city(dsn: str, prefix: str) -> list[Household]:
    """Four households of this test's own (ids, community and buildings prefixed)."""
    houses = generate_city(4, seed=7, prefix=prefix)
    provision(dsn, houses, None, None)
    return houses


# ---------------------------------------------------------------- the gateway's part

@pytest.fixture
def raise_alarm(dsn: str) -> Any:
    """`await raise_alarm(household, ...)`: see `_raise_alarm`."""
    return functools.partial(_raise_alarm, dsn)


@pytest.fixture
def sse_reader() -> type[SseReader]:
    return SseReader


async def _raise_alarm(dsn: str, household: Household, *, kind: str = "leak",
                      severity: str = "critical", cause: str | None = "leak",
                      priority: str = "urgent", value: float = 42.0,
                      raised_at: dt.datetime | None = None,
                      arrive_in: dt.timedelta = dt.timedelta(minutes=30),
                      resolve_in: dt.timedelta = dt.timedelta(hours=4)) -> tuple[int, int | None]:
    """What the gateway does on a leak: the alarm, its work order, and both NOTIFYs, in one
    transaction. Returns (alarm id, work order id)."""
    now = raised_at or dt.datetime.now(dt.UTC)
    detector = household.detectors[0]
    evidence = [{"ts": now.timestamp() - 1, "ch4": value - 2},
                {"ts": now.timestamp(), "ch4": value}]
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        alarm_id = (await (await conn.execute(
            "INSERT INTO alarms (device_id, household_id, kind, severity, value, raised_at,"
            " evidence, flow_at_meter) VALUES (%s, %s, %s, %s, %s, %s, %s, true) RETURNING id",
            (detector.id, household.id, kind, severity, value, now, Jsonb(evidence)))
                         ).fetchone())[0]
        await conn.execute("SELECT pg_notify('gas_events', %s)", (json.dumps({
            "type": "alarm.raised", "alarm_id": alarm_id, "device_id": detector.id,
            "household_id": household.id, "kind": kind, "severity": severity}),))
        wo_id = None
        if cause is not None:
            wo_id = (await (await conn.execute(
                "INSERT INTO work_orders (household_id, cause, priority, title, opened_at,"
                " arrive_by, resolve_by, alarm_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " RETURNING id",
                (household.id, cause, priority, f"{kind} at {household.id}", now,
                 now + arrive_in, now + resolve_in, alarm_id))).fetchone())[0]
            await conn.execute(
                "INSERT INTO work_order_steps (work_order_id, at, actor, action, to_status)"
                " VALUES (%s, %s, 'gateway', 'open', 'open')", (wo_id, now))
            await conn.execute("SELECT pg_notify('gas_events', %s)", (json.dumps({
                "type": "work_order.opened", "work_order_id": wo_id,
                "household_id": household.id, "cause": cause, "priority": priority}),))
    return alarm_id, wo_id


# ---------------------------------------------------------------- SSE

class SseReader:
    """Reads `event:`/`data:` frames from an open text/event-stream response."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()
        self.comments = 0  # keepalives seen

    async def next(self, timeout: float = 5.0) -> tuple[str, dict[str, Any]]:
        async with asyncio.timeout(timeout):
            event, data = "message", ""
            async for line in self._lines:
                if line == "":
                    if data:
                        return event, json.loads(data)
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "data":
                    data += value
            raise EOFError("stream ended")

    async def until(self, predicate: Any, timeout: float = 5.0) -> tuple[str, dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while True:
                event, data = await self.next(timeout)
                if predicate(event, data):
                    return event, data
