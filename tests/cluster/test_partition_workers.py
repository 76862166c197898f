"""Partition workers (`gas-safety worker`) against a private three-node NATS JetStream
cluster and the private TimescaleDB: readings written straight into JetStream with the
edge relay's headers, workers splitting the 64 partitions, leaks cut on gas.cmd.<meter>,
forged messages refused, and a worker killed with SIGKILL at load (docs/cluster.md).

Run with `./dev.sh test -m cluster`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from support import wait_row
from cluster_kit import (
    LogSide,
    WorkerProcess,
    owners,
    part_of,
    poll,
    reading,
    wait_split,
)

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


def _rejects(dsn: str, device_ids: list[str]) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT device_id, reason FROM rejects WHERE device_id = ANY(%s)", (device_ids,)
        ).fetchall()
    return [(str(d), str(r)) for d, r in rows] if len(rows) >= 3 else []
