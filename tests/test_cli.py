"""The `leukodx` command as a user runs it: exit codes, outputs, no tracebacks."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import CASES, LEUKODX, ROOT

EXAMPLE = CASES / "thiopurine" / "tpmt-poor-azathioprine-severe-neutropenia.yaml"




def run(*args, stdin=None):
    return subprocess.run([LEUKODX, *args], capture_output=True, text=True, input=stdin, cwd=ROOT, timeout=120)


def test_assess_json_and_text():
    r = run("assess", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["risk_tier"]["tier"] == "severe" and doc["causes"][0]["id"] == "thiopurine_myelotoxicity"
    t = run("assess", str(EXAMPLE), "--format", "text")
    assert t.returncode == 0 and "RISK TIER: SEVERE" in t.stdout and "SOURCES" in t.stdout


def test_assess_from_standard_input():
    r = run("assess", "-", stdin=EXAMPLE.read_text())
    assert r.returncode == 0 and json.loads(r.stdout)["case_id"]


@pytest.mark.parametrize("text,needle", [
    ('{"labs": [{"test": "wbc", "value": 3.8, "unit": "/uL"}]}', "probably '10^9/L'"),
    ("{not json", "not valid JSON"),
    ("", "empty"),
])
def test_rejected_case_exits_1_with_the_reason_and_no_traceback(text, needle):
    r = run("assess", "-", stdin=text)
    assert r.returncode == 1
    assert needle in r.stderr and "Traceback" not in r.stderr and r.stdout == ""


def test_missing_file_is_a_clear_error():
    r = run("assess", "no/such/case.yaml")
    assert r.returncode == 1 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_schema_case_prints_json_schema():
    r = run("schema", "case")
    schema = json.loads(r.stdout)
    assert r.returncode == 0 and "labs" in schema["properties"]


def test_rules_commands():
    assert run("rules", "check").returncode == 0
    listing = run("rules", "list")
    assert "alerts.febrile_neutropenia" in listing.stdout
    show = run("rules", "show", "alerts.febrile_neutropenia")
    assert show.returncode == 0 and "freifeld_idsa_2011" in show.stdout and "when:" in show.stdout
    assert run("rules", "show", "no.such_rule").returncode == 2


def test_replay_formats_and_exit_codes(tmp_path):
    ok = run("replay", str(CASES / "tiers"), "--format", "json")
    doc = json.loads(ok.stdout)
    assert ok.returncode == 0 and doc["failed"] == 0 and doc["total"] == len(doc["cases"]) > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: bad\nlabs: [{test: wbc, value: 2.0, unit: 10^9/L}]\nexpect: {risk_tier: severe}\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("id: typo\nlabs: [{test: wbc, value: 2.0, unit: 10^9/L}]\nexpect: {risk_teir: unknown}\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("id: unknown\nlabs: [{test: wbc, value: 2.0, unit: 10^9/L}]\nexpect: {top_cause: gremlins}\n")
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("{{{{")
    r = run("replay", str(tmp_path), "--format", "json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["failed"] == 4
    by_id = {c["file"].split("/")[-1]: c for c in doc["cases"]}
    assert by_id["bad.yaml"]["failures"][0] == {"expectation": "risk_tier", "expected": "severe", "actual": "unknown"}
    assert "unknown field" in by_id["typo.yaml"]["failures"][0]["actual"]
    assert "gremlins" in by_id["unknown.yaml"]["failures"][0]["actual"]
    junit = run("replay", str(tmp_path), "--format", "junit", "--out", str(tmp_path / "r.xml"))
    assert junit.returncode == 1 and "<testsuite" in (tmp_path / "r.xml").read_text()


def test_replay_in_parallel_gives_the_same_results():
    one = json.loads(run("replay", str(CASES), "--format", "json").stdout)
    two = json.loads(run("replay", str(CASES), "--format", "json", "--jobs", "2").stdout)
    assert one == two


def test_rules_check_reads_the_knowledge_base_given(tmp_path):
    """`--rules DIR` checks a copy being edited: a defect there fails, the installed one is untouched."""
    import shutil
    from leukodx.engine.kb import rules_dir
    copy = tmp_path / "rules"
    shutil.copytree(rules_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    ok = subprocess.run([LEUKODX, "rules", "check", "--rules", str(copy)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: ")
    alerts = copy / "logic" / "alerts.yaml"
    alerts.write_text(alerts.read_text().replace("tpmt_phenotype: poor}", "tpmt_phenotype: poor, bogus_fact: true}"))
    bad = subprocess.run([LEUKODX, "rules", "check", "--rules", str(copy)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown fact 'bogus_fact'" in bad.stderr


def test_assess_takes_a_fhir_bundle_file_as_ehr_data(tmp_path):
    """`leukodx assess` maps a FHIR Bundle (an EHR export) and assesses it partially, naming what it left out."""
    obs = lambda oid, code, value, unit: {  # noqa: E731
        "resourceType": "Observation", "id": oid, "status": "final", "effectiveDateTime": "2025-03-10T08:00:00Z",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "subject": {"reference": "Patient/p"},
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1970-01-01"}},
        {"resource": obs("w", "6690-2", 1.4, "10*9/L")}, {"resource": obs("a", "751-8", 0.3, "10*9/L")},
        {"resource": obs("t", "777-3", 210, "K/hpf")}]}
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    out = run("assess", str(path))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["risk_tier"]["tier"] == "severe" and [n["field"] for n in doc["not_assessed"]] == ["labs[2] (Observation/t)"]
    bad = run("assess", "-", stdin='{"resourceType": "Bundle", "type": "collection", "entry": []}')
    assert bad.returncode == 1 and "no lab value leukodx can use" in bad.stderr
