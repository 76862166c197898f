"""The in-memory index of the device registry: device id -> slot, and what a slot belongs to.

Loaded from the database at start and extended when devices are provisioned (NOTIFY
gas_registry). Slots only grow, so the detection state's arrays stay aligned with it.

Everything is held in columns (gateway.core.columns), not in a Python object per device
or household: a city of 535 k devices costs a few dozen bytes per device (docs/architecture.md,
"The columnar registry"). The interface reads like the mappings it replaced:
`ids[slot]` (a str), `index.get(device_id)` (a slot), `kind[slot]` (0 detector, 1 meter),
`household_of[slot]` (a household id), `households[household_id]` (a `HouseholdInfo`, made
on demand). A registry of part of the fleet (some buildings' devices) is built the same
way: `Registry.from_rows` with those devices' rows, or `Registry.from_arrays`.
"""

from __future__ import annotations

import datetime as dt
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.alarms import DeviceKind
from gateway.core.columns import Grow, StrColumn, StrIndex

__all__ = ["KIND_DETECTOR", "KIND_METER", "DeviceRow", "HouseholdInfo", "Households", "Registry"]

KIND_DETECTOR, KIND_METER = int(DeviceKind.DETECTOR), int(DeviceKind.METER)
_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()
_SEP, _NONE = "\x1f", "\x1e"  # between a household's text fields; an email that is None


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


class Households:
    """Households by position: id, text fields, load (qmax) and meter slot, in columns.
    Reads as a mapping household id -> `HouseholdInfo` (made on each access)."""

    def __init__(self, device_ids: StrColumn) -> None:
        self.device_ids = device_ids
        self.ids = StrColumn()
        self.index = StrIndex(self.ids)
        self.text = StrColumn()  # address, community, building, owner, phone, email
        self.record = Grow(np.int32)  # household -> its text (a changed household: new text)
        self.qmax_m3h = Grow(np.float32)
        self.meter = Grow(np.int32)  # the household's meter slot, -1: none yet

    def upsert(self, infos: Sequence[HouseholdInfo]) -> npt.NDArray[np.int32]:
        """Add or update households; return their positions (in `infos` order)."""
        pos = np.empty(len(infos), np.int32)
        new: list[HouseholdInfo] = []
        fresh: dict[str, int] = {}  # new ones given twice: one household
        for i, info in enumerate(infos):
            p = self.index.get(info.id)
            if p is None:
                p = fresh.get(info.id)
                if p is None:
                    p = fresh[info.id] = len(self.ids) + len(new)
                    new.append(info)
            else:  # known: new text only if it changed (rows repeat it for every device)
                text = _text(info)
                if not self.text.equals(int(self.record.values[p]), text):
                    self.record.values[p] = len(self.text)
                    self.text.extend([text])
                self.qmax_m3h.values[p] = info.qmax_m3h
            pos[i] = p
        if new:
            first = len(self.ids)
            self.ids.extend([h.id for h in new])
            self.index.add([h.id for h in new], first, len(new))
            self.record.extend(np.arange(len(self.text), len(self.text) + len(new)))
            self.text.extend([_text(h) for h in new])
            self.qmax_m3h.extend([h.qmax_m3h for h in new])
            self.meter.extend(np.full(len(new), -1, np.int32))
        return pos

    def info(self, p: int) -> HouseholdInfo:
        address, community, building, owner, phone, email = self.text[
            int(self.record.values[p])
        ].split(_SEP)
        meter = int(self.meter.values[p])
        return HouseholdInfo(
            self.ids[p],
            address,
            community,
            building,
            owner,
            phone,
            None if email == _NONE else email,
            float(self.qmax_m3h.values[p]),
            self.device_ids[meter] if meter >= 0 else None,
        )

    def get(self, household_id: str, default: HouseholdInfo | None = None) -> HouseholdInfo | None:
        p = self.index.get(household_id)
        return default if p is None else self.info(p)

    def __getitem__(self, household_id: str) -> HouseholdInfo:
        return self.info(self.index[household_id])

    def __contains__(self, household_id: object) -> bool:
        return household_id in self.index

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def nbytes(self) -> int:
        cols = (self.record, self.qmax_m3h, self.meter)
        return (
            _str_nbytes(self.ids)
            + _str_nbytes(self.text)
            + self.index.nbytes()
            + sum(c.values.nbytes for c in cols)
        )


class _HouseholdOf:
    """slot -> household id."""

    def __init__(self, registry: Registry) -> None:
        self._r = registry

    def __getitem__(self, slot: int) -> str:
        return self._r.households.ids[int(self._r.household.values[slot])]

    def __len__(self) -> int:
        return len(self._r.household)


class Registry:
    """Device slots and what they belong to, in columns (see the module's docstring).

    `ids` (StrColumn: `ids[slot]`, `len`, iteration), `index` (StrIndex: device id ->
    slot), `kind` (array of uint8, DeviceKind by slot), `household` (Grow of int32: the
    household's position by slot), `households` (Households), `household_of[slot]`,
    `models` (model name -> model index). `id_bytes`, `id_start`, `id_len`: the ids as
    bytes for binary COPY. A registry that only names slots (the writer process's) is
    grown with `add_ids` or `add_encoded_ids` and has no households.
    """

    def __init__(self) -> None:
        self.ids = StrColumn()
        self.index = StrIndex(self.ids)
        self.kind = array("B")
        self.household = Grow(np.int32)
        self.households = Households(self.ids)
        self.household_of = _HouseholdOf(self)
        self.models: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def model_index(self, model: str) -> int:
        return self.models.setdefault(model, len(self.models))

    def meter_of(self, household_id: str) -> str | None:
        p = self.households.index.get(household_id)
        if p is None:
            return None
        meter = int(self.households.meter.values[p])
        return self.ids[meter] if meter >= 0 else None

    @property
    def id_bytes(self) -> npt.NDArray[np.uint8]:
        return self.ids.data

    @property
    def id_start(self) -> npt.NDArray[np.uint32]:
        return self.ids.start

    @property
    def id_len(self) -> npt.NDArray[np.int64]:
        """Every id's length (computed; `id_spans` for a batch's slots)."""
        return self.ids.length

    def id_spans(self, slots: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Start and length in `id_bytes` of the ids of `slots` (for binary COPY)."""
        return self.ids.spans(slots)

    def reserve(self, n: int) -> None:
        """Room for `n` devices in all (the index sized once, not grown while loading)."""
        self.index.reserve(n)

    def nbytes(self) -> int:
        """Bytes held by the registry's columns."""
        own = _str_nbytes(self.ids) + self.index.nbytes() + len(self.kind)
        return own + self.household.values.nbytes + self.households.nbytes()

    # ---------------------------------------------------------------- growing
    @classmethod
    def from_rows(cls, rows: Sequence[tuple[Any, ...]]) -> tuple[Registry, dict[str, np.ndarray]]:
        """A registry of these rows (of LOAD_SQL, e.g. one partition's buildings), and the
        columns for FleetState.add_devices."""
        r = cls()
        return r, r.add_rows(rows)

    @classmethod
    def from_arrays(
        cls,
        ids: Sequence[str],
        kinds: npt.ArrayLike,
        models: Sequence[str],
        household: npt.ArrayLike,
        installed_ts: npt.ArrayLike,
        households: Sequence[HouseholdInfo],
    ) -> tuple[Registry, dict[str, np.ndarray]]:
        """A registry from columns: device ids, kinds (0 detector, 1 meter), model names,
        each device's household as a position in `households`, install times (epoch s).
        Returns it and the columns for FleetState.add_devices."""
        r = cls()
        return r, r.add_arrays(ids, kinds, models, household, installed_ts, households)

    def add_rows(self, rows: Sequence[tuple[Any, ...]]) -> dict[str, np.ndarray]:
        """Append the devices of rows of gateway.storage.registry_sql.LOAD_SQL (those already
        known are skipped); return the columns FleetState.add_devices needs."""
        hh_pos: dict[str, int] = {}
        infos: list[HouseholdInfo] = []
        for r in rows:
            if r[3] not in hh_pos:
                hh_pos[r[3]] = len(infos)
                address, community, building, owner, phone, email = r[5:11]
                infos.append(
                    HouseholdInfo(
                        r[3], address, community, building, owner, phone, email, float(r[11]), None
                    )
                )
        return self.add_arrays(
            [r[0] for r in rows],
            np.fromiter((r[1] == "meter" for r in rows), np.uint8, len(rows)),
            [r[2] for r in rows],
            np.fromiter((hh_pos[r[3]] for r in rows), np.int32, len(rows)),
            _epoch_s([r[4] for r in rows]),
            infos,
        )

    def add(
        self, devices: Sequence[DeviceRow], households: dict[str, HouseholdInfo]
    ) -> dict[str, np.ndarray]:
        """Append new devices (objects); return the columns FleetState.add_devices needs.
        A household's meter is its meter device, else its `meter_id` (if registered)."""
        infos = list(households.values())
        hh_pos = {h.id: i for i, h in enumerate(infos)}
        for d in devices:
            if d.household_id not in hh_pos:
                raise ValueError(f"device {d.id}: household {d.household_id} not given")
        return self.add_arrays(
            [d.id for d in devices],
            np.array([d.kind == "meter" for d in devices], np.uint8),
            [d.model for d in devices],
            np.array([hh_pos[d.household_id] for d in devices], np.int32),
            _epoch_s([d.installed_on for d in devices]),
            infos,
        )

    def add_arrays(
        self,
        ids: Sequence[str],
        kinds: npt.ArrayLike,
        models: Sequence[str],
        household: npt.ArrayLike,
        installed_ts: npt.ArrayLike,
        households: Sequence[HouseholdInfo],
    ) -> dict[str, np.ndarray]:
        """Append devices given as columns (see `from_arrays`); devices already known (and
        repeats) are skipped. Households are added, or updated if known. Returns the
        columns FleetState.add_devices needs, for the new devices only."""
        kind = np.asarray(kinds, np.uint8).ravel()
        hh_in = np.asarray(household, np.int32).ravel()
        inst = np.asarray(installed_ts, np.float64).ravel()
        if not len(ids) == kind.size == len(models) == hh_in.size == inst.size:
            raise ValueError("add_arrays: all columns must have the same length")
        if hh_in.size and (hh_in.min() < 0 or hh_in.max() >= len(households)):
            raise ValueError("add_arrays: a device's household is not among those given")
        hh_pos = self.households.upsert(households)
        seen: set[str] = set()
        keep = []
        for i, did in enumerate(ids):
            if did not in seen and self.index.get(did) is None:
                seen.add(did)
                keep.append(i)
        del seen
        take = np.asarray(keep, np.intp)
        new_ids = [ids[i] for i in keep]
        first = len(self.ids)
        self.ids.extend(new_ids)
        self.index.add(new_ids, first, len(new_ids))
        del new_ids
        k = kind[take]
        self.kind.extend(k.tolist())
        hh = hh_pos[hh_in[take]]
        self.household.extend(hh)
        slots = np.arange(first, first + take.size, dtype=np.int32)
        meters = self.households.meter.values
        is_meter = k == KIND_METER
        meters[hh[is_meter]] = slots[is_meter]
        for i, info in enumerate(households):  # a meter named but not among the devices
            if info.meter_id is not None:
                slot = self.index.get(info.meter_id)
                if slot is not None and self.kind[slot] == KIND_METER:
                    meters[hh_pos[i]] = slot
        return {
            "kinds": k,
            "household": hh,
            "meter_slot": meters[hh],
            "model": np.array([self.model_index(models[i]) for i in keep], np.int16),
            "qmax_m3h": self.households.qmax_m3h.values[hh],
            "installed_ts": inst[take],
        }

    def add_ids(self, ids: Sequence[str]) -> None:
        """Append device ids alone: what the writer process needs to name slots in COPY."""
        first = len(self.ids)
        self.ids.extend(ids)
        self.index.add(ids, first, len(ids))
        self.kind.extend(bytes(len(ids)))

    def add_encoded_ids(self, data: bytes, lengths: npt.ArrayLike) -> None:
        """`add_ids` with the ids as their bytes joined and each one's length (`encoded_ids`)."""
        first = len(self.ids)
        self.ids.extend_encoded(data, lengths)
        self.index.add(self.ids.iter_from(first), first, len(self.ids) - first)
        self.kind.extend(bytes(len(self.ids) - first))

    def encoded_ids(self, first: int = 0) -> tuple[bytes, npt.NDArray[np.int32]]:
        """The ids of slots `first`.. as (bytes joined, lengths): compact to send."""
        return self.ids.encoded(first)


def _epoch_s(days: Sequence[dt.date]) -> npt.NDArray[np.float64]:
    ordinals = np.fromiter((d.toordinal() for d in days), np.int64, len(days))
    return (ordinals - _EPOCH_DAY).astype(np.float64) * 86400.0


def _text(h: HouseholdInfo) -> str:
    fields = (h.address, h.community, h.building, h.owner_name, h.owner_phone)
    return _SEP.join((*fields, _NONE if h.owner_email is None else h.owner_email))


def _str_nbytes(c: StrColumn) -> int:
    return int(c.data.nbytes + 4 * (len(c) + 1))
