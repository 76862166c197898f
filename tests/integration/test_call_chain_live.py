"""The owner call chain against the real broker, gateway, database and API, with the fake
phone gateway (simulator/phones.py) answering as each test configures it: the owner answers
at step 1 and the chain stops; nobody answers and it walks to the control room; the voice
gateway fails and it retries with backoff, then moves on; the gateway is killed mid-call and
its successor carries on. Also measures local_alarm -> work order and -> first call."""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from support import GatewayProcess, wait_row, wait_until

from simulator.phones import Call, PhoneGateway

pytestmark = pytest.mark.services

CONFIRM_S = 3.0
BACKOFF_S = 0.3
VOICE_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def chain_phones() -> Iterator[PhoneGateway]:
    """This module's own phone gateway (slow calls ring for most of the voice timeout); not
    named `phones`, which the session's API is built on."""
    with PhoneGateway(slow_s=VOICE_TIMEOUT_S * 0.8) as gw:
        yield gw


@pytest.fixture(scope="module")
def chain_gateway(
    gateway: GatewayProcess, stack: Any, chain_phones: PhoneGateway
) -> Iterator[Any]:
    """A gateway whose notifier calls the fake phones, with a 3 s confirm window. The run's
    shared gateway steps aside meanwhile (the gateway account's client id is its name)."""
    env = {
        "GAS_SAFETY_RESPONSE__NOTIFY_CHANNEL": "webhook",
        "GAS_SAFETY_RESPONSE__NOTIFY_VOICE_URL": f"{chain_phones.url}/voice",
        "GAS_SAFETY_RESPONSE__NOTIFY_SMS_URL": f"{chain_phones.url}/sms",
        "GAS_SAFETY_RESPONSE__NOTIFY_CONFIRM_S": str(CONFIRM_S),
        "GAS_SAFETY_RESPONSE__NOTIFY_BACKOFF_S": str(BACKOFF_S),
        "GAS_SAFETY_RESPONSE__NOTIFY_MAX_ATTEMPTS": "3",
        "GAS_SAFETY_RESPONSE__NOTIFY_VOICE_TIMEOUT_S": str(VOICE_TIMEOUT_S),
        "GAS_SAFETY_RESPONSE__NOTIFY_SMS_TIMEOUT_S": str(VOICE_TIMEOUT_S),
    }
    gateway.stop()
    gw = GatewayProcess(stack, extra_env=env)
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()
        gateway.start()


@pytest.fixture
def http(api: Any, as_role: dict[str, dict[str, str]]) -> Iterator[Any]:
    with httpx.Client(base_url=api.base_url, timeout=20) as c:
        c.roles = as_role  # type: ignore[attr-defined]
        # The fault tests before this module stop the shared database for 30 s; the API's pool
        # then reconnects with growing pauses and answers 503 with Retry-After meanwhile, as a
        # client is told to. Wait for it here rather than in each step's first request.
        wait_until(
            lambda: c.get("/households", params={"limit": 1}, headers=as_role["operator"])
            .status_code == 200,
            timeout_s=90,
            interval_s=0.5,
            what="the API's database pool back after the fault tests",
        )
        yield c


_numbers = iter(range(10_000))


class EventTap(threading.Thread):
    """The API's live stream (SSE) read in a thread: every event's JSON, as a client sees it."""

    def __init__(self, base_url: str, headers: dict[str, str], types: list[str]) -> None:
        super().__init__(daemon=True)
        self.base_url, self.headers, self.types = base_url, headers, types
        self.events: list[dict[str, Any]] = []
        self.opened = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        params = [("types", t) for t in self.types]
        with (
            httpx.Client(base_url=self.base_url, timeout=None) as c,
            c.stream("GET", "/events", params=params, headers=self.headers) as r,
        ):
            for line in r.iter_lines():  # keep-alives every 0.5 s: the stop is seen
                if line.startswith("data: "):
                    doc = json.loads(line[6:])
                    if doc["type"] == "stream.open":
                        self.opened.set()
                    self.events.append(doc)
                if self.stop.is_set():
                    return


def own_numbers(dsn: str, house: Any, emergency: bool) -> tuple[str, str | None]:
    """Phones no other test's household shares (the generated fleet reuses numbers)."""
    k = next(_numbers)
    owner = f"+1999{int(time.time()) % 100_000:05d}{k:03d}"
    other = f"+1888{int(time.time()) % 100_000:05d}{k:03d}" if emergency else None
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE households SET owner_phone = %s WHERE id = %s", (owner, house.id))
    return owner, other


def notice(dsn: str, household_id: str, cond: Any = bool, timeout_s: float = 20) -> Any:
    return wait_row(
        dsn,
        "SELECT id, state, confirmed_by, work_order_id, created_at, finished_at"
        " FROM notifications WHERE household_id = %s AND kind = 'leak'",
        (household_id,),
        cond=cond,
        timeout_s=timeout_s,
    )[0]


def mine(calls: list[Call], household_id: str) -> list[Call]:
    return [c for c in calls if c.doc.get("household_id") == household_id]


def attempt_states(http: Any, household_id: str, role: str = "operator") -> list[tuple]:
    r = http.get(f"/households/{household_id}/notifications", headers=http.roles[role])
    assert r.status_code == 200, r.text
    (n,) = [n for n in r.json()["items"] if n["kind"] == "leak"]
    return [(a["step_name"], a["state"], a["recipient"]) for a in n["attempt_list"]]


def start_leak(chain_gateway: Any, fleet: Any, devices: Any, dsn: str) -> tuple[Any, Any]:
    house = fleet(1)[0]
    chain_gateway.wait_devices(dsn)
    return house, devices(house.detectors[0].id)


def test_owner_answers_at_step_one_and_the_chain_stops(
    chain_gateway: Any, chain_phones: PhoneGateway, fleet: Any, devices: Any, dsn: str, http: Any
) -> None:
    house, det = start_leak(chain_gateway, fleet, devices, dsn)
    owner, _ = own_numbers(dsn, house, False)
    chain_phones.configure(owner, ["answered"])
    det.publish("event", {"seq": 1, "ts": time.time(), "type": "local_alarm"})
    n = notice(dsn, house.id, cond=lambda r: r and r[0][1] == "confirmed")
    assert n[2] == "owner:voice"
    time.sleep(1.0)  # nothing more may follow
    got = mine(chain_phones.calls(), house.id)
    assert [(c.channel, c.to) for c in got] == [("voice", owner)]
    assert attempt_states(http, house.id) == [("voice_owner", "answered", owner)]
    viewer = attempt_states(http, house.id, "viewer")
    assert viewer[0][2] != owner and viewer[0][2].endswith(owner[-4:])


def test_nobody_answers_walks_the_chain_to_the_control_room(
    chain_gateway: Any, chain_phones: PhoneGateway, fleet: Any, devices: Any, dsn: str, http: Any
) -> None:
    house, det = start_leak(chain_gateway, fleet, devices, dsn)
    owner, emergency = own_numbers(dsn, house, True)
    r = http.put(
        f"/households/{house.id}/emergency-contact",
        json={"name": "Ben Neighbour", "phone": emergency},
        headers=http.roles["operator"],
    )
    assert r.status_code == 200, r.text
    chain_phones.configure(owner, ["no_answer"])
    chain_phones.configure(emergency, ["no_answer"])
    tap = EventTap(
        str(http.base_url), http.roles["viewer"], ["notification.state", "work_order.flagged"]
    )
    tap.start()
    assert tap.opened.wait(10), "the live stream did not open"
    det.publish("event", {"seq": 1, "ts": time.time(), "type": "local_alarm"})
    n = notice(dsn, house.id, cond=lambda r: r and r[0][1] == "escalated", timeout_s=30)
    seen = wait_until(
        lambda: (
            [e for e in tap.events if e.get("household_id") == house.id]
            if any(
                e["type"] == "work_order.flagged" and e["household_id"] == house.id
                for e in tap.events
            )
            else None
        ),
        10,
        what="the control room's flag on the live stream",
    )
    tap.stop.set()
    steps = [(e.get("step"), e.get("attempt_state")) for e in seen if e["type"] != "stream.open"]
    assert steps == [
        ("voice_owner", "calling"),
        ("voice_owner", "no_answer"),
        ("sms_owner", "sending"),
        ("sms_owner", "sent"),
        ("voice_emergency", "calling"),
        ("voice_emergency", "no_answer"),
        (None, None),  # work_order.flagged
        ("control_room", "flagged"),
    ], steps
    assert owner not in json.dumps(seen) and emergency not in json.dumps(seen)
    got = mine(chain_phones.calls(), house.id)
    assert [(c.channel, c.to) for c in got] == [
        ("voice", owner),
        ("sms", owner),
        ("voice", emergency),
    ]
    assert "emergency contact" in got[2].body
    # the household had the confirm window, counted from the notice
    assert (n[5] - n[4]).total_seconds() >= CONFIRM_S
    assert attempt_states(http, house.id) == [
        ("voice_owner", "no_answer", owner),
        ("sms_owner", "sent", owner),
        ("voice_emergency", "no_answer", emergency),
        ("control_room", "flagged", None),
    ]
    order = http.get(f"/work-orders/{n[3]}", headers=http.roles["viewer"])
    assert order.status_code == 200, order.text
    assert order.json()["cause"] == "leak" and "not confirmed" in order.json()["flag"]
    assert order.json()["flagged_at"] is not None
    assert [s["action"] for s in order.json()["steps"]].count("control_room_flag") == 1
    with psycopg.connect(dsn) as conn:
        flagged = conn.execute(
            "SELECT flagged_at IS NOT NULL, flag FROM work_orders WHERE id = %s", (n[3],)
        ).fetchone()
    assert flagged is not None and flagged[0] and "not confirmed" in flagged[1]


def test_a_failing_voice_gateway_is_retried_with_backoff_then_the_chain_moves_on(
    chain_gateway: Any, chain_phones: PhoneGateway, fleet: Any, devices: Any, dsn: str, http: Any
) -> None:
    house, det = start_leak(chain_gateway, fleet, devices, dsn)
    owner, _ = own_numbers(dsn, house, False)
    chain_phones.configure(owner, ["error"], "voice")  # HTTP 500 to every call; texts go out
    det.publish("event", {"seq": 1, "ts": time.time(), "type": "local_alarm"})
    chain_phones.wait_for(lambda calls: len(mine(calls, house.id)) >= 4, 20)
    got = mine(chain_phones.calls(), house.id)
    voice = [c for c in got if c.channel == "voice"]
    assert len(voice) == 3 and got[3].channel == "sms" and got[3].to == owner
    gaps = [b.at - a.at for a, b in itertools.pairwise(voice)]
    assert gaps[0] >= BACKOFF_S and gaps[1] >= 2 * BACKOFF_S, gaps
    states = attempt_states(http, house.id)
    assert [s[:2] for s in states[:4]] == [
        ("voice_owner", "failed"),
        ("voice_owner", "failed"),
        ("voice_owner", "failed"),
        ("sms_owner", "sent"),
    ]
    notice(dsn, house.id, cond=lambda r: r and r[0][1] == "escalated", timeout_s=30)


def test_a_gateway_killed_mid_call_is_followed_by_one_retry_and_nothing_lost(
    chain_gateway: Any, chain_phones: PhoneGateway, fleet: Any, devices: Any, dsn: str, http: Any
) -> None:
    house, det = start_leak(chain_gateway, fleet, devices, dsn)
    owner, _ = own_numbers(dsn, house, False)
    chain_phones.configure(owner, ["slow", "no_answer"])  # the first call rings until the kill
    det.publish("event", {"seq": 1, "ts": time.time(), "type": "local_alarm"})
    chain_phones.wait_for(lambda calls: len(mine(calls, house.id)) >= 1, 20)
    chain_gateway.kill()
    chain_gateway.start()
    n = notice(dsn, house.id, cond=lambda r: r and r[0][1] == "escalated", timeout_s=40)
    assert n[1] == "escalated"
    got = mine(chain_phones.calls(), house.id)
    assert [(c.channel, c.call_id.rsplit("-", 1)[1]) for c in got] == [
        ("voice", "1"),
        ("voice", "2"),  # the lost attempt's one retry
        ("sms", "1"),
    ]
    assert [s[:2] for s in attempt_states(http, house.id)] == [
        ("voice_owner", "lost"),
        ("voice_owner", "no_answer"),
        ("sms_owner", "sent"),
        ("control_room", "flagged"),
    ]


def test_an_operator_confirming_during_the_call_stops_the_chain(
    chain_gateway: Any, chain_phones: PhoneGateway, fleet: Any, devices: Any, dsn: str, http: Any
) -> None:
    house, det = start_leak(chain_gateway, fleet, devices, dsn)
    owner, _ = own_numbers(dsn, house, False)
    chain_phones.configure(owner, ["slow"], "voice")  # rings, then no answer
    det.publish("event", {"seq": 1, "ts": time.time(), "type": "local_alarm"})
    chain_phones.wait_for(lambda calls: len(mine(calls, house.id)) >= 1, 20)
    n = notice(dsn, house.id)
    r = http.post(
        f"/notifications/{n[0]}/confirm",
        json={"comment": "the owner called the control room"},
        headers=http.roles["operator"],
    )
    assert r.status_code == 200 and r.json()["state"] == "confirmed", r.text
    # the call in flight still ends and is recorded; nothing follows it
    wait_until(
        lambda: attempt_states(http, house.id) == [("voice_owner", "no_answer", owner)],
        10,
        what="the ringing call's outcome recorded",
    )
    time.sleep(1.0)
    assert [c.channel for c in mine(chain_phones.calls(), house.id)] == ["voice"]
    assert notice(dsn, house.id)[1] == "confirmed"


def test_latency_from_local_alarm_to_order_and_first_call(
    chain_gateway: Any, chain_phones: PhoneGateway, fleet: Any, devices: Any, dsn: str
) -> None:
    """Twenty leaks, one at a time: the figures are printed for the record (-s to see)."""
    houses = fleet(20, seed=5)
    chain_gateway.wait_devices(dsn)
    to_order, to_call = [], []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for house in houses:
            det = devices(house.detectors[0].id)
            t0 = det.publish("event", {"seq": 1, "ts": time.time(), "type": "local_alarm"})
            wait_until(
                lambda h=house: conn.execute(
                    "SELECT 1 FROM work_orders WHERE household_id = %s AND cause = 'leak'",
                    (h.id,),
                ).fetchone(),
                10,
                interval_s=0.005,
                what="the work order",
            )
            to_order.append(time.time() - t0)
            first = chain_phones.wait_for(lambda c, h=house: bool(mine(c, h.id)), 10)
            to_call.append(mine(first, house.id)[0].at - t0)
    for name, xs in (("work order", to_order), ("first call", to_call)):
        print(
            f"local_alarm -> {name}: p50 {statistics.median(xs) * 1000:.0f} ms,"
            f" max {max(xs) * 1000:.0f} ms over {len(xs)}"
        )
    assert max(to_order) < 5 and max(to_call) < 5
