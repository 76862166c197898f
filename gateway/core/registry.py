"""The in-memory index of the device registry: device id -> slot, and what a slot belongs to.

Loaded from the database at start and extended when devices are provisioned (NOTIFY
gas_registry). Slots only grow, so the detection state's arrays stay aligned with it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from gateway.core.alarms import DeviceKind

KIND_DETECTOR, KIND_METER = int(DeviceKind.DETECTOR), int(DeviceKind.METER)


@dataclass(frozen=True, slots=True)
class HouseholdInfo:
    id: str
    address: str
    community: str
    building: str
    owner_name: str
    owner_phone: str
    owner_email: str | None
    qmax_m3h: float
    meter_id: str | None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: str
    kind: str
    model: str
    household_id: str
    installed_on: dt.date


@dataclass
class Registry:
    ids: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    kind: list[int] = field(default_factory=list)
    household_of: list[str] = field(default_factory=list)
    households: dict[str, HouseholdInfo] = field(default_factory=dict)
    household_index: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)
    # Device ids as bytes for binary COPY: one flat buffer, start and length per slot.
    id_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    id_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    id_len: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def model_index(self, model: str) -> int:
        return self.models.setdefault(model, len(self.models))

    def meter_of(self, household_id: str) -> str | None:
        info = self.households.get(household_id)
        return info.meter_id if info else None

    def add(
        self, devices: list[DeviceRow], households: dict[str, HouseholdInfo]
    ) -> dict[str, np.ndarray]:
        """Append new devices; return the columns FleetState.add_devices needs."""
        for hid, info in households.items():
            old = self.households.get(hid)
            if old is not None and info.meter_id is None:
                info = HouseholdInfo(
                    **{**{f: getattr(info, f) for f in info.__slots__}, "meter_id": old.meter_id}
                )
            self.households[hid] = info
            self.household_index.setdefault(hid, len(self.household_index))
        new = [d for d in devices if d.id not in self.index]
        first = len(self.ids)
        for i, d in enumerate(new):
            self.index[d.id] = first + i
            self.ids.append(d.id)
            self.kind.append(KIND_METER if d.kind == "meter" else KIND_DETECTOR)
            self.household_of.append(d.household_id)
        self._append_id_bytes([d.id for d in new])
        meter_slot = np.full(len(new), -1, np.int32)
        for i, d in enumerate(new):
            meter_id = self.meter_of(d.household_id)
            if meter_id is not None and meter_id in self.index:
                meter_slot[i] = self.index[meter_id]
        qmax = np.array([self.households[d.household_id].qmax_m3h for d in new], np.float32)
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        installed = np.array(
            [
                (dt.datetime.combine(d.installed_on, dt.time(), dt.UTC) - epoch).total_seconds()
                for d in new
            ],
            np.float64,
        )
        return {
            "kinds": np.array(
                [KIND_METER if d.kind == "meter" else KIND_DETECTOR for d in new], np.uint8
            ),
            "household": np.array([self.household_index[d.household_id] for d in new], np.int32),
            "meter_slot": meter_slot,
            "model": np.array([self.model_index(d.model) for d in new], np.int16),
            "qmax_m3h": qmax,
            "installed_ts": installed,
        }

    def add_ids(self, ids: list[str]) -> None:
        """Append device ids alone: what the writer process needs to name slots in COPY."""
        first = len(self.ids)
        for i, did in enumerate(ids):
            self.index[did] = first + i
        self.ids.extend(ids)
        self._append_id_bytes(ids)

    def _append_id_bytes(self, ids: list[str]) -> None:
        encoded = [i.encode() for i in ids]
        lengths = np.array([len(b) for b in encoded], np.int64)
        starts = len(self.id_bytes) + np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(
            np.int64
        )
        self.id_bytes = np.concatenate([self.id_bytes, np.frombuffer(b"".join(encoded), np.uint8)])
        self.id_start = np.concatenate([self.id_start, starts[: len(ids)]])
        self.id_len = np.concatenate([self.id_len, lengths])


def rows_to_registry_input(rows: list[tuple]) -> tuple[list[DeviceRow], dict[str, HouseholdInfo]]:
    """Rows of gateway.storage.registry_sql.LOAD_SQL, meters first (ORDER BY kind DESC) so
    a detector finds its meter's slot."""
    meters = {r[3]: r[0] for r in rows if r[1] == "meter"}
    households: dict[str, HouseholdInfo] = {}
    devices: list[DeviceRow] = []
    for (
        did,
        kind,
        model,
        hid,
        installed,
        address,
        community,
        building,
        owner,
        phone,
        email,
        qmax,
    ) in rows:
        devices.append(DeviceRow(did, kind, model, hid, installed))
        if hid not in households:
            households[hid] = HouseholdInfo(
                hid, address, community, building, owner, phone, email, float(qmax), meters.get(hid)
            )
    return devices, households
