"""The simulated fleet as columns: households, their meters and detectors, indexed by position.

Device objects would cost ~1 kB each; the whole 192 k-household city (≈ 400 k devices) fits
in a few tens of MB as NumPy columns plus the id strings and their pre-encoded topics. The
registry is read from the database (what the gateway knows) or built from `generate_city`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg

from gateway import protocol
from gateway.ops.provision import Household

REFERENCE_DAY = dt.date(2026, 11, 1)


@dataclass
class Fleet:
    """Households 0..H-1 each with one meter (same index); detectors 0..D-1."""

    household_ids: list[str]
    building: np.ndarray  # int32 [H] index into `buildings`
    buildings: list[str]
    qmax_m3h: np.ndarray  # float32 [H]
    meter_ids: list[str]  # [H]
    meter_models: list[str]
    meter_age_days: np.ndarray  # int32 [H]
    detector_ids: list[str]  # [D]
    detector_household: np.ndarray  # int32 [D]
    detector_models: list[str]
    detector_age_days: np.ndarray  # int32 [D]
    prefix: str = protocol.PREFIX

    def __post_init__(self) -> None:
        self.meter_index = {m: i for i, m in enumerate(self.meter_ids)}
        self.detector_index = {d: i for i, d in enumerate(self.detector_ids)}
        self.household_index = {h: i for i, h in enumerate(self.household_ids)}
        self.meter_topics = [
            protocol.topic(m, "telemetry", self.prefix).encode() for m in self.meter_ids
        ]
        self.detector_topics = [
            protocol.topic(d, "telemetry", self.prefix).encode() for d in self.detector_ids
        ]

    @property
    def households(self) -> int:
        return len(self.household_ids)

    @property
    def detectors(self) -> int:
        return len(self.detector_ids)

    @property
    def devices(self) -> int:
        return self.households + self.detectors

    def all_device_ids(self) -> list[str]:
        return [*self.meter_ids, *self.detector_ids]

    def detectors_of(self, household: int) -> np.ndarray:
        return np.flatnonzero(self.detector_household == household)

    @classmethod
    def from_households(
        cls, households: Sequence[Household], today: dt.date = REFERENCE_DAY
    ) -> Fleet:
        buildings: dict[str, int] = {}
        b_idx = np.empty(len(households), np.int32)
        qmax = np.empty(len(households), np.float32)
        m_age = np.empty(len(households), np.int32)
        hids, mids, mmodels = [], [], []
        dids, dh, dmodels, dages = [], [], [], []
        for i, h in enumerate(households):
            hids.append(h.id)
            b_idx[i] = buildings.setdefault(h.building, len(buildings))
            qmax[i] = h.qmax_m3h
            meter = h.meter
            mids.append(meter.id)
            mmodels.append(meter.model)
            m_age[i] = (today - meter.installed_on).days
            for d in h.detectors:
                dids.append(d.id)
                dh.append(i)
                dmodels.append(d.model)
                dages.append((today - d.installed_on).days)
        return cls(
            hids,
            b_idx,
            list(buildings),
            qmax,
            mids,
            mmodels,
            m_age,
            dids,
            np.asarray(dh, np.int32),
            dmodels,
            np.asarray(dages, np.int32),
        )

    @classmethod
    def from_db(
        cls, dsn: str, id_prefix: str = "", limit: int | None = None, today: dt.date | None = None
    ) -> Fleet:
        """Read households whose id starts with `id_prefix` (all when empty) and their devices."""
        today = today or dt.date.today()
        like = id_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT h.id, h.building, h.qmax_m3h, d.id, d.kind, d.model, d.installed_on"
                " FROM households h JOIN devices d ON d.household_id = h.id"
                " WHERE h.id LIKE %s AND d.status = 'active'"
                " AND h.id IN (SELECT id FROM households WHERE id LIKE %s ORDER BY id LIMIT %s)"
                " ORDER BY h.id, d.kind DESC, d.id",
                (like, like, limit),
            ).fetchall()
        buildings: dict[str, int] = {}
        hids: list[str] = []
        b_idx: list[int] = []
        qmax: list[float] = []
        mids: list[str] = []
        mmodels: list[str] = []
        m_age: list[int] = []
        dids, dh, dmodels, dages = [], [], [], []
        current: str | None = None
        for hid, building, q, did, kind, model, installed in rows:
            if hid != current:
                current = hid
                hids.append(hid)
                b_idx.append(buildings.setdefault(building, len(buildings)))
                qmax.append(q)
                mids.append("")
                mmodels.append("")
                m_age.append(0)
            h = len(hids) - 1
            age = (today - installed).days
            if kind == "meter" and not mids[h]:
                mids[h], mmodels[h], m_age[h] = did, model, age
            elif kind == "detector":
                dids.append(did)
                dh.append(h)
                dmodels.append(model)
                dages.append(age)
        keep = [i for i, m in enumerate(mids) if m]  # a household without a meter is not simulated
        if len(keep) != len(hids):
            remap = {old: new for new, old in enumerate(keep)}
            sel = [j for j, h in enumerate(dh) if h in remap]
            dids = [dids[j] for j in sel]
            dmodels = [dmodels[j] for j in sel]
            dages = [dages[j] for j in sel]
            dh = [remap[dh[j]] for j in sel]
            hids = [hids[i] for i in keep]
            b_idx = [b_idx[i] for i in keep]
            qmax = [qmax[i] for i in keep]
            mids = [mids[i] for i in keep]
            mmodels = [mmodels[i] for i in keep]
            m_age = [m_age[i] for i in keep]
        return cls(
            hids,
            np.asarray(b_idx, np.int32),
            list(buildings),
            np.asarray(qmax, np.float32),
            mids,
            mmodels,
            np.asarray(m_age, np.int32),
            dids,
            np.asarray(dh, np.int32),
            dmodels,
            np.asarray(dages, np.int32),
        )
