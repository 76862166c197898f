"""Owner notifications: the outbox table walked along the call chain.

Every notice is written to `notifications` by the writer in the same transaction as the
alarm behind it. This loop takes due rows (`FOR UPDATE SKIP LOCKED`, so several gateways may
run it) and moves each along its chain (gateway/core/call_chain.py decides; this module only
does the I/O), in three short transactions per attempt:

1. claim: the attempt is written as `calling`/`sending` and the row leased (its
   `next_attempt_at` pushed to twice the channel's timeout), then committed;
2. the voice or SMS gateway is asked, outside any transaction, in a task of its own (a call
   that rings for a minute holds up no other notice);
3. finish: the outcome is recorded and the planner's next step scheduled.

The loop polls every `notify_poll_s` (backoffs, the confirm window) and also wakes when the
writer commits new notices (`gas_notices`), so a leak's first call waits for no poll.

An attempt still `calling` when its lease ran out was cut short (the gateway died): the next
claim marks it `lost`, counted as a failed attempt, so a restart repeats at most that one
attempt and skips nothing. Contacts are read from `households` at each step, so a changed
emergency contact is used from the next step on. Each change is a `notification.state`
event on `gas_events`; the control-room flag is also a `work_order.flagged` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from gateway.core import call_chain as cc
from gateway.service.phone_channels import PhoneChannel, Result, make_channel
from gateway.settings import ResponseSettings, Settings

logger = logging.getLogger(__name__)

_MAX_IN_FLIGHT = 100  # attempts at once per gateway (calls ringing, texts going out)
_FINISH_TRIES = 30
_FINAL = {
    cc.Next.CONFIRMED: "confirmed",
    cc.Next.SENT: "sent",
    cc.Next.FAILED: "failed",
}

_CLAIM = """SELECT n.id, n.household_id, n.kind, n.body, n.chain, n.step, n.step_attempts,
    n.reached, n.alarm_id, extract(epoch FROM coalesce(n.chain_started_at, n.created_at))
    AS started, h.owner_name, h.owner_phone, h.emergency_contact_phone
    FROM notifications n JOIN households h ON h.id = n.household_id
    WHERE n.state = 'pending' AND n.next_attempt_at <= now()
    ORDER BY n.next_attempt_at LIMIT %s FOR UPDATE OF n SKIP LOCKED"""


def policy_for(r: ResponseSettings, kind: str, chain: list[str] | None = None) -> cc.ChainPolicy:
    """The chain of a notice kind (or the one a running notice started with)."""
    names = chain or r.notify_chains.get(kind) or r.notify_chain_default
    return cc.ChainPolicy.of(
        names, r.notify_max_attempts, r.notify_backoff_s, r.notify_backoff_max_s, r.notify_confirm_s
    )


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed attempt, to be made outside the claim's transaction."""

    nid: int
    household_id: str
    kind: str
    policy: cc.ChainPolicy
    contacts: cc.Contacts
    started: float
    step: int
    attempt: int
    attempt_id: int
    doc: dict[str, Any]

    @property
    def channel(self) -> str:
        return self.policy.steps[self.step].channel


class Notifier:
    def __init__(
        self,
        settings: Settings,
        stopping: asyncio.Event,
        channel: PhoneChannel | None = None,
        clock: Any = time.time,
    ) -> None:
        self.settings = settings
        self.stopping = stopping
        self.channel = channel or make_channel(settings.response)
        self.poll_s = settings.response.notify_poll_s
        self.clock = clock
        self._wake = asyncio.Event()
        self._db = asyncio.Lock()  # one transaction at a time on the shared connection
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        failing = False
        listener = asyncio.create_task(self._listen(), name="notifier-listen")
        try:
            while not self.stopping.is_set():
                try:
                    async with await psycopg.AsyncConnection.connect(
                        self.settings.db.dsn, row_factory=dict_row
                    ) as conn:
                        self._conn = conn
                        failing = False
                        while not self.stopping.is_set():
                            self._wake.clear()
                            if await self.deliver_due(conn) == 0:
                                await self._idle(self.poll_s)
                        await self._drain()
                except psycopg.OperationalError as err:
                    (logger.debug if failing else logger.warning)(
                        "notifier lost the database (%s); retrying", str(err).strip()[:200]
                    )
                    failing = True
                    await self._idle(2.0)
        finally:
            for t in list(self._in_flight):  # left `calling`: the next claim counts them lost
                t.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await self.channel.aclose()

    async def _drain(self, timeout_s: float = 5.0) -> None:
        """On stop: attempts in flight get a moment to finish and be recorded."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout_s)

    async def _idle(self, timeout_s: float) -> None:
        """Until a wake-up, the stop, or `timeout_s` (the poll: backoffs and windows)."""
        waits = {
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self.stopping.wait()),
        }
        done, pending = await asyncio.wait(waits, timeout=timeout_s, return_when="FIRST_COMPLETED")
        for t in pending:
            t.cancel()
        if done and self._wake.is_set():  # a burst of events (an alarm storm) is one round
            await asyncio.sleep(0.01)

    async def _listen(self) -> None:
        """Wakes the loop when the writer commits new notices (`gas_notices`, notified in
        their transaction), so a leak's first call does not wait for the poll."""
        while not self.stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.settings.db.dsn, autocommit=True
                ) as lc:
                    await lc.execute("LISTEN gas_notices")
                    async for _ in lc.notifies():
                        self._wake.set()
            except psycopg.OperationalError:
                await asyncio.sleep(2.0)  # the poll still runs meanwhile

    async def deliver_due(self, conn: psycopg.AsyncConnection[Any], limit: int = 20) -> int:
        """Claims due notices and starts their attempts as tasks: a call that rings for a
        minute holds up neither the next leak's call nor the claims. Returns the rows taken."""
        free = min(limit, _MAX_IN_FLIGHT - len(self._in_flight))
        if free <= 0:
            return 0
        async with self._db, conn.transaction():
            rows = await (await conn.execute(_CLAIM, (free,))).fetchall()
            jobs = [j for row in rows if (j := await self._claim(conn, row)) is not None]
        for job in jobs:
            task = asyncio.create_task(self._attempt(job), name=f"notify-{job.doc['call_id']}")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(rows)

    async def _attempt(self, job: Job) -> None:
        """One call or text, then its outcome recorded on the loop's current connection
        (tried again while the database is away; past the lease the row's next claim finds
        the attempt unfinished and counts it lost)."""
        result = await self._ask(job)
        for _ in range(_FINISH_TRIES):
            conn = self._conn
            if conn is not None and not conn.closed:
                try:
                    async with self._db, conn.transaction():
                        await self._finish(conn, job, result)
                    self._wake.set()  # the next step may be due now
                    return
                except psycopg.OperationalError as err:
                    logger.debug("notify outcome not recorded yet (%s)", str(err).strip()[:200])
            await asyncio.sleep(1.0)
        logger.warning("notify outcome of %s lost: the database stayed away", job.doc["call_id"])

    # ------------------------------------------------------------------ claim
    async def _claim(self, conn: psycopg.AsyncConnection[Any], row: dict[str, Any]) -> Job | None:
        now = self.clock()
        r = self.settings.response
        policy = policy_for(r, row["kind"], row["chain"])
        contacts = cc.Contacts(row["owner_phone"], row["emergency_contact_phone"])
        started = float(row["started"])
        if row["step"] is None:
            d = cc.start(policy, contacts, now, started)
            await conn.execute(
                "UPDATE notifications SET chain = %s, chain_started_at = to_timestamp(%s)"
                " WHERE id = %s",
                ([s.name for s in policy.steps], started, row["id"]),
            )
        else:
            lost = await (
                await conn.execute(
                    "UPDATE notification_attempts SET state = 'lost', finished_at = now(),"
                    " detail = 'attempt cut short: its gateway stopped before the outcome'"
                    " WHERE notification_id = %s AND state IN ('calling', 'sending')"
                    " RETURNING step, attempt",
                    (row["id"],),
                )
            ).fetchall()
            step, attempt = row["step"], row["step_attempts"]
            if lost:
                await self._event(conn, row, "pending", policy.steps[step], attempt, "lost")
                d = cc.after(
                    policy, contacts, step, attempt, cc.Outcome.FAILED, started, now, row["reached"]
                )
            elif policy.steps[step].channel == cc.CONTROL_ROOM:
                d = cc.Decision(cc.Next.FLAG, step, 0, now, row["reached"])
            else:
                d = cc.Decision(cc.Next.ATTEMPT, step, attempt, now, row["reached"])
        if d.done or d.due > now:
            await self._schedule(conn, row, policy, d)
            return None
        if d.next is cc.Next.FLAG:
            await self._flag(conn, row, policy, d)
            return None
        return await self._start_attempt(conn, row, policy, contacts, started, d, now)

    async def _start_attempt(
        self,
        conn: psycopg.AsyncConnection[Any],
        row: dict[str, Any],
        policy: cc.ChainPolicy,
        contacts: cc.Contacts,
        started: float,
        d: cc.Decision,
        now: float,
    ) -> Job:
        r = self.settings.response
        step = policy.steps[d.step]
        attempt = d.attempt + 1
        to = contacts.phone(step.role)
        call_id = f"n{row['id']}-{step.name}-{attempt}"
        body = row["body"]
        if step.role == "emergency":
            body = f"You are the emergency contact of {row['owner_name']}. {body}"
        voice = step.channel == "voice"
        got = await (
            await conn.execute(
                "INSERT INTO notification_attempts (notification_id, step, step_name, channel,"
                " role, recipient, attempt, call_id, state) VALUES"
                " (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    row["id"],
                    d.step,
                    step.name,
                    step.channel,
                    step.role,
                    to,
                    attempt,
                    call_id,
                    "calling" if voice else "sending",
                ),
            )
        ).fetchone()
        assert got is not None
        # an attempt never outlasts its timeout: twice that leaves room to commit its outcome
        lease = 2.0 * (r.notify_voice_timeout_s if voice else r.notify_sms_timeout_s)
        await conn.execute(
            "UPDATE notifications SET step = %s, step_attempts = %s, attempts = attempts + 1,"
            " reached = %s, next_attempt_at = to_timestamp(%s) WHERE id = %s",
            (d.step, attempt, d.reached, now + lease, row["id"]),
        )
        await self._event(conn, row, "pending", step, attempt, "calling" if voice else "sending")
        doc = {
            "call_id": call_id,
            "to": to,
            "body": body,
            "kind": row["kind"],
            "household_id": row["household_id"],
            "notification_id": row["id"],
            "role": step.role,
        }
        return Job(
            row["id"],
            row["household_id"],
            row["kind"],
            policy,
            contacts,
            started,
            d.step,
            attempt,
            got["id"],
            doc,
        )

    # ------------------------------------------------------------------ ask
    async def _ask(self, job: Job) -> Result:
        try:
            if job.channel == "voice":
                return await self.channel.call(job.doc)
            return await self.channel.text(job.doc)
        except Exception as err:  # a channel's failure is data, not a crash
            return Result(cc.Outcome.FAILED, f"{type(err).__name__}: {err}"[:300])

    # ------------------------------------------------------------------ finish
    async def _finish(self, conn: psycopg.AsyncConnection[Any], job: Job, result: Result) -> None:
        now = self.clock()
        row = await (
            await conn.execute(
                "SELECT id, household_id, kind, state, step, step_attempts, reached, alarm_id"
                " FROM notifications WHERE id = %s FOR UPDATE",
                (job.nid,),
            )
        ).fetchone()
        assert row is not None
        done = await conn.execute(
            "UPDATE notification_attempts SET state = %s, finished_at = now(), detail = %s"
            " WHERE id = %s AND state IN ('calling', 'sending')",
            (result.outcome.value, result.detail, job.attempt_id),
        )
        step = job.policy.steps[job.step]
        if result.outcome is cc.Outcome.FAILED:
            logger.warning(
                "notify failed id=%s step=%s attempt=%d: %s",
                job.nid,
                step.name,
                job.attempt,
                result.detail,
            )
            await conn.execute(
                "UPDATE notifications SET last_error = %s WHERE id = %s", (result.detail, job.nid)
            )
        await self._event(conn, row, row["state"], step, job.attempt, result.outcome.value)
        current = (row["step"], row["step_attempts"]) == (job.step, job.attempt)
        if done.rowcount != 1 or row["state"] != "pending" or not current:
            return  # confirmed meanwhile, or the attempt was taken over after its lease
        d = cc.after(
            job.policy,
            job.contacts,
            job.step,
            job.attempt,
            result.outcome,
            job.started,
            now,
            row["reached"],
        )
        if d.next is cc.Next.CONFIRMED:
            await conn.execute(
                "UPDATE notifications SET confirmed_at = now(), confirmed_by = %s WHERE id = %s",
                (f"{step.role}:{step.channel}", job.nid),
            )
        await self._schedule(conn, row, job.policy, d)

    async def _schedule(
        self,
        conn: psycopg.AsyncConnection[Any],
        row: dict[str, Any],
        policy: cc.ChainPolicy,
        d: cc.Decision,
    ) -> None:
        """The chain's next move on the row: a step and when it is due, or its end."""
        if d.done:
            state = _FINAL[d.next]
            await conn.execute(
                "UPDATE notifications SET state = %s, reached = %s, finished_at = now(),"
                " delivered_at = CASE WHEN %s THEN coalesce(delivered_at, now()) END"
                " WHERE id = %s",
                (state, d.reached, d.reached, row["id"]),
            )
            await self._event(conn, row, state, None, 0, None)
            return
        await conn.execute(
            "UPDATE notifications SET step = %s, step_attempts = %s, reached = %s,"
            " next_attempt_at = to_timestamp(%s) WHERE id = %s",
            (d.step, d.attempt, d.reached, d.due, row["id"]),
        )

    async def _flag(
        self,
        conn: psycopg.AsyncConnection[Any],
        row: dict[str, Any],
        policy: cc.ChainPolicy,
        d: cc.Decision,
    ) -> None:
        """Nobody confirmed in time: the control room's flag on the notice's work order."""
        step = policy.steps[d.step]
        reason = (
            f"{row['kind']} notice {row['id']} not confirmed within"
            f" {policy.confirm_s:g} s: call the household or send someone"
        )
        order = await (
            await conn.execute(
                "SELECT id FROM work_orders WHERE household_id = %(h)s"
                " AND (alarm_id = %(a)s OR (cause = %(k)s"
                " AND status IN ('open', 'dispatched', 'on_site')))"
                " ORDER BY (alarm_id IS NOT DISTINCT FROM %(a)s) DESC, opened_at DESC LIMIT 1",
                {"h": row["household_id"], "a": row["alarm_id"], "k": row["kind"]},
            )
        ).fetchone()
        wo = order["id"] if order else None
        await conn.execute(
            "INSERT INTO notification_attempts (notification_id, step, step_name, channel,"
            " attempt, call_id, state, finished_at, detail) VALUES"
            " (%s, %s, %s, 'control_room', 1, %s, 'flagged', now(), %s)"
            " ON CONFLICT (call_id) DO NOTHING",
            (row["id"], d.step, step.name, f"n{row['id']}-{step.name}-1", reason),
        )
        if wo is not None:
            await conn.execute(
                # not a new version: an operator's dispatch in flight stays valid
                "UPDATE work_orders SET flagged_at = now(), flag = %s, updated_at = now()"
                " WHERE id = %s",
                (reason, wo),
            )
            await conn.execute(
                "INSERT INTO work_order_steps (work_order_id, at, actor, action, note)"
                " VALUES (%s, now(), 'gateway', 'control_room_flag', %s)",
                (wo, reason),
            )
        await conn.execute(
            "UPDATE notifications SET state = 'escalated', step = %s, finished_at = now(),"
            " work_order_id = coalesce(work_order_id, %s) WHERE id = %s",
            (d.step, wo, row["id"]),
        )
        await conn.execute(
            "INSERT INTO audit_log (actor, action, entity, entity_id, details)"
            " VALUES ('gateway', 'notification.escalated', 'household', %s, %s)",
            (
                row["household_id"],
                Jsonb({"notification": row["id"], "work_order": wo, "reason": reason}),
            ),
        )
        logger.warning("control room flagged: %s (work order %s)", reason, wo)
        await self._notify(
            conn,
            {
                "type": "work_order.flagged",
                "work_order_id": wo,
                "household_id": row["household_id"],
                "notification_id": row["id"],
                "reason": reason,
            },
        )
        await self._event(conn, row, "escalated", step, 1, "flagged")

    # ------------------------------------------------------------------ events
    async def _event(
        self,
        conn: psycopg.AsyncConnection[Any],
        row: dict[str, Any],
        state: str,
        step: cc.Step | None,
        attempt: int,
        attempt_state: str | None,
    ) -> None:
        """`notification.state` on the live stream (never a phone number: viewers see it)."""
        await self._notify(
            conn,
            {
                "type": "notification.state",
                "id": row["id"],
                "household_id": row["household_id"],
                "kind": row["kind"],
                "state": state,
                "step": step.name if step else None,
                "channel": step.channel if step else None,
                "attempt": attempt,
                "attempt_state": attempt_state,
            },
        )

    @staticmethod
    async def _notify(conn: psycopg.AsyncConnection[Any], event: dict[str, Any]) -> None:
        await conn.execute("SELECT pg_notify('gas_events', %s)", (json.dumps(event),))
