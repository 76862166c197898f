"""The work-order state machine, pure: which action leads where, who may take it, and why
an action is refused (the reason goes verbatim into the 409).

    open -> dispatched -> on_site -> resolved
      \\__________\\___________\\-----> cancelled
"""

from __future__ import annotations

from dataclasses import dataclass

from dashboard_api.identity import Role

OPEN_STATUSES = ("open", "dispatched", "on_site")


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
        raise IllegalTransition(f"the work order is {current}: it is closed and takes no "
                                f"further steps")
    needs = " or ".join(step.from_statuses)
    raise IllegalTransition(f"the work order is {current}; '{action}' needs status {needs}")
