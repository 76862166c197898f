"""The OpenAPI document, fuzzed with schemathesis against the running API: as an admin no
request may cause a 5xx or break the documented responses; without credentials (or with
the random ones schemathesis makes up) every route but the public ones answers 401."""

from __future__ import annotations

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

PUBLIC = {"/healthz", "/auth/token", "/upgrades/resident/lookup", "/upgrades/resident/bookings"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
FUZZ = settings(max_examples=12, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="session")
def api_schema(api: Any, as_role: dict[str, dict[str, str]]) -> Any:
    config = SchemathesisConfig.from_dict({"generation": {"mode": "all"}})
    schema = schemathesis.openapi.from_url(f"{api.base_url}/openapi.json", config=config,
                                           headers=as_role["admin"])
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.exclude(path="/events").parametrize()
@FUZZ
def test_fuzz_as_admin(case: Any, api: Any, as_role: dict[str, dict[str, str]]) -> None:
    case.call_and_validate(base_url=api.base_url, headers=as_role["admin"], checks=CHECKS,
                           timeout=10)


@schema.parametrize()
@FUZZ
def test_fuzz_without_credentials(case: Any, api: Any) -> None:
    response = case.call(base_url=api.base_url, timeout=10)
    if case.path in PUBLIC:
        assert response.status_code < 500, response.text
    else:
        assert response.status_code == 401, (case.method, case.path, response.status_code,
                                              response.text[:300])
        assert response.headers["content-type"] == "application/problem+json"
