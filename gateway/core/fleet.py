"""The fleet's detection state: one 64-byte record per device slot, and the arrays beside it.

`FleetState` is what the rules (gas_rules, meter_rules, sweep) read and update in place.
The record layout (`RECORD`, the bytes of its `runs` word) is public: the compiled engine
(gateway/core/compiled.py) reads and writes the same bytes and checks this layout when it
is imported. `rounds` splits a batch so that repeated slots apply in arrival order.
Which engine a state uses is chosen here, when it is built; `compiled_engine` finds the
compiled one lazily, so this module does not import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from gateway.core.alarms import N_KINDS, DeviceKind, ValveCode
from gateway.core.thresholds import RING, ModelThresholds, Thresholds, ThresholdTable
from gateway.core.types import F32, F64, I32, U8, U32, Bool, Ix

__all__ = [
    "DETECTOR_RUNS_MASK",
    "ENGINES",
    "RECORD",
    "RECORD_VOID",
    "RUNS_RING_HEAD",
    "RUNS_RING_N",
    "RUNS_VALVE_FLOW",
    "RUNS_VALVE_OK",
    "FleetState",
    "bump_runs",
    "compiled_engine",
    "rounds",
]

ENGINES = ("auto", "numpy", "compiled")  # FleetState(engine=...)

# Everything a reading reads or writes sits in one 64-byte record per slot (one cache
# line): with 400 k devices the state is larger than the CPU caches, and a batch costs
# a memory access per array it touches per reading, so one record beats a dozen
# parallel arrays. Cold data (registry links, install dates, the rise ring touched only
# by elevated readings) stays in plain arrays.
RECORD = np.dtype(
    [
        ("active", np.uint32),  # AlarmKind bitmask
        ("scratch", np.int32),  # batch position, used by rounds to find repeated slots
        ("last_seen", np.float64),  # platform time of the last message, NaN = never
        ("runs", np.uint64),  # 8 uint8 run lengths of consecutive readings, see RUNS_*
        ("stuck_since_ts", np.float64),  # detector: since when the value has not moved
        ("flow_since_ts", np.float64),  # meter: start of the current flow run (inf: none)
        ("micro_since_ts", np.float64),  # meter: start of the current micro-flow run
        ("stuck_ref_lel", np.float32),  # detector: the value that has not moved
        ("last_flow_m3h", np.float32),  # meter: last reported flow, NaN = none yet
        ("qmax_m3h", np.float32),  # meter: household load
        ("model", np.int16),
        ("kind", np.uint8),  # DeviceKind, 255 = free slot
        ("valve_state", np.uint8),  # meter: ValveCode
    ]
)
assert RECORD.itemsize == 64
RECORD_VOID = np.dtype((np.void, RECORD.itemsize))
_RECORD_FILL = np.array(
    [(0, 0, np.nan, 0, np.inf, np.inf, np.inf, -np.inf, np.nan, np.nan, 0, 255, ValveCode.UNKNOWN)],
    dtype=RECORD,
)

# Bytes of `runs`: run lengths of consecutive readings meeting a condition.
# detector: bytes 0-1 hold the gas machine's code (uint16), see GasMachine
RUNS_RING_N, RUNS_RING_HEAD = 4, 5  # detector: valid samples in the rise ring, next write slot
_mask = np.zeros(8, dtype=np.uint8)
_mask[[0, 1, RUNS_RING_N]] = 0xFF
DETECTOR_RUNS_MASK = _mask.view(np.uint64)[0]  # the code and ring_n bytes of a runs word
del _mask
RUNS_VALVE_FLOW, RUNS_VALVE_OK = 0, 1  # meter: flow while closed, healthy valve


def _aligned_records(n: int) -> npt.NDArray[Any]:
    """n hot records on cache-line boundaries (one allocation, so huge pages can back it)."""
    raw = np.empty(n * RECORD.itemsize + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start : start + n * RECORD.itemsize].view(RECORD)
    out[:] = _RECORD_FILL[0]
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

    The records themselves, for the rule modules and the compiled engine: `records`
    (RECORD array), `records_void` (the same bytes, one void item per record, for whole
    record gathers and scatters) and `records_bytes` (uint8, one row per record). `table`
    is the ThresholdTable; `engine_buffers` belongs to the compiled engine (its output
    buffers for this state, reused from batch to batch).

    `engine`: "numpy" (the rule modules), "compiled" (gateway/core/compiled.py, needs
    numba; it is compiled or loaded from its cache here, before any batch) or "auto"
    (compiled if numba imports, else numpy); `self.engine` is the one in use.
    """

    # cold arrays: name -> (dtype, fill, trailing shape)
    _COLD: ClassVar[dict[str, tuple[type[np.generic], Any, tuple[int, ...]]]] = {
        "household": (np.int32, -1, ()),
        "meter_slot": (np.int32, -1, ()),
        "installed_ts": (np.float64, np.nan, ()),
        "service_due_ts": (np.float64, np.inf, ()),
        "rise_lel": (np.float32, 0.0, (RING,)),  # ring of tracked samples, see gas_rules
        "rise_ts": (np.float64, 0.0, (RING,)),
    }

    household: I32
    meter_slot: I32
    installed_ts: F64
    service_due_ts: F64
    rise_lel: F32
    rise_ts: F64

    def __init__(
        self,
        capacity: int = 1024,
        thresholds: Thresholds | None = None,
        models: ModelThresholds | None = None,
        engine: str = "auto",
    ) -> None:
        self.engine = _resolve_engine(engine)
        self.engine_buffers: Any = None
        self.table = ThresholdTable(thresholds or Thresholds(), models or {})
        self.n_devices = 0
        self.capacity = 0
        self.records = _aligned_records(0)
        self.records_void = self.records.view(RECORD_VOID)
        self.records_bytes = self.records.view(np.uint8).reshape(0, RECORD.itemsize)
        for name, (dtype, fill, shape) in self._COLD.items():
            setattr(self, name, np.full((0, *shape), fill, dtype=dtype))
        self._grow(max(int(capacity), 1))

    # -- views of the hot records

    @property
    def kind(self) -> U8:
        return self.records["kind"]

    @property
    def model(self) -> npt.NDArray[np.int16]:
        return self.records["model"]

    @property
    def active(self) -> U32:
        return self.records["active"]

    @property
    def last_seen(self) -> F64:
        return self.records["last_seen"]

    @property
    def valve_state(self) -> U8:
        return self.records["valve_state"]

    @property
    def qmax_m3h(self) -> F32:
        return self.records["qmax_m3h"]

    @property
    def last_flow_m3h(self) -> F32:
        return self.records["last_flow_m3h"]

    # -- registry

    def thresholds(self, model: int = 0) -> Thresholds:
        return self.table.row(model)

    def ensure_capacity(self, n: int) -> None:
        """Make room for at least `n` devices (grows by at least half)."""
        if n > self.capacity:
            self._grow(max(n, self.capacity + self.capacity // 2))

    def _grow(self, capacity: int) -> None:
        hot = _aligned_records(capacity)
        hot[: self.capacity] = self.records
        self.records = hot
        self.records_void = hot.view(RECORD_VOID)
        self.records_bytes = hot.view(np.uint8).reshape(capacity, RECORD.itemsize)
        for name, (dtype, fill, shape) in self._COLD.items():
            old = getattr(self, name)
            # zeros (the rise ring) are not written here: untouched pages are not resident,
            # and the ring of a detector is touched only by its elevated readings
            if fill == 0:
                new = np.zeros((capacity, *shape), dtype=dtype)
            else:
                new = np.full((capacity, *shape), fill, dtype=dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
        self.capacity = capacity

    def add_devices(
        self,
        kinds: npt.ArrayLike,
        household: npt.ArrayLike,
        meter_slot: npt.ArrayLike,
        model: npt.ArrayLike,
        qmax_m3h: npt.ArrayLike,
        installed_ts: npt.ArrayLike,
        last_seen: npt.ArrayLike | None = None,
    ) -> I32:
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
        seen = (
            np.full(n, np.nan)
            if last_seen is None
            else np.broadcast_to(np.asarray(last_seen, dtype=np.float64), (n,))
        )
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
        self.table.ensure_rows(int(md.max()) + 1)
        sl = slice(base, base + n)
        hot = self.records[sl]
        hot["kind"] = k
        hot["model"] = md
        hot["qmax_m3h"] = np.where(is_meter, qm, np.nan)
        hot["last_seen"] = seen
        self.household[sl] = hh
        self.meter_slot[sl] = ms
        self.installed_ts[sl] = inst
        life = np.where(
            is_meter,
            self.table.columns["meter_life_s"][md],
            self.table.columns["detector_life_s"][md],
        )
        self.service_due_ts[sl] = inst + life
        self.n_devices = base + n
        return slots

    def set_active(self, slots: npt.ArrayLike, kinds: npt.ArrayLike) -> None:
        """Restore alarms that were open before a restart (pairs of slot and AlarmKind).

        A restored alarm is not raised again; it clears by its rule as usual, after a
        full run of clearing readings.
        """
        s = self.check_slots(slots)
        kd = np.asarray(kinds, dtype=np.uint32).ravel()
        if kd.size != s.size or (kd >= N_KINDS).any():
            raise ValueError("set_active: one AlarmKind per slot")
        np.bitwise_or.at(self.active, s, np.uint32(1) << kd)
        is_meter = self.kind[s] == DeviceKind.METER
        w = self.records["runs"][s]
        runs = w.view(np.uint8).reshape(-1, 8)
        runs[is_meter, RUNS_VALVE_OK] = 0
        code = w.view(np.uint16).reshape(-1, 4)[:, 0]
        code[~is_meter] = self.table.gas.without_clear_runs(code[~is_meter])
        self.records["runs"][s] = w

    def nbytes(self) -> int:
        """Bytes held by the state: records, cold arrays and threshold tables."""
        cold = sum(getattr(self, name).nbytes for name in self._COLD)
        return self.records.nbytes + cold + self.table.nbytes

    def fetch_records(self, s: Ix, kind: np.uint8, check_kind: bool) -> npt.NDArray[Any]:
        """Copies of the records of slots `s` (one cache line each); with `check_kind`
        (a batch's first round, which holds every slot of it) they must all be `kind`,
        checked before anything is written."""
        rec = self.records_void.take(s).view(RECORD)
        if check_kind and (rec["kind"] != kind).any():
            raise ValueError(f"every slot must be a {DeviceKind(int(kind)).name.lower()}")
        return rec

    def store_records(self, s: Ix, rec: npt.NDArray[Any]) -> None:
        """Write back records fetched with `fetch_records`."""
        self.records_void.put(s, rec.view(RECORD_VOID))

    def check_slots(self, slots: npt.ArrayLike) -> Ix:
        s = np.asarray(slots).ravel().astype(np.intp, copy=False)
        if s.size and (s.min() < 0 or s.max() >= self.n_devices):
            raise ValueError(f"slots must be in 0..{self.n_devices - 1}")
        return s


_COMPILED_MODULE = "gateway.core.compiled"
_compiled: Any = False  # False: not looked up yet


def compiled_engine() -> Any:
    """The compiled engine (gateway.core.compiled), or None when numba is not installed.

    Imported on first use by name: the engine imports this module for the record layout,
    and a state built with engine="numpy" never needs numba.
    """
    global _compiled
    if _compiled is False:
        try:
            _compiled = importlib.import_module(_COMPILED_MODULE)
        except ImportError:
            _compiled = None
    return _compiled


def _resolve_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: one of {', '.join(ENGINES)}")
    if engine == "numpy":
        return engine
    compiled = compiled_engine()
    if compiled is None:
        if engine == "compiled":
            raise ImportError("engine='compiled' needs numba (pip install numba)")
        return "numpy"
    compiled.warm_up()  # compile or load from the cache now, not on the first batch
    return "compiled"


def rounds(state: FleetState, s: Ix) -> Iterator[Ix | None]:
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
    scratch = state.records["scratch"]
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


def bump_runs(run: U8, cond: Bool) -> U8:
    """Saturating run length: +1 where cond holds, 0 where it does not."""
    out: U8 = (np.minimum(run, np.uint8(254)) + np.uint8(1)) * cond
    return out
