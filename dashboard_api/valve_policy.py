"""Valve authority, pure: when a person may close or reopen a household's valve through the
API, and the precise reason when not. The routes gather the facts (dashboard_api.valve_facts)
and act on the verdict; nothing here reads a clock or a database.

Reopen (README, Security), every condition checked at request time:
  (a) no active gas alarm in the household (workflow.GAS_ALARM_KINDS, acknowledged included),
      and no open blocking order (workflow.BLOCKING_CAUSES);
  (b) a safety order resolved by an engineer since the latest cut of the meter (its newest
      close command, whoever issued it, or the meter's own report of its valve closed) and
      since the household's newest leak or overflow alarm; a cancelled order never counts,
      nor one linked to an earlier cut;
  (c) a second person: requested by someone other than the engineer who resolved it, or else
      held as a pending reopen until a supervisor (admin) other than the resolver confirms.

Mass actions: valve actions (commands, attachments to one in flight, reopen requests and
confirmations) are counted per account over the last WINDOW_S in the database's audit trail,
under a per-account advisory lock. Counting in the database rather than in the process makes
every API process behind a load balancer agree on one count (an in-process window would let
N processes grant N times the limit), and the audit rows are the record the count must agree
with anyway. Beyond MASS_ACTION_THRESHOLD an explicit confirmation with a reason is needed;
at RATE_LIMIT_PER_WINDOW the account is refused with 429 until the window frees a slot.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dashboard_api.workflow import BLOCKING_CAUSES, OPEN_STATUSES, SAFETY_CAUSES, ActiveAlarm

MASS_ACTION_THRESHOLD = 10
"""Valve actions one account may take within WINDOW_S before each needs a confirmation."""
RATE_LIMIT_PER_WINDOW = 30
"""Valve actions one account may take within WINDOW_S at all (then 429)."""
WINDOW_S = 60.0
MASS_REASON_MIN_CHARS = 20
"""A confirmed mass action says why in at least this many characters."""
METER_REPORT_GRACE_S = 60.0
"""A meter seen open later than this after a close command has been reopened since: a
closed report after that is a cut of its own, not the command's."""

ENGINEER_ROLES = ("engineer", "admin")
COUNTED_ACTIONS = (
    "valve.valve_close",
    "valve.valve_open",
    "valve.close_attached",
    "valve.reopen_requested",
)
"""Audit actions that count as one valve action of their actor."""


class Refused(Exception):
    """A valve request refused: `condition` names the rule, the message says what to do."""

    def __init__(
        self,
        condition: str,
        message: str,
        *,
        status: int = 409,
        retry_after_s: int | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message)
        self.condition = condition
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.context = context


# ---------------------------------------------------------------- mass actions


def judge_rate(
    recent: Sequence[dt.datetime],
    now: dt.datetime,
    confirmed: bool,
    reason: str,
    *,
    threshold: int = MASS_ACTION_THRESHOLD,
    limit: int = RATE_LIMIT_PER_WINDOW,
    window_s: float = WINDOW_S,
    reason_min_chars: int = MASS_REASON_MIN_CHARS,
) -> bool:
    """Whether this action is a (confirmed) mass action; `Refused` when it may not go ahead.
    `recent`: when this account's counted actions happened."""
    window = dt.timedelta(seconds=window_s)
    inside = sorted(t for t in recent if now - t < window)
    n = len(inside)
    if n >= limit:
        frees_at = inside[n - limit] + window  # the oldest whose leaving makes room
        retry = max(1, math.ceil((frees_at - now).total_seconds()))
        raise Refused(
            "rate_limit",
            f"{n} valve actions by this account in the last {window_s:g} s: at most "
            f"{limit} are allowed; retry in {retry} s",
            status=429,
            retry_after_s=retry,
            actions_in_window=n,
            limit=limit,
        )
    if n < threshold:
        return False
    if not confirmed:
        raise Refused(
            "mass_confirmation",
            f"this would be valve action {n + 1} by this account within "
            f"{window_s:g} s; more than {threshold} is a mass action: send it again "
            f'with "confirm_mass_action": true and a reason of at least '
            f"{reason_min_chars} characters saying why",
            actions_in_window=n,
            threshold=threshold,
        )
    if len(reason.strip()) < reason_min_chars:
        raise Refused(
            "mass_reason",
            f"a confirmed mass action needs a reason of at least "
            f"{reason_min_chars} characters saying why (got "
            f"{len(reason.strip())})",
            actions_in_window=n,
            threshold=threshold,
        )
    return True


# ---------------------------------------------------------------- the reopen interlock


@dataclass(frozen=True, slots=True)
class Cut:
    """The latest closing of a meter's valve."""

    at: dt.datetime
    cmd_id: str | None  # None: the meter reported its valve closed with no command behind it
    by: str  # a user, 'gateway', or 'meter'

    def describe(self) -> str:
        if self.cmd_id is None:
            return f"the meter's own report of its valve closed at {self.at.isoformat()}"
        return f"close command {self.cmd_id} by {self.by} at {self.at.isoformat()}"


def choose_cut(
    command: Cut | None,
    last_open_at: dt.datetime | None,
    closed_since: dt.datetime | None,
    grace_s: float = METER_REPORT_GRACE_S,
) -> Cut | None:
    """The latest cut: the newest close command, unless the meter was seen open well after it
    and has reported itself closed since (`closed_since`: the first closed reading after the
    last open one)."""
    if closed_since is not None and (
        command is None
        or (last_open_at is not None and last_open_at > command.at + dt.timedelta(seconds=grace_s))
    ):
        return Cut(closed_since, None, "meter")
    return command


@dataclass(frozen=True, slots=True)
class SafetyOrder:
    id: int
    cause: str
    status: str
    cmd_id: str | None  # the cut it was opened for, when known
    updated_at: dt.datetime
    resolved_by: str | None = None
    resolved_at: dt.datetime | None = None
    resolver_role: str | None = None
    alarm_id: int | None = None


@dataclass(frozen=True, slots=True)
class ReopenFacts:
    meter_id: str
    household_id: str
    cut: Cut | None
    gas_alarms: tuple[ActiveAlarm, ...] = ()  # active now
    last_cut_alarm: ActiveAlarm | None = None  # newest leak/overflow alarm, any state
    orders: tuple[SafetyOrder, ...] = ()  # the household's blocking orders, newest first
    reopen_in_flight: str | None = None

    @property
    def since(self) -> dt.datetime:
        assert self.cut is not None
        alarm = self.last_cut_alarm
        return max(self.cut.at, alarm.raised_at) if alarm else self.cut.at


@dataclass(frozen=True, slots=True)
class Grant:
    basis: SafetyOrder  # the resolved order the reopen rests on
    needs_supervisor: bool  # requested by its resolver: a supervisor confirms it
    qualifying: tuple[SafetyOrder, ...] = field(default=())


def _counts(order: SafetyOrder, facts: ReopenFacts) -> bool:
    assert facts.cut is not None
    return (
        order.cause in SAFETY_CAUSES
        and order.status == "resolved"
        and order.resolved_at is not None
        and order.resolved_at >= facts.since
        and order.resolver_role in ENGINEER_ROLES
        and (order.cmd_id is None or order.cmd_id == facts.cut.cmd_id)
    )


def _why_none(facts: ReopenFacts) -> str:
    """What the household's orders lack, for the 409 of condition (b)."""
    cut, since = facts.cut, facts.since
    assert cut is not None
    notes = []
    for o in facts.orders:
        if o.cause not in SAFETY_CAUSES:
            continue
        if o.status == "cancelled" and o.updated_at >= cut.at:
            notes.append(
                f"order {o.id} ({o.cause}) was cancelled, and a cancelled order never counts"
            )
        elif o.status == "resolved" and o.resolved_at is not None and o.resolved_at < since:
            notes.append(
                f"order {o.id} ({o.cause}) was resolved at "
                f"{o.resolved_at.isoformat()}, before {_since_what(facts)}"
            )
        elif o.status == "resolved" and o.resolver_role not in ENGINEER_ROLES:
            notes.append(
                f"order {o.id} ({o.cause}) was resolved by {o.resolved_by}, who is not an engineer"
            )
        elif o.status == "resolved" and o.cmd_id not in (None, cut.cmd_id):
            notes.append(f"order {o.id} ({o.cause}) answers for an earlier cut ({o.cmd_id})")
        if len(notes) == 3:
            break
    return "; ".join(notes) if notes else "the household has no such order"


def _since_what(facts: ReopenFacts) -> str:
    alarm, cut = facts.last_cut_alarm, facts.cut
    assert cut is not None
    if alarm is not None and alarm.raised_at > cut.at:
        return f"the {alarm.kind} alarm {alarm.id} raised at {alarm.raised_at.isoformat()}"
    return f"the latest cut ({cut.describe()})"


def judge_reopen(facts: ReopenFacts, requester: str) -> Grant:
    """Conditions (a) and (b), and whether (c) needs a supervisor; `Refused` otherwise."""
    m, h = facts.meter_id, facts.household_id
    if facts.cut is None:
        raise Refused(
            "no_cut",
            f"meter {m} has no recorded cut: no close command and no "
            "report of its valve closed; there is nothing to reopen",
        )
    if facts.reopen_in_flight is not None:
        raise Refused(
            "reopen_in_flight",
            f"reopen command {facts.reopen_in_flight} for meter {m} is still in "
            "flight: follow its state in the command history",
            cmd_id=facts.reopen_in_flight,
        )
    if facts.gas_alarms:
        a = facts.gas_alarms[0]
        raise Refused(
            "gas_alarm",
            f"household {h} has an active {a.kind} alarm {a.id} ({a.state}, raised "
            f"{a.raised_at.isoformat()}): the valve stays closed while gas is "
            "detected; ask again once the gateway has cleared the alarm",
            alarm_id=a.id,
        )
    for o in facts.orders:
        if o.cause in BLOCKING_CAUSES and o.status in OPEN_STATUSES:
            raise Refused(
                "open_order",
                f"safety work order {o.id} ({o.cause}) is {o.status}: an engineer "
                "must resolve it on site (or an operator cancel it) before the "
                "valve may reopen",
                work_order_id=o.id,
                current_status=o.status,
            )
    qualifying = tuple(o for o in facts.orders if _counts(o, facts))
    if not qualifying:
        raise Refused(
            "no_resolved_order",
            f"no safety work order ({', '.join(SAFETY_CAUSES)}) has been resolved by "
            f"an engineer since {_since_what(facts)}: {_why_none(facts)}. To reopen: "
            f"an engineer opens an inspection order for this cut (POST /valves/{m}/"
            "inspection), resolves it on site, then someone else requests the reopen",
            cut_cmd_id=facts.cut.cmd_id,
        )
    others = [o for o in qualifying if o.resolved_by != requester]
    if others:
        return Grant(others[0], False, qualifying)
    return Grant(qualifying[0], True, qualifying)


@dataclass(frozen=True, slots=True)
class PendingReopen:
    id: int
    status: str
    requested_by: str
    cut_cmd_id: str | None
    cut_at: dt.datetime


def judge_confirmation(facts: ReopenFacts, pending: PendingReopen, confirmer: str) -> SafetyOrder:
    """A supervisor's confirmation of a pending reopen: every condition again, the same cut,
    and a person other than the requester and the resolver. Returns the order it rests on."""
    if pending.status != "pending":
        raise Refused(
            "request_closed",
            f"reopen request {pending.id} is {pending.status}: "
            "only a pending request can be confirmed",
            current_status=pending.status,
        )
    if confirmer == pending.requested_by:
        raise Refused(
            "same_person",
            f"{confirmer} asked for reopen request {pending.id}: "
            "another supervisor must confirm it",
        )
    grant = judge_reopen(facts, pending.requested_by)
    cut = facts.cut
    assert cut is not None
    if (cut.cmd_id, cut.at) != (pending.cut_cmd_id, pending.cut_at):
        raise Refused(
            "superseded",
            f"reopen request {pending.id} was made for an earlier cut; "
            f"the latest is {cut.describe()}: request the reopen again "
            "once that cut's order is resolved",
        )
    mine = [o for o in grant.qualifying if o.resolved_by != confirmer]
    if not mine:
        raise Refused(
            "same_person",
            f"{confirmer} resolved work order {grant.basis.id} personally: a "
            "different supervisor must confirm the reopen",
            work_order_id=grant.basis.id,
        )
    return mine[0]
