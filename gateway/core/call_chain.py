"""The owner call chain: who is told about a notice, how, in which order, and when to stop.

A notice (a row of the `notifications` outbox) walks the chain set for its kind, e.g. for a
leak `voice_owner -> sms_owner -> voice_emergency -> control_room`: each step is a channel
(`voice`, `sms`) and a recipient role (`owner`, `emergency`), or `control_room`, the flag
raised on the work order when nobody confirmed in time. The planner decides, from the
outcome of the current attempt, the next step and when it is due:

- `answered` (a voice call the callee took and confirmed) confirms the notice: the chain
  stops. An operator's confirmation in the API stops it the same way.
- `no_answer` moves on to the next step at once.
- `sent` (an SMS the gateway accepted) moves on too: a text is never a confirmation.
- `failed` (the gateway refused, timed out or was unreachable, or an attempt was lost with
  the process that made it) is retried with exponential backoff, `attempts` times per step,
  then the chain moves on.

Steps whose recipient the household does not have (no emergency contact) are skipped. The
`control_room` step is due no earlier than `confirm_s` after the chain started, so the
household has that long to confirm; a chain without it ends `sent` when some step reached
someone, `failed` when none did. Pure: `now` is an argument, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "CONTROL_ROOM",
    "STEP_NAMES",
    "ChainPolicy",
    "Contacts",
    "Decision",
    "Next",
    "Outcome",
    "Step",
    "after",
    "backoff_s",
    "parse_step",
    "start",
]

CONTROL_ROOM = "control_room"


class Outcome(StrEnum):
    ANSWERED = "answered"
    NO_ANSWER = "no_answer"
    FAILED = "failed"
    SENT = "sent"


class Next(StrEnum):
    """What the notifier does next with a notice."""

    ATTEMPT = "attempt"  # call or text `step` at `due`
    FLAG = "flag"  # raise the control-room flag at `due`
    CONFIRMED = "confirmed"  # someone confirmed: the chain is over
    SENT = "sent"  # the chain ran out, someone was reached, no control-room step
    FAILED = "failed"  # the chain ran out and reached nobody


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    channel: str  # voice | sms | control_room
    role: str | None  # owner | emergency; None for the control room


STEP_NAMES = (
    "voice_owner",
    "sms_owner",
    "voice_emergency",
    "sms_emergency",
    CONTROL_ROOM,
)


def parse_step(name: str) -> Step:
    """A step name as the settings write it; ValueError names the ones that exist."""
    if name == CONTROL_ROOM:
        return Step(name, CONTROL_ROOM, None)
    channel, _, role = name.partition("_")
    if name not in STEP_NAMES:
        raise ValueError(f"unknown call-chain step {name!r} (one of {', '.join(STEP_NAMES)})")
    return Step(name, channel, role)


@dataclass(frozen=True, slots=True)
class ChainPolicy:
    steps: tuple[Step, ...]
    attempts: int = 3  # per step, for failed attempts
    backoff_s: float = 2.0  # before the first retry; doubled each time
    backoff_max_s: float = 300.0
    confirm_s: float = 600.0  # the household's time to confirm before the control room

    @classmethod
    def of(
        cls,
        names: Sequence[str],
        attempts: int = 3,
        backoff_s: float = 2.0,
        backoff_max_s: float = 300.0,
        confirm_s: float = 600.0,
    ) -> ChainPolicy:
        steps = tuple(parse_step(n) for n in names)
        if not steps:
            raise ValueError("a call chain needs at least one step")
        if any(s.channel == CONTROL_ROOM for s in steps[:-1]):
            raise ValueError("control_room can only be the last step of a chain")
        if len({s.name for s in steps}) != len(steps):
            raise ValueError("a call chain names each step once")
        if attempts < 1:
            raise ValueError("attempts per step must be at least 1")
        return cls(steps, attempts, backoff_s, backoff_max_s, confirm_s)


@dataclass(frozen=True, slots=True)
class Contacts:
    owner_phone: str | None
    emergency_phone: str | None = None

    def phone(self, role: str | None) -> str | None:
        if role == "owner":
            return self.owner_phone or None
        if role == "emergency":
            return self.emergency_phone or None
        return None


@dataclass(frozen=True, slots=True)
class Decision:
    next: Next
    step: int = -1  # index into the policy's steps, for ATTEMPT and FLAG
    attempt: int = 0  # attempts already made at `step` (0 for a new step)
    due: float = 0.0
    reached: bool = False  # some step so far reached someone (an SMS sent, a call answered)

    @property
    def done(self) -> bool:
        return self.next in (Next.CONFIRMED, Next.SENT, Next.FAILED)


def backoff_s(policy: ChainPolicy, failed_attempts: int) -> float:
    """The wait before retry number `failed_attempts` (1 for the first retry)."""
    return min(policy.backoff_max_s, policy.backoff_s * 2.0 ** max(failed_attempts - 1, 0))


def _from(
    policy: ChainPolicy, contacts: Contacts, index: int, started: float, now: float, reached: bool
) -> Decision:
    """The first step at or after `index` that can be taken (a recipient exists)."""
    for i in range(index, len(policy.steps)):
        step = policy.steps[i]
        if step.channel == CONTROL_ROOM:
            return Decision(Next.FLAG, i, 0, max(now, started + policy.confirm_s), reached)
        if contacts.phone(step.role) is not None:
            return Decision(Next.ATTEMPT, i, 0, now, reached)
    return Decision(Next.SENT if reached else Next.FAILED, reached=reached)


def start(
    policy: ChainPolicy, contacts: Contacts, now: float, started: float | None = None
) -> Decision:
    """Where a new notice's chain begins; `started` (default `now`) is when the notice was
    written, from which the household's time to confirm counts."""
    return _from(policy, contacts, 0, now if started is None else started, now, False)


def after(
    policy: ChainPolicy,
    contacts: Contacts,
    step: int,
    attempt: int,
    outcome: Outcome,
    started: float,
    now: float,
    reached: bool = False,
) -> Decision:
    """The next move once attempt number `attempt` (1-based) at `step` ended with
    `outcome`. `started` is when the chain began (the control room's clock), `reached`
    whether an earlier step reached someone."""
    current = policy.steps[step]
    if current.channel == CONTROL_ROOM:  # the flag is raised: nothing after it
        return Decision(Next.SENT, reached=reached)
    if outcome is Outcome.ANSWERED:
        return Decision(Next.CONFIRMED, reached=True)
    if outcome is Outcome.FAILED:
        if attempt < policy.attempts:
            return Decision(Next.ATTEMPT, step, attempt, now + backoff_s(policy, attempt), reached)
        return _from(policy, contacts, step + 1, started, now, reached)
    return _from(policy, contacts, step + 1, started, now, reached or outcome is Outcome.SENT)
