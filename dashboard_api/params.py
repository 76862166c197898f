"""Query and path parameter types the routers share: defined once, so they validate alike."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query

from dashboard_api.pagination import MAX_LIMIT
from dashboard_api.schemas import IDENT_PATTERN, LABEL_PATTERN

MAX_ROW_ID = 2**63 - 1  # bigint ids

LabelQuery = Annotated[str | None, Query(min_length=1, max_length=100, pattern=LABEL_PATTERN)]
IdQuery = Annotated[str | None, Query(pattern=IDENT_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=512)]


def row_id(*examples: int) -> Any:
    """A bigint row id in the path, with the examples OpenAPI shows:
    `AlarmId = Annotated[int, row_id(7)]`."""
    return Path(ge=1, le=MAX_ROW_ID, examples=list(examples) or None)


def ident(*examples: str) -> Any:
    """A device or household id in the path, with the examples OpenAPI shows:
    `MeterId = Annotated[str, ident("m000042")]`."""
    return Path(pattern=IDENT_PATTERN, examples=list(examples) or None)
