"""Resident self-service: sign in with a one-time code texted to the owner's phone, then the
household's own home, gas use by day and by month, and the safety notices sent to it.

    POST   /resident/code       household id + owner's phone -> a code by SMS
    POST   /resident/session    household id + code -> a resident session (bearer token)
    DELETE /resident/session    sign out
    GET    /resident/me         the household, its community's places and its booking
    GET    /resident/usage      gas use by day (last 31 days) or month (last 12 months)
    GET    /resident/notices    the notifications sent to the household, newest first

The gate lets /resident/... through; these routes check the resident's session themselves
(dashboard_api.resident_auth), and no route here takes a household id once signed in: the
session's household is the only one they read. Operator credentials do not open them.

Usage comes from the meter's cumulative volume readings: each reading's rise over the one
before it on the same meter counts in the period (day or month in the utility's zone) of
the later reading; the reading before the window anchors the first rise. A fall (a meter
replaced or reset) counts as nothing.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status

from dashboard_api import resident_auth
from dashboard_api.clients import client_of
from dashboard_api.deps import Conn, State
from dashboard_api.routes.upgrades import check_resident
from dashboard_api.schemas import ResidentCheck
from dashboard_api.schemas.resident import (
    CodeCheck,
    CodeSent,
    ResidentHome,
    ResidentNotice,
    ResidentSession,
    Usage,
)

router = APIRouter(prefix="/resident", tags=["resident"])

NEED_SESSION = "a resident's session is needed: sign in with a code (POST /resident/session)"
DAYS, MONTHS = 31, 12


async def resident_household(
    conn: Conn, state: State, authorization: Annotated[str | None, Header()] = None
) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    household = None
    if scheme.lower() == "bearer" and token.strip():
        household = await resident_auth.household_of(conn, token.strip(), state.clock())
    if household is None:
        raise resident_auth.CodeRefused(NEED_SESSION, reason="no_session")
    return household


Household = Annotated[str, Depends(resident_household)]


@router.post(
    "/code",
    response_model=CodeSent,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Resident: text a sign-in code to the owner's phone (public)",
    responses={
        404: {"description": "no household matches this id and phone number"},
        429: {"description": "Too many failed checks, or too many codes"},
        503: {"description": "The SMS gateway did not take the text"},
    },
)
async def request_code(body: ResidentCheck, state: State, request: Request) -> dict[str, Any]:
    client = client_of(request.scope, state.trusted_proxies)
    # the connection goes back to the pool before the SMS gateway is asked
    async with state.pool.connection() as conn:
        household = await check_resident(conn, state, request, body)
        code_id, code = await resident_auth.issue(conn, state, household, client)
    await resident_auth.deliver(state, household, code_id, code)
    return {
        "sent_to": resident_auth.masked(household["owner_phone"]),
        "expires_in": resident_auth.CODE_TTL_S,
    }


@router.post(
    "/session",
    response_model=ResidentSession,
    summary="Resident: sign in with the code (public)",
    responses={
        401: {"description": "No code waiting, expired, or wrong (attempts left in detail)"},
        429: {"description": "Too many wrong codes from this address"},
    },
)
async def sign_in(body: CodeCheck, conn: Conn, state: State, request: Request) -> dict[str, Any]:
    client = client_of(request.scope, state.trusted_proxies)
    return await resident_auth.verify(conn, state, body.household_id, body.code, client)


@router.delete("/session", status_code=status.HTTP_204_NO_CONTENT, summary="Resident: sign out")
async def sign_out(
    household: Household, conn: Conn, state: State, authorization: Annotated[str, Header()]
) -> Response:
    token = authorization.partition(" ")[2].strip()
    await resident_auth.end_session(conn, token, household, state.clock())
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", response_model=ResidentHome, summary="Resident: my household and booking")
async def me(household: Household, conn: Conn) -> dict[str, Any]:
    row = await (
        await conn.execute(
            "SELECT id AS household_id, address, community, building, unit FROM households"
            " WHERE id = %s",
            (household,),
        )
    ).fetchone()
    assert row is not None
    quota = await (
        await conn.execute(
            "SELECT community, places, booked, places - booked AS remaining"
            " FROM upgrade_quotas WHERE community = %s",
            (row["community"],),
        )
    ).fetchone()
    booking = await (
        await conn.execute(
            "SELECT id, community, household_id, slot_start, status, created_by, created_at"
            " FROM upgrade_bookings WHERE household_id = %s AND status <> 'cancelled'"
            " ORDER BY id DESC LIMIT 1",
            (household,),
        )
    ).fetchone()
    return {**row, "quota": quota, "booking": booking}


_USAGE = """
WITH m AS (SELECT id FROM devices WHERE household_id = %(h)s AND kind = 'meter'),
before AS (
    SELECT p.* FROM m, LATERAL (
        SELECT time, device_id, seq, vol_m3 FROM meter_readings
        WHERE device_id = m.id AND time < %(start)s ORDER BY time DESC, seq DESC LIMIT 1) p),
inside AS (
    SELECT time, device_id, seq, vol_m3 FROM meter_readings
    WHERE device_id IN (SELECT id FROM m) AND time >= %(start)s AND time < %(end)s),
rises AS (
    SELECT time, vol_m3 - lag(vol_m3) OVER (PARTITION BY device_id ORDER BY time, seq) AS dv
    FROM (SELECT * FROM before UNION ALL SELECT * FROM inside) r)
SELECT to_char(date_trunc(%(unit)s, time AT TIME ZONE %(tz)s), %(fmt)s) AS period,
       sum(greatest(dv, 0)) AS volume_m3
FROM rises WHERE time >= %(start)s AND dv IS NOT NULL GROUP BY 1
"""


def periods(by: str, now: dt.datetime, tz: zoneinfo.ZoneInfo) -> tuple[dt.datetime, list[str]]:
    """The window's start (UTC) and its periods' labels, oldest first, in zone `tz`."""
    local = now.astimezone(tz)
    if by == "day":
        first = (local - dt.timedelta(days=DAYS - 1)).date()
        labels = [(first + dt.timedelta(days=i)).isoformat() for i in range(DAYS)]
        start = dt.datetime.combine(first, dt.time(), tz)
    else:
        y, m = local.year, local.month - (MONTHS - 1)
        while m < 1:
            y, m = y - 1, m + 12
        labels = []
        for i in range(MONTHS):
            yy, mm = y + (m - 1 + i) // 12, (m - 1 + i) % 12 + 1
            labels.append(f"{yy:04d}-{mm:02d}")
        start = dt.datetime(y, m, 1, tzinfo=tz)
    return start.astimezone(dt.UTC), labels


@router.get("/usage", response_model=Usage, summary="Resident: my gas use by day or month")
async def usage(
    household: Household,
    conn: Conn,
    state: State,
    by: Annotated[Literal["day", "month"], Query()] = "day",
) -> dict[str, Any]:
    zone = state.settings.api.time_zone
    tz = zoneinfo.ZoneInfo(zone)
    now = state.clock()
    start, labels = periods(by, now, tz)
    rows = await (
        await conn.execute(
            _USAGE,
            {
                "h": household,
                "start": start,
                "end": now + dt.timedelta(minutes=5),  # a meter clock a little ahead
                "unit": by,
                "tz": zone,
                "fmt": "YYYY-MM-DD" if by == "day" else "YYYY-MM",
            },
        )
    ).fetchall()
    got = {r["period"]: float(r["volume_m3"]) for r in rows}
    items = [{"period": p, "volume_m3": round(got.get(p, 0.0), 3)} for p in labels]
    return {
        "by": by,
        "time_zone": zone,
        "items": items,
        "total_m3": round(sum(got.get(p, 0.0) for p in labels), 3),
    }


@router.get(
    "/notices",
    response_model=list[ResidentNotice],
    summary="Resident: the safety notices sent to my household, newest first",
)
async def notices(
    household: Household, conn: Conn, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> list[dict[str, Any]]:
    rows = await (
        await conn.execute(
            "SELECT id, kind, channel, body, state, created_at, delivered_at FROM notifications"
            " WHERE household_id = %s ORDER BY created_at DESC, id DESC LIMIT %s",
            (household, limit),
        )
    ).fetchall()
    return list(rows)
