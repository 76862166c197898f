"""Service routes: /healthz (the only route without authentication: it says only whether
the API can reach its database and its event listener), /metrics for Prometheus, and the
OpenAPI document (authenticated like everything else)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import psycopg_pool
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dashboard_api.deps import State, Viewer
from dashboard_api.schemas import Health

router = APIRouter(tags=["service"])


@router.get(
    "/healthz",
    response_model=Health,
    summary="Liveness and readiness (no auth)",
    responses={503: {"model": Health, "description": "Database unreachable"}},
)
async def healthz(state: State) -> Any:
    try:
        async with asyncio.timeout(2):
            async with state.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        database = True
    except (psycopg.Error, psycopg_pool.PoolTimeout, TimeoutError, OSError):
        database = False  # not ready; the pool logs why
    listening = state.hub.listening.is_set()
    body = Health(
        status="ok" if database and listening else "degraded",
        database=database,
        events_listener=listening,
    )
    return JSONResponse(body.model_dump(), status_code=200 if database else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (viewer; an API key works as Bearer)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(_: Viewer, state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/openapi.json", include_in_schema=False)
async def openapi(_: Viewer, request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())
