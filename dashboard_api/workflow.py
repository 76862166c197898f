"""The work-order state machine, pure: which action leads where, who may take it, and why
an action is refused (the reason goes verbatim into the 409).

    open -> dispatched -> on_site -> resolved
      \\__________\\___________\\-----> cancelled

A safety order (a cut valve's order) cannot be resolved while its household still has an
active gas alarm: an engineer cannot declare safe a home where gas is still detected, and
the valve's reopen rests on that resolution (dashboard_api.valve_policy).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from dashboard_api.identity import Role

OPEN_STATUSES = ("open", "dispatched", "on_site")

SAFETY_CAUSES = ("leak", "overflow", "valve_fault", "valve_inspection")
"""Orders whose resolution by an engineer lets a cut valve reopen: the gateway's causes of
critical alarms (gateway.response.POLICIES) and the inspection of a manual or unexplained
cut."""

BLOCKING_CAUSES = (*SAFETY_CAUSES, "valve_escalation")
"""Orders that, while open, keep a valve closed: a safety order, or a crew sent because a
valve command was never confirmed."""

GAS_ALARM_KINDS = ("leak", "prealarm", "rising", "overflow")
"""Alarms that say gas is in the home or escaping at the meter. Valve faults, micro-flow and
continuous flow are equipment or usage conditions with their own orders: they neither hold a
resolution back nor keep the valve shut."""

CUT_ALARM_KINDS = ("leak", "overflow")
"""Alarms on which the gateway cuts the gas (POLICIES with close_valve)."""


@dataclass(frozen=True, slots=True)
class Step:
    action: str
    from_statuses: tuple[str, ...]
    to_status: str
    role: Role


STEPS = {
    "dispatch": Step("dispatch", ("open",), "dispatched", Role.operator),
    "on_site": Step("on_site", ("dispatched",), "on_site", Role.engineer),
    "resolve": Step("resolve", ("on_site",), "resolved", Role.engineer),
    "cancel": Step("cancel", OPEN_STATUSES, "cancelled", Role.operator),
}


class IllegalTransition(Exception):
    pass


def next_status(action: str, current: str) -> str:
    step = STEPS[action]
    if current in step.from_statuses:
        return step.to_status
    if current in ("resolved", "cancelled"):
        raise IllegalTransition(
            f"the work order is {current}: it is closed and takes no further steps"
        )
    needs = " or ".join(step.from_statuses)
    raise IllegalTransition(f"the work order is {current}; '{action}' needs status {needs}")


@dataclass(frozen=True, slots=True)
class ActiveAlarm:
    id: int
    kind: str
    state: str
    raised_at: dt.datetime


def resolve_refusal(
    cause: str, household_id: str, active_gas_alarms: Sequence[ActiveAlarm]
) -> str | None:
    """Why a 'resolve' of an order with this cause is refused now, or None."""
    if cause not in SAFETY_CAUSES or not active_gas_alarms:
        return None
    a = active_gas_alarms[0]
    return (
        f"household {household_id} still has an active {a.kind} alarm {a.id} ({a.state}, "
        f"raised {a.raised_at.isoformat()}): a {cause} order cannot be resolved while gas "
        "is still detected; ventilate and repair, wait until the gateway clears the alarm "
        "(readings back below the clear level), then resolve"
    )
