"""The operator API: `create_app(settings)` builds the FastAPI app (nothing at import time);
`main()` is `gas-safety api`, serving it with uvicorn on settings.api.host:port.

The app's lifespan opens a psycopg connection pool on settings.db.dsn, the live-event
listener and the watch that ends streams whose credential ended; the schema itself is
applied by `gas-safety db migrate` (or `stack up`).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from dashboard_api import clients, errors
from dashboard_api.console import routes as console
from dashboard_api.deps import AppState
from dashboard_api.gate import PUBLIC_PATHS, AuthGate
from dashboard_api.hub import EventHub
from dashboard_api.limits import BodyLimit, ConcurrencyLimit
from dashboard_api.metrics import Metrics, MetricsMiddleware
from dashboard_api.reads import ReadReplica
from dashboard_api.rollup import RollupWorker
from dashboard_api.routes import (
    alarms,
    assignment,
    audit,
    auth,
    board,
    city,
    contacts,
    devices,
    events,
    households,
    notifications,
    readings,
    refresh,
    reopen_requests,
    resident,
    service,
    upgrades,
    users,
    valves,
    work_orders,
)
from dashboard_api.schemas import Problem
from dashboard_api.sessions import StreamWatch
from dashboard_api.sms import SmsSender
from gateway.settings import Settings

logger = logging.getLogger(__name__)

MIN_SECRET_LEN = 32
DESCRIPTION = """
Operators, dispatchers and field engineers of the gas-safety platform.

**Authentication.** Every route but `/healthz` (and the public resident routes:
`/upgrades/resident/...`, and `/resident/...`, which take a resident's session from a
one-time SMS code instead) needs a credential: `Authorization: Bearer <token>` from
`POST /auth/token` (OAuth2 password form), or an API key as `X-API-Key: <key>` (also
accepted as `Authorization: Bearer <key>`).

**Roles** form a ladder, each including those below:
`viewer` (read) < `operator` (acknowledge alarms, dispatch and cancel work orders, close
valves, manage upgrade bookings) < `engineer` (mark work orders on site and resolved,
request a valve reopen) < `admin` (users, API keys, provisioning, upgrade quotas).

**Errors** are RFC 9457 problem details (`application/problem+json`); a 422 lists the
fields at fault in `errors`. **Lists** are paged with opaque `cursor`s (`next_cursor`).
"""


class StartupRefused(RuntimeError):
    """A setting that makes the API unsafe to start; the message says which and how."""


def jwt_secret(settings: Settings) -> str:
    configured = settings.api.jwt_secret
    if configured is not None:
        value = configured.get_secret_value()
        if settings.environment == "production" and len(value) < MIN_SECRET_LEN:
            raise StartupRefused(
                f"GAS_SAFETY_API__JWT_SECRET must be at least "
                f"{MIN_SECRET_LEN} characters in production"
            )
        if value:
            return value
    if settings.environment == "production":
        raise StartupRefused(
            "refusing to start in production without a JWT secret: set "
            "GAS_SAFETY_API__JWT_SECRET (e.g. `openssl rand -hex 32`)"
        )
    logger.warning(
        "no api.jwt_secret set: using a random one for this process only "
        "(tokens die with it; set GAS_SAFETY_API__JWT_SECRET to keep them)"
    )
    return secrets.token_urlsafe(32)


def trusted_proxies(settings: Settings) -> tuple[clients.Network, ...]:
    """The proxies whose X-Forwarded-For is believed: settings.api.trusted_proxies, none by
    default."""
    try:
        return clients.networks(settings.api.trusted_proxies)
    except ValueError as err:
        raise StartupRefused(f"api.trusted_proxies: {err}") from None


def create_app(
    settings: Settings,
    *,
    pool_max_size: int = 10,
    sse_keepalive_s: float = 15.0,
    rollups_every_s: float | None = 300.0,
) -> FastAPI:
    """The API. `rollups_every_s=None` leaves the daily readings rollups to someone else
    (tests drive `dashboard_api.rollup.step` themselves)."""
    secret = jwt_secret(settings)
    proxy_nets = trusted_proxies(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.db.dsn,
            min_size=2,
            max_size=pool_max_size,
            open=False,
            timeout=10,
            kwargs={"autocommit": True, "row_factory": dict_row},
            # a connection is checked as it is handed out (one round trip): after a
            # database restart every idle one is dead, and each would fail a request
            check=AsyncConnectionPool.check_connection,
            name="api",
        )
        await pool.open(wait=True, timeout=30)
        hub = EventHub(settings.db.dsn, metrics)
        await hub.start()
        state = AppState(
            settings=settings,
            jwt_secret=secret,
            pool=pool,
            hub=hub,
            metrics=metrics,
            trusted_proxies=proxy_nets,
            sse_keepalive_s=sse_keepalive_s,
            sms=SmsSender.from_settings(settings),
        )
        if settings.db.read_dsn:
            state.replica = ReadReplica(pool, settings.db.read_dsn, settings.db.read_max_lag_s)
            await state.replica.start()
        app.state.api = state
        metrics.hashes_pending.set_function(lambda: state.hashing.pending)
        watch = StreamWatch(hub, pool, lambda: state.clock(), metrics)
        watch.start()
        rollups = None
        if rollups_every_s is not None:
            rollups = RollupWorker(pool, state.clock, idle_s=rollups_every_s)
            rollups.start()
        logger.info("api ready environment=%s", settings.environment)
        try:
            yield
        finally:
            if rollups is not None:
                await rollups.stop()
            await watch.stop()
            await hub.stop()
            if state.replica is not None:
                await state.replica.stop()
            await pool.close()
            state.hashing.close()

    app = FastAPI(
        title="gas-safety operator API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    errors.install(app)
    # The last added runs first: metrics see every answer, then sign-ins take turns, then
    # the gate, then the size limit (so a stranger gets 401 whatever the body, and public
    # routes are bounded too).
    app.add_middleware(BodyLimit)
    app.add_middleware(AuthGate)
    app.add_middleware(
        ConcurrencyLimit, paths=("/auth/token",), refused=lambda: metrics.refuse("login_busy")
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    for module in (
        service,
        auth,
        users,
        households,
        devices,
        readings,
        alarms,
        work_orders,
        reopen_requests,
        valves,
        notifications,
        contacts,
        events,
        upgrades,
        audit,
        board,
        assignment,
        refresh,
        resident,
        city,
        console,
    ):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            app.openapi_schema = problem_responses(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


_PUBLIC = PUBLIC_PATHS
_DESCRIPTIONS = {
    401: "No valid credential",
    403: "The caller's role may not do this",
    404: "Unknown id",
    409: "Refused in the current state; the detail says why",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid input; `errors` names the fields",
    503: "Database unavailable; retry",
}


def problem_responses(schema: dict[str, Any]) -> dict[str, Any]:
    """Every error response documented as application/problem+json with the Problem schema,
    and the ones each operation can give (401/403 when authenticated, 404 with path ids,
    409 on writes, 422 with inputs, 503 always)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in problem_schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components["Problem"] = problem_schema
    content = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            responses: dict[str, Any] = op.setdefault("responses", {})
            codes = {503}
            if path not in _PUBLIC:
                codes |= {401, 403}
            if op.get("parameters") or op.get("requestBody"):
                codes.add(422)
            if op.get("requestBody"):
                codes.add(413)
            writes = method in ("post", "put", "patch", "delete")
            if writes or any(p.get("in") == "path" for p in op.get("parameters", [])):
                codes.add(404)  # an id in the path or the body that does not exist
            if writes and path not in _PUBLIC:
                codes.add(409)
            if path == "/auth/token":
                codes |= {401, 415}
                codes -= {403}
            for code in codes:
                responses.setdefault(str(code), {"description": _DESCRIPTIONS[code]})
            for status, resp in responses.items():
                if status.isdigit() and int(status) >= 400 and path != "/healthz":
                    resp["content"] = content
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema


def main() -> int:
    import uvicorn

    from gateway.logs import setup_logging
    from gateway.settings import load

    settings = load()
    if not logging.getLogger().handlers:
        setup_logging(settings.log_level, settings.log_json)
    try:
        app = create_app(settings)
    except StartupRefused as err:
        print(f"gas-safety api: {err}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    # uvicorn re-raises the Ctrl-C it shut down cleanly on
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
    return 0
