"""The OpenAPI document, fuzzed with schemathesis against the running API: as an admin no
request may cause a 5xx or break the documented responses (status codes, media types,
bodies); without credentials (or with the random ones schemathesis makes up for the
security schemes) every route but the public ones answers 401 problem+json.

The default run fits the suite's time budget: schemathesis' coverage phase in negative mode
(every boundary and wrong type once: each must be a clean 422) plus a few random positive
and negative cases per operation. GAS_SAFETY_FUZZ_DEEP=1 runs the full coverage phase and
many more random cases (a few minutes), for a release or after a schema change.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.services

PUBLIC = {"/healthz", "/auth/token", "/upgrades/resident/lookup", "/upgrades/resident/bookings",
          "/upgrades/resident/cancel", "/resident/code", "/resident/session"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
DEEP = os.environ.get("GAS_SAFETY_FUZZ_DEEP") == "1"
FUZZ = settings(max_examples=60 if DEEP else 6, deadline=None, database=None,
                derandomize=not DEEP, suppress_health_check=list(HealthCheck))


def _schema(api: Any, headers: dict[str, str], coverage: str | None) -> Any:
    phase: dict[str, Any] = {"enabled": coverage is not None, "unexpected-methods": []}
    if coverage:
        phase["generation"] = {"mode": coverage}
    config = SchemathesisConfig.from_dict({"generation": {"mode": "all"},
                                           "phases": {"coverage": phase}})
    return schemathesis.openapi.from_url(f"{api.base_url}/openapi.json", config=config,
                                         headers=headers)


@pytest.fixture(scope="session")
def admin_schema(api: Any, as_role: dict[str, dict[str, str]]) -> Any:
    return _schema(api, as_role["admin"], "all" if DEEP else "negative")


@pytest.fixture(scope="session")
def anonymous_schema(api: Any, as_role: dict[str, dict[str, str]]) -> Any:
    # The document itself needs a credential; the requests made from it carry none.
    return _schema(api, as_role["admin"], "all" if DEEP else None)


admin = schemathesis.pytest.from_fixture("admin_schema")
anonymous = schemathesis.pytest.from_fixture("anonymous_schema")


@admin.exclude(path="/events").parametrize()  # an endless stream: tested in test_events
@FUZZ
def test_fuzz_as_admin(case: Any, api: Any, as_role: dict[str, dict[str, str]]) -> None:
    case.call_and_validate(base_url=api.base_url, headers=as_role["admin"], checks=CHECKS,
                           timeout=10)


@anonymous.parametrize()
@FUZZ
def test_fuzz_without_credentials(case: Any, api: Any) -> None:
    response = case.call(base_url=api.base_url, timeout=10)
    if case.path in PUBLIC:
        assert response.status_code < 500, response.text
    else:
        assert response.status_code == 401, (case.method, case.path, response.status_code,
                                              response.text[:300])
        assert response.headers.get("content-type") in (["application/problem+json"],
                                                         "application/problem+json")
