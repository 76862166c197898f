"""Request dependencies as `Annotated` aliases: the app's state, a pooled connection, and
the caller (authenticated by dashboard_api.gate) checked against the role a route needs.

    async def route(conn: Conn, user: Operator) -> ...
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from dashboard_api.attempts import AttemptLimiter, ResidentLimiter
from dashboard_api.clients import Network
from dashboard_api.errors import Forbidden, Unauthenticated
from dashboard_api.hashing import HashPool
from dashboard_api.identity import Principal, Role
from dashboard_api.sms import SmsSender
from dashboard_api.throttle import LoginThrottle

if TYPE_CHECKING:
    from dashboard_api.hub import EventHub
    from dashboard_api.metrics import Metrics
    from gateway.settings import Settings


@dataclass
class AppState:
    settings: Settings
    jwt_secret: str
    pool: AsyncConnectionPool[Any]
    hub: EventHub
    metrics: Metrics
    resident_limiter: ResidentLimiter = field(default_factory=ResidentLimiter)
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    # residents' wrong one-time codes per client (dashboard_api.resident_auth)
    code_limiter: AttemptLimiter = field(default_factory=lambda: AttemptLimiter(10, 900.0))
    sms: SmsSender = field(default_factory=lambda: SmsSender(None, 10.0, log_only=False))
    hashing: HashPool = field(default_factory=HashPool)
    trusted_proxies: tuple[Network, ...] = ()
    sse_keepalive_s: float = 15.0
    # dashboard_api.reads.ReadReplica when db.read_dsn is set (typed loosely: reads imports
    # this module)
    replica: Any = None
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.api
    return state


State = Annotated[AppState, Depends(get_state)]


async def get_conn(state: State) -> AsyncIterator[AsyncConnection[Any]]:
    # Connections are autocommit: reads are single statements, and every write opens its
    # own `async with conn.transaction()`, committed before the response is sent.
    async with state.pool.connection() as conn:
        yield conn


Conn = Annotated[AsyncConnection[Any], Depends(get_conn, scope="function")]

_bearer = OAuth2PasswordBearer(
    tokenUrl="auth/token",
    auto_error=False,
    description="Access token from POST /auth/token, or an API key.",
)
_api_key = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="An API key created by an admin (POST /api-keys).",
)


async def authenticate(
    request: Request,
    bearer: Annotated[str | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    # The credential was checked by AuthGate before the request reached any route (so an
    # unauthenticated caller gets 401 even for a malformed body or an unknown path); the
    # two security dependencies above only document the schemes in OpenAPI.
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthenticated()
    return principal


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.may(role):
            raise Forbidden(
                f"this needs the {role.name} role (or higher); "
                f"{principal.username} is {principal.role.name}"
            )
        return principal

    check.__name__ = f"require_{role.name}"
    return check


Caller = Annotated[Principal, Depends(authenticate)]
Viewer = Annotated[Principal, Depends(require(Role.viewer))]
Operator = Annotated[Principal, Depends(require(Role.operator))]
Engineer = Annotated[Principal, Depends(require(Role.engineer))]
Admin = Annotated[Principal, Depends(require(Role.admin))]
