"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis).

Bounded and deterministic: at most MAX_EXAMPLES generated requests per operation
(valid and invalid ones), derandomized, no example database. Every answer must be
a non-5xx whose status code, content type and body match what /openapi.json
documents (errors included: the OpenAI envelope), and leaving the key out must
give a 401.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks
from schemathesis.config import SchemathesisConfig

from .helpers import Secure

MAX_EXAMPLES = 25
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.ignored_auth,
]

OPERATIONS = [
    "POST /v1/files",
    "GET /v1/files",
    "GET /v1/files/{file_id}",
    "DELETE /v1/files/{file_id}",
    "GET /v1/files/{file_id}/content",
    "POST /v1/batches",
    "GET /v1/batches",
    "GET /v1/batches/{batch_id}",
    "POST /v1/batches/{batch_id}/cancel",
    "GET /v1/batches/{batch_id}/results",
    "GET /v1/batches/{batch_id}/results/summary",
    "POST /v1/batches/{batch_id}/retry",
    "GET /healthz",
    "GET /readyz",
]
# Invalid examples need a constrained input to violate: a query or a body. Ids in paths
# are free strings on purpose (any id answers 404 when it names nothing of the caller's).
NEGATED = {
    "POST /v1/files",
    "GET /v1/files",
    "POST /v1/batches",
    "GET /v1/batches",
    "GET /v1/batches/{batch_id}/results",
}
RUNS = [pytest.param(label, GenerationMode.POSITIVE, id=label) for label in OPERATIONS] + [
    pytest.param(label, GenerationMode.NEGATIVE, id=f"{label}-invalid") for label in NEGATED
]


@pytest.fixture(scope="module")
def auth_headers(secure: Secure) -> dict[str, str]:
    return {"Authorization": f"Bearer {secure.keys['fuzz']}"}


@pytest.fixture(scope="module")
def api_schema(secure: Secure, auth_headers: dict[str, str]) -> Any:
    config = SchemathesisConfig.from_dict(
        {"headers": auth_headers, "generation": {"allow-x00": True, "database": "none"}}
    )
    return schemathesis.openapi.from_url(f"{secure.url}/openapi.json", config=config)


def test_every_documented_operation_is_fuzzed(api_schema: Any) -> None:
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


# schemathesis' own pytest plugin (`from_fixture`) does not run under pytest 9, so each
# operation gets a plain Hypothesis test over schemathesis' strategy for it.
@pytest.mark.parametrize(("label", "mode"), RUNS)
def test_api_matches_its_schema_and_never_fails(
    api_schema: Any, auth_headers: dict[str, str], label: str, mode: GenerationMode
) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.call_and_validate(headers=auth_headers, checks=CHECKS, timeout=20)

    run()
