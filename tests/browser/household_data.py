"""What the console's operator pages show, put in the database as the gateway would: device
health, a day of readings, a leak, a notice (a module of its own beside console_pages)."""

from __future__ import annotations

import datetime as dt
import math

import psycopg
from psycopg.types.json import Jsonb

from gateway.ops.provision import Household


async def fill(dsn: str, houses: list[Household]) -> None:
    """houses[0]: a day of readings and a delivered SMS; houses[1]: valve cut; houses[2]:
    detectors offline; houses[3]: meter past its service life, battery low."""
    now = dt.datetime.now(dt.UTC)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for i, house in enumerate(houses):
            await conn.execute("UPDATE devices SET installed_on = %s WHERE household_id = %s",
                               (dt.date.today() - dt.timedelta(days=400), house.id))
            for d in house.devices:
                online = not (i == 2 and d.kind == "detector")
                await conn.execute(
                    "INSERT INTO device_state (device_id, online, last_seen, batt_v, valve,"
                    " ch4_lel, fault, flow_m3h, vol_m3, rssi) VALUES (%s, %s, %s, %s, %s, %s, 0,"
                    " %s, %s, -80)",
                    (d.id, online, now, 2.9 if (i == 3 and d.kind == "meter") else 3.6,
                     "closed" if (i == 1 and d.kind == "meter") else "open",
                     None if d.kind == "meter" else 1.2,
                     0.3 if d.kind == "meter" else None, 812.4 if d.kind == "meter" else None))
        await conn.execute("UPDATE devices SET installed_on = %s WHERE id = %s",
                           (dt.date.today() - dt.timedelta(days=11 * 366), houses[3].meter.id))
        house = houses[0]
        start = now - dt.timedelta(hours=24)
        det_rows, met_rows = [], []
        vol = 800.0
        for k in range(24 * 12):  # every 5 minutes
            at = start + dt.timedelta(minutes=5 * k)
            ch4 = 1.0 + 0.8 * math.sin(k / 20) ** 2 + (6.0 if 200 < k < 206 else 0.0)
            flow = max(0.0, 0.6 * math.sin(k / 30)) + (0.4 if 90 < k < 110 else 0.0)
            vol += flow / 12
            det_rows.append((at, house.detectors[0].id, k, ch4, 0, at))
            met_rows.append((at, house.meter.id, k, vol, flow, 0, 3.6, -80, at))
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO detector_readings (time, device_id, seq, ch4_lel, fault,"
                " received_at) VALUES (%s, %s, %s, %s, %s, %s)", det_rows)
            await cur.executemany(
                "INSERT INTO meter_readings (time, device_id, seq, vol_m3, flow_m3h, valve,"
                " batt_v, rssi, received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                met_rows)
        await conn.execute(
            "INSERT INTO notifications (household_id, kind, channel, recipient, body, dedupe_key,"
            " state, attempts, delivered_at) VALUES (%s, 'leak', 'sms', %s, 'gas leak', %s,"
            " 'sent', 1, now())", (house.id, house.owner_phone, f"test-{house.id}"))
        await conn.execute(
            "INSERT INTO audit_log (actor, action, entity, entity_id, details)"
            " VALUES ('tests', 'household.note', 'household', %s, %s)",
            (house.id, Jsonb({"note": "registered for the console tests"})))
