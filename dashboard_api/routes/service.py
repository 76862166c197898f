"""Service routes: /healthz (the only route without authentication: it says only whether
the API can reach its database and its event listener, and what the gateway's own health
endpoint says of itself and the broker), /metrics for Prometheus, and the
OpenAPI document (authenticated like everything else)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import psycopg
import psycopg_pool
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dashboard_api.deps import State, Viewer
from dashboard_api.schemas import GatewayHealth, Health, ReplicaHealth
from gateway.settings import Settings

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
        gateway=await asyncio.to_thread(_gateway_health, state.settings),
        read_replica=None
        if state.replica is None
        else ReplicaHealth(in_use=state.replica.health.usable, lag_s=state.replica.health.lag_s),
    )
    return JSONResponse(body.model_dump(), status_code=200 if database else 503)


def _gateway_health(settings: Settings) -> GatewayHealth:
    """The gateway's own /healthz (on its metrics port), as far as this API can see it."""
    host, port = settings.metrics_host, settings.metrics_port
    if not port:
        return GatewayHealth(status="unknown", broker_connected=None)
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=1) as r:
            doc = json.loads(r.read())
    except urllib.error.HTTPError as err:  # 503: degraded, with its document
        try:
            doc = json.loads(err.read())
        except ValueError:
            return GatewayHealth(status="unreachable", broker_connected=None)
    except (OSError, ValueError):
        return GatewayHealth(status="unreachable", broker_connected=None)
    status = doc.get("status")
    return GatewayHealth(
        status=status if status in ("ok", "degraded") else "unknown",
        broker_connected=bool(doc.get("mqtt", {}).get("connected")),
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics (viewer; an API key works as Bearer)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(_: Viewer, state: State) -> Response:
    try:
        async with asyncio.timeout(2):
            async with state.pool.connection(timeout=2) as conn:
                await state.metrics.refresh(conn)
    except (psycopg.Error, psycopg_pool.PoolTimeout, TimeoutError, OSError):
        pass  # the database gauges keep their last values; /healthz says the database is away
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/openapi.json", include_in_schema=False)
async def openapi(_: Viewer, request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())
