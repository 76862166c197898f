"""Time-based rules end to end, on an accelerated clock shared by the simulated fleet and a
gateway of the test's own (gateway settings `clock`, allowed in environment "test" only):
hours or days of device life pass in seconds through the real Mosquitto, gateway process
and TimescaleDB, and each rule must have its effect (alarm, order, notice) at the right
simulated time, for the right device only, and never a valve command.

The gateway's clock stands still until `wall_origin`, a few seconds after it is started,
so that it loads the registry before time starts to run. Where a run spans days the
heartbeat (a per-model setting) is raised so that the fleet's reporting interval fits the
clock; the rule under test, offline after 3 heartbeat intervals, keeps its default in
its own test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from support import GatewayProcess, reload_broker, wait_row

from gateway.core.thresholds import YEAR_S, Thresholds
from gateway.ops import provision
from gateway.ops.stack import Runtime, Stack
from simulator.behaviour import FaultKind
from simulator.fleet import Fleet
from simulator.runner import FleetRun, RunOptions
from simulator.transport import BridgeTransport
from simulator.valve import ResponderShares

pytestmark = pytest.mark.services

DEFAULTS = Thresholds()
HOUR = 3600.0
DAY = 86400.0
LEAD_S = 8.0  # wall seconds the clock stands still while the gateway starts


@dataclasses.dataclass
class Accelerated:
    gateway: GatewayProcess
    clock: tuple[float, float, float]  # (wall_origin, sim_origin, speed)
    heartbeat_s: float

    @property
    def speed(self) -> float:
        return self.clock[2]


@pytest.fixture
def accelerated(gateway: GatewayProcess, stack: Stack, dsn: str) -> Iterator[Any]:
    """Start a gateway on an accelerated clock: `start(speed, heartbeat_s)`. The run's
    shared gateway steps aside meanwhile (the gateway account's client id is fixed)."""
    gateway.stop()
    started: list[GatewayProcess] = []

    def start(speed: float, heartbeat_s: float = DEFAULTS.heartbeat_s) -> Accelerated:
        w0 = time.time() + LEAD_S
        env = {
            "GAS_SAFETY_ENVIRONMENT": "test",
            "GAS_SAFETY_CLOCK__SPEED": repr(speed),
            "GAS_SAFETY_CLOCK__WALL_ORIGIN": repr(w0),
            "GAS_SAFETY_CLOCK__SIM_ORIGIN": repr(w0),
            # a device's clock may be off by 2 wall seconds, as by 5 minutes at 1x
            "GAS_SAFETY_DETECTION__CLOCK_SKEW_S": repr(2.0 * speed),
            "GAS_SAFETY_DETECTION__THRESHOLDS__HEARTBEAT_S": repr(heartbeat_s),
        }
        gw = GatewayProcess(stack, extra_env=env).start()
        started.append(gw)
        gw.wait_devices(dsn)
        assert time.time() < w0, f"the gateway took more than {LEAD_S} s to start"
        return Accelerated(gw, (w0, w0, speed), heartbeat_s)

    try:
        yield start
    finally:
        for gw in started:
            gw.stop()
        gateway.start()


def provisioned(stack: Stack, rt: Runtime, city: list[provision.Household]) -> Fleet:
    provision.provision(rt.dsn, city, str(stack.passwd_file), rt.fleet_key)
    reload_broker(stack, rt, city[-1].devices[-1].id)
    return Fleet.from_households(city)


async def run_fleet(
    fleet: Fleet, rt: Runtime, acc: Accelerated, sim_span_s: float, **kw: Any
) -> FleetRun:
    """The fleet on the shared clock for `sim_span_s` simulated seconds from its origin,
    reporting 2.5 times per heartbeat."""
    w0, _, speed = acc.clock
    await asyncio.sleep(max(0.0, w0 - time.time()))
    opts = RunOptions(
        duration_s=sim_span_s / speed,
        interval_s=acc.heartbeat_s / speed / 2.5,
        leaks=0,
        responders=ResponderShares(),
        grace_s=0,
        clock=acc.clock,
        **{"faults": 1, "fault_window": (0.0, 0.02), **kw},
    )
    run = FleetRun(fleet, BridgeTransport(fleet, "127.0.0.1", rt.mqtt_port, rt, (2,)), opts)
    await run.start()
    await run.run()
    await run.transport.close()
    return run


def alarms(dsn: str, household_ids: list[str]) -> list[tuple[str, str, float]]:
    """(device, kind, raised_at epoch) of the households' alarms."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT device_id, kind, extract(epoch FROM raised_at)::float8 FROM alarms"
            " WHERE household_id = ANY(%s) ORDER BY raised_at",
            (household_ids,),
        ).fetchall()


def raised(dsn: str, device_id: str, kind: str, timeout_s: float = 10.0) -> float:
    rows = wait_row(
        dsn,
        "SELECT extract(epoch FROM raised_at)::float8 FROM alarms"
        " WHERE device_id = %s AND kind = %s",
        (device_id, kind),
        timeout_s=timeout_s,
        what=f"a {kind} alarm for {device_id}",
    )
    return float(rows[0][0])


def order_of(dsn: str, household_id: str, cause: str) -> tuple[str, str]:
    rows = wait_row(
        dsn,
        "SELECT priority, status FROM work_orders WHERE household_id = %s AND cause = %s",
        (household_id, cause),
        what=f"a {cause} work order for {household_id}",
    )
    return rows[0]


def no_valve_command(dsn: str, fleet: Fleet) -> None:
    with psycopg.connect(dsn) as conn:
        n = conn.execute(
            "SELECT count(*) FROM valve_commands WHERE household_id = ANY(%s)",
            (fleet.household_ids,),
        ).fetchone()[0]
    assert n == 0, f"{n} valve command(s) for a rule that must never cut the gas"


def only(dsn: str, fleet: Fleet, kind: str, device_id: str) -> list[tuple[str, str, float]]:
    """The run's alarms of `kind` were all for `device_id` (no false positive)."""
    found = [a for a in alarms(dsn, fleet.household_ids) if a[1] == kind]
    assert {a[0] for a in found} == {device_id}, found
    return found


def fault_device(run: FleetRun) -> tuple[str, float, str]:
    """(device id, fault start in simulated time, household id) of the run's one fault."""
    (f,) = run.truth.faults
    fleet = run.fleet
    if f.device_id in fleet.meter_index:
        h = fleet.meter_index[f.device_id]
    else:
        h = int(fleet.detector_household[fleet.detector_index[f.device_id]])
    return f.device_id, f.start_sim, fleet.household_ids[h]


# ---------------------------------------------------------------- meter flow


async def test_continuous_flow_past_ten_hours(accelerated, stack, runtime, dsn, prefix) -> None:
    fleet = provisioned(stack, runtime, provision.generate_city(3, seed=3, prefix=prefix))
    acc = accelerated(7200.0, heartbeat_s=HOUR)  # 2 h a second
    limit = DEFAULTS.continuous_flow_s
    run = await run_fleet(
        fleet, runtime, acc, limit + 5 * HOUR, fault_kinds=(FaultKind.CONTINUOUS,)
    )
    meter, start, house = fault_device(run)
    at = raised(dsn, meter, "continuous_flow")
    sim0 = acc.clock[1]
    # never before 10 h of flow seen by the platform, and soon after 10 h of the fault
    assert at >= sim0 + limit, (at - sim0) / HOUR
    assert at <= start + limit + 1.5 * HOUR, (at - start) / HOUR
    only(dsn, fleet, "continuous_flow", meter)
    wait_row(
        dsn,
        "SELECT 1 FROM notifications WHERE household_id = %s AND kind = 'continuous_flow'",
        (house,),
    )
    no_valve_command(dsn, fleet)


async def test_micro_leak(accelerated, stack, runtime, dsn, prefix) -> None:
    fleet = provisioned(stack, runtime, provision.generate_city(3, seed=4, prefix=prefix))
    acc = accelerated(7200.0, heartbeat_s=HOUR)
    limit = DEFAULTS.micro_flow_s
    run = await run_fleet(
        fleet, runtime, acc, limit + 3 * HOUR, fault_kinds=(FaultKind.MICRO_FLOW,)
    )
    meter, start, house = fault_device(run)
    at = raised(dsn, meter, "micro_leak")
    sim0 = acc.clock[1]
    assert sim0 + limit <= at <= start + limit + 1.5 * HOUR, (at - start) / HOUR
    only(dsn, fleet, "micro_leak", meter)
    assert order_of(dsn, house, "flow_inspection") == ("normal", "open")
    no_valve_command(dsn, fleet)


async def test_battery_low(accelerated, stack, runtime, dsn, prefix) -> None:
    fleet = provisioned(stack, runtime, provision.generate_city(3, seed=5, prefix=prefix))
    acc = accelerated(3600.0, heartbeat_s=HOUR)
    run = await run_fleet(fleet, runtime, acc, 8 * HOUR, fault_kinds=(FaultKind.BATTERY,))
    meter, _, house = fault_device(run)
    at = raised(dsn, meter, "battery_low")
    with psycopg.connect(dsn) as conn:
        # the first reading at the limit (3.30 stored as a real may count as below), and
        # the first one clearly below it
        at_limit, below = conn.execute(
            "SELECT extract(epoch FROM min(time) FILTER (WHERE batt_v <= %s::real))::float8,"
            " extract(epoch FROM min(time) FILTER (WHERE batt_v < %s::real))::float8"
            " FROM meter_readings WHERE device_id = %s",
            (DEFAULTS.battery_low_v, DEFAULTS.battery_low_v - 0.01, meter),
        ).fetchone()
    assert below is not None, "the battery never went low"
    # raised by a reading below the limit, not before
    assert at_limit - 1.0 <= at <= below + 1.0, ((at - at_limit) / HOUR, (below - at) / HOUR)
    only(dsn, fleet, "battery_low", meter)
    assert order_of(dsn, house, "replacement")[0] == "normal"
    no_valve_command(dsn, fleet)


# ---------------------------------------------------------------- detectors


async def test_stuck_sensor_for_days(accelerated, stack, runtime, dsn, prefix) -> None:
    fleet = provisioned(stack, runtime, provision.generate_city(3, seed=6, prefix=prefix))
    acc = accelerated(28800.0, heartbeat_s=4 * HOUR)  # 8 h a second
    limit = DEFAULTS.stuck_s
    run = await run_fleet(fleet, runtime, acc, limit + 1 * DAY, fault_kinds=(FaultKind.STUCK,))
    det, start, house = fault_device(run)
    at = raised(dsn, det, "stuck_sensor")
    assert start + limit <= at <= start + limit + 8 * HOUR, (at - start) / DAY
    only(dsn, fleet, "stuck_sensor", det)
    assert order_of(dsn, house, "detector_maintenance")[0] == "normal"
    no_valve_command(dsn, fleet)


async def test_detector_offline_after_three_heartbeats_and_never_a_cut(
    accelerated, stack, runtime, dsn, prefix
) -> None:
    fleet = provisioned(stack, runtime, provision.generate_city(3, seed=7, prefix=prefix))
    acc = accelerated(300.0)  # default heartbeat (5 min), 5 min a second
    limit = DEFAULTS.offline_heartbeats * DEFAULTS.heartbeat_s
    run = await run_fleet(
        fleet,
        runtime,
        acc,
        limit + 20 * 60,
        fault_kinds=(FaultKind.OFFLINE,),
        fault_window=(0.1, 0.15),
    )
    det, _, house = fault_device(run)
    at = raised(dsn, det, "offline")
    with psycopg.connect(dsn) as conn:
        last = conn.execute(
            "SELECT extract(epoch FROM max(time))::float8 FROM detector_readings"
            " WHERE device_id = %s",
            (det,),
        ).fetchone()[0]
    silent = at - last
    # 3 heartbeats of silence; the sweep runs every 0.2 s (60 s simulated here)
    assert limit < silent <= limit + 3 * 60, silent
    only(dsn, fleet, "offline", det)
    assert order_of(dsn, house, "detector_maintenance")[0] == "normal"
    wait_row(
        dsn, "SELECT 1 FROM notifications WHERE household_id = %s AND kind = 'offline'", (house,)
    )
    no_valve_command(dsn, fleet)


# ---------------------------------------------------------------- service life


def aged(city: list[provision.Household], installed_on: dt.date) -> list[provision.Household]:
    """The first household's meter installed on `installed_on`."""
    h = city[0]
    devices = tuple(
        dataclasses.replace(d, installed_on=installed_on) if d.kind == "meter" else d
        for d in h.devices
    )
    return [dataclasses.replace(h, devices=devices), *city[1:]]


async def test_meter_service_life(accelerated, stack, runtime, dsn, prefix) -> None:
    life = DEFAULTS.meter_life_years * YEAR_S
    # installed so that its ten years end 2 to 26 hours after the clock starts
    target = time.time() + LEAD_S + 26 * HOUR
    installed = dt.datetime.fromtimestamp(target - life, dt.UTC).date()
    due = dt.datetime.combine(installed, dt.time(), dt.UTC).timestamp() + life
    city = aged(provision.generate_city(2, seed=8, prefix=prefix), installed)
    fleet = provisioned(stack, runtime, city)
    acc = accelerated(14400.0, heartbeat_s=2 * HOUR)  # 4 h a second
    assert acc.clock[1] < due, "the meter's life ended before the clock started"
    await run_fleet(fleet, runtime, acc, due - acc.clock[1] + 4 * HOUR, faults=0)
    meter = city[0].meter.id
    at = raised(dsn, meter, "meter_service_life")
    # not at load (the meter was in its tenth year), but the sweep after its end
    assert due <= at <= due + 1 * HOUR, (at - due) / HOUR
    assert order_of(dsn, city[0].id, "replacement")[0] == "normal"
    no_valve_command(dsn, fleet)
