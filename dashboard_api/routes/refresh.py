"""POST /auth/refresh: a fresh access token for a token that is still good, so a control
room's screen stays signed in across a shift without a long-lived token.

Revocation is unchanged: the gate has already checked the presented token against the
user's current token_version (and the disabled flag) before this route runs, so a revoked,
expired or disabled user's token cannot be refreshed, and the new token carries the same
version (it dies with the next password, role or status change like any other).
"""

from __future__ import annotations

from fastapi import APIRouter

from dashboard_api import identity
from dashboard_api.deps import Caller, State
from dashboard_api.errors import Forbidden
from dashboard_api.schemas import Token

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/refresh",
    response_model=Token,
    summary="Exchange a valid access token for a new one (not for API keys)",
)
async def refresh(who: Caller, state: State) -> Token:
    if who.via != "token" or who.token_version is None:
        raise Forbidden("only access tokens are refreshed; an API key lasts until it expires")
    ttl = state.settings.api.token_ttl_s
    access, _ = identity.issue_token(
        state.jwt_secret, who.username, who.role, ttl, state.clock(), version=who.token_version
    )
    return Token.model_validate({"access_token": access, "expires_in": ttl, "role": who.role.name})
