"""Partition workers (`gas-safety worker`) against a private three-node NATS JetStream
cluster and the private TimescaleDB: readings written straight into JetStream with the
edge relay's headers, workers splitting the 64 partitions, leaks cut on gas.cmd.<meter>,
forged messages refused, and a worker killed with SIGKILL at load (docs/cluster.md).

Run with `./dev.sh test -m cluster`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from cluster_kit import (
    LogSide,
    WorkerProcess,
    owners,
    part_of,
    poll,
    reading,
    wait_split,
)
from support import wait_row

from gateway.core.partitions import PARTITIONS
from gateway.ops.nats_cluster import NatsCluster
from gateway.ops.stack import Stack

pytestmark = [pytest.mark.services, pytest.mark.cluster]

TAKEOVER_BOUND_S = 5.0  # a dead worker's partitions owned and judged again
CUT_BOUND_S = 5.0  # a leak published during the failover, cut after the takeover


@pytest.fixture(scope="module")
def log(stack: Stack) -> Iterator[tuple[NatsCluster, LogSide]]:
    cluster = NatsCluster(stack.home / "nats").start()
    side = LogSide(cluster.urls)
    try:
        yield cluster, side
    finally:
        side.close()
        cluster.stop()


@pytest.fixture
def workers(stack: Stack, log: tuple[NatsCluster, LogSide]) -> Iterator[Any]:
    made: list[WorkerProcess] = []

    def start(*names: str) -> list[WorkerProcess]:
        ws = [WorkerProcess(stack, log[0].servers, n).start() for n in names]
        made.extend(ws)
        return ws

    yield start
    for w in made:
        w.stop()


def _topic(device_id: str, channel: str = "telemetry") -> str:
    return f"gas/v1/{device_id}/{channel}"


def test_two_workers_split_the_partitions_and_cut_a_leak(fleet, workers, log, dsn) -> None:
    _, side = log
    city = fleet(6, seed=3)
    a, b = workers("split-a", "split-b")
    wait_split([a, b], PARTITIONS, 30)
    assert len(a.partitions()) == len(b.partitions()) == PARTITIONS // 2
    assert set(owners(dsn).values()) == {"split-a", "split-b"}

    hh = city[0]
    p = part_of(hh)
    det = hh.detectors[0]
    side.publish(p, _topic(hh.meter.id), reading("meter", 1, flow=0.3))
    side.publish(p, _topic(det.id), reading("detector", 1, ch4=1.2))
    t_pub = side.publish(p, _topic(det.id), reading("detector", 2, ch4=45.0))
    t_cmd, cmd = poll(lambda: side.commands_for(hh.meter.id), 5, "the close command")[0]
    assert cmd["action"] == "valve_close"
    wait_row(dsn, "SELECT state FROM valve_commands WHERE cmd_id = %s", (cmd["cmd_id"],),
             what="the command recorded")
    print(f"\n[split] 2 workers x {PARTITIONS // 2} partitions; leak cut in "
          f"{(t_cmd - t_pub) * 1000:.0f} ms on gas.cmd.{hh.meter.id}")


def test_forged_messages_are_refused_as_on_the_mqtt_path(fleet, workers, log, dsn) -> None:
    _, side = log
    city = fleet(60, seed=5)
    (w,) = workers("forge-a")
    wait_split([w], PARTITIONS, 30)
    victim, other = city[0], next(h for h in city if part_of(h) != part_of(city[0]))
    p = part_of(victim)
    det = victim.detectors[0]
    # a device of another building's partition, put on this partition's subject
    side.publish(p, _topic(other.detectors[0].id), reading("detector", 1, ch4=80.0))
    # a meter's reading on a detector's topic; a device writing a command; no topic at all
    side.publish(p, _topic(det.id), reading("meter", 1, flow=50.0))
    side.publish(p, _topic(victim.meter.id, "cmd"), b'{"cmd_id":"x","action":"valve_open"}')
    side.call(side.js.publish(f"gas.in.{p}", reading("detector", 9, ch4=90.0)))
    rows = poll(
        lambda: _rejects(dsn, [other.detectors[0].id, det.id, victim.meter.id]), 10,
        "three refusals",
    )
    time.sleep(1.0)
    assert not side.commands_for(victim.meter.id) and not side.commands_for(other.meter.id)
    reasons = sorted(r for _, r in rows)
    print(f"\n[forged] refused: {reasons}")
    assert len(rows) >= 3
    # the partition keeps going: the next genuine reading is judged
    side.publish(p, _topic(victim.meter.id), reading("meter", 1, flow=0.3))
    side.publish(p, _topic(det.id), reading("detector", 2, ch4=45.0))
    poll(lambda: side.commands_for(victim.meter.id), 5, "the genuine leak cut")


def test_operator_commands_and_device_state_reach_the_owner(fleet, workers, log, dsn) -> None:
    """An operator's command (a row the API inserts, then NOTIFY) goes out from the worker
    owning the meter's partition, once; the owned devices' latest values reach device_state."""
    _, side = log
    city = fleet(8, seed=11)
    a, b = workers("op-a", "op-b")
    wait_split([a, b], PARTITIONS, 30)
    hh = city[0]
    side.publish(part_of(hh), _topic(hh.meter.id), reading("meter", 1, flow=0.25))
    wait_row(dsn, "SELECT last_seq FROM device_state WHERE device_id = %s", (hh.meter.id,),
             cond=lambda r: r and r[0][0] == 1, what="the meter's latest values")
    cmd_id = f"op-test-{hh.meter.id}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO valve_commands (cmd_id, meter_id, household_id, action, reason,"
            " state, requested_by, issued_at) VALUES (%s, %s, %s, 'valve_open', 'test',"
            " 'issued', 'tester', now())",
            (cmd_id, hh.meter.id, hh.id),
        )
        conn.execute("NOTIFY gas_commands")
    got = poll(lambda: [c for _, c in side.commands_for(hh.meter.id) if c["cmd_id"] == cmd_id],
               5, "the operator's command on gas.cmd")
    time.sleep(0.5)
    assert len([c for _, c in side.commands_for(hh.meter.id) if c["cmd_id"] == cmd_id]) == 1
    assert got[0]["action"] == "valve_open"


def test_a_lost_lease_connection_stops_judging_at_once(fleet, workers, log, dsn) -> None:
    """The database ends the worker's lease session: every lease goes with it, the worker
    drops its partitions at once, then takes them again from the log and the database."""
    _, side = log
    city = fleet(6, seed=13)
    (w,) = workers("lease-a")
    wait_split([w], PARTITIONS, 30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'lease-a'"
        ).fetchall()
    assert ended == [(True,)]
    poll(lambda: "dropping partitions" in w.log_path.read_text(), 5, "the partitions dropped")
    wait_split([w], PARTITIONS, 15)
    hh = city[0]
    p = part_of(hh)
    side.publish(p, _topic(hh.meter.id), reading("meter", 1, flow=0.3))
    side.publish(p, _topic(hh.detectors[0].id), reading("detector", 1, ch4=45.0))
    poll(lambda: side.commands_for(hh.meter.id), 5, "the leak cut after the leases came back")


def _rejects(dsn: str, device_ids: list[str]) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT device_id, reason FROM rejects WHERE device_id = ANY(%s)", (device_ids,)
        ).fetchall()
    return [(str(d), str(r)) for d, r in rows] if len(rows) >= 3 else []


class Load:
    """Readings from every device of `households` at about `rate` per second, written into
    JetStream as the relay would; counts what was confirmed."""

    def __init__(self, side: LogSide, households: list[Any], rate: float) -> None:
        self.side = side
        self.devices = [(part_of(h), d) for h in households for d in h.devices]
        self.rate = rate
        self.seq: dict[str, int] = {}
        self.sent = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tick = 0.1
        per_tick = max(1, int(self.rate * tick))
        i = 0
        while not self.stopping.is_set():
            t0 = time.monotonic()
            items = []
            for _ in range(per_tick):
                p, d = self.devices[i % len(self.devices)]
                i += 1
                n = self.seq[d.id] = self.seq.get(d.id, 0) + 1
                items.append((p, _topic(d.id), reading(d.kind, n)))
            self.side.publish_many(items)
            self.sent += len(items)
            self.stopping.wait(max(0.0, tick - (time.monotonic() - t0)))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(30)


def _stored(dsn: str, ids: list[str]) -> tuple[int, int]:
    """(rows, distinct readings) stored for these devices."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (device_id, seq)) FROM ("
            " SELECT device_id, seq FROM detector_readings WHERE device_id = ANY(%s)"
            " UNION ALL SELECT device_id, seq FROM meter_readings WHERE device_id = ANY(%s)) r",
            (ids, ids),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.faults
def test_a_worker_killed_at_load_is_taken_over(fleet, workers, log, dsn) -> None:
    _, side = log
    city = fleet(60, seed=7)
    trio = workers("fo-a", "fo-b", "fo-c")
    wait_split(trio, PARTITIONS, 60)
    leak_hh = city[0]  # its partition's owner is killed
    a = next(w for w in trio if part_of(leak_hh) in w.partitions())
    b, c = (w for w in trio if w is not a)
    victim = set(a.partitions())
    others = [h for h in city if h is not leak_hh]
    ids = [d.id for h in others for d in h.devices]
    before = len(side.commands)

    with Load(side, others, rate=300) as load:
        time.sleep(3.0)
        t_kill = time.time()
        a.kill()
        # a leak in one of the dead worker's partitions, published during the failover
        p = part_of(leak_hh)
        side.publish(p, _topic(leak_hh.meter.id), reading("meter", 1, flow=0.3))
        t_leak = side.publish(p, _topic(leak_hh.detectors[0].id), reading("detector", 1, ch4=45.0))

        def survivors_own_all() -> float | None:
            hb, hc = b.health(), c.health()
            if not hb or not hc or len(set(hb["partitions"]) | set(hc["partitions"])) < PARTITIONS:
                return None
            return max(float(h["taken_at"].get(str(x), 0)) for h in (hb, hc) for x in victim)

        t_taken = poll(survivors_own_all, 20, "the dead worker's partitions taken over")
        t_cmd, cmd = poll(lambda: side.commands_for(leak_hh.meter.id), 20, "the leak cut")[0]
        time.sleep(3.0)
    sent = load.sent
    poll(lambda: _stored(dsn, ids)[1] >= sent, 60, f"{sent} readings stored")
    rows, stored = _stored(dsn, ids)
    absorbed = sum(int(w.health()["duplicates_absorbed"]) for w in (b, c))
    backlog = sum(int(w.health()["backlog_judged"]) for w in (b, c))
    closes: dict[str, set[str]] = {}
    for _, meter, payload in side.commands[before:]:
        if payload.get("action") == "valve_close":
            closes.setdefault(meter, set()).add(payload["cmd_id"])
    twice = sum(len(v) - 1 for v in closes.values())
    takeover_s = t_taken - t_kill
    cut_s = t_cmd - max(t_leak, t_taken_partition(b, c, p))
    print(
        f"\n[worker kill -9] partitions taken over in {takeover_s:.2f} s (bound "
        f"{TAKEOVER_BOUND_S:.0f} s); leak published {t_leak - t_kill:.2f} s after the kill, "
        f"cut {t_cmd - t_leak:.2f} s after it, {cut_s:.2f} s after its partition's takeover "
        f"(bound {CUT_BOUND_S:.0f} s)\n  sent={sent} stored={stored} lost={sent - stored} "
        f"duplicate rows={rows - stored} given to the dead worker and judged again={backlog} "
        f"duplicates absorbed={absorbed} "
        f"commands={sum(len(v) for v in closes.values())} issued twice={twice}"
    )
    assert takeover_s <= TAKEOVER_BOUND_S
    assert cut_s <= CUT_BOUND_S
    assert stored == sent and rows == stored
    assert twice == 0 and cmd["action"] == "valve_close"


def t_taken_partition(b: WorkerProcess, c: WorkerProcess, p: int) -> float:
    for w in (b, c):
        h = w.health()
        if h and str(p) in h["taken_at"]:
            return float(h["taken_at"][str(p)])
    raise AssertionError(f"partition {p} owned by no survivor")


FEED_PARTITION = 1000  # outside the 64: no worker of this module reads it


def test_a_partition_feed_streams_in_order_renews_and_stops(log) -> None:
    """The worker's standing pull requests (gateway.cluster.feed): every message once, in
    the stream's order, more requests as the batch runs low; after `stop()` nothing is
    delivered, and the next feed on the partition gets what came meanwhile at once (the
    stopped feed's request died with its inbox, nothing waits for the ack wait)."""
    import asyncio

    import nats

    from gateway.cluster import jetstream
    from gateway.cluster.feed import Feed
    from gateway.protocol.log_subjects import STREAM, inbound_subject

    cluster, _ = log

    async def go() -> None:
        nc = await nats.connect(cluster.urls)
        js = nc.jetstream(timeout=10)
        try:
            await jetstream.ensure_stream(js)
            await jetstream.take_consumer(js, FEED_PARTITION, 30.0)  # created when missing
            got: list[Any] = []
            feed = Feed(nc, FEED_PARTITION, got.append, batch=100, expires_s=1.0)
            task = asyncio.create_task(feed.run())
            marker = f"{time.time():.6f}"
            for i in range(450):
                await js.publish(inbound_subject(FEED_PARTITION), f"{marker}:{i}".encode())
            deadline = time.monotonic() + 10
            while len([m for m in got if m.data.startswith(marker.encode())]) < 450:
                assert time.monotonic() < deadline, f"{len(got)} of 450 delivered"
                await asyncio.sleep(0.05)
            mine = [m.data.decode() for m in got if m.data.startswith(marker.encode())]
            assert mine == [f"{marker}:{i}" for i in range(450)]  # once each, in order
            assert feed.requests >= 450 // 100  # renewed at half of each batch
            await got[-1].ack()

            feed.stop()
            await asyncio.wait_for(task, 5)
            before = len(got)
            for i in range(5):
                await js.publish(inbound_subject(FEED_PARTITION), f"{marker}:late{i}".encode())
            await asyncio.sleep(1.0)
            assert len(got) == before, "a stopped feed delivered"

            later: list[Any] = []
            second = Feed(nc, FEED_PARTITION, later.append, batch=100, expires_s=1.0)
            task2 = asyncio.create_task(second.run())
            deadline = time.monotonic() + 3
            while len(later) < 5:
                assert time.monotonic() < deadline, f"{len(later)} of 5 given to the next feed"
                await asyncio.sleep(0.05)
            assert [m.data.decode() for m in later] == [f"{marker}:late{i}" for i in range(5)]
            await later[-1].ack()
            second.stop()
            await asyncio.wait_for(task2, 5)
        finally:
            with contextlib.suppress(Exception):
                await js.delete_consumer(STREAM, f"part-{FEED_PARTITION}")
            await nc.close()

    asyncio.run(go())


def test_deliveries_that_reach_no_one_are_read_back_before_the_next(log) -> None:
    """A dead owner's pull request still waiting at the consumer's leader takes messages
    after the new owner read the consumer's position; the consumer counts them as given,
    and the new owner's first acknowledgement (AckAll) would cover them unjudged. The new
    owner's feed sees the consumer's count of deliveries skip and reads the skipped
    messages back from the stream first: every message, once, in order."""
    import asyncio
    import json

    import nats

    from gateway.cluster import jetstream
    from gateway.cluster.feed import Feed
    from gateway.protocol.log_subjects import STREAM, consumer_name, inbound_subject

    cluster, _ = log
    part = FEED_PARTITION + 3

    async def go() -> tuple[list[str], list[str], list[str], int, list[int]]:
        nc = await nats.connect(cluster.urls)
        dead = await nats.connect(cluster.urls)  # the owner that dies holding a request
        js = nc.jetstream(timeout=10)
        try:
            await jetstream.ensure_stream(js)
            await jetstream.take_consumer(js, part, 30.0)  # created when missing
            subject = inbound_subject(part)
            sent = [f"gap-{time.time_ns()}-{i}" for i in range(6)]
            for body in sent[:3]:
                await js.publish(subject, body.encode())
            resume = await jetstream.take_consumer(js, part, 30.0)  # the new owner's view
            taken: list[str] = []
            inbox = dead.new_inbox()

            async def took(m: Any) -> None:
                taken.append(m.data.decode())

            sub = await dead.subscribe(inbox, cb=took)
            await dead.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{consumer_name(part)}",
                json.dumps({"batch": 2, "expires": 2_000_000_000}).encode(),
                reply=inbox,
            )
            deadline = time.monotonic() + 5
            while len(taken) < 2:
                assert time.monotonic() < deadline, f"the dead request took {taken}"
                await asyncio.sleep(0.02)
            await sub.unsubscribe()
            await dead.close()  # never acknowledged, never judged
            for body in sent[3:]:
                await js.publish(subject, body.encode())
            got: list[Any] = []
            counted: list[int] = []
            feed = Feed(nc, part, got.append, batch=100, start=resume,
                        on_read_back=counted.append)
            task = asyncio.create_task(feed.run())
            deadline = time.monotonic() + 10
            while len(got) < len(sent):
                assert time.monotonic() < deadline, [m.data.decode() for m in got]
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # nothing more, nothing twice
            await got[-1].ack()
            feed.stop()
            await asyncio.wait_for(task, 5)
            return sent, taken, [m.data.decode() for m in got], feed.gap_filled, counted
        finally:
            with contextlib.suppress(Exception):
                await js.delete_consumer(STREAM, consumer_name(part))
            await nc.close()
            if not dead.is_closed:
                await dead.close()

    sent, taken, got, filled, counted = asyncio.run(go())
    assert taken == sent[:2]
    assert got == sent  # the two the dead request took, read back ahead of the rest
    assert (filled, counted) == (2, [2])


def test_a_backlog_is_read_back_by_sequence_with_its_topics(log) -> None:
    """What a dead owner was given and never acknowledged (floor, delivered] is read back
    from the stream by sequence: only its partition's messages, in order, none past the last
    one delivered, each with the topic the edge received it on (the device it acts for)."""
    import asyncio

    import nats
    from cluster_kit import relay_headers

    from gateway.cluster import jetstream
    from gateway.protocol.log_subjects import inbound_subject

    cluster, _ = log
    mine, other = FEED_PARTITION + 1, FEED_PARTITION + 2

    async def go() -> tuple[list[tuple[int, str, bytes]], list[Any], jetstream.Resume]:
        nc = await nats.connect(cluster.urls)
        js = nc.jetstream(timeout=10)
        try:
            sent: list[tuple[int, str, bytes]] = []  # (stream seq, topic, payload) of `mine`
            for i in range(8):
                topic = f"gas/v1/backlog-{time.time_ns()}-{i}/telemetry"
                payload = reading("detector", i + 1)
                part = mine if i % 2 == 0 else other
                ack = await js.publish(inbound_subject(part), payload,
                                       headers=relay_headers(topic, payload))
                if part == mine:
                    sent.append((ack.seq, topic, payload))
            resume = jetstream.Resume(floor=sent[0][0], delivered=sent[2][0])
            return sent, await jetstream.read_backlog(nc, mine, resume), resume
        finally:
            await nc.close()

    sent, got, resume = asyncio.run(go())
    messages = [jetstream.to_message(m, resume.delivered) for m in got]
    assert [(m.packet_id, m.topic, m.payload) for m in messages] == sent[1:3]
    assert all(m.dup for m in messages)  # given out before: judged again, stored idempotently
    assert asyncio.run(_empty_backlog(cluster.urls, mine, sent[3][0])) == []


async def _empty_backlog(urls: list[str], partition: int, at: int) -> list[Any]:
    import nats

    from gateway.cluster import jetstream

    nc = await nats.connect(urls)
    try:
        return await jetstream.read_backlog(nc, partition, jetstream.Resume(at, at))
    finally:
        await nc.close()
