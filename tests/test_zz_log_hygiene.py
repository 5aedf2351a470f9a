"""Runs last (file order): the logs of the whole test run must hold no patient data and no token.

Every leukodx log line written by the test processes during the run (conftest.run_logs: this
process's, and under pytest-xdist every worker's, read once the other workers have finished) is
searched for the tokens the tests sent and for values of the cases they sent."""
from __future__ import annotations

import pytest

from conftest import CASES, run_logs
from leukodx.engine import CaseError
from leukodx.engine.parse import load_document
from leukodx.cli.replay import find_case_files

TOKENS = ["right-token", "wrong-token", "some-opaque-fhir-access-token", "Bearer ey"]
PLANTED = ["secret-case-id-4242", "Rarecondition"]


def test_no_tokens_or_case_values_in_the_logs(request):
    logs = run_logs(request.config)
    if '"path"' not in logs:
        pytest.skip("run alone: the API tests that write logs did not run in this session")
    case_ids = []
    for path in find_case_files([str(CASES)]):
        try:
            doc = load_document(path.read_bytes())
        except CaseError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("id"), str) and len(doc["id"]) > 12:
            case_ids.append(doc["id"])
    leaked = [s for s in TOKENS + PLANTED + case_ids if s in logs]
    assert leaked == []


def test_a_hostile_resource_id_is_masked_whole_in_the_log():
    """An Observation id with spaces ('<img src=x onerror=alert(1)>') had been logged after its first word."""
    from leukodx.api.cds.routes import _REF
    logged = _REF.sub(r"\1/-", "prefetch 'observations'.entry[0].resource (Observation/<img src=x onerror=alert 1>); x")
    assert logged == "prefetch 'observations'.entry[0].resource (Observation/-); x"
