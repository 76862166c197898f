"""Thresholds: every number of the alarm rules, per device model, as the rules read them.

`Thresholds` holds the defaults of ARCHITECTURE section 3 and validates a set;
`ThresholdTable` turns the default and the per-model overrides into one small column per
threshold, indexed by model (a scalar where every model agrees), and builds the
`GasMachine`, the gas and fault debounce rules as one transition table per profile. Both
engines read these same columns and the same table, so every rule's numbers are defined
here once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from gateway.core.alarms import AlarmKind
from gateway.core.types import F32, Ix

__all__ = [
    "COLUMNS",
    "LEVEL_EDGES",
    "RING",
    "YEAR_S",
    "GasMachine",
    "Lookup",
    "ModelThresholds",
    "ThresholdTable",
    "Thresholds",
    "subset",
]

YEAR_S = 365.25 * 86400.0
RING = 8  # samples kept per detector for the rate-of-rise rule
assert [
    int(k) for k in (AlarmKind.PREALARM, AlarmKind.LEAK, AlarmKind.RISING, AlarmKind.DETECTOR_FAULT)
] == [0, 1, 2, 3]  # GasMachine relies on it


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Every number of ARCHITECTURE section 3, with its default; units in the names.

    Detector: PREALARM after prealarm_count consecutive readings >= prealarm_lel; LEAK
    after leak_count consecutive >= leak_lel, or one >= leak_instant_lel (closes the
    household's meter); RISING when the slope over rise_window_s reaches leak_lel within
    rise_lead_s from [rise_floor_lel, leak_lel); the three clear together after
    clear_count consecutive readings < clear_lel (one leak is one alarm). DETECTOR_FAULT
    on a fault bit, cleared by fault_clear_count healthy readings; STUCK_SENSOR when a
    value >= stuck_ignore_below_lel has not moved by stuck_tolerance_lel for stuck_s.
    Meter: OVERFLOW when flow > overflow_factor * qmax (closes the meter), cleared at
    <= overflow_clear_factor * qmax; CONTINUOUS_FLOW after continuous_flow_s of flow
    above start_flow_m3h, cleared by a pause; MICRO_LEAK after micro_flow_s of
    0 < flow < micro_flow_factor * start_flow_m3h, cleared by a zero flow; VALVE_FAULT on
    valve_closed_flow_count consecutive readings with flow while closed, or the valve
    reporting a fault, cleared by valve_clear_count healthy readings; BATTERY_LOW below
    battery_low_v, cleared at battery_clear_v. Any device: OFFLINE after
    offline_heartbeats * heartbeat_s of silence; service life after meter_life_years or
    detector_life_years from installation.
    """

    # detector gas levels, %LEL
    prealarm_lel: float = 10.0
    prealarm_count: int = 3  # consecutive readings >= prealarm_lel
    leak_lel: float = 20.0
    leak_count: int = 2  # consecutive readings >= leak_lel
    leak_instant_lel: float = 40.0  # one reading is enough
    clear_lel: float = 5.0  # gas alarms clear below this ...
    clear_count: int = 3  # ... for this many consecutive readings
    # rate of rise: least-squares slope over the window, extrapolated rise_lead_s ahead
    rise_window_s: float = 60.0
    rise_lead_s: float = 120.0
    rise_floor_lel: float = 5.0  # only warn from this level up (and below leak_lel)
    rise_track_lel: float = 2.0  # tracked from here (above sensor noise); below, the rise ends
    rise_min_samples: int = 4  # points in the window, the current reading included
    rise_min_span_s: float = 30.0  # oldest point in the window at least this old
    rise_sustain_ratio: float = 0.5  # still rising: the last step keeps this share of the slope
    # sensor faults
    fault_clear_count: int = 3  # healthy readings (fault == 0) that clear DETECTOR_FAULT
    stuck_s: float = 3 * 86400.0
    stuck_tolerance_lel: float = 0.001
    stuck_ignore_below_lel: float = 0.5  # a flat 0.0 background is normal, not stuck
    # liveness
    heartbeat_s: float = 300.0
    offline_heartbeats: int = 3
    # meter flow, m3/h
    start_flow_m3h: float = 0.016  # the meter's starting flow: below it, "no flow"
    overflow_factor: float = 1.5  # OVERFLOW when flow > factor * qmax ...
    overflow_clear_factor: float = 1.0  # ... clears when flow <= this factor * qmax
    continuous_flow_s: float = 10 * 3600.0
    micro_flow_factor: float = 2.0  # micro flow: 0 < flow < factor * start flow ...
    micro_flow_s: float = 6 * 3600.0  # ... sustained this long
    valve_closed_flow_count: int = 2  # consecutive readings: flow while valve closed
    valve_clear_count: int = 3  # healthy valve readings that clear VALVE_FAULT
    # battery and service life
    battery_low_v: float = 3.3
    battery_clear_v: float = 3.4
    meter_life_years: float = 10.0  # diaphragm meters, JJG 577-2012
    detector_life_years: float = 5.0  # residential alarms

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _COUNT_FIELDS:
                if isinstance(value, float) and value.is_integer():
                    value = int(value)  # settings may carry counts as floats (3.0)
                    object.__setattr__(self, f.name, value)
                if not (
                    isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 254
                ):
                    raise ValueError(f"{f.name}={value!r}: need an int in 1..254")
            elif not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise ValueError(f"{f.name}={value!r}: need a finite number >= 0")
        if not self.clear_lel <= self.prealarm_lel <= self.leak_lel <= self.leak_instant_lel:
            raise ValueError("need clear_lel <= prealarm_lel <= leak_lel <= leak_instant_lel")
        if not self.rise_track_lel <= self.rise_floor_lel < self.leak_lel:
            raise ValueError("need rise_track_lel <= rise_floor_lel < leak_lel")
        if self.rise_min_samples > RING + 1:
            raise ValueError(f"rise_min_samples={self.rise_min_samples}: at most {RING + 1}")
        if self.rise_window_s <= 0 or self.heartbeat_s <= 0:
            raise ValueError("rise_window_s and heartbeat_s must be > 0")
        if self.overflow_clear_factor > self.overflow_factor:
            raise ValueError("need overflow_clear_factor <= overflow_factor")
        if self.battery_clear_v < self.battery_low_v:
            raise ValueError("need battery_clear_v >= battery_low_v")


_COUNT_FIELDS = frozenset(
    f.name
    for f in dataclasses.fields(Thresholds)
    if f.name.endswith("_count") or f.name in ("offline_heartbeats", "rise_min_samples")
)

ModelThresholds: TypeAlias = Mapping[int, Thresholds]
"""Per-model overrides: model index -> Thresholds; models not listed use the default."""

# Columns of the per-model table, with the dtype the rules compare in (float32 against
# float32 readings, float64 for durations against float64 timestamps, uint8 run lengths).
COLUMNS: dict[str, tuple[type[np.generic], Callable[[Thresholds], float]]] = {}


def _col(
    name: str,
    dtype: type[np.generic],
    fn: Callable[[Thresholds], float] | None = None,
) -> None:
    COLUMNS[name] = (dtype, fn if fn is not None else (lambda t: getattr(t, name)))


for _name in (
    "prealarm_lel",
    "leak_lel",
    "leak_instant_lel",
    "clear_lel",
    "rise_floor_lel",
    "rise_track_lel",
    "stuck_tolerance_lel",
    "stuck_ignore_below_lel",
    "start_flow_m3h",
    "overflow_factor",
    "overflow_clear_factor",
    "battery_low_v",
    "battery_clear_v",
):
    _col(_name, np.float32)
for _name in (
    "prealarm_count",
    "leak_count",
    "clear_count",
    "fault_clear_count",
    "valve_closed_flow_count",
    "valve_clear_count",
    "rise_min_samples",
):
    _col(_name, np.uint8)
for _name in (
    "rise_window_s",
    "rise_lead_s",
    "rise_min_span_s",
    "rise_sustain_ratio",
    "stuck_s",
    "continuous_flow_s",
    "micro_flow_s",
):
    _col(_name, np.float64)
_col("micro_max_m3h", np.float32, lambda t: t.micro_flow_factor * t.start_flow_m3h)
_col("offline_s", np.float64, lambda t: t.offline_heartbeats * t.heartbeat_s)
_col("rise_spacing_s", np.float64, lambda t: t.rise_window_s / RING)
_col("meter_life_s", np.float64, lambda t: t.meter_life_years * YEAR_S)
_col("detector_life_s", np.float64, lambda t: t.detector_life_years * YEAR_S)


LEVEL_EDGES = ("clear_lel", "prealarm_lel", "leak_lel", "leak_instant_lel")


def _gas_step(
    pre: Any,
    leak: Any,
    clr: Any,
    fok: Any,
    bits: Any,
    bad: Any,
    level: Any,
    t: Thresholds,
    caps: tuple[int, int, int, int],
) -> tuple[Any, ...]:
    """What one detector reading does to the gas and fault rules (elementwise).

    `level`: 0 below clear_lel, 1 below prealarm_lel, 2 below leak_lel, 3 below
    leak_instant_lel, 4 at or above it. `bad`: the fault bitmask is not 0. Runs count
    consecutive readings, capped at `caps` (a count no threshold exceeds).
    """
    pre_b, leak_b, rise_b, fault_b = (
        k.bit
        for k in (AlarmKind.PREALARM, AlarmKind.LEAK, AlarmKind.RISING, AlarmKind.DETECTOR_FAULT)
    )
    gas_b = pre_b | leak_b | rise_b
    pre = np.where(level >= 2, np.minimum(pre + 1, caps[0]), 0)  # at or above prealarm_lel
    leak = np.where(level >= 3, np.minimum(leak + 1, caps[1]), 0)  # at or above leak_lel
    clr = np.where(level == 0, np.minimum(clr + 1, caps[2]), 0)  # below clear_lel
    fok = np.where(bad, 0, np.minimum(fok + 1, caps[3]))  # no fault bit
    # hysteresis: gas alarms clear after a run of clear readings, all at once
    bits = np.where(clr >= t.clear_count, bits & ~gas_b, bits)
    bits = np.where((leak >= t.leak_count) | (level == 4), bits | leak_b, bits)
    # a leak subsumes the pre-alarm: no new pre-alarm while a leak is active
    bits = np.where((pre >= t.prealarm_count) & (bits & leak_b == 0), bits | pre_b, bits)
    bits = np.where(bad, bits | fault_b, bits)
    bits = np.where(fok >= t.fault_clear_count, bits & ~fault_b, bits)
    return pre, leak, clr, fok, bits


class GasMachine:
    """The gas and fault rules of a detector as one transition table per profile.

    A detector's state is its four run lengths (at or above prealarm_lel, at or above
    leak_lel, below clear_lel, without a fault), packed into one `code`, and its alarm
    bits PREALARM, LEAK, RISING, DETECTOR_FAULT (bits 0-3 of `active`). `_gas_step`
    states the rules; the table holds its answer for every state and input, so a batch
    takes one lookup instead of a dozen array operations:
    table[offset + ((code * 16 + bits) * 2 + bad) * 5 + level] = new_code * 16 + new_bits.
    """

    def __init__(self, profiles: list[Thresholds]) -> None:
        self.caps = (
            max(p.prealarm_count for p in profiles),
            max(p.leak_count for p in profiles),
            max(p.clear_count for p in profiles),
            max(p.fault_clear_count for p in profiles),
        )
        self.dims = tuple(c + 1 for c in self.caps)
        n_codes = int(np.prod(self.dims))
        if n_codes * 16 > 1 << 16:
            raise ValueError(
                "debounce counts too large: need (prealarm_count + 1) * "
                "(leak_count + 1) * (clear_count + 1) * (fault_clear_count + 1)"
                " <= 4096"
            )
        self.stride = n_codes * 16 * 2 * 5
        code, bits, bad, level = np.meshgrid(
            np.arange(n_codes), np.arange(16), np.arange(2), np.arange(5), indexing="ij"
        )
        pre, leak, clr, fok = np.unravel_index(code, self.dims)
        tables = []
        for t in profiles:
            *new_runs, new_bits = _gas_step(
                pre, leak, clr, fok, bits, bad.astype(bool), level, t, self.caps
            )
            new_code = np.ravel_multi_index(tuple(new_runs), self.dims)
            tables.append((new_code * 16 + new_bits).astype(np.uint16).ravel())
        self.table = np.concatenate(tables)
        # the runs word of a detector at rest: runs settled (no gas, no fault), no rise
        resting = np.zeros(1, dtype=np.uint64)
        resting.view(np.uint16)[0] = np.ravel_multi_index((0, 0, *self.caps[2:]), self.dims)
        self.resting_runs = resting[0]

    def without_clear_runs(self, code: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint16]:
        """The same runs with the clear and fault-free runs restarted (restored alarms)."""
        pre, leak, _, _ = np.unravel_index(code.astype(np.intp), self.dims)
        zero = np.zeros_like(pre)
        return np.ravel_multi_index((pre, leak, zero, zero), self.dims).astype(np.uint16)


class ThresholdTable:
    """One small array per threshold, indexed by model: `column[model[slots]]`.

    A column that is the same for every model is used as a scalar, so the common case
    (no override touches it) costs no gather at all.
    """

    def __init__(self, default: Thresholds, overrides: ModelThresholds) -> None:
        if any(k < 0 or k > np.iinfo(np.int16).max for k in overrides):
            raise ValueError("model indices must be in 0..32767")
        self.default = default
        self.overrides = dict(overrides)
        # distinct threshold sets; the gas machine has one table per profile
        self.profiles = [default] + [
            t for t in dict.fromkeys(self.overrides.values()) if t != default
        ]
        self.gas = GasMachine(self.profiles)
        self.columns: dict[str, npt.NDArray[Any]] = {}
        self.scalars: dict[str, np.generic | None] = {}
        self.edges: F32 | None = None  # level edges when every model shares them
        self.n_rows = 0
        self._matrices: dict[tuple[str, ...], npt.NDArray[Any]] = {}
        self.ensure_rows(max(self.overrides, default=0) + 1)

    def ensure_rows(self, n_rows: int) -> None:
        if n_rows <= self.n_rows:
            return
        rows = [self.overrides.get(i, self.default) for i in range(n_rows)]
        columns = {name: (dtype, fn) for name, (dtype, fn) in COLUMNS.items()}
        columns["gas_offset"] = (np.intp, lambda t: self.profiles.index(t) * self.gas.stride)
        for name, (dtype, fn) in columns.items():
            col = np.array([fn(r) for r in rows], dtype=dtype)
            self.columns[name] = col
            self.scalars[name] = col[0] if bool((col == col[0]).all()) else None
        self._matrices.clear()
        # below this, a reading at rest changes no gas, fault or rise state (any model)
        self.quiet_below_lel = np.float32(
            min(min(t.clear_lel, t.rise_track_lel) for t in self.profiles)
        )
        level_edges = [self.scalars[n] for n in LEVEL_EDGES]
        self.edges = (
            None if any(e is None for e in level_edges) else np.array(level_edges, dtype=np.float32)
        )
        self.n_rows = n_rows

    def row(self, model: int) -> Thresholds:
        return self.overrides.get(model, self.default)

    def matrix(self, names: tuple[str, ...]) -> npt.NDArray[Any]:
        """Columns of one dtype side by side, one row per model (C order), kept until the
        table grows: the compiled engine reads a model's thresholds from one row."""
        out = self._matrices.get(names)
        if out is None:
            out = np.ascontiguousarray(np.stack([self.columns[c] for c in names], axis=1))
            self._matrices[names] = out
        return out

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.columns.values()) + self.gas.table.nbytes


class Lookup:
    """Thresholds for the readings of one round: a scalar, or a gather by model."""

    __slots__ = ("_cache", "_m", "_model", "_thresholds")

    def __init__(self, table: ThresholdTable, model: npt.NDArray[np.int16]) -> None:
        self._thresholds, self._model = table, model
        self._m: Ix | None = None
        self._cache: dict[str, Any] = {}

    def __call__(self, name: str) -> Any:
        scalar = self._thresholds.scalars[name]
        if scalar is not None:
            return scalar
        value = self._cache.get(name)
        if value is None:
            if self._m is None:
                self._m = self._model.astype(np.intp)
            value = self._cache[name] = self._thresholds.columns[name].take(self._m)
        return value


def subset(value: Any, idx: Ix) -> Any:
    """A threshold for some readings of a round: scalars stay scalars."""
    return value[idx] if np.ndim(value) else value
