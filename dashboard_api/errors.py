"""Errors of the operator API and their one mapping to RFC 9457 problem details.

Routes raise `ApiError` subclasses (domain words: NotFound, Conflict, Forbidden...);
`install` registers the handlers that turn them, FastAPI's validation errors, Starlette's
HTTP errors and database outages into `application/problem+json` responses. Nothing else
in the package builds an error response.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://gas-safety.example/problems/"

_TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}
_SLUGS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "invalid-request",
    429: "too-many-requests",
    500: "internal-error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error with a status, a human detail and optional problem extension members."""

    status = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra


class Unauthenticated(ApiError):
    status = 401

    def __init__(
        self,
        detail: str = "authentication required: send 'Authorization: Bearer "
        "<token>' (POST /auth/token) or 'X-API-Key: <key>'",
    ) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="gas-safety"'})


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class TooManyRequests(ApiError):
    status = 429


class Invalid(ApiError):
    """A 422 for one field the schema alone cannot check (a window too long, a bad cursor)."""

    status = 422

    def __init__(self, field: str, message: str, location: str = "query") -> None:
        super().__init__(
            f"{field}: {message}",
            errors=[{"field": field, "in": location, "message": message, "type": "value_error"}],
        )


def problem(
    status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + _SLUGS.get(status, str(status)),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def field_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    """Pydantic/FastAPI error dicts to `{field, in, message, type}` (the field at fault)."""
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        where = loc[0] if loc and loc[0] in ("body", "query", "path", "header", "cookie") else ""
        rest = loc[1:] if where else loc
        out.append(
            {
                "field": ".".join(rest) or where or "request",
                "in": where or "body",
                "message": str(e.get("msg", "invalid")),
                "type": str(e.get("type", "")),
            }
        )
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem(exc.status, exc.detail, headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc.errors())
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem(422, detail or "invalid request", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "")
        if exc.status_code == 400:  # FastAPI's "error parsing the body": a malformed body
            return problem(
                422,
                f"body: {detail}",
                errors=[
                    {
                        "field": "body",
                        "in": "body",
                        "message": "not a UTF-8 JSON document",
                        "type": "json_invalid",
                    }
                ],
            )
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}"
        return problem(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(psycopg_pool.PoolTimeout)
    async def _pool(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("database pool exhausted path=%s", request.url.path)
        return problem(503, "database busy, retry shortly", headers={"Retry-After": "1"})

    @app.exception_handler(psycopg.OperationalError)
    async def _db_down(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("database unavailable path=%s error=%s", request.url.path, exc)
        return problem(503, "database unavailable, retry shortly", headers={"Retry-After": "5"})

    @app.exception_handler(ClientDisconnect)
    async def _left(request: Request, exc: Exception) -> JSONResponse:
        # Nobody reads this answer; the line says why the request ended, without a traceback.
        logger.info("client disconnected before its request was read path=%s", request.url.path)
        return problem(400, "the client disconnected before its request was read")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error path=%s", request.url.path)
        return problem(500, "internal error; the details are in the server log")
