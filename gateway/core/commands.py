"""Valve commands: the book of open commands and their lifecycle, pure and clock-free.

`CommandBook` is the state machine `issued -> sent -> acked(ok|failed) | timeout ->
resend (same cmd_id) -> escalated`, with one open command per meter and action. The
pipeline sends what it is told to and feeds acks and the time back in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "OPEN_STATES",
    "CommandBook",
    "CommandDue",
    "CommandState",
    "UnknownCommand",
    "ValveCommand",
    "still_open",
]


class CommandState(StrEnum):
    ISSUED = "issued"
    SENT = "sent"
    ACKED = "acked"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ESCALATED = "escalated"


OPEN_STATES = frozenset({CommandState.ISSUED, CommandState.SENT})


@dataclass(slots=True)
class ValveCommand:
    cmd_id: str
    meter_id: str
    household_id: str
    action: str  # valve_close | valve_open | self_test
    reason: str
    requested_by: str
    issued_at: float
    trigger_device: str | None = None
    cause: str | None = None  # alarm kind name behind it
    state: CommandState = CommandState.ISSUED
    attempts: int = 0
    deadline: float = 0.0
    sent_at: float | None = None
    acked_at: float | None = None
    ack_ok: bool | None = None
    ack_valve: str | None = None
    ack_error: str | None = None


def still_open(rows: Iterable[Sequence[Any]], now: float) -> list[ValveCommand]:
    """Commands a restart finds open: rows of (cmd_id, meter_id, household_id, action,
    reason, requested_by, issued_at as epoch seconds, attempts, ...). Each is taken up as
    sent and resent with the same cmd_id at the first sweep, never issued anew: the meter
    may have executed it already, and it executes one cmd_id once."""
    return [
        ValveCommand(
            cmd_id=c[0],
            meter_id=c[1],
            household_id=c[2],
            action=c[3],
            reason=c[4],
            requested_by=c[5],
            issued_at=float(c[6]),
            attempts=c[7],
            state=CommandState.SENT,
            deadline=now,
        )
        for c in rows
    ]


@dataclass(frozen=True, slots=True)
class CommandDue:
    command: ValveCommand
    what: str  # "resend" | "escalate"


class UnknownCommand(KeyError):
    pass


@dataclass
class CommandBook:
    """Open commands by id; one open close command per meter; timeouts and resends."""

    ack_timeout_s: float = 5.0
    max_resends: int = 3
    backoff_factor: float = 2.0
    keep_finished: int = 100_000
    open: dict[str, ValveCommand] = field(default_factory=dict)
    finished: OrderedDict[str, ValveCommand] = field(default_factory=OrderedDict)
    _open_by_meter: dict[tuple[str, str], str] = field(default_factory=dict)

    def open_for(self, meter_id: str, action: str) -> ValveCommand | None:
        cmd_id = self._open_by_meter.get((meter_id, action))
        return self.open.get(cmd_id) if cmd_id else None

    def add(self, cmd: ValveCommand) -> ValveCommand:
        self.open[cmd.cmd_id] = cmd
        self._open_by_meter[(cmd.meter_id, cmd.action)] = cmd.cmd_id
        return cmd

    def request(self, cmd: ValveCommand) -> ValveCommand | None:
        """Add a new command unless the same action is already open for that meter."""
        if self.open_for(cmd.meter_id, cmd.action) is not None:
            return None
        return self.add(cmd)

    def mark_sent(self, cmd_id: str, now: float) -> ValveCommand:
        cmd = self.open[cmd_id]
        cmd.attempts += 1
        cmd.sent_at = now
        cmd.state = CommandState.SENT
        cmd.deadline = now + self.ack_timeout_s * self.backoff_factor ** (cmd.attempts - 1)
        return cmd

    def on_ack(
        self, meter_id: str, cmd_id: str, ok: bool, valve: str | None, error: str | None, now: float
    ) -> tuple[ValveCommand, bool]:
        """Record a device's ack; returns (command, first time). Unknown ids raise."""
        cmd = self.open.get(cmd_id)
        if cmd is None:
            done = self.finished.get(cmd_id)
            if done is not None and done.meter_id == meter_id:
                return done, False  # a duplicate ack of a resent command: harmless
            raise UnknownCommand(cmd_id)
        if cmd.meter_id != meter_id:
            raise UnknownCommand(cmd_id)
        cmd.acked_at = now
        cmd.ack_ok, cmd.ack_valve, cmd.ack_error = ok, valve, error
        cmd.state = CommandState.ACKED if ok else CommandState.FAILED
        self._finish(cmd)
        return cmd, True

    def due(self, now: float) -> list[CommandDue]:
        """Commands whose ack is overdue: resend with the same cmd_id, or escalate."""
        out: list[CommandDue] = []
        for cmd in list(self.open.values()):
            if cmd.state is not CommandState.SENT or now < cmd.deadline:
                continue
            if cmd.attempts <= self.max_resends:
                out.append(CommandDue(cmd, "resend"))
            else:
                cmd.state = CommandState.ESCALATED
                self._finish(cmd)
                out.append(CommandDue(cmd, "escalate"))
        return out

    def _finish(self, cmd: ValveCommand) -> None:
        self.open.pop(cmd.cmd_id, None)
        if self._open_by_meter.get((cmd.meter_id, cmd.action)) == cmd.cmd_id:
            del self._open_by_meter[(cmd.meter_id, cmd.action)]
        self.finished[cmd.cmd_id] = cmd
        while len(self.finished) > self.keep_finished:
            self.finished.popitem(last=False)
