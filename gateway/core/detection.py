"""The detection core's steps in one namespace: what the pipeline calls on every batch.

Each step is `(state, batch, now) -> Effects`: it updates the FleetState in place and
returns what happened as arrays. No I/O, no clock: `now` is always an argument. The rules
live in the modules the package docstring lists; this module only gathers them.
"""

from __future__ import annotations

from gateway.core.alarms import GAS_KINDS, AlarmKind, DeviceKind, ValveCode
from gateway.core.effects import Effects
from gateway.core.fleet import ENGINES, FleetState
from gateway.core.gas_rules import evaluate_detectors
from gateway.core.incidents import group_incidents
from gateway.core.meter_rules import evaluate_meters
from gateway.core.sweep import mark_offline, mark_seen, sweep
from gateway.core.thresholds import ModelThresholds, Thresholds

__all__ = [
    "ENGINES",
    "GAS_KINDS",
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
