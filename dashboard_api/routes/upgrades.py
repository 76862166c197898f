"""The upgrade programme: free meter-and-detector upgrades, a fixed number of places per
community (upgrade_quotas), booked as visit slots (upgrade_bookings).

Residents have no login here. The three `/upgrades/resident/...` routes (look up, book,
cancel) are public on purpose: they are what the programme's letter points residents to
(more than this needs a one-time code: dashboard_api/routes/resident.py). The household id together
with the owner's phone number on file is the (lightweight) proof; a mismatch answers the
same 404 as an unknown id (no enumeration), and repeated mismatches are refused with 429
for a while, counted per (household, client), per client and per household
(dashboard_api.attempts), so a stranger's guesses never lock the resident out. They reveal
only the community's place counts and the household's own booking.

No community is ever overbooked, however many bookings race for its last places: a
booking takes a place with `UPDATE upgrade_quotas SET booked = booked + 1 WHERE
community = ... AND booked < places RETURNING ...` in the same transaction as its insert,
and the row lock serialises the racers (the table's CHECK is the last guard).
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import re
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Path, Request, status
from psycopg import AsyncConnection

from dashboard_api import pagination
from dashboard_api.attempts import retry_after_header
from dashboard_api.clients import client_of
from dashboard_api.deps import Admin, AppState, Conn, Operator, State, Viewer
from dashboard_api.errors import Conflict, Invalid, NotFound, TooManyRequests
from dashboard_api.params import Cursor, IdQuery, LabelQuery, Limit, row_id
from dashboard_api.queries import given, record, where
from dashboard_api.schemas import (
    BookingCreate,
    BookingPublic,
    BookingStatus,
    Page,
    QuotaPublic,
    QuotaUpdate,
    ResidentBookingRequest,
    ResidentCheck,
    ResidentView,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/upgrades", tags=["upgrades"])

Community = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f/]+$")]
BookingId = Annotated[int, row_id()]

EARLIEST_SLOT = dt.timedelta(hours=1)
LATEST_SLOT = dt.timedelta(days=365)
_BOOKING_COLS = "id, community, household_id, slot_start, status, created_by, created_at"
_QUOTA_COLS = "community, places, booked, places - booked AS remaining"
_NO_MATCH = "no household matches this id and phone number"


def _digits(phone: str) -> str:
    return re.sub(r"\D", "", phone)


_THROTTLED = {
    "household_client": "too many failed checks for this household from your address",
    "client": "too many failed checks from your address",
    "household": "too many failed checks for this household",
}


async def check_resident(
    conn: AsyncConnection[Any], state: AppState, request: Request, check: ResidentCheck
) -> dict[str, Any]:
    now = state.clock().timestamp()
    client = client_of(request.scope, state.trusted_proxies)
    limiter = state.resident_limiter
    attempt, wait, scope = limiter.begin(check.household_id, client, now)
    if attempt is None:
        state.metrics.refuse("resident_throttled")
        retry = retry_after_header(wait)
        logger.info(
            "resident check throttled household=%s client=%s scope=%s retry_after_s=%s",
            check.household_id,
            client,
            scope,
            retry,
        )
        raise TooManyRequests(
            f"{_THROTTLED[scope]}; try again in {retry} s",
            headers={"Retry-After": retry},
            scope=scope,
            retry_after_s=int(retry),
        )
    try:
        row = await (
            await conn.execute(
                "SELECT id, community, owner_phone FROM households WHERE id = %s",
                (check.household_id,),
            )
        ).fetchone()
    except BaseException:
        limiter.abandoned(attempt)
        raise
    stored = _digits(row["owner_phone"]) if row else "-"
    if row is None or not hmac.compare_digest(stored, _digits(check.phone)):
        state.metrics.refuse("resident_failed")
        raise NotFound(_NO_MATCH)
    limiter.passed(attempt)
    return row


def _check_slot(slot_start: dt.datetime, now: dt.datetime) -> None:
    if slot_start < now + EARLIEST_SLOT:
        raise Invalid("slot_start", "must be at least an hour from now", "body")
    if slot_start > now + LATEST_SLOT:
        raise Invalid("slot_start", "must be within a year from now", "body")


async def _book(
    conn: AsyncConnection[Any], household: dict[str, Any], slot_start: dt.datetime, actor: str
) -> dict[str, Any]:
    community = household["community"]
    async with conn.transaction():
        taken = await (
            await conn.execute(
                "UPDATE upgrade_quotas SET booked = booked + 1"
                " WHERE community = %s AND booked < places RETURNING places, booked",
                (community,),
            )
        ).fetchone()
        if taken is None:
            exists = await (
                await conn.execute(
                    "SELECT places FROM upgrade_quotas WHERE community = %s", (community,)
                )
            ).fetchone()
            if exists is None:
                raise Conflict(f"community {community} has no upgrade programme")
            raise Conflict(f"no places left in community {community}", remaining=0)
        try:
            row = await (
                await conn.execute(
                    "INSERT INTO upgrade_bookings (community, household_id, slot_start,"
                    f" created_by) VALUES (%s, %s, %s, %s) RETURNING {_BOOKING_COLS}",
                    (community, household["id"], slot_start, actor),
                )
            ).fetchone()
        except psycopg.errors.UniqueViolation:
            # Raised inside the transaction: the place taken above is given back.
            raise Conflict(f"household {household['id']} has a booking already") from None
        assert row is not None
        await record(
            conn,
            actor,
            "upgrade.book",
            "upgrade_booking",
            row["id"],
            {
                "household_id": household["id"],
                "community": community,
                "slot_start": slot_start.isoformat(),
                "remaining": taken["places"] - taken["booked"],
            },
        )
    return row


# ---------------------------------------------------------------- residents (public)


@router.post(
    "/resident/lookup",
    response_model=ResidentView,
    summary="Resident: my community's remaining places and my booking (public)",
    responses={404: {"description": _NO_MATCH}, 429: {"description": "Too many failed checks"}},
)
async def resident_lookup(
    body: ResidentCheck, conn: Conn, state: State, request: Request
) -> dict[str, Any]:
    household = await check_resident(conn, state, request, body)
    quota = await (
        await conn.execute(
            f"SELECT {_QUOTA_COLS} FROM upgrade_quotas WHERE community = %s",
            (household["community"],),
        )
    ).fetchone()
    booking = await (
        await conn.execute(
            f"SELECT {_BOOKING_COLS} FROM upgrade_bookings WHERE household_id = %s"
            " AND status <> 'cancelled' ORDER BY id DESC LIMIT 1",
            (household["id"],),
        )
    ).fetchone()
    quota = quota or {"community": household["community"], "places": 0, "booked": 0, "remaining": 0}
    return {**quota, "booking": booking}


@router.post(
    "/resident/bookings",
    response_model=BookingPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Resident: book an upgrade visit (public)",
    responses={
        404: {"description": _NO_MATCH},
        409: {"description": "No places left, or already booked"},
        429: {"description": "Too many failed checks"},
    },
)
async def resident_book(
    body: ResidentBookingRequest, conn: Conn, state: State, request: Request
) -> dict[str, Any]:
    _check_slot(body.slot_start, state.clock())
    household = await check_resident(conn, state, request, body)
    return await _book(conn, household, body.slot_start, f"resident:{household['id']}")


@router.post(
    "/resident/cancel",
    response_model=BookingPublic,
    summary="Resident: cancel my booking; its place returns to the community (public)",
    responses={
        404: {"description": _NO_MATCH + ", or no booking to cancel"},
        429: {"description": "Too many failed checks"},
    },
)
async def resident_cancel(
    body: ResidentCheck, conn: Conn, state: State, request: Request
) -> dict[str, Any]:
    household = await check_resident(conn, state, request, body)
    booking = await (
        await conn.execute(
            "SELECT id FROM upgrade_bookings WHERE household_id = %s AND status = 'booked'"
            " ORDER BY id DESC LIMIT 1",
            (household["id"],),
        )
    ).fetchone()
    if booking is None:
        raise NotFound(f"household {household['id']} has no booking to cancel")
    return await _finish(conn, booking["id"], "cancelled", f"resident:{household['id']}")


# ---------------------------------------------------------------- operators


@router.get("/quotas", response_model=Page[QuotaPublic], summary="Places per community")
async def list_quotas(
    conn: Conn, _: Viewer, limit: Limit = pagination.DEFAULT_LIMIT, cursor: Cursor = None
) -> dict[str, Any]:
    params: dict[str, Any] = {"n": limit + 1}
    conds = pagination.after_key(cursor, "community", params)
    rows = await (
        await conn.execute(
            f"SELECT {_QUOTA_COLS} FROM upgrade_quotas {where(conds)}"
            " ORDER BY community LIMIT %(n)s",
            params,
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["community"], r["community"]))
    return {"items": items, "next_cursor": nxt}


@router.put(
    "/quotas/{community}",
    response_model=QuotaPublic,
    summary="Set a community's places (admin)",
    responses={409: {"description": "Fewer places than already booked"}},
)
async def set_quota(
    community: Community, body: QuotaUpdate, conn: Conn, admin: Admin
) -> dict[str, Any]:
    async with conn.transaction():
        current = await (
            await conn.execute(
                "SELECT places, booked FROM upgrade_quotas WHERE community = %s FOR UPDATE",
                (community,),
            )
        ).fetchone()
        if current is not None and body.places < current["booked"]:
            raise Conflict(
                f"community {community} has {current['booked']} bookings; "
                f"places cannot go below that"
            )
        row = await (
            await conn.execute(
                f"INSERT INTO upgrade_quotas (community, places) VALUES (%s, %s)"
                f" ON CONFLICT (community) DO UPDATE SET places = excluded.places"
                f" RETURNING {_QUOTA_COLS}",
                (community, body.places),
            )
        ).fetchone()
        await record(
            conn,
            admin.username,
            "upgrade.quota",
            "upgrade_quota",
            community,
            {"places": body.places, "was": current["places"] if current else None},
        )
    assert row is not None
    return row


@router.get(
    "/bookings",
    response_model=Page[BookingPublic],
    summary="Bookings by visit slot, earliest first",
)
async def list_bookings(
    conn: Conn,
    _: Viewer,
    community: LabelQuery = None,
    status: BookingStatus | None = None,
    household_id: IdQuery = None,
    limit: Limit = pagination.DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    after = pagination.decode(cursor, dt.datetime, int)
    params: dict[str, Any] = {"n": limit + 1}
    conds = given(
        (
            ("community", community, "community = %(community)s"),
            ("status", status, "status = %(status)s"),
            ("household_id", household_id, "household_id = %(household_id)s"),
        ),
        params,
    )
    if after:
        conds.append("(slot_start, id) > (%(at)s, %(aid)s)")
        params.update(at=after[0], aid=after[1])
    rows = await (
        await conn.execute(
            f"SELECT {_BOOKING_COLS} FROM upgrade_bookings {where(conds)}"
            " ORDER BY slot_start, id LIMIT %(n)s",
            params,
        )
    ).fetchall()
    items, nxt = pagination.page(rows, limit, lambda r: (r["slot_start"], r["id"]))
    return {"items": items, "next_cursor": nxt}


@router.post(
    "/bookings",
    response_model=BookingPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Book a visit for a household (operator)",
    responses={409: {"description": "No places left, or already booked"}},
)
async def create_booking(
    body: BookingCreate, conn: Conn, who: Operator, state: State
) -> dict[str, Any]:
    _check_slot(body.slot_start, state.clock())
    household = await (
        await conn.execute(
            "SELECT id, community FROM households WHERE id = %s", (body.household_id,)
        )
    ).fetchone()
    if household is None:
        raise NotFound(f"no household {body.household_id}")
    return await _book(conn, household, body.slot_start, who.username)


async def _finish(
    conn: AsyncConnection[Any], booking_id: int, to_status: str, actor: str
) -> dict[str, Any]:
    async with conn.transaction():
        row = await (
            await conn.execute(
                f"SELECT {_BOOKING_COLS} FROM upgrade_bookings WHERE id = %s FOR UPDATE",
                (booking_id,),
            )
        ).fetchone()
        if row is None:
            raise NotFound(f"no booking {booking_id}")
        if row["status"] != "booked":
            raise Conflict(f"booking {booking_id} is {row['status']} already")
        if to_status == "cancelled":  # the place goes back to the community
            await conn.execute(
                "UPDATE upgrade_quotas SET booked = booked - 1 WHERE community = %s",
                (row["community"],),
            )
        await conn.execute(
            "UPDATE upgrade_bookings SET status = %s WHERE id = %s", (to_status, booking_id)
        )
        await record(
            conn,
            actor,
            f"upgrade.{to_status}",
            "upgrade_booking",
            booking_id,
            {"household_id": row["household_id"], "community": row["community"]},
        )
    return {**row, "status": to_status}


@router.post(
    "/bookings/{booking_id}/cancel",
    response_model=BookingPublic,
    summary="Cancel a booking; its place returns to the community (operator)",
    responses={409: {"description": "Not in status booked"}},
)
async def cancel_booking(booking_id: BookingId, conn: Conn, who: Operator) -> dict[str, Any]:
    return await _finish(conn, booking_id, "cancelled", who.username)


@router.post(
    "/bookings/{booking_id}/done",
    response_model=BookingPublic,
    summary="The upgrade visit took place (operator)",
    responses={409: {"description": "Not in status booked"}},
)
async def booking_done(booking_id: BookingId, conn: Conn, who: Operator) -> dict[str, Any]:
    return await _finish(conn, booking_id, "done", who.username)
