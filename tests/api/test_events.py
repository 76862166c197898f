"""The live-event hub without a database (fan-out, filters, bad payloads, slow clients), the
cursor codec and the list conditions built from it, and the stream over HTTP with a type
filter and keepalives."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from dashboard_api import pagination
from dashboard_api.errors import Invalid
from dashboard_api.hub import EventHub
from dashboard_api.metrics import Metrics
from dashboard_api.queries import between, mask


def _hub(queue_size: int = 4) -> EventHub:
    return EventHub("unused", Metrics(), queue_size=queue_size)


async def test_fan_out_filters_and_bad_payloads() -> None:
    hub = _hub()
    everything = hub.subscribe()
    alarms = hub.subscribe(frozenset({"alarm.raised"}))
    hub.publish_raw(json.dumps({"type": "alarm.raised", "alarm_id": 1}))
    hub.publish_raw(json.dumps({"type": "work_order.changed", "work_order_id": 2}))
    hub.publish_raw("not json")
    hub.publish_raw(json.dumps(["no", "type"]))
    hub.publish_raw(json.dumps({"type": ""}))
    got = [everything.queue.get_nowait() for _ in range(everything.queue.qsize())]
    assert [(e.type, json.loads(e.data)) for e in got] == [
        ("alarm.raised", {"type": "alarm.raised", "alarm_id": 1}),
        ("work_order.changed", {"type": "work_order.changed", "work_order_id": 2})]
    assert got[0].id < got[1].id
    assert alarms.queue.qsize() == 1
    alarms.queue.get_nowait()
    hub.publish_raw('{"type": "alarm.raised",\n "alarm_id": 3}')
    assert alarms.queue.get_nowait().data == '{"type": "alarm.raised",  "alarm_id": 3}'
    hub.unsubscribe(everything)
    hub.unsubscribe(alarms)
    assert hub.metrics.sse_clients._value.get() == 0


async def test_a_slow_client_is_dropped_not_the_others() -> None:
    hub = _hub(queue_size=3)
    slow, fast = hub.subscribe(), hub.subscribe()
    for i in range(5):
        hub.publish_raw(json.dumps({"type": "command.state", "n": i}))
        while not fast.queue.empty():
            fast.queue.get_nowait()
    assert slow.overflowed and not fast.overflowed
    drained = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
    assert drained[-1] is None and len(drained) == 4  # three events, then the close marker
    hub.publish_raw(json.dumps({"type": "command.state", "n": 9}))
    assert slow.queue.empty() and fast.queue.qsize() == 1


def test_cursor_codec() -> None:
    t = dt.datetime(2026, 11, 1, 10, 0, tzinfo=dt.UTC)
    assert pagination.decode(pagination.encode(t, 42), dt.datetime, int) == (t, 42)
    assert pagination.decode(pagination.encode("m01", "m01"), str, str) == ("m01", "m01")
    assert pagination.decode(None, str, str) is None
    for bad in ("", "!!!", pagination.encode("x", 1), pagination.encode(t, "x"),
                pagination.encode(t, 2**70), pagination.encode(True, 1)):
        with pytest.raises(Invalid):
            pagination.decode(bad, dt.datetime, int)
    items, nxt = pagination.page([1, 2, 3], 2, lambda r: (r, r))
    assert items == [1, 2] and pagination.decode(nxt, int, int) == (2, 2)
    assert pagination.page([1, 2], 2, lambda r: (r, r)) == ([1, 2], None)


def test_list_conditions() -> None:
    t = dt.datetime(2026, 11, 1, 10, 0, tzinfo=dt.UTC)
    params: dict[str, object] = {}
    assert pagination.older_than(None, "a.raised_at", "a.id", params) == [] and params == {}
    assert pagination.older_than(pagination.encode(t, 7), "a.raised_at", "a.id", params) == [
        "(a.raised_at, a.id) < (%(at)s, %(aid)s)"]
    assert params == {"at": t, "aid": 7}
    params = {}
    assert pagination.older_than(pagination.encode(t, "op-1"), "issued_at", "cmd_id", params,
                                 id_type=str) == ["(issued_at, cmd_id) < (%(at)s, %(aid)s)"]
    assert params == {"at": t, "aid": "op-1"}
    with pytest.raises(Invalid):
        pagination.older_than(pagination.encode(t, "op-1"), "at", "id", {})
    params = {}
    assert pagination.after_key(None, "h.id", params) == [] and params == {}
    assert pagination.after_key(pagination.encode("h01", "h01"), "h.id", params) == [
        "h.id > %(after)s"]
    assert params == {"after": "h01"}
    with pytest.raises(Invalid):
        pagination.after_key(pagination.encode(t, 1), "h.id", {})
    params = {}
    assert between("at", None, None, params) == [] and params == {}
    assert between("at", t, None, params) == ["at >= %(since)s"] and params == {"since": t}
    params = {}
    assert between("at", t, t + dt.timedelta(hours=1), params) == [
        "at >= %(since)s", "at < %(until)s"]
    for until in (t, t - dt.timedelta(seconds=1)):
        with pytest.raises(Invalid) as err:
            between("at", t, until, {})
        assert err.value.extra["errors"][0]["field"] == "since"


def test_mask() -> None:
    assert mask("+15550000042") == "********0042"
    assert mask("ana@example.org") == "a***@example.org"
    assert mask(None) is None


@pytest.mark.services
async def test_stream_filter_and_keepalive(api, as_role, dsn, sse_reader) -> None:
    import httpx
    import psycopg

    async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as client:
        async with client.stream("GET", "/events", headers=as_role["viewer"],
                                 params={"types": ["notification.state"]}) as stream:
            sse = sse_reader(stream)
            assert (await sse.next())[0] == "stream.open"
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                for payload in ({"type": "alarm.raised", "alarm_id": 1},
                                {"type": "notification.state", "notification_id": 5,
                                 "state": "sent"}):
                    await conn.execute("SELECT pg_notify('gas_events', %s)",
                                       (json.dumps(payload),))
            event, data = await sse.next()
            assert (event, data["notification_id"]) == ("notification.state", 5)
            # Idle: comment lines only (the keepalive is 0.5 s in the tests).
            with pytest.raises(TimeoutError):
                await sse.next(timeout=1.5)
            assert sse.comments >= 2
        r = await client.get("/events", params={"types": "nonsense"},
                             headers=as_role["viewer"])
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "types.0"


@pytest.mark.services
async def test_stream_survives_a_lost_listener(api, as_role, dsn, sse_reader) -> None:
    import httpx
    import psycopg

    async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as client:
        async with client.stream("GET", "/events", headers=as_role["viewer"]) as stream:
            sse = sse_reader(stream)
            assert (await sse.next())[0] == "stream.open"
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                killed = await (await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query = 'LISTEN gas_events'")).fetchall()
                assert killed == [(True,)]
                await sse.until(lambda e, d: e == "stream.gap", timeout=10)
                await conn.execute("SELECT pg_notify('gas_events', %s)", (json.dumps(
                    {"type": "alarm.cleared", "alarm_id": 77}),))
            _, data = await sse.until(lambda e, d: e == "alarm.cleared")
            assert data["alarm_id"] == 77
        health = (await client.get("/healthz")).json()
        assert {k: health[k] for k in ("status", "database", "events_listener")} == {
            "status": "ok", "database": True, "events_listener": True}
        assert set(health["gateway"]) == {"status", "broker_connected"}  # as the API sees it


@pytest.mark.services
async def test_bodies_are_bounded(client, as_role) -> None:
    big = {"household_id": "h1", "phone": "+1555", "pad": "x" * 70_000}
    r = await client.post("/upgrades/resident/lookup", json=big)
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    r = await client.post("/alarms/1/acknowledge", json=big)
    assert r.status_code == 401  # a stranger learns nothing, not even the size rule

    async def chunks():  # valid JSON first: the route must still not run
        yield b'{"comment": "sneaky"}'
        for _ in range(20):
            yield b" " * 8192

    r = await client.post("/alarms/1/acknowledge", content=chunks(),
                          headers={**as_role["operator"], "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["title"] == "Payload too large"
