"""Stable keyset pagination: an opaque cursor is base64url JSON of (sort key, id) of a page's
last row. A page asks for rows strictly after it in the list's order, so rows inserted
or changed meanwhile never shift, repeat or skip the rows already paged through.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from dashboard_api.errors import Invalid

MAX_LIMIT = 500
DEFAULT_LIMIT = 50

T = TypeVar("T")


def encode(key: Any, row_id: Any) -> str:
    if isinstance(key, dt.datetime):
        key = {"t": key.isoformat()}
    raw = json.dumps([key, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str | None, key_type: type, id_type: type) -> tuple[Any, Any] | None:
    """(sort key, id) from a cursor; `Invalid` on the `cursor` field when it is not ours."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key, row_id = json.loads(raw)
        if key_type is dt.datetime:
            key = dt.datetime.fromisoformat(key["t"])
            if key.tzinfo is None:
                raise ValueError("naive time")
        elif not isinstance(key, key_type) or isinstance(key, bool):
            raise TypeError("key type")
        if not isinstance(row_id, id_type) or isinstance(row_id, bool):
            raise TypeError("id type")
        if isinstance(row_id, int) and not 0 <= row_id < 2**63:
            raise ValueError("id range")
        if isinstance(row_id, str) and "\x00" in row_id:
            raise ValueError("id text")
    except (
        ValueError,
        TypeError,
        KeyError,
        binascii.Error,
        UnicodeDecodeError,
        json.JSONDecodeError,
        OverflowError,
    ):
        raise Invalid("cursor", "not a cursor of this list; pass next_cursor unchanged") from None
    return key, row_id


def page(
    rows: Sequence[T], limit: int, key: Callable[[T], tuple[Any, Any]]
) -> tuple[list[T], str | None]:
    """Rows fetched with LIMIT limit+1 -> (this page, cursor of the next or None)."""
    if len(rows) <= limit:
        return list(rows), None
    items = list(rows[:limit])
    return items, encode(*key(items[-1]))


def older_than(
    cursor: str | None, time_col: str, id_col: str, params: dict[str, Any], id_type: type = int
) -> list[str]:
    """The condition of a newest-first list (ORDER BY time_col DESC, id_col DESC; both
    names written in the router, never input) for the rows after `cursor`, its values put
    in `params`; none without a cursor. `Invalid` on a cursor that is not ours."""
    after = decode(cursor, dt.datetime, id_type)
    if after is None:
        return []
    params.update(at=after[0], aid=after[1])
    return [f"({time_col}, {id_col}) < (%(at)s, %(aid)s)"]


def after_key(cursor: str | None, column: str, params: dict[str, Any]) -> list[str]:
    """The same for a list ordered by one unique text column, ascending."""
    after = decode(cursor, str, str)
    if after is None:
        return []
    params["after"] = after[1]
    return [f"{column} > %(after)s"]
