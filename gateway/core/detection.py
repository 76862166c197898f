"""Detection core: the alarm rules of ARCHITECTURE section 3 over NumPy state arrays.

Pure and batched. `FleetState` keeps every device's detection state in arrays indexed
by a device *slot* (0..n-1); `evaluate_detectors`, `evaluate_meters`, `sweep`,
`mark_offline` and `mark_seen` are steps `(state, batch, now) -> Effects` that update
the state in place and return what happened as arrays (alarms raised and cleared,
valves to close). No I/O, no asyncio, no clock: `now` is always an argument.

Clocks: rules that measure a condition over readings (debounce, rise, stuck, flow
runs) use each reading's own `ts` (device clock), so a backlog replayed after an
outage is judged as it happened; liveness and service life use `now` (platform clock).

Repeated devices in one batch: readings of the same slot are applied in batch order
and the result equals applying them one at a time. Instead of sorting the whole
batch, a scatter/gather of batch positions through the slots' records finds which
slots repeat (usually none), only those readings are stably sorted, and the batch is
processed in rounds (round r holds every slot's r-th reading; usually one, rarely two).

Speed: with 400 k devices the state is larger than the CPU caches, so each array a
reading touches costs a memory access; everything a reading needs therefore sits in
one 64-byte record per slot. The debounce rules are one table lookup (_GasMachine),
and in a large batch the gas and rise rules run only on the readings that can change
something (most are a quiet background). bench/bench_detection.py has the figures.

Engines: this module is the NumPy engine, the specification of every rule. With numba
installed, `FleetState(engine="auto")` (the default) or "compiled" runs
`evaluate_detectors` and `evaluate_meters` in gateway/kernels.py instead: the same
rules, threshold columns and gas table, one reading after the other in compiled code,
with bit-identical state and Effects (tests/unit/test_kernels.py compares the two).
Validation, sweep and the status steps are shared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "ENGINES",
    "AlarmKind",
    "DeviceKind",
    "Effects",
    "FleetState",
    "ModelThresholds",
    "Thresholds",
    "ValveCode",
    "evaluate_detectors",
    "evaluate_meters",
    "group_incidents",
    "mark_offline",
    "mark_seen",
    "sweep",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
U8 = npt.NDArray[np.uint8]
U32 = npt.NDArray[np.uint32]
Bool = npt.NDArray[np.bool_]
Ix = npt.NDArray[np.intp]

YEAR_S = 365.25 * 86400.0
ENGINES = ("auto", "numpy", "compiled")  # FleetState(engine=...), see the module docstring
RING = 8  # samples kept per detector for the rate-of-rise rule
_SPLIT_MIN = 512  # rounds smaller than this skip the quiet/busy split (it would cost more)


class DeviceKind(IntEnum):
    DETECTOR = 0
    METER = 1


class ValveCode(IntEnum):
    """Valve position as reported by a meter (`valve` field), and the state's code for it."""

    OPEN = 0
    CLOSED = 1
    FAULT = 2
    UNKNOWN = 255  # no meter reading yet

    @classmethod
    def from_protocol(cls, valve: str) -> ValveCode:
        return cls[valve.upper()]


class AlarmKind(IntEnum):
    """One bit each in `FleetState.active` (bit = 1 << kind)."""

    PREALARM = 0
    LEAK = 1
    RISING = 2
    DETECTOR_FAULT = 3
    STUCK_SENSOR = 4
    OFFLINE = 5
    OVERFLOW = 6
    CONTINUOUS_FLOW = 7
    MICRO_LEAK = 8
    VALVE_FAULT = 9
    BATTERY_LOW = 10
    METER_SERVICE_LIFE = 11
    DETECTOR_SERVICE_LIFE = 12

    @property
    def bit(self) -> int:
        return 1 << int(self)


GAS_KINDS = (AlarmKind.PREALARM, AlarmKind.LEAK, AlarmKind.RISING)
_N_KINDS = len(AlarmKind)
_B = {k: np.uint32(1 << int(k)) for k in AlarmKind}
assert [int(k) for k in (AlarmKind.PREALARM, AlarmKind.LEAK, AlarmKind.RISING,
                         AlarmKind.DETECTOR_FAULT)] == [0, 1, 2, 3]  # _GasMachine relies on it
# bits as NumPy scalars for the hot path (an IntEnum operand costs a slow conversion)
_LEAK, _RISE = _B[AlarmKind.LEAK], _B[AlarmKind.RISING]
_STUCK, _OFF = _B[AlarmKind.STUCK_SENSOR], _B[AlarmKind.OFFLINE]
_OVF, _CONT, _MICRO = (_B[AlarmKind.OVERFLOW], _B[AlarmKind.CONTINUOUS_FLOW],
                       _B[AlarmKind.MICRO_LEAK])
_VALVE, _BATT = _B[AlarmKind.VALVE_FAULT], _B[AlarmKind.BATTERY_LOW]
_NOT_OFFLINE = ~_OFF
_U8_1, _U8_254 = np.uint8(1), np.uint8(254)
_CLOSED, _VFAULT = np.uint8(ValveCode.CLOSED), np.uint8(ValveCode.FAULT)
_DETECTOR, _METER = np.uint8(DeviceKind.DETECTOR), np.uint8(DeviceKind.METER)
_KIND_SHIFTS = np.arange(_N_KINDS, dtype=np.uint32)
_IS_GAS = np.zeros(_N_KINDS, dtype=np.bool_)
_IS_GAS[list(GAS_KINDS)] = True


# ------------------------------------------------------------------ thresholds

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
                if not (isinstance(value, int) and not isinstance(value, bool)
                        and 1 <= value <= 254):
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


_COUNT_FIELDS = frozenset(f.name for f in dataclasses.fields(Thresholds)
                          if f.name.endswith("_count")
                          or f.name in ("offline_heartbeats", "rise_min_samples"))

ModelThresholds: TypeAlias = Mapping[int, Thresholds]
"""Per-model overrides: model index -> Thresholds; models not listed use the default."""

# Columns of the per-model table, with the dtype the rules compare in (float32 against
# float32 readings, float64 for durations against float64 timestamps, uint8 run lengths).
_COLUMNS: dict[str, tuple[type[np.generic], Callable[[Thresholds], float]]] = {}


def _col(name: str, dtype: type[np.generic], fn: Callable[[Thresholds], float] | None = None,
         ) -> None:
    _COLUMNS[name] = (dtype, fn if fn is not None else (lambda t: getattr(t, name)))


for _name in ("prealarm_lel", "leak_lel", "leak_instant_lel", "clear_lel", "rise_floor_lel",
              "rise_track_lel", "stuck_tolerance_lel", "stuck_ignore_below_lel",
              "start_flow_m3h", "overflow_factor", "overflow_clear_factor",
              "battery_low_v", "battery_clear_v"):
    _col(_name, np.float32)
for _name in ("prealarm_count", "leak_count", "clear_count", "fault_clear_count",
              "valve_closed_flow_count", "valve_clear_count", "rise_min_samples"):
    _col(_name, np.uint8)
for _name in ("rise_window_s", "rise_lead_s", "rise_min_span_s", "rise_sustain_ratio", "stuck_s",
              "continuous_flow_s", "micro_flow_s"):
    _col(_name, np.float64)
_col("micro_max_m3h", np.float32, lambda t: t.micro_flow_factor * t.start_flow_m3h)
_col("offline_s", np.float64, lambda t: t.offline_heartbeats * t.heartbeat_s)
_col("rise_spacing_s", np.float64, lambda t: t.rise_window_s / RING)
_col("meter_life_s", np.float64, lambda t: t.meter_life_years * YEAR_S)
_col("detector_life_s", np.float64, lambda t: t.detector_life_years * YEAR_S)


_LEVEL_EDGES = ("clear_lel", "prealarm_lel", "leak_lel", "leak_instant_lel")
_GAS_FAULT_BITS = 0b1111  # PREALARM, LEAK, RISING, DETECTOR_FAULT: bits 0-3 of `active`


def _gas_step(pre: Any, leak: Any, clr: Any, fok: Any, bits: Any, bad: Any, level: Any,
              t: Thresholds, caps: tuple[int, int, int, int]) -> tuple[Any, ...]:
    """What one detector reading does to the gas and fault rules (elementwise).

    `level`: 0 below clear_lel, 1 below prealarm_lel, 2 below leak_lel, 3 below
    leak_instant_lel, 4 at or above it. `bad`: the fault bitmask is not 0. Runs count
    consecutive readings, capped at `caps` (a count no threshold exceeds).
    """
    pre_b, leak_b, rise_b, fault_b = (k.bit for k in (AlarmKind.PREALARM, AlarmKind.LEAK,
                                                      AlarmKind.RISING, AlarmKind.DETECTOR_FAULT))
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


class _GasMachine:
    """The gas and fault rules of a detector as one transition table per profile.

    A detector's state is its four run lengths (at or above prealarm_lel, at or above
    leak_lel, below clear_lel, without a fault), packed into one `code`, and its alarm
    bits PREALARM, LEAK, RISING, DETECTOR_FAULT (bits 0-3 of `active`). `_gas_step`
    states the rules; the table holds its answer for every state and input, so a batch
    takes one lookup instead of a dozen array operations:
    table[offset + ((code * 16 + bits) * 2 + bad) * 5 + level] = new_code * 16 + new_bits.
    """

    def __init__(self, profiles: list[Thresholds]) -> None:
        self.caps = (max(p.prealarm_count for p in profiles), max(p.leak_count for p in profiles),
                     max(p.clear_count for p in profiles),
                     max(p.fault_clear_count for p in profiles))
        self.dims = tuple(c + 1 for c in self.caps)
        n_codes = int(np.prod(self.dims))
        if n_codes * 16 > 1 << 16:
            raise ValueError("debounce counts too large: need (prealarm_count + 1) * "
                             "(leak_count + 1) * (clear_count + 1) * (fault_clear_count + 1)"
                             " <= 4096")
        self.stride = n_codes * 16 * 2 * 5
        code, bits, bad, level = np.meshgrid(np.arange(n_codes), np.arange(16), np.arange(2),
                                             np.arange(5), indexing="ij")
        runs = np.unravel_index(code, self.dims)
        tables = []
        for t in profiles:
            *new_runs, new_bits = _gas_step(*runs, bits, bad.astype(bool), level, t, self.caps)
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


class _ThresholdTable:
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
        self.profiles = [default] + [t for t in dict.fromkeys(self.overrides.values())
                                     if t != default]
        self.gas = _GasMachine(self.profiles)
        self.columns: dict[str, npt.NDArray[Any]] = {}
        self.scalars: dict[str, np.generic | None] = {}
        self.edges: F32 | None = None  # level edges when every model shares them
        self.n_rows = 0
        self.ensure_rows(max(self.overrides, default=0) + 1)

    def ensure_rows(self, n_rows: int) -> None:
        if n_rows <= self.n_rows:
            return
        rows = [self.overrides.get(i, self.default) for i in range(n_rows)]
        columns = {name: (dtype, fn) for name, (dtype, fn) in _COLUMNS.items()}
        columns["gas_offset"] = (np.intp, lambda t: self.profiles.index(t) * self.gas.stride)
        for name, (dtype, fn) in columns.items():
            col = np.array([fn(r) for r in rows], dtype=dtype)
            self.columns[name] = col
            self.scalars[name] = col[0] if bool((col == col[0]).all()) else None
        # below this, a reading at rest changes no gas, fault or rise state (any model)
        self.quiet_below_lel = np.float32(min(min(t.clear_lel, t.rise_track_lel)
                                              for t in self.profiles))
        level_edges = [self.scalars[n] for n in _LEVEL_EDGES]
        self.edges = (None if any(e is None for e in level_edges)
                      else np.array(level_edges, dtype=np.float32))
        self.n_rows = n_rows

    def row(self, model: int) -> Thresholds:
        return self.overrides.get(model, self.default)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.columns.values()) + self.gas.table.nbytes


class _Lookup:
    """Thresholds for the readings of one round: a scalar, or a gather by model."""

    __slots__ = ("_cache", "_m", "_model", "_table")

    def __init__(self, table: _ThresholdTable, model: npt.NDArray[np.int16]) -> None:
        self._table, self._model = table, model
        self._m: Ix | None = None
        self._cache: dict[str, Any] = {}

    def __call__(self, name: str) -> Any:
        scalar = self._table.scalars[name]
        if scalar is not None:
            return scalar
        value = self._cache.get(name)
        if value is None:
            if self._m is None:
                self._m = self._model.astype(np.intp)
            value = self._cache[name] = self._table.columns[name].take(self._m)
        return value


# ------------------------------------------------------------------ effects

def _empty(dtype: type[np.generic]) -> npt.NDArray[Any]:
    out = np.empty(0, dtype=dtype)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, slots=True)
class Effects:
    """What one step did. Raised and cleared alarms, and valve closes to request.

    Order: as if the readings were applied one at a time in batch order; within one
    reading, by AlarmKind. `raised_value` is the reading behind the alarm (ch4 %LEL for
    detector alarms, flow m3/h for meter alarms, volts for BATTERY_LOW, seconds of
    silence for OFFLINE, age in years for service life). `raised_flow_at_meter` is set
    for gas alarms (PREALARM, LEAK, RISING) whose household meter last reported flow
    above its starting flow: the more certain alarms. Valve closes come only from LEAK
    (the household's meter) and OVERFLOW (the meter itself), never from OFFLINE or a
    fault; two detectors of one household leaking in one batch give two requests for
    the same meter (the response layer keeps one command per meter).
    """

    raised_slot: I32
    raised_kind: U8
    raised_value: F32
    raised_ts: F64
    raised_flow_at_meter: Bool
    cleared_slot: I32
    cleared_kind: U8
    cleared_ts: F64
    close_valve_meter_slot: I32
    close_cause: U8
    close_trigger_slot: I32

    @classmethod
    def empty(cls) -> Effects:
        return _EMPTY_EFFECTS

    @classmethod
    def concat(cls, parts: Sequence[Effects]) -> Effects:
        """Join effects of consecutive steps, in the order given."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _EFFECT_FIELDS))

    def __len__(self) -> int:
        return (self.raised_slot.size + self.cleared_slot.size
                + self.close_valve_meter_slot.size)


_EFFECT_FIELDS = tuple(f.name for f in dataclasses.fields(Effects))
_EMPTY_EFFECTS = Effects(_empty(np.int32), _empty(np.uint8), _empty(np.float32),
                         _empty(np.float64), _empty(np.bool_), _empty(np.int32),
                         _empty(np.uint8), _empty(np.float64), _empty(np.int32),
                         _empty(np.uint8), _empty(np.int32))


class _Collector:
    """Gathers effects of the rounds of one step; orders them as sequential processing."""

    __slots__ = ("changes", "closes", "first_round", "sort")

    def __init__(self) -> None:
        self.first_round = True
        # (row, slot, kind, raised, value, ts) and (row, meter, cause, trigger)
        self.changes: list[tuple[Ix, I32, U8, Bool, F32, F64]] = []
        self.closes: list[tuple[Ix, I32, U8, I32]] = []
        self.sort = False

    def finish(self, state: FleetState) -> Effects:
        if not self.changes and not self.closes:
            return Effects.empty()
        if self.changes:
            row, slot, kind, up, value, ts = (np.concatenate(c) for c in zip(*self.changes))
            if self.sort:
                order = np.argsort(row, kind="stable")
                slot, kind, up = slot[order], kind[order], up[order]
                value, ts = value[order], ts[order]
            down = ~up
            r_slot, r_kind = slot[up], kind[up]
            flow_at_meter = _flow_at_meter(state, r_slot, r_kind)
            raised = (r_slot, r_kind, value[up], ts[up], flow_at_meter)
            cleared = (slot[down], kind[down], ts[down])
        else:
            raised = (_empty(np.int32), _empty(np.uint8), _empty(np.float32),
                      _empty(np.float64), _empty(np.bool_))
            cleared = (_empty(np.int32), _empty(np.uint8), _empty(np.float64))
        if self.closes:
            crow, meter, cause, trig = (np.concatenate(c) for c in zip(*self.closes))
            if self.sort:
                order = np.argsort(crow, kind="stable")
                meter, cause, trig = meter[order], cause[order], trig[order]
            closes = (meter, cause, trig)
        else:
            closes = (_empty(np.int32), _empty(np.uint8), _empty(np.int32))
        return Effects(*raised, *cleared, *closes)


def _flow_at_meter(state: FleetState, slot: I32, kind: U8) -> Bool:
    out = np.zeros(slot.size, dtype=np.bool_)
    gas = _IS_GAS[kind].nonzero()[0]
    if gas.size:
        meter = state.meter_slot[slot[gas]]
        has = meter >= 0
        m = meter[has]
        start = state._table.columns["start_flow_m3h"][state.model[m]]
        out[gas[has]] = state.last_flow_m3h[m] > start
    return out


def _emit(out: _Collector, s: Ix, rows: Ix | None, ts: F64, old: U32, new: U32,
          value_of: Callable[[Ix, U8], F32]) -> Ix:
    """Record the alarm bits that changed between `old` and `new`; return the changed rows.

    `rows` maps round positions to batch positions (None: they are the same).
    """
    diff = old ^ new
    ch = diff.nonzero()[0]
    if ch.size == 0:
        return ch
    bits = (diff[ch, None] >> _KIND_SHIFTS) & np.uint32(1)
    i, k = np.nonzero(bits)  # row-major: by reading, then by kind
    local = ch[i]
    kind = k.astype(np.uint8)
    up = ((new[local] >> kind.astype(np.uint32)) & np.uint32(1)).astype(np.bool_)
    row = local if rows is None else rows[local]
    out.changes.append((row, s[local].astype(np.int32), kind, up,
                        value_of(local, kind), ts[local]))
    return ch


# ------------------------------------------------------------------ state

# Everything a reading reads or writes sits in one 64-byte record per slot (one cache
# line): with 400 k devices the state is larger than the CPU caches, and a batch costs
# a memory access per array it touches per reading, so one record beats a dozen
# parallel arrays. Cold data (registry links, install dates, the rise ring touched only
# by elevated readings) stays in plain arrays.
_HOT = np.dtype([
    ("active", np.uint32),  # AlarmKind bitmask
    ("scratch", np.int32),  # batch position, used by _rounds to find repeated slots
    ("last_seen", np.float64),  # platform time of the last message, NaN = never
    ("runs", np.uint64),  # 8 uint8 run lengths of consecutive readings, see _R_*
    ("stuck_since_ts", np.float64),  # detector: since when the value has not moved
    ("flow_since_ts", np.float64),  # meter: start of the current flow run (inf: none)
    ("micro_since_ts", np.float64),  # meter: start of the current micro-flow run
    ("stuck_ref_lel", np.float32),  # detector: the value that has not moved
    ("last_flow_m3h", np.float32),  # meter: last reported flow, NaN = none yet
    ("qmax_m3h", np.float32),  # meter: household load
    ("model", np.int16),
    ("kind", np.uint8),  # DeviceKind, 255 = free slot
    ("valve_state", np.uint8),  # meter: ValveCode
])
assert _HOT.itemsize == 64
_HOT_VOID = np.dtype((np.void, _HOT.itemsize))
_HOT_FILL = np.array([(0, 0, np.nan, 0, np.inf, np.inf, np.inf, -np.inf, np.nan, np.nan,
                       0, 255, ValveCode.UNKNOWN)], dtype=_HOT)

# Bytes of `runs`: run lengths of consecutive readings meeting a condition.
# detector: bytes 0-1 hold the gas machine's code (uint16), see _GasMachine
_R_RING_N, _R_RING_HEAD = 4, 5  # detector: valid samples in the rise ring, next write position
_mask = np.zeros(8, dtype=np.uint8)
_mask[[0, 1, _R_RING_N]] = 0xFF
_DET_RUNS_MASK = _mask.view(np.uint64)[0]  # the code and ring_n bytes of a runs word
del _mask
_R_VALVE_FLOW, _R_VALVE_OK = 0, 1  # meter: flow while closed, healthy valve


def _aligned_records(n: int) -> npt.NDArray[Any]:
    """n hot records on cache-line boundaries (one allocation, so huge pages can back it)."""
    raw = np.empty(n * _HOT.itemsize + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start:start + n * _HOT.itemsize].view(_HOT)
    out[:] = _HOT_FILL[0]
    return out


class FleetState:
    """Detection state of a fleet, one entry per device slot, in NumPy arrays.

    Slots are assigned by `add_devices` in order (0, 1, ...) and never reused. One
    state belongs to one worker: it is not thread-safe, and a partition of the device
    space is simply one FleetState per partition.

    Arrays indexed by slot (views: read freely; write only `valve_state` and `last_seen`):
    kind (uint8 DeviceKind), model (int16), active (uint32 bitmask, bit 1 << AlarmKind),
    last_seen (float64 platform time, NaN = never), valve_state (uint8 ValveCode),
    qmax_m3h, last_flow_m3h (float32, NaN = none), household (int32), meter_slot (int32:
    a detector's household meter, a meter itself, -1 if none), installed_ts (float64).

    `engine`: "numpy" (this module), "compiled" (gateway/kernels.py, needs numba; the
    kernels are compiled or loaded from their cache here, before any batch) or "auto"
    (compiled if numba imports, else numpy); `self.engine` is the one in use.
    """

    # cold arrays: name -> (dtype, fill, trailing shape)
    _COLD: dict[str, tuple[type[np.generic], Any, tuple[int, ...]]] = {
        "household": (np.int32, -1, ()),
        "meter_slot": (np.int32, -1, ()),
        "installed_ts": (np.float64, np.nan, ()),
        "service_due_ts": (np.float64, np.inf, ()),
        "rise_lel": (np.float32, 0.0, (RING,)),  # ring of tracked samples, see _rise
        "rise_ts": (np.float64, 0.0, (RING,)),
    }

    household: I32
    meter_slot: I32
    installed_ts: F64
    service_due_ts: F64
    rise_lel: F32
    rise_ts: F64

    def __init__(self, capacity: int = 1024, thresholds: Thresholds | None = None,
                 models: ModelThresholds | None = None, engine: str = "auto") -> None:
        self.engine = _resolve_engine(engine)
        self._table = _ThresholdTable(thresholds or Thresholds(), models or {})
        self.n_devices = 0
        self.capacity = 0
        self._hot = _aligned_records(0)
        self._hot_void = self._hot.view(_HOT_VOID)
        self._hot_bytes = self._hot.view(np.uint8).reshape(0, _HOT.itemsize)
        for name, (dtype, fill, shape) in self._COLD.items():
            setattr(self, name, np.full((0, *shape), fill, dtype=dtype))
        self._grow(max(int(capacity), 1))

    # -- views of the hot records

    @property
    def kind(self) -> U8:
        return self._hot["kind"]  # type: ignore[no-any-return]

    @property
    def model(self) -> npt.NDArray[np.int16]:
        return self._hot["model"]  # type: ignore[no-any-return]

    @property
    def active(self) -> U32:
        return self._hot["active"]  # type: ignore[no-any-return]

    @property
    def last_seen(self) -> F64:
        return self._hot["last_seen"]  # type: ignore[no-any-return]

    @property
    def valve_state(self) -> U8:
        return self._hot["valve_state"]  # type: ignore[no-any-return]

    @property
    def qmax_m3h(self) -> F32:
        return self._hot["qmax_m3h"]  # type: ignore[no-any-return]

    @property
    def last_flow_m3h(self) -> F32:
        return self._hot["last_flow_m3h"]  # type: ignore[no-any-return]

    # -- registry

    def thresholds(self, model: int = 0) -> Thresholds:
        return self._table.row(model)

    def ensure_capacity(self, n: int) -> None:
        """Make room for at least `n` devices (grows by at least half)."""
        if n > self.capacity:
            self._grow(max(n, self.capacity + self.capacity // 2))

    def _grow(self, capacity: int) -> None:
        hot = _aligned_records(capacity)
        hot[: self.capacity] = self._hot
        self._hot = hot
        self._hot_void = hot.view(_HOT_VOID)
        self._hot_bytes = hot.view(np.uint8).reshape(capacity, _HOT.itemsize)  # kernels
        for name, (dtype, fill, shape) in self._COLD.items():
            old = getattr(self, name)
            new = np.full((capacity, *shape), fill, dtype=dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
        self.capacity = capacity

    def add_devices(self, kinds: npt.ArrayLike, household: npt.ArrayLike,
                    meter_slot: npt.ArrayLike, model: npt.ArrayLike,
                    qmax_m3h: npt.ArrayLike, installed_ts: npt.ArrayLike,
                    last_seen: npt.ArrayLike | None = None) -> I32:
        """Register devices in bulk; return their slots (consecutive, from `n_devices`).

        `meter_slot` of a detector is its household's meter slot (already registered or
        in this call, i.e. < n_devices + len(kinds)), or -1; for a meter it is ignored
        (a meter's meter_slot is itself). `qmax_m3h` matters for meters only (> 0, or NaN
        to switch over-flow off). `last_seen` (platform time) arms the offline clock;
        NaN (the default) means never seen, which never counts as offline.
        """
        k = np.asarray(kinds, dtype=np.uint8).ravel()
        n = k.size
        hh = np.asarray(household, dtype=np.int32).ravel()
        ms = np.asarray(meter_slot, dtype=np.int32).ravel()
        md = np.asarray(model).ravel()
        qm = np.asarray(qmax_m3h, dtype=np.float32).ravel()
        inst = np.asarray(installed_ts, dtype=np.float64).ravel()
        seen = (np.full(n, np.nan) if last_seen is None
                else np.broadcast_to(np.asarray(last_seen, dtype=np.float64), (n,)))
        if not all(a.size == n for a in (hh, ms, md, qm, inst)):
            raise ValueError("add_devices: all arrays must have the same length")
        if n == 0:
            return np.empty(0, dtype=np.int32)
        if not np.isin(k, (DeviceKind.DETECTOR, DeviceKind.METER)).all():
            raise ValueError("kinds must be 0 (detector) or 1 (meter)")
        if md.min() < 0 or md.max() > np.iinfo(np.int16).max:
            raise ValueError("model indices must be in 0..32767")
        md = md.astype(np.int16)
        is_meter = k == DeviceKind.METER
        if (is_meter & ~(np.isnan(qm) | (qm > 0))).any():
            raise ValueError("qmax_m3h of a meter must be > 0 (or NaN)")
        base = self.n_devices
        slots = np.arange(base, base + n, dtype=np.int32)
        ms = np.where(is_meter, slots, ms)
        det_ms = ms[~is_meter]
        if ((det_ms < -1) | (det_ms >= base + n)).any():
            raise ValueError("meter_slot of a detector must be -1 or a registered slot")
        linked = det_ms[det_ms >= 0]
        known = linked < base
        linked_kind = np.concatenate([self.kind[linked[known]], k[linked[~known] - base]])
        if (linked_kind != DeviceKind.METER).any():
            raise ValueError("meter_slot of a detector must point at a meter")
        self.ensure_capacity(base + n)
        self._table.ensure_rows(int(md.max()) + 1)
        sl = slice(base, base + n)
        hot = self._hot[sl]
        hot["kind"] = k
        hot["model"] = md
        hot["qmax_m3h"] = np.where(is_meter, qm, np.nan)
        hot["last_seen"] = seen
        self.household[sl] = hh
        self.meter_slot[sl] = ms
        self.installed_ts[sl] = inst
        life = np.where(is_meter, self._table.columns["meter_life_s"][md],
                        self._table.columns["detector_life_s"][md])
        self.service_due_ts[sl] = inst + life
        self.n_devices = base + n
        return slots

    def set_active(self, slots: npt.ArrayLike, kinds: npt.ArrayLike) -> None:
        """Restore alarms that were open before a restart (pairs of slot and AlarmKind).

        A restored alarm is not raised again; it clears by its rule as usual, after a
        full run of clearing readings.
        """
        s = self._check(slots)
        kd = np.asarray(kinds, dtype=np.uint32).ravel()
        if kd.size != s.size or (kd >= _N_KINDS).any():
            raise ValueError("set_active: one AlarmKind per slot")
        np.bitwise_or.at(self.active, s, np.uint32(1) << kd)
        is_meter = self.kind[s] == DeviceKind.METER
        w = self._hot["runs"][s]
        runs = w.view(np.uint8).reshape(-1, 8)
        runs[is_meter, _R_VALVE_OK] = 0
        code = w.view(np.uint16).reshape(-1, 4)[:, 0]
        code[~is_meter] = self._table.gas.without_clear_runs(code[~is_meter])
        self._hot["runs"][s] = w

    def nbytes(self) -> int:
        """Bytes held by the state: records, cold arrays and threshold tables."""
        cold = sum(getattr(self, name).nbytes for name in self._COLD)
        return self._hot.nbytes + cold + self._table.nbytes

    def _check(self, slots: npt.ArrayLike) -> Ix:
        s = np.asarray(slots).ravel().astype(np.intp, copy=False)
        if s.size and (s.min() < 0 or s.max() >= self.n_devices):
            raise ValueError(f"slots must be in 0..{self.n_devices - 1}")
        return s


def _kernels() -> Any:
    """gateway.kernels, or None when numba is not installed."""
    global _KERNELS
    if _KERNELS is False:
        try:
            from gateway.core import kernels
        except ImportError:
            _KERNELS = None
        else:
            _KERNELS = kernels
    return _KERNELS


_KERNELS: Any = False  # not imported yet


def _resolve_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: one of {', '.join(ENGINES)}")
    if engine == "numpy":
        return engine
    kernels = _kernels()
    if kernels is None:
        if engine == "compiled":
            raise ImportError("engine='compiled' needs numba (pip install numba)")
        return "numpy"
    kernels.warm_up()  # compile or load from the cache now, not on the first batch
    return "compiled"


# ------------------------------------------------------------------ rounds

def _rounds(state: FleetState, s: Ix) -> Iterator[Ix | None]:
    """Batch positions per round: round r holds each slot's r-th reading, in batch order.

    Yields None for "the whole batch" when no slot repeats (the common case). Repeats
    are found without sorting the batch: every reading writes its batch position into
    its slot's record (which the round fetches next anyway), and a reading that does
    not read its own position back shares the slot with another. Only the readings of
    such slots are sorted, stably by slot, to rank each slot's readings in arrival order.
    """
    n = s.size
    if n == 0:
        return
    idx = np.arange(n, dtype=np.int32)
    scratch = state._hot["scratch"]
    scratch[s] = idx  # one writer per slot wins, whichever
    lost = (scratch[s] != idx).nonzero()[0]
    if lost.size == 0:
        yield None
        return
    # every reading of a repeated slot: those that lost, and the one that won the slot
    involved = np.unique(np.concatenate([lost, scratch[s[lost]].astype(np.intp)]))
    sub = s[involved]
    order = np.argsort(sub, kind="stable")
    sorted_slots = sub[order]
    m = sorted_slots.size
    pos = np.arange(m)
    first = np.ones(m, dtype=np.bool_)
    first[1:] = sorted_slots[1:] != sorted_slots[:-1]
    rank_sorted = pos - np.maximum.accumulate(np.where(first, pos, 0))
    rank = np.zeros(n, dtype=np.intp)
    rank[involved[order]] = rank_sorted
    yield (rank == 0).nonzero()[0]
    for r in range(1, int(rank_sorted.max()) + 1):
        yield involved[rank[involved] == r]


def _subset(value: Any, idx: Ix) -> Any:
    """A threshold for some readings of a round: scalars stay scalars."""
    return value[idx] if np.ndim(value) else value


def _set(new: U32, cond: Bool, bit: np.uint32) -> None:
    """Raise `bit` where cond holds (rare: test first, it is cheaper than the update)."""
    if cond.any():
        new |= cond * bit


def _unset(new: U32, cond: Bool, bit: np.uint32) -> None:
    if cond.any():
        new &= ~(cond * bit)


def _bump(run: U8, cond: Bool) -> U8:
    """Saturating run length: +1 where cond holds, 0 where it does not."""
    out: U8 = (np.minimum(run, _U8_254) + _U8_1) * cond
    return out


# ------------------------------------------------------------------ detectors

def evaluate_detectors(state: FleetState, slots: npt.ArrayLike, ch4_lel: npt.ArrayLike,
                       fault: npt.ArrayLike, ts: npt.ArrayLike, now: float) -> Effects:
    """Apply a batch of detector readings (in arrival order; slots may repeat).

    `ch4_lel` %LEL (0-100, not NaN), `fault` the device's fault bitmask (0 = healthy),
    `ts` the readings' device time and `now` the platform time, epoch seconds. Raised
    and cleared alarms carry the reading's `ts`; a LEAK also asks to close the
    household's meter.
    """
    s = state._check(slots)
    ch4 = np.asarray(ch4_lel, dtype=np.float32).ravel()
    flt = np.asarray(fault, dtype=np.uint32).ravel()
    t = np.asarray(ts, dtype=np.float64).ravel()
    if not ch4.size == flt.size == t.size == s.size:
        raise ValueError("evaluate_detectors: all arrays must have the same length")
    if np.isnan(ch4).any():
        raise ValueError("evaluate_detectors: ch4_lel must not be NaN")
    if state.engine == "compiled":
        return _KERNELS.evaluate_detectors(state, s, ch4, flt, t, float(now))
    out = _Collector()
    for rows in _rounds(state, s):
        if rows is None:
            _detector_round(state, s, ch4, flt, t, float(now), None, out)
        else:
            out.sort = True
            _detector_round(state, s[rows], ch4[rows], flt[rows], t[rows], float(now), rows, out)
        out.first_round = False
    return out.finish(state)


def _fetch(state: FleetState, s: Ix, kind: np.uint8, first_round: bool) -> npt.NDArray[Any]:
    """The records of a round's slots (one cache line each); the first round, which
    holds every slot of the batch, checks their kind before anything is written."""
    rec = state._hot_void.take(s).view(_HOT)
    if first_round and (rec["kind"] != kind).any():
        raise ValueError(f"every slot must be a {DeviceKind(int(kind)).name.lower()}")
    return rec


def _detector_round(state: FleetState, s: Ix, ch4: F32, fault: U32, ts: F64, now: float,
                    rows: Ix | None, out: _Collector) -> None:
    rec = _fetch(state, s, _DETECTOR, out.first_round)
    model = rec["model"]
    th = _Lookup(state._table, model)
    act = rec["active"].copy()
    present = int(np.bitwise_or.reduce(act))  # alarm bits set anywhere in this round
    new = act & _NOT_OFFLINE if present & _OFF else act.copy()  # a reading proves it alive
    w = rec["runs"].copy()

    # stuck: the value has not moved (within tolerance) since stuck_since_ts
    moved = np.abs(ch4 - rec["stuck_ref_lel"]) > th("stuck_tolerance_lel")  # ref starts -inf
    since = rec["stuck_since_ts"]
    np.copyto(since, ts, where=moved)
    np.copyto(rec["stuck_ref_lel"], ch4, where=moved)
    if present & _STUCK:
        _unset(new, moved, _STUCK)
    _set(new, (ts - since >= th("stuck_s")) & (ch4 >= th("stuck_ignore_below_lel")), _STUCK)

    # Gas, fault and rise rules. Most readings are a quiet background from a detector at
    # rest (no gas or fault alarm, runs settled, no rise tracked): for them these rules
    # change nothing, so in a large round they run only on the other, "busy" readings.
    table = state._table
    if s.size < _SPLIT_MIN:
        _gas_and_rise(state, th, s, ch4, fault, ts, w, act, new)
    else:
        busy = ((ch4 >= table.quiet_below_lel) | (fault != 0)
                | ((w & _DET_RUNS_MASK) != table.gas.resting_runs)
                | ((act & _GAS_FAULT_BITS) != 0)).nonzero()[0]
        if busy.size:
            wb, nb = w[busy], new[busy]
            _gas_and_rise(state, _Lookup(table, model[busy]), s[busy], ch4[busy], fault[busy],
                          ts[busy], wb, act[busy], nb)
            w[busy] = wb
            new[busy] = nb

    rec["runs"] = w
    rec["active"] = new
    rec["last_seen"] = now
    state._hot_void.put(s, rec.view(_HOT_VOID))

    ch = _emit(out, s, rows, ts, act, new, lambda i, k: ch4[i])
    if ch.size:
        leak_up = ch[((new[ch] & ~act[ch]) & _LEAK) != 0]
        if leak_up.size:  # close the household's meter
            trig = s[leak_up]
            meter = state.meter_slot[trig]
            has = meter >= 0
            r = leak_up if rows is None else rows[leak_up]
            out.closes.append((r[has], meter[has], np.full(int(has.sum()), AlarmKind.LEAK,
                               dtype=np.uint8), trig[has].astype(np.int32)))


def _gas_and_rise(state: FleetState, th: _Lookup, s: Ix, ch4: F32, fault: U32, ts: F64,
                  w: npt.NDArray[np.uint64], act: U32, new: U32) -> None:
    """Gas and fault rules (one table lookup, see _GasMachine), then the rise rule.

    Updates the runs words `w` and the alarm bits `new` in place.
    """
    table = state._table
    if table.edges is not None:
        level = np.searchsorted(table.edges, ch4, side="right")
    else:
        level = (ch4 >= th("clear_lel")).astype(np.intp)
        for name in _LEVEL_EDGES[1:]:
            level += ch4 >= th(name)
    code = w.view(np.uint16).reshape(-1, 4)[:, 0]
    idx = ((code.astype(np.intp) << 4) | (act & _GAS_FAULT_BITS)) * 10 + level
    idx += (fault != 0) * 5
    offset = th("gas_offset")
    if np.ndim(offset) or offset:
        idx += offset
    step = table.gas.table.take(idx)
    code[:] = step >> 4
    new &= ~np.uint32(_GAS_FAULT_BITS)
    new |= step & _GAS_FAULT_BITS

    # rate of rise, on the readings above the tracking level
    runs = w.view(np.uint8).reshape(-1, 8)
    tracked = ch4 >= th("rise_track_lel")
    runs[:, _R_RING_N] *= tracked  # a reading below the tracking level ends the tracked rise
    tr = tracked.nonzero()[0]
    if tr.size:
        _rise(state, th, s, ch4, ts, tr, runs, new)


def _rise(state: FleetState, th: _Lookup, s: Ix, ch4: F32, ts: F64, tr: Ix, runs: U8,
          new: U32) -> None:
    """Rate-of-rise rule on the tracked readings `tr` of a round; updates runs and new.

    Each detector keeps its last RING tracked samples (value, ts), at least
    rise_window_s / RING apart so the ring spans the window whatever the reporting
    rate; `runs[:, _R_RING_N]` counts the valid ones (reset by an untracked reading) and
    `runs[:, _R_RING_HEAD]` is the next write position. The samples inside the window
    and the current reading give a least-squares slope; RISING is raised when ch4 is in
    [rise_floor_lel, leak_lel) and the slope reaches leak_lel within rise_lead_s.
    """

    def sub(name: str, idx: Ix) -> Any:
        return _subset(th(name), idx)

    ss = s[tr]
    v = ch4[tr]
    t = ts[tr]
    rn = runs[tr, _R_RING_N]
    hd = runs[tr, _R_RING_HEAD]
    flat = ss * RING
    ring_ts = state.rise_ts.reshape(-1)
    last_pos = flat + ((hd - _U8_1) & np.uint8(RING - 1))
    last_t = ring_ts.take(last_pos)

    # candidates: in the warning band, with history, no leak or rise alarm yet
    cand = ((v >= sub("rise_floor_lel", tr)) & (v < sub("leak_lel", tr))
            & (rn >= sub("rise_min_samples", tr) - _U8_1)).nonzero()[0]
    if cand.size:
        cand = cand[(new[tr[cand]] & (_LEAK | _RISE)) == 0]
    if cand.size:
        at = tr[cand]
        cs = ss[cand]
        window = sub("rise_window_s", at)
        window = window[:, None] if np.ndim(window) else window
        x = state.rise_ts.take(cs, axis=0) - t[cand, None]  # <= 0: seconds before now
        age = (hd[cand, None].astype(np.intp) - 1 - np.arange(RING)) & (RING - 1)
        ok = (age < rn[cand, None]) & (x <= 0) & (x >= -window)
        x = np.where(ok, x, 0.0)
        y = np.where(ok, state.rise_lel.take(cs, axis=0).astype(np.float64), 0.0)
        vc = v[cand].astype(np.float64)
        n = ok.sum(axis=1) + 1.0  # the current reading is the point (0, vc)
        sx = _sum8(x)
        sy = _sum8(y) + vc
        sxx = _sum8(x * x)
        sxy = _sum8(x * y)
        den = n * sxx - sx * sx
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(den > 0, (n * sxy - sx * sy) / den, 0.0)
        span = -x.min(axis=1)
        # still rising: the step from the last sample keeps up with the trend (a ramp
        # that has levelled off, like a burner lighting, is not a sustained rise)
        step = vc - state.rise_lel.reshape(-1).take(last_pos[cand])
        dt = t[cand] - last_t[cand]
        rising = ((n >= sub("rise_min_samples", at)) & (span >= sub("rise_min_span_s", at))
                  & (slope > 0) & (dt > 0)
                  & (step >= sub("rise_sustain_ratio", at) * slope * dt)
                  & (vc + slope * sub("rise_lead_s", at) >= sub("leak_lel", at)))
        new[at[rising]] |= _RISE

    # record this reading if the ring is empty or its last sample is old enough
    rec = ((rn == 0) | (t - last_t >= sub("rise_spacing_s", tr))).nonzero()[0]
    if rec.size:
        hr = hd[rec]
        pos = flat[rec] + hr
        state.rise_lel.reshape(-1)[pos] = v[rec]
        ring_ts[pos] = t[rec]
        at = tr[rec]
        runs[at, _R_RING_N] = np.minimum(rn[rec] + _U8_1, np.uint8(RING))
        runs[at, _R_RING_HEAD] = (hr + _U8_1) & np.uint8(RING - 1)


def _sum8(a: F64) -> F64:
    """Row sums of an (m, RING) array, added as ((a0+a1)+(a2+a3))+((a4+a5)+(a6+a7)).

    The order NumPy's pairwise `sum(axis=1)` uses for 8 columns, written out so that it
    does not depend on NumPy's reduction internals and the compiled engine
    (gateway/kernels.py) adds in the same order: the rise fit agrees to the bit.
    """
    h = a[:, 0::2] + a[:, 1::2]
    q = h[:, 0::2] + h[:, 1::2]
    out: F64 = q[:, 0] + q[:, 1]
    return out


assert RING == 8  # _sum8


# ------------------------------------------------------------------ meters

def evaluate_meters(state: FleetState, slots: npt.ArrayLike, flow_m3h: npt.ArrayLike,
                    vol_m3: npt.ArrayLike, valve: npt.ArrayLike, batt_v: npt.ArrayLike,
                    ts: npt.ArrayLike, now: float) -> Effects:
    """Apply a batch of meter readings (in arrival order; slots may repeat).

    `flow_m3h` m3/h, `valve` ValveCode values (0 open, 1 closed, 2 fault), `batt_v`
    volts, `ts` device time and `now` platform time, epoch seconds. `vol_m3` is taken so
    the call mirrors the reading, but no v1 rule uses the cumulative volume. An
    OVERFLOW also asks to close this meter.
    """
    s = state._check(slots)
    flow = np.asarray(flow_m3h, dtype=np.float32).ravel()
    vl = np.asarray(valve, dtype=np.uint8).ravel()
    batt = np.asarray(batt_v, dtype=np.float32).ravel()
    t = np.asarray(ts, dtype=np.float64).ravel()
    if not flow.size == vl.size == batt.size == t.size == np.size(vol_m3) == s.size:
        raise ValueError("evaluate_meters: all arrays must have the same length")
    if state.engine == "compiled":
        return _KERNELS.evaluate_meters(state, s, flow, vl, batt, t, float(now))
    out = _Collector()
    for rows in _rounds(state, s):
        if rows is None:
            _meter_round(state, s, flow, vl, batt, t, float(now), None, out)
        else:
            out.sort = True
            _meter_round(state, s[rows], flow[rows], vl[rows], batt[rows], t[rows],
                         float(now), rows, out)
        out.first_round = False
    return out.finish(state)


def _meter_round(state: FleetState, s: Ix, flow: F32, valve: U8, batt: F32, ts: F64,
                 now: float, rows: Ix | None, out: _Collector) -> None:
    rec = _fetch(state, s, _METER, out.first_round)
    act = rec["active"].copy()
    present = int(np.bitwise_or.reduce(act))
    new = act & _NOT_OFFLINE if present & _OFF else act.copy()  # a reading proves it alive
    # (unlike detectors, a large share of meter readings show flow: splitting off the
    # meters at rest costs about what it saves, measured)
    _flow_rules(state._table, rec, flow, valve, batt, ts, act, new, present)

    rec["active"] = new
    rec["valve_state"] = valve
    rec["last_flow_m3h"] = flow
    rec["last_seen"] = now
    state._hot_void.put(s, rec.view(_HOT_VOID))

    def value_of(i: Ix, k: U8) -> F32:
        v: F32 = np.where(k == AlarmKind.BATTERY_LOW, batt[i], flow[i])
        return v

    ch = _emit(out, s, rows, ts, act, new, value_of)
    if ch.size:
        up = ch[((new[ch] & ~act[ch]) & _OVF) != 0]
        if up.size:  # close this meter
            meter = s[up].astype(np.int32)
            r = up if rows is None else rows[up]
            out.closes.append((r, meter, np.full(up.size, AlarmKind.OVERFLOW, dtype=np.uint8),
                               meter))


def _flow_rules(table: _ThresholdTable, rec: npt.NDArray[Any], flow: F32, valve: U8,
                batt: F32, ts: F64, act: U32, new: U32, present: int) -> None:
    """Over-flow, continuous flow, micro flow, valve and battery rules.

    Updates the records `rec` (runs and flow runs) and the alarm bits `new` in place.
    """
    th = _Lookup(table, rec["model"])
    flowing = flow > th("start_flow_m3h")

    # over-flow against the household load, with a hysteresis band
    qmax = rec["qmax_m3h"]
    if present & _OVF:
        _unset(new, flow <= qmax * th("overflow_clear_factor"), _OVF)
    _set(new, flow > qmax * th("overflow_factor"), _OVF)

    # continuous flow: a run without a pause; a pause clears the alarm
    run = np.where(flowing, np.minimum(rec["flow_since_ts"], ts), np.inf)
    rec["flow_since_ts"] = run
    if present & _CONT:
        _unset(new, ~flowing, _CONT)
    _set(new, ts - run >= th("continuous_flow_s"), _CONT)

    # micro flow: a small steady flow; only a true zero proves the leak gone
    micro = (flow > 0) & (flow < th("micro_max_m3h"))
    msince = rec["micro_since_ts"]
    mi = (micro | (msince < np.inf)).nonzero()[0]  # few: a micro flow now or a run to end
    if mi.size:
        mrun = np.where(micro[mi], np.minimum(msince[mi], ts[mi]), np.inf)
        msince[mi] = mrun
        long = ts[mi] - mrun >= _subset(th("micro_flow_s"), mi)
        if long.any():
            new[mi[long]] |= _MICRO
    if present & _MICRO:
        _unset(new, flow <= 0, _MICRO)

    # valve: flow while closed (debounced), or the meter reports a valve fault
    w = rec["runs"].copy()
    runs = w.view(np.uint8).reshape(-1, 8)
    closed_flow = (valve == _CLOSED) & flowing
    vfault = valve == _VFAULT
    vrun = _bump(runs[:, _R_VALVE_FLOW], closed_flow)
    vok = _bump(runs[:, _R_VALVE_OK], ~(closed_flow | vfault))
    runs[:, _R_VALVE_FLOW] = vrun
    runs[:, _R_VALVE_OK] = vok
    rec["runs"] = w
    if present & _VALVE:
        _unset(new, vok >= th("valve_clear_count"), _VALVE)
    _set(new, (vrun >= th("valve_closed_flow_count")) | vfault, _VALVE)

    # battery, with hysteresis
    if present & _BATT:
        _unset(new, batt >= th("battery_clear_v"), _BATT)
    _set(new, batt < th("battery_low_v"), _BATT)


# ------------------------------------------------------------------ periodic and status

def sweep(state: FleetState, now: float, start: int = 0, stop: int | None = None) -> Effects:
    """Periodic whole-fleet check (every few seconds), optionally over a slot range.

    OFFLINE: no message for offline_heartbeats * heartbeat_s (of the device's model).
    Service life: now past installed_ts + meter/detector life. CONTINUOUS_FLOW and
    MICRO_LEAK: a run of flow that outlasts its limit between a meter's readings (only
    for meters heard from recently). Never requests a valve close.
    """
    now = float(now)
    stop = state.n_devices if stop is None else min(stop, state.n_devices)
    # in chunks that stay in the CPU cache while every field of them is read
    return Effects.concat([_sweep_chunk(state, now, a, min(a + _SWEEP_CHUNK, stop))
                           for a in range(max(start, 0), stop, _SWEEP_CHUNK)])


_SWEEP_CHUNK = 16384  # records (1 MiB)


def _sweep_chunk(state: FleetState, now: float, start: int, stop: int) -> Effects:
    sl = slice(start, stop)
    hot = state._hot[sl]
    act = hot["active"].copy()  # the old bits, kept apart from the view we write into
    model = hot["model"]
    tab = state._table

    def col(name: str) -> Any:
        scalar = tab.scalars[name]
        return scalar if scalar is not None else tab.columns[name].take(model)

    silent = now - hot["last_seen"]
    stale = silent > col("offline_s")
    new = act | stale * _OFF
    due = state.service_due_ts[sl] <= now
    if due.any():
        is_meter = hot["kind"] == _METER
        new |= (due & is_meter) * _B[AlarmKind.METER_SERVICE_LIFE]
        new |= (due > is_meter) * _B[AlarmKind.DETECTOR_SERVICE_LIFE]
    heard = (new & _OFF) == 0
    new |= ((now - hot["flow_since_ts"] >= col("continuous_flow_s")) & heard) * _CONT
    new |= ((now - hot["micro_since_ts"] >= col("micro_flow_s")) & heard) * _MICRO

    ch = (act != new).nonzero()[0]
    if ch.size == 0:
        return Effects.empty()
    slot = ch + start
    state.active[slot] = new[ch]
    age_years = (now - state.installed_ts[slot]) / YEAR_S
    flow = state.last_flow_m3h[slot]
    silent_ch = silent[ch]

    def value_of(i: Ix, k: U8) -> F32:
        v = np.where(k == AlarmKind.OFFLINE, silent_ch[i],
                     np.where((k == AlarmKind.METER_SERVICE_LIFE)
                              | (k == AlarmKind.DETECTOR_SERVICE_LIFE),
                              age_years[i], flow[i]))
        return v.astype(np.float32)

    out = _Collector()
    _emit(out, slot, None, np.full(ch.size, now), act[ch], new[ch], value_of)
    return out.finish(state)


def mark_offline(state: FleetState, slots: npt.ArrayLike, now: float) -> Effects:
    """A device said `{"online": false}` (or its last will fired): OFFLINE at once."""
    return _set_bit(state, state._check(slots), float(now), AlarmKind.OFFLINE, on=True)


def mark_seen(state: FleetState, slots: npt.ArrayLike, now: float) -> Effects:
    """A device spoke without a reading (status online, event, ack): alive again."""
    s = state._check(slots)
    state.last_seen[s] = float(now)
    return _set_bit(state, s, float(now), AlarmKind.OFFLINE, on=False)


def _set_bit(state: FleetState, s: Ix, now: float, kind: AlarmKind, on: bool) -> Effects:
    if s.size == 0:
        return Effects.empty()
    s = np.unique(s)
    act = state.active[s]
    new = act | _B[kind] if on else act & ~_B[kind]
    out = _Collector()
    silent = (now - state.last_seen[s]).astype(np.float32)
    ch = _emit(out, s, None, np.full(s.size, now), act, new, lambda i, k: silent[i])
    if ch.size:
        state.active[s[ch]] = new[ch]
    return out.finish(state)


# ------------------------------------------------------------------ correlation

def group_incidents(building: npt.ArrayLike, household: npt.ArrayLike, ts: npt.ArrayLike,
                    window_s: float = 600.0, min_households: int = 2) -> npt.NDArray[np.int64]:
    """Group gas alarms of one building into incidents (a riser leak, not many leaks).

    Pass the gas alarms (PREALARM/LEAK/RISING) raised in the last `window_s` together
    with the new ones: building id (any integer code), household id and raise time of
    each. Alarms of one building chain into one cluster while each follows the previous
    one within `window_s`. A cluster spanning at least `min_households` distinct
    households is an incident: every alarm in it gets the incident key, the position
    (in the input) of the cluster's earliest alarm. Alarms outside an incident get -1.
    """
    bld = np.asarray(building).ravel()
    hh = np.asarray(household).ravel()
    t = np.asarray(ts, dtype=np.float64).ravel()
    n = t.size
    if not bld.size == hh.size == n:
        raise ValueError("group_incidents: all arrays must have the same length")
    key = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return key
    order = np.lexsort((t, bld))  # by building, then time (stable for ties)
    b_s, t_s = bld[order], t[order]
    starts = np.ones(n, dtype=np.bool_)
    starts[1:] = (b_s[1:] != b_s[:-1]) | (t_s[1:] - t_s[:-1] > window_s)
    cluster = np.cumsum(starts) - 1
    # distinct households per cluster
    h_s = hh[order]
    by_hh = np.lexsort((h_s, cluster))
    c2, h2 = cluster[by_hh], h_s[by_hh]
    new_pair = np.ones(n, dtype=np.bool_)
    new_pair[1:] = (c2[1:] != c2[:-1]) | (h2[1:] != h2[:-1])
    distinct = np.bincount(c2[new_pair], minlength=int(cluster[-1]) + 1)
    first_pos = order[np.flatnonzero(starts)]
    is_incident = distinct[cluster] >= min_households
    key[order[is_incident]] = first_pos[cluster[is_incident]]
    return key
