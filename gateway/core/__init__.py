"""The detection core and the response rules, pure: NumPy (and numba) over per-device state
arrays, dataclasses and plain functions, the clock and id sources passed in. No asyncio, no
MQTT, no SQL, no HTTP: `lint-imports` holds it.

Modules, each named after what it holds (imports flow down this list):
- types: array type aliases; alarms: DeviceKind, ValveCode, AlarmKind and their bits
- thresholds: Thresholds, per-model threshold columns, the gas debounce table
- fleet: FleetState, the 64-byte record per device, the choice of engine
- effects: Effects, what a step did, and their ordering across rounds
- gas_rules, meter_rules: evaluate_detectors, evaluate_meters (the NumPy engine)
- kernels, compiled: the same two steps in numba, bit for bit, and their driver
- sweep: sweep, mark_offline, mark_seen; incidents: group_incidents
- detection: the steps above in one namespace, for the pipeline
- response: alarm kind -> valve action, work order, notice; commands: the valve-command book
- columns: append-only NumPy columns, strings in one buffer, a compact str index
- registry: device id -> slot, and what a slot belongs to, in those columns
"""
