"""Provisioning: households and their devices into the registry, credentials into the broker.

`generate_city` makes a seeded, reproducible city (communities, buildings, flats, one meter
and one or two detectors per household); `provision` writes it idempotently (existing ids are
kept as they are) and gives each new device its MQTT password.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from gateway.ops import credentials

logger = logging.getLogger(__name__)

METER_MODELS = {"GM-G1.6": 2.5, "GM-G2.5": 4.0, "GM-G4": 6.0}  # model -> qmax m3/h
DETECTOR_MODELS = ("LD-100", "LD-200")
FLATS_PER_BUILDING = 36
BUILDINGS_PER_COMMUNITY = 200
FIRST_NAMES = ("Wei", "Li", "Ana", "Omar", "Mina", "Jon", "Sara", "Ivan", "Lea", "Raj")
LAST_NAMES = ("Zhang", "Wang", "Garcia", "Smith", "Khan", "Novak", "Rossi", "Kim")


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    kind: str  # meter | detector
    model: str
    household_id: str
    installed_on: dt.date


@dataclass(frozen=True, slots=True)
class Household:
    id: str
    address: str
    community: str
    building: str
    unit: str
    owner_name: str
    owner_phone: str
    owner_email: str
    qmax_m3h: float
    devices: tuple[Device, ...]

    @property
    def meter(self) -> Device:
        return next(d for d in self.devices if d.kind == "meter")

    @property
    def detectors(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind == "detector")


def generate_city(
    households: int, seed: int = 1, prefix: str = "", start: int = 0, today: dt.date | None = None
) -> list[Household]:
    """A reproducible city: same (households, seed, prefix, start), same registry."""
    rng = np.random.default_rng(seed)
    today = today or dt.date(2026, 11, 1)
    n = households
    meter_model = rng.choice(list(METER_MODELS), size=n, p=[0.3, 0.6, 0.1])
    two_detectors = rng.random(n) < 0.4
    meter_age_days = rng.integers(0, 12 * 365, size=n)  # a few are past their 10-year life
    det_age_days = rng.integers(0, 6 * 365, size=(n, 2))
    det_model = rng.choice(DETECTOR_MODELS, size=(n, 2))
    first = rng.choice(FIRST_NAMES, size=n)
    last = rng.choice(LAST_NAMES, size=n)
    out: list[Household] = []
    for i in range(n):
        k = start + i
        community = f"C{k // (FLATS_PER_BUILDING * BUILDINGS_PER_COMMUNITY):02d}"
        b = (k // FLATS_PER_BUILDING) % BUILDINGS_PER_COMMUNITY
        flat = k % FLATS_PER_BUILDING
        unit = f"{flat // 4 + 1}-{flat % 4 + 1:02d}"
        hid = f"{prefix}h{k:06d}"
        building = f"{prefix}{community}-B{b:03d}"
        devices = [
            Device(
                f"{prefix}m{k:06d}",
                "meter",
                str(meter_model[i]),
                hid,
                today - dt.timedelta(days=int(meter_age_days[i])),
            )
        ]
        for j in range(2 if two_detectors[i] else 1):
            devices.append(
                Device(
                    f"{prefix}d{k:06d}{'ab'[j]}",
                    "detector",
                    str(det_model[i, j]),
                    hid,
                    today - dt.timedelta(days=int(det_age_days[i, j])),
                )
            )
        out.append(
            Household(
                id=hid,
                address=f"{b + 1} {community} Road, unit {unit}",
                community=f"{prefix}{community}",
                building=building,
                unit=unit,
                owner_name=f"{first[i]} {last[i]}",
                owner_phone=f"+1555{k:07d}",
                owner_email=f"{hid}@example.org",
                qmax_m3h=METER_MODELS[str(meter_model[i])],
                devices=tuple(devices),
            )
        )
    return out


def provision(
    dsn: str,
    households: Sequence[Household],
    passwd_file: str | None,
    fleet_key: str | None,
    quota_share: float = 0.05,
) -> dict[str, int]:
    """Write households and devices (idempotent) and new devices' credentials."""
    now = dt.datetime.now(dt.UTC)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE new_households (LIKE households) ON COMMIT DROP")
        cur.execute(
            "CREATE TEMP TABLE new_devices (LIKE devices INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        with cur.copy(
            "COPY new_households (id, address, community, building, unit, owner_name,"
            " owner_phone, owner_email, qmax_m3h, created_at) FROM STDIN"
        ) as cp:
            for h in households:
                cp.write_row(
                    (
                        h.id,
                        h.address,
                        h.community,
                        h.building,
                        h.unit,
                        h.owner_name,
                        h.owner_phone,
                        h.owner_email,
                        h.qmax_m3h,
                        now,
                    )
                )
        with cur.copy(
            "COPY new_devices (id, kind, model, household_id, installed_on) FROM STDIN"
        ) as cp:
            for h in households:
                for d in h.devices:
                    cp.write_row((d.id, d.kind, d.model, d.household_id, d.installed_on))
        cur.execute("INSERT INTO households SELECT * FROM new_households ON CONFLICT DO NOTHING")
        new_households = cur.rowcount
        cur.execute("""INSERT INTO devices (id, kind, model, household_id, installed_on)
                           SELECT id, kind, model, household_id, installed_on FROM new_devices
                           ON CONFLICT DO NOTHING""")
        new_devices = cur.rowcount
        cur.execute(
            """INSERT INTO upgrade_quotas (community, places)
                           SELECT community, greatest(1, ceil(count(*) * %s))::int
                           FROM households GROUP BY community
                           ON CONFLICT (community) DO UPDATE SET places = greatest(
                               upgrade_quotas.places, excluded.places)""",
            (quota_share,),
        )
        cur.execute("SELECT id FROM devices WHERE credential_set_at IS NULL")
        pending = [r[0] for r in cur.fetchall()]
        written = 0
        if passwd_file and fleet_key and pending:
            from pathlib import Path

            written = credentials.write_passwords(
                Path(passwd_file),
                ((d, credentials.derive_password(fleet_key, d)) for d in pending),
            )
            cur.execute(
                "UPDATE devices SET credential_set_at = %s WHERE id = ANY(%s)", (now, pending)
            )
        cur.execute(
            "INSERT INTO audit_log (actor, action, entity, entity_id, details)"
            " VALUES ('provisioning', 'provision', 'fleet', '-', %s)",
            (
                Jsonb(
                    {
                        "households": new_households,
                        "devices": new_devices,
                        "credentials": written,
                    }
                ),
            ),
        )
        cur.execute("NOTIFY gas_registry")
    logger.info(
        "provisioned households=%d devices=%d credentials=%d", new_households, new_devices, written
    )
    return {"households": new_households, "devices": new_devices, "credentials": written}
