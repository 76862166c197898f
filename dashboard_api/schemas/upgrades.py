"""The upgrade programme's bookings: a community's quota of places and its update, the
resident's check (household id with the owner's phone, no login) and self-booking, the
operator's booking, a booking as listed, and what a resident sees of the quota and their
booking.
"""

from __future__ import annotations

import datetime as dt

from pydantic import ConfigDict, Field

from dashboard_api.schemas.common import Body, BookingStatus, Ident, Instant, Model, Phone


class QuotaPublic(Model):
    community: str
    places: int
    booked: int
    remaining: int


class QuotaUpdate(Body):
    places: int = Field(ge=0, le=1_000_000)


class ResidentCheck(Body):
    """A resident has no login: the household id with the owner's phone number on file is
    the (lightweight) proof, as on the programme's letter."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"household_id": "h000042", "phone": "+15550000042"}]},
    )
    household_id: Ident
    phone: Phone


class ResidentBookingRequest(ResidentCheck):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "household_id": "h000042",
                    "phone": "+15550000042",
                    "slot_start": "2026-12-03T09:00:00+08:00",
                }
            ]
        },
    )
    slot_start: Instant


class BookingCreate(Body):
    household_id: Ident
    slot_start: Instant


class BookingPublic(Model):
    id: int
    community: str
    household_id: str
    slot_start: dt.datetime
    status: BookingStatus
    created_by: str
    created_at: dt.datetime


class ResidentView(QuotaPublic):
    booking: BookingPublic | None
