"""A meter's valve and its command handling: a pure state machine, driven by the publisher.

`on_command(state, profile, cmd, now)` returns the effects (close the valve at a time, send
an ack at a time); nothing is sent from here. What a real meter does (protocol v1):
- `valve_close`: the valve closes, the ack says `{"ok": true, "valve": "closed"}`;
- a repeated `cmd_id` is acknowledged again with the first answer, never executed twice;
- `valve_open` after a cut needs the resident on site: the ack says ok, valve still `closed`,
  error `awaiting_button_press`; the valve opens only if and when the resident presses;
- `self_test`: acknowledged with the valve's current state.
Some meters are poor responders on purpose (`Responsiveness`): slow (ack after N s), lossy
(drop a share of commands: a resend may get through) or never acking (the valve works, the
uplink does not), so the platform's retries, timeouts and escalation get exercised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, cast

from gateway.protocol import Ack, Command
from simulator.behaviour import uniform

AWAITING_PRESS = "awaiting_button_press"
Valve = Literal["open", "closed", "fault"]


class Responder(StrEnum):
    PROMPT = "prompt"
    SLOW = "slow"
    LOSSY = "lossy"
    NEVER = "never_ack"


@dataclass(frozen=True, slots=True)
class Responsiveness:
    kind: Responder = Responder.PROMPT
    delay_s: float = 0.0  # prompt meters answer at once; slow ones after this long
    drop_share: float = 0.0  # lossy meters ignore this share of command deliveries


@dataclass(frozen=True, slots=True)
class ResponderShares:
    slow: float = 0.0
    lossy: float = 0.0
    never: float = 0.0
    slow_delay_s: float = 8.0
    lossy_drop: float = 0.5

    def assign(self, seed: int, meters: int) -> list[Responsiveness]:
        """Seeded: the same meters are the poor responders in every run with this seed."""
        import numpy as np

        u = uniform(seed, 40, np.arange(meters))
        out = []
        for x in u:
            if x < self.never:
                out.append(Responsiveness(Responder.NEVER))
            elif x < self.never + self.lossy:
                out.append(Responsiveness(Responder.LOSSY, 0.0, self.lossy_drop))
            elif x < self.never + self.lossy + self.slow:
                out.append(Responsiveness(Responder.SLOW, self.slow_delay_s))
            else:
                out.append(Responsiveness())
        return out


@dataclass
class ValveState:
    valve: str = "open"  # open | closed | fault
    answers: dict[str, tuple[bool, str, str | None, float]] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    awaiting_press: bool = False


@dataclass(frozen=True, slots=True)
class SendAck:
    at: float  # wall clock
    ack: Ack
    duplicate: bool


@dataclass(frozen=True, slots=True)
class MoveValve:
    at: float
    valve: str


@dataclass(frozen=True, slots=True)
class Dropped:
    cmd_id: str


Effect = SendAck | MoveValve | Dropped


def on_command(
    state: ValveState, profile: Responsiveness, cmd: Command, now: float, seed: int = 0
) -> list[Effect]:
    """Handle one delivery of `cmd`; mutates `state`, returns what must happen and when."""
    n = state.deliveries.get(cmd.cmd_id, 0)
    state.deliveries[cmd.cmd_id] = n + 1
    if profile.kind is Responder.LOSSY and profile.drop_share > 0:
        key = hash_text(cmd.cmd_id)
        if float(uniform(seed, 41, key, n)) < profile.drop_share:
            return [Dropped(cmd.cmd_id)]
    done_at = now + (profile.delay_s if profile.kind is Responder.SLOW else 0.0)
    effects: list[Effect] = []
    previous = state.answers.get(cmd.cmd_id)
    if previous is not None:  # a resend: answer again, do nothing again
        ok, valve, error, first_done = previous
        if profile.kind is not Responder.NEVER:
            effects.append(
                SendAck(
                    max(now, first_done),
                    Ack(cmd.cmd_id, ok, max(now, first_done), cast(Valve, valve), error),
                    True,
                )
            )
        return effects
    if cmd.action == "valve_close":
        if state.valve != "closed":
            effects.append(MoveValve(done_at, "closed"))
        state.valve = "closed"
        state.awaiting_press = False
        answer: tuple[bool, str, str | None] = (True, "closed", None)
    elif cmd.action == "valve_open":
        if state.valve == "closed":
            state.awaiting_press = True
            answer = (True, "closed", AWAITING_PRESS)
        else:
            answer = (True, state.valve, None)
    else:  # self_test
        answer = (True, state.valve, None)
    state.answers[cmd.cmd_id] = (*answer, done_at)
    if profile.kind is not Responder.NEVER:
        effects.append(
            SendAck(
                done_at,
                Ack(cmd.cmd_id, answer[0], done_at, cast(Valve, answer[1]), answer[2]),
                False,
            )
        )
    return effects


def on_button_press(state: ValveState, now: float) -> list[Effect]:
    """The resident presses the meter's button: the valve opens if a reopen was requested."""
    if state.valve == "closed" and state.awaiting_press:
        state.valve = "open"
        state.awaiting_press = False
        return [MoveValve(now, "open")]
    return []


def hash_text(s: str) -> int:
    """A stable (unlike `hash()`) 63-bit key for a string."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") >> 1
