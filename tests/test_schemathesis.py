"""Schemathesis fuzzing of the whole HTTP API against the app's own OpenAPI document.

Every operation in GET /openapi.json is exercised in-process (ASGI, no network) with positive and
negative data (examples, coverage and fuzzing phases). For each response:

* no 5xx (`not_a_server_error`);
* every 4xx is RFC 9457 problem details: `application/problem+json` with `type`, `title` and a
  `status` equal to the HTTP status. Exceptions from the CDS Hooks contract: a 412 from a CDS
  service is a FHIR OperationOutcome (`application/fhir+json`), and a 401 on a CDS route is a bare
  problem (`type`, `title`, `status` only: nothing that would help a caller probe the JWT checks);
* a 2xx body conforms to the schema the OpenAPI document gives for it (`response_schema_conformance`).

The suite runs a small, fixed-seed budget per operation so CI is fast and reproducible. For a
release, run the longer fuzz (and optionally another seed):

    LEUKODX_FUZZ_EXAMPLES=1000 .venv/bin/python -m pytest -q -p no:warnings tests/test_schemathesis.py

LEUKODX_FUZZ_EXAMPLES  examples per operation in the fuzzing phase (default 25)
LEUKODX_FUZZ_SEED      Hypothesis seed (default 20250310); change it to explore other inputs
"""
from __future__ import annotations

import json
import os
import tempfile

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from leukodx.api.app import create_app  # noqa: E402
from leukodx.api.config import Settings  # noqa: E402

MAX_EXAMPLES = int(os.environ.get("LEUKODX_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("LEUKODX_FUZZ_SEED", "20250310"))

PROBLEM_JSON = "application/problem+json"
FHIR_JSON = "application/fhir+json"


# The schema is loaded eagerly, at import, so pytest gets one test per operation.
# (schemathesis.pytest.from_fixture would allow a tmp_path fixture, but schemathesis 4.32 reads
# `Function._nodeid`, which pytest 9.2 no longer has.) The temporary directory, holding the
# feedback store, is removed when the interpreter exits.
_TMP = tempfile.TemporaryDirectory(prefix="leukodx-fuzz-")
APP = create_app(Settings(cds_auth="off", feedback_db_url=f"sqlite:///{_TMP.name}/fb.db"))
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", APP,
    config=schemathesis.Config.from_dict({"seed": SEED, "generation": {"max-examples": MAX_EXAMPLES}}))


def _media_type(response) -> str:
    values = response.headers.get("content-type") or [""]
    value = values[0] if isinstance(values, list) else values
    return value.split(";")[0].strip().lower()


def _body(response):
    try:
        return json.loads(response.content)
    except ValueError as e:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from e


@schemathesis.check
def client_errors_are_problem_details(ctx, response, case) -> None:
    """Every 4xx is problem details (CDS 412: a FHIR OperationOutcome; CDS 401: a bare problem)."""
    status = response.status_code
    if not 400 <= status < 500:
        return None
    where = f"{case.method.upper()} {case.path} -> {status}"
    media = _media_type(response)
    body = _body(response)
    cds = case.path.startswith("/cds-services")
    if cds and status == 412:
        assert media == FHIR_JSON, f"{where}: content type {media!r}, expected {FHIR_JSON}"
        assert isinstance(body, dict) and body.get("resourceType") == "OperationOutcome", \
            f"{where}: not an OperationOutcome: {body!r}"
        assert isinstance(body.get("issue"), list) and body["issue"], f"{where}: OperationOutcome without issues"
        return None
    assert media == PROBLEM_JSON, f"{where}: content type {media!r}, expected {PROBLEM_JSON}; body {body!r}"
    assert isinstance(body, dict), f"{where}: problem body is not an object: {body!r}"
    assert isinstance(body.get("type"), str) and body["type"], f"{where}: problem without `type`: {body!r}"
    assert isinstance(body.get("title"), str) and body["title"], f"{where}: problem without `title`: {body!r}"
    assert body.get("status") == status, f"{where}: problem `status` {body.get('status')!r} != {status}"
    if cds and status == 401:
        assert set(body) == {"type", "title", "status"}, f"{where}: CDS 401 must be a bare problem: {body!r}"
    return None


CHECKS = [not_a_server_error, client_errors_are_problem_details, response_schema_conformance]


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_api_fuzz(case):
    case.call_and_validate(checks=CHECKS)
