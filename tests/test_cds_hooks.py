"""CDS Hooks service: discovery, the three hooks driven with the spec's request shapes, cards valid
against the HL7 logical-model rules, security (JWT) and feedback."""
from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from leukodx.api import feedback as feedback_store
from leukodx.api.app import create_app
from leukodx.api.cds.models import card_violations
from leukodx.api.config import Settings, get_settings

from conftest import FIXTURES

SHARED = FIXTURES   # third-party material kept in the repository (tests/fixtures/README.md)
SPEC = SHARED / "cds-hooks"
PATIENT = "1288992"
CDS_LIMIT = Settings().cds_max_body_bytes   # one byte more is refused
# CDS Hooks judges a patient today: the test counts are drawn yesterday, so that they are current.
RECENT = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT08:00:00Z")


def obs(code: str, value: float, unit: str, when: str = RECENT, oid: str = "") -> dict:
    return {"resourceType": "Observation", "id": oid or f"o-{code}-{when[:10]}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def searchset(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def prefetch(labs: list[dict], **extra) -> dict:
    out = {"patient": {"resourceType": "Patient", "id": PATIENT, "gender": "female", "birthDate": "1970-01-01"},
           "observations": searchset(*labs), "pgx": None, "medicationRequests": None,
           "medicationStatements": None, "conditions": None, "vitals": None}
    out.update(extra)
    return out


def request(hook: str, pre: dict | None, **context) -> dict:
    return {"hook": hook, "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/example", "patientId": PATIENT, **context}, "prefetch": pre}


def thiopurine_order(drug: str = "azathioprine", oid: str = "draft-aza-1", mg: float = 150) -> dict:
    return {"resourceType": "MedicationRequest", "id": oid, "status": "draft", "intent": "order",
            "medicationCodeableConcept": {"text": drug},
            "subject": {"reference": f"Patient/{PATIENT}"},
            "dosageInstruction": [{"text": f"{mg} mg daily", "doseAndRate": [
                {"doseQuantity": {"value": mg, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}]}]}


def draft_bundle(*orders: dict) -> dict:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": o} for o in orders]}


def pgx_obs(gene: str, value: str) -> dict:
    return {"resourceType": "Observation", "id": f"pgx-{gene}", "status": "final",
            "code": {"text": f"{gene} phenotype"}, "subject": {"reference": f"Patient/{PATIENT}"},
            "effectiveDateTime": "2024-01-01", "valueCodeableConcept": {"text": value}}


CBC_SEVERE = [obs("6690-2", 1.4, "10*9/L"), obs("751-8", 0.3, "10*9/L"), obs("718-7", 12.5, "g/dL"),
              obs("777-3", 210, "10*9/L")]
CBC_NORMAL = [obs("6690-2", 6.1, "10*9/L"), obs("751-8", 3.4, "10*9/L"), obs("718-7", 13.8, "g/dL"),
              obs("777-3", 250, "10*9/L")]


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKODX_CDS_AUTH", "off")
    monkeypatch.setenv("LEUKODX_FEEDBACK_DB_URL", f"sqlite:///{tmp_path}/feedback.db")
    get_settings.cache_clear()
    feedback_store.reset_cache()
    with TestClient(create_app()) as c:
        yield c
    get_settings.cache_clear()


def cards_of(r) -> list[dict]:
    assert r.status_code == 200, r.text
    cards = r.json()["cards"]
    for card in cards:
        assert card_violations(card) == [], card
    return cards


# ---- discovery ----------------------------------------------------------------------------------

def test_discovery_lists_the_three_services_with_valid_prefetch(client):
    services = {s["id"]: s for s in client.get("/cds-services").json()["services"]}
    assert {s["hook"] for s in services.values()} == {"patient-view", "order-select", "order-sign"}
    for s in services.values():
        assert s["title"] and s["description"]
        obs_query = s["prefetch"]["observations"]
        assert "_sort=-date" in obs_query and "sort:desc" not in obs_query and "_count=" in obs_query
        assert "http://loinc.org|6690-2" in obs_query and "http://loinc.org|751-8" in obs_query
        vitals = s["prefetch"]["vitals"]        # a temperature of every site of rules/vitals.yaml, and weight
        assert all(f"http://loinc.org|{c}" in vitals for c in ("8310-5", "8331-1", "8333-7", "8328-7", "29463-7"))
        assert all("{{context.patientId}}" in t for t in s["prefetch"].values())


# ---- patient-view ---------------------------------------------------------------------------------

def test_patient_view_severe_neutropenia_is_critical(client):
    cards = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", prefetch(CBC_SEVERE))))
    assert len(cards) == 1
    card = cards[0]
    assert card["indicator"] == "critical" and "Severe neutropenia" in card["summary"] and len(card["summary"]) < 140
    assert "Sources" in card["detail"] and card["source"]["label"] and card["source"]["topic"]["code"]
    assert card["overrideReasons"] and all(r["display"] for r in card["overrideReasons"])
    assert card["suggestions"][0]["actions"][0]["resource"]["resourceType"] == "ServiceRequest"


def test_a_white_count_in_a_unit_pint_cannot_convert_leaves_the_other_cards(client):
    """Security red-team round 27: a WBC in "dB/uL" had raised past the unit check: a 500, the critical card of the
    ANC of 0.3 beside it lost."""
    labs = [obs("6690-2", 1.4, "dB/uL"), obs("751-8", 0.3, "10*9/L")]
    cards = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", prefetch(labs))))
    assert cards[0]["indicator"] == "critical" and "Severe neutropenia (ANC 0.3" in cards[0]["summary"]
    assert "dB/uL" in "".join(c["detail"] for c in cards)


@pytest.mark.parametrize("value,unit", [(3, "/uL"), (0.003, "10*9/L")])
def test_an_anc_below_five_per_microlitre_is_profound_on_the_card(client, value, unit):
    """FHIR red-team round 26: an ANC of 3 /uL had been refused as implausible (a warning card, the tier unknown),
    and one of 0.003 shown as "ANC 0"."""
    labs = [obs("6690-2", 1.2, "10*9/L"), obs("751-8", value, unit)]
    card = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", prefetch(labs))))[0]
    assert card["indicator"] == "critical"
    assert card["summary"].startswith("Profound neutropenia (ANC 0.003 x10^9/L")


def test_patient_view_febrile_neutropenia_leads_the_summary(client):
    temp = {"resourceType": "Observation", "id": "t", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
            "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": RECENT,
            "valueQuantity": {"value": 101.5, "unit": "[degF]"}}
    r = client.post("/cds-services/leukodx-patient-view", json=request("patient-view", prefetch(CBC_SEVERE + [temp])))
    card = cards_of(r)[0]
    assert card["indicator"] == "critical" and card["summary"].startswith("FEBRILE NEUTROPENIA")
    assert "Emergency care for febrile neutropenia" in card["detail"]


def test_patient_view_reads_a_manual_differential_sent_as_counts(client):
    """No 751-8: segmented (30451-9) and band (26507-4) neutrophil counts make the ANC (0.3 + 0.1 = 0.4, severe);
    before they were read, the card said only that the ANC was unknown."""
    labs = [obs("6690-2", 1.5, "10*9/L"), obs("30451-9", 300, "/uL"), obs("26507-4", 100, "/uL"),
            obs("718-7", 12.5, "g/dL"), obs("777-3", 210, "10*9/L")]
    card = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", prefetch(labs))))[0]
    assert card["indicator"] == "critical" and "Severe neutropenia" in card["summary"], card["summary"]
    assert "ANC 0.4" in card["summary"] + card["detail"]
    query = client.get("/cds-services").json()["services"][0]["prefetch"]["observations"]
    assert all(f"http://loinc.org|{c}" in query for c in ("30451-9", "768-2", "26507-4", "763-3"))
    # and the CBC panels whose values may come as components, and the vital-signs panel's temperature
    assert all(f"http://loinc.org|{c}" in query for c in ("58410-2", "57021-8", "69742-5", "57782-5"))
    vitals = client.get("/cds-services").json()["services"][0]["prefetch"]["vitals"]
    assert "http://loinc.org|85353-1" in vitals


def test_patient_view_fever_with_no_blood_count_at_all_asks_for_one(client):
    """A febrile patient on azathioprine whose record holds no blood count at all: the card says febrile
    neutropenia cannot be ruled out and asks for a CBC with differential now (it had been silent: no lab,
    no case). A normal temperature with no count says nothing, as no data at all does."""
    def temp(value: float) -> dict:
        return {"resourceType": "Observation", "id": "t", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
                "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": RECENT,
                "valueQuantity": {"value": value, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}}
    aza = {"resourceType": "MedicationRequest", "id": "m", "status": "active", "intent": "order",
           "subject": {"reference": f"Patient/{PATIENT}"}, "authoredOn": "2026-01-05",
           "medicationCodeableConcept": {"text": "azathioprine 100 mg daily"}}
    pre = prefetch([temp(39.0)])
    pre["medicationRequests"] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": aza}]}
    cards = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre)))
    assert len(cards) == 1
    card = cards[0]
    assert card["indicator"] == "warning" and "Fever without a current neutrophil count" in card["summary"]
    assert card["detail"].startswith("**No blood count.**")
    assert "Repeat CBC with manual differential" in card["detail"] and "*immediate*" in card["detail"]
    afebrile = client.post("/cds-services/leukodx-patient-view", json=request("patient-view", prefetch([temp(36.8)])))
    assert afebrile.json() == {"cards": []}
    # a normal temperature beside a count that could not be used: said so, never "CBC checked"
    cancelled = {**obs("6690-2", 1.2, "10*9/L"), "status": "cancelled"}
    unread = cards_of(client.post("/cds-services/leukodx-patient-view",
                                  json=request("patient-view", prefetch([cancelled, temp(36.8)]))))
    assert len(unread) == 1 and unread[0]["summary"].startswith("leukodx could not assess this patient")
    assert "status 'cancelled': withdrawn by the lab, not a result" in unread[0]["detail"]


def _med(drug: str, status: str = "active", oid: str = "m1") -> dict:
    return {"resourceType": "MedicationRequest", "id": oid, "status": status, "intent": "order",
            "subject": {"reference": f"Patient/{PATIENT}"}, "authoredOn": "2026-01-05",
            "medicationCodeableConcept": {"text": drug}}


def test_drugs_with_no_blood_count_on_record_are_assessed_for_what_needs_no_count(client):
    """Clozapine and no ANC on record at all had been no card ("nothing to assess"): monitoring is overdue. A
    thiopurine in a TPMT poor metabolizer is an alert without a count. A drug that needs nothing without a count
    (an unknown one, a stopped one) still says nothing, as no data at all does."""
    def call(*meds: dict, **extra) -> list[dict]:
        pre = prefetch([], medicationRequests=searchset(*meds), **extra)
        return cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre)))
    cloz = call(_med("clozapine 200 mg daily"))
    assert [(c["indicator"], c["summary"]) for c in cloz] == [("warning", "Clozapine ANC monitoring overdue")]
    aza = call(_med("azathioprine 100 mg daily"), pgx=searchset(pgx_obs("TPMT", "Poor metabolizer")))
    assert [c["indicator"] for c in aza] == ["critical"] and "poor metabolizer" in aza[0]["summary"]
    assert call(_med("atorvastatin 20 mg daily")) == []
    assert call(_med("clozapine 200 mg daily", status="stopped")) == []


@pytest.mark.parametrize("second, says", [
    ("febuxostat 80 mg daily", "Febuxostat is contraindicated"),           # uloric_label
    ("allopurinol 300 mg daily", "dose cut to a quarter"),                 # medsafe_azathioprine_allopurinol_1998
    ("mercaptopurine 50 mg daily", "one thiopurine taken twice"),
])
def test_a_thiopurine_combination_to_stop_or_cut_now_is_a_card_whatever_the_count(client, second, says):
    """Azathioprine with febuxostat (contraindicated), with allopurinol at full dose or with mercaptopurine had given no
    card beside normal counts, or none (red-team round 14): the step to stop one, or cut the dose, is urgent."""
    meds = searchset(_med("azathioprine 150 mg daily"), _med(second, oid="m2"))
    normal = [obs("6690-2", 6.0, "10*9/L", RECENT), obs("751-8", 3.5, "10*9/L", RECENT)]
    for labs in (normal, []):
        pre = prefetch(labs, medicationRequests=meds)
        cards = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre)))
        assert [c["indicator"] for c in cards] == ["warning"], cards
        assert says in cards[0]["detail"]
        assert f"azathioprine with {second.split()[0]}" in cards[0]["summary"]     # the drugs named (red-team 15)
    alone = prefetch(normal, medicationRequests=searchset(_med("azathioprine 150 mg daily")))
    assert cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", alone))) == []


def test_an_order_with_no_blood_count_and_no_other_drug_gets_the_order_check_alone(client):
    """The draft was all there was: the order check asks for a baseline count; no patient card is made from the
    draft (it is not taken yet) and the call is not refused."""
    pre = prefetch([])
    r = client.post("/cds-services/leukodx-order-select", json=request(
        "order-select", pre, selections=["MedicationRequest/d1"],
        draftOrders=draft_bundle(thiopurine_order("clozapine", "d1", 12.5))))
    cards = cards_of(r)
    assert len(cards) == 1 and "Clozapine ordered without a current ANC" in cards[0]["summary"]


def test_patient_view_normal_counts_give_no_cards(client):
    r = client.post("/cds-services/leukodx-patient-view", json=request("patient-view", prefetch(CBC_NORMAL)))
    assert r.json() == {"cards": []}


def test_mild_and_moderate_indicators(client):
    mild = [obs("6690-2", 3.1, "10*9/L"), obs("751-8", 1.2, "10*9/L")]
    moderate = [obs("6690-2", 2.6, "10*9/L"), obs("751-8", 0.7, "10*9/L")]
    assert cards_of(client.post("/cds-services/leukodx-patient-view",
                                json=request("patient-view", prefetch(mild))))[0]["indicator"] == "info"
    assert cards_of(client.post("/cds-services/leukodx-patient-view",
                                json=request("patient-view", prefetch(moderate))))[0]["indicator"] == "warning"


def test_null_prefetch_means_no_data_not_missing(client):
    pre = prefetch(CBC_NORMAL, observations=None)
    r = client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre))
    assert r.json() == {"cards": []}


@pytest.mark.parametrize("prefetch_value", ["missing", "operation-outcome"])
def test_missing_prefetch_without_fhir_server_is_412(client, prefetch_value):
    pre = prefetch(CBC_SEVERE)
    if prefetch_value == "missing":
        del pre["observations"]
    else:
        pre["observations"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    r = client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre))
    assert r.status_code == 412 and r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("total,named", [(250, True), (250.0, True), (4, False), ("250", False)])
def test_a_search_holding_fewer_results_than_its_total_with_no_next_page_is_named(client, total, named):
    """FHIR red-team round 26: a searchset of 2 entries saying total 250, with no next link, had been read as the
    patient's whole record; the card says what it lacks. An entry that is an included resource is no match."""
    searched = searchset(*CBC_NORMAL)
    searched["total"] = total
    searched["entry"].append({"resource": {"resourceType": "Patient", "id": PATIENT}, "search": {"mode": "include"}})
    card = cards_of(client.post("/cds-services/leukodx-patient-view",
                                json=request("patient-view", prefetch([], observations=searched))))
    said = "'observations' is incomplete: it holds 4 of the 250 results its search found, and no link to the rest"
    assert (said in "".join(c["detail"] for c in card)) is named


@pytest.mark.parametrize("kind", ["bundle", "Parameters"])
def test_a_search_answered_by_something_else_is_named_not_read_as_no_data(client, kind):
    """Red-team round 21: `observations` as {"resourceType": "bundle"} (holding an ANC of 0.3) or a Parameters resource
    had been read as no data: no card at all."""
    pre = prefetch(CBC_SEVERE)
    pre["observations"] = {**pre["observations"], "resourceType": kind}
    r = client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre))
    assert r.status_code == 412 and f"it is '{kind}', not a Bundle of Observation" in r.text


def test_spec_example_patient_view_request(client):
    """The spec's own request: its prefetch has none of our keys and its fhirServer cannot be reached."""
    body = json.loads((SPEC / "spec-v2.0.1" / "request-patient-view.json").read_text())
    r = client.post("/cds-services/leukodx-patient-view", json=body)
    assert r.status_code == 412 and r.json()["issue"][0]["severity"] == "error"
    assert "some-opaque-fhir-access-token" not in r.text


@pytest.mark.parametrize("path", sorted((SHARED / "fhir-examples" / "synthea").glob("*.json")) if SPEC.exists() else [],
                         ids=lambda p: p.stem[:24])
def test_synthea_patients_as_patient_view(client, path):
    bundle = json.loads(path.read_text())
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    pre = {"patient": patient, "observations": bundle, "pgx": None, "medicationRequests": bundle,
           "medicationStatements": None, "conditions": bundle}
    body = request("patient-view", pre)
    body["context"]["patientId"] = patient["id"]
    cards = cards_of(client.post("/cds-services/leukodx-patient-view", json=body))
    from leukodx.api import fhir
    from leukodx.engine import assess
    case, _ = fhir.bundle_to_case(bundle, patient_id=patient["id"])
    a = assess(case)   # judged at its latest lab; the service judges it today
    drawn = a.cbc.time.date()
    if (datetime.now(timezone.utc).date() - drawn).days > a.cbc.max_age_days:
        # an old count raises no acute card: one info card that says how old it is
        assert [c["indicator"] for c in cards] == ["info"]
        assert cards[0]["summary"].startswith("No current CBC") and drawn.isoformat() in cards[0]["detail"]
    else:
        leukopenic = any(f.id in ("leukopenia", "neutropenia", "lymphopenia") for f in a.findings)
        assert bool(cards) == bool(leukopenic or a.alerts or a.causes)
        assert all(drawn.isoformat() in c["detail"] for c in cards)


# ---- order-select / order-sign ----------------------------------------------------------------------

def test_order_sign_thiopurine_for_a_poor_metabolizer_is_critical_with_actions(client):
    pre = prefetch(CBC_NORMAL, pgx=searchset(pgx_obs("TPMT", "*3A/*3A"), pgx_obs("NUDT15", "Normal metabolizer")))
    body = request("order-sign", pre, draftOrders=draft_bundle(thiopurine_order()))
    cards = cards_of(client.post("/cds-services/leukodx-order-sign", json=body))
    card = next(c for c in cards if c["source"]["topic"]["code"] == "thiopurine-pgx")
    assert card["indicator"] == "critical" and card["selectionBehavior"] == "at-most-one"
    kinds = {a["type"] for s in card["suggestions"] for a in s["actions"]}
    assert kinds == {"delete", "update"}
    delete = next(a for s in card["suggestions"] for a in s["actions"] if a["type"] == "delete")
    assert delete["resourceId"] == "MedicationRequest/draft-aza-1" and "resource" not in delete
    update = next(a for s in card["suggestions"] for a in s["actions"] if a["type"] == "update")
    assert update["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 15.0


@pytest.mark.parametrize("hook", ["order-sign", "order-select"])
def test_an_unknown_drug_ordered_with_no_name_keeps_every_card(client, hook):
    """A draft naming its drug by an unknown RxNorm code alone, for a patient with an ANC of 0.3 (FHIR red-team
    round 26): the order check had raised a TypeError, a 500 with every card lost, the critical one too."""
    order = {"resourceType": "MedicationRequest", "id": "d1", "status": "draft", "intent": "order",
             "subject": {"reference": f"Patient/{PATIENT}"},
             "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                       "code": "999999"}]}}
    extra = {"selections": ["MedicationRequest/d1"]} if hook == "order-select" else {}
    cards = cards_of(client.post(f"/cds-services/leukodx-{hook}",
                                 json=request(hook, prefetch(CBC_SEVERE), draftOrders=draft_bundle(order), **extra)))
    assert [c["indicator"] for c in cards if c["source"]["topic"]["code"] != "unknown-drug"][:1] == ["critical"]
    unknown = next(c for c in cards if c["source"]["topic"]["code"] == "unknown-drug")
    assert unknown["summary"].startswith("'RxNorm 999999' is not a drug leukodx knows")


@pytest.mark.parametrize("change,checked", [({"doNotPerform": True}, False), ({"status": "cancelled"}, False),
                                            ({"status": "entered-in-error"}, False), ({"status": "active"}, True)])
def test_an_order_not_to_give_or_withdrawn_is_not_checked_and_one_sent_active_is_still_a_draft(client, change, checked):
    """Order red-team round 31: "do not give azathioprine" (doNotPerform) had got a critical card recommending its
    deletion, a cancelled or entered-in-error draft was checked, and a draft sent with status "active" counted as a
    drug taken on the patient's card (an urgent hold of a drug never given)."""
    pre = prefetch(CBC_SEVERE, pgx=searchset(pgx_obs("TPMT", "*3A/*3A"), pgx_obs("NUDT15", "Normal metabolizer")))

    def cards_for(draft: dict) -> list[dict]:
        return cards_of(client.post("/cds-services/leukodx-order-sign",
                                    json=request("order-sign", pre, draftOrders=draft_bundle(draft))))
    cards, plain = cards_for({**thiopurine_order(), **change}), cards_for(thiopurine_order())
    assert any(c["source"]["topic"]["code"] == "thiopurine-pgx" for c in cards) is checked
    patient = [c["detail"] for c in cards if c["source"]["topic"]["code"] == "leukopenia-assessment"]
    assert patient and patient == [c["detail"] for c in plain if c["source"]["topic"]["code"] == "leukopenia-assessment"]


@pytest.mark.parametrize("observations", ["missing", "operation-outcome"])
def test_an_order_is_checked_when_the_counts_could_not_be_had(client, observations):
    """Red-team round 19: an order hook whose `observations` was left out or sent as an OperationOutcome (the spec's
    ways of saying a prefetch could not be filled) answered 412, no card, for a TPMT poor metabolizer's azathioprine;
    the drug check needs no count, so it runs and the card names the counts that could not be had."""
    pre = prefetch(CBC_NORMAL, pgx=searchset(pgx_obs("TPMT", "*3A/*3A"), pgx_obs("NUDT15", "Normal metabolizer")))
    if observations == "missing":
        del pre["observations"]
    else:
        pre["observations"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    r = client.post("/cds-services/leukodx-order-sign",
                    json=request("order-sign", pre, draftOrders=draft_bundle(thiopurine_order())))
    assert r.status_code == 200
    card = next(c for c in r.json()["cards"] if c["source"]["topic"]["code"] == "thiopurine-pgx")
    assert card["indicator"] == "critical" and "'observations' could not be had" in card["detail"]


def test_genotype_results_that_could_not_be_had_are_not_called_untested(client):
    """Red-team round 19: with the `pgx` key left out, an azathioprine order's card said "TPMT and NUDT15 status
    unknown: genotype before dosing" and recommended a test that may already be on file."""
    pre = prefetch(CBC_NORMAL)
    del pre["pgx"]
    cards = cards_of(client.post("/cds-services/leukodx-order-sign",
                                 json=request("order-sign", pre, draftOrders=draft_bundle(thiopurine_order()))))
    card = next(c for c in cards if c["source"]["topic"]["code"] == "thiopurine-pgx")
    assert "results could not be had: check the record" in card["summary"] and "status unknown" not in card["summary"]
    assert card["indicator"] == "warning" and not any(s.get("isRecommended") for s in card.get("suggestions", []))
    pre["pgx"] = None                     # the EHR has none: untested, genotype
    cards = cards_of(client.post("/cds-services/leukodx-order-sign",
                                 json=request("order-sign", pre, draftOrders=draft_bundle(thiopurine_order()))))
    card = next(c for c in cards if c["source"]["topic"]["code"] == "thiopurine-pgx")
    assert "status unknown: genotype before dosing" in card["summary"]


@pytest.mark.parametrize("conditions", ["missing", "text", "empty object", "a list"])
def test_a_clozapine_order_with_the_conditions_not_had_says_so(client, conditions):
    """Red-team rounds 21 and 22: the `conditions` key left out, or sent as text, {} or a list: a clozapine order had
    been "may proceed", information."""
    pre = prefetch(CBC_NORMAL)
    del pre["conditions"]
    if conditions != "missing":
        pre["conditions"] = {"text": "see chart", "empty object": {}, "a list": [1]}[conditions]
    clozapine = {**thiopurine_order(oid="draft-cloz"), "medicationCodeableConcept": {"text": "clozapine 25 mg tablet"}}
    cards = cards_of(client.post("/cds-services/leukodx-order-sign",
                                 json=request("order-sign", pre, draftOrders=draft_bundle(clozapine))))
    card = next(c for c in cards if c["source"]["topic"]["code"] == "clozapine-anc")
    assert card["indicator"] == "warning" and "conditions could not be had" in card["summary"]


def test_order_sign_intermediate_metabolizer_gets_the_cpic_adjusted_dose(client):
    pre = prefetch(CBC_NORMAL, pgx=searchset(pgx_obs("TPMT", "*1/*3A"), pgx_obs("NUDT15", "*1/*1")))
    body = request("order-sign", pre, draftOrders=draft_bundle(thiopurine_order(mg=150)))
    card = cards_of(client.post("/cds-services/leukodx-order-sign", json=body))[-1]
    assert card["indicator"] == "warning"
    update = card["suggestions"][0]["actions"][0]
    assert update["type"] == "update" and update["resource"]["id"] == "draft-aza-1"
    assert update["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 120.0


def test_order_sign_reads_genotypes_coded_as_the_genomics_reporting_ig_codes_them(client):
    """The `pgx` prefetch asks by LOINC code: a genotype Observation (84413-4) names its gene only in
    its gene-studied component (48018-6), as HL7's Genomics Reporting IG profiles it."""
    def genotype(gene: str, hgnc: str, value: str) -> dict:
        return {"resourceType": "Observation", "id": f"gt-{gene}", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "84413-4"}]},
                "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": "2024-01-01",
                "valueCodeableConcept": {"coding": [{"system": "http://www.pharmvar.org", "code": gene,
                                                     "display": f"{gene} {value}"}]},   # as the IG's examples
                "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "48018-6"}]},
                               "valueCodeableConcept": {"coding": [{"system": "http://www.genenames.org/geneId",
                                                                    "code": hgnc, "display": gene}]}}]}
    assert "84413-4" in client.get("/cds-services").json()["services"][0]["prefetch"]["pgx"]
    pre = prefetch(CBC_NORMAL, pgx=searchset(genotype("TPMT", "HGNC:12014", "*3A/*3A"),
                                             genotype("NUDT15", "HGNC:23063", "*1/*1")))
    body = request("order-sign", pre, draftOrders=draft_bundle(thiopurine_order()))
    card = next(c for c in cards_of(client.post("/cds-services/leukodx-order-sign", json=body))
                if c["source"]["topic"]["code"] == "thiopurine-pgx")
    assert card["indicator"] == "critical"       # TPMT poor metabolizer, as with the text-coded results


def test_order_select_unknown_status_asks_for_genotyping(client):
    order = thiopurine_order("mercaptopurine", "draft-6mp")
    body = request("order-select", prefetch(CBC_NORMAL), draftOrders=draft_bundle(order),
                   selections=["MedicationRequest/draft-6mp"])
    card = cards_of(client.post("/cds-services/leukodx-order-select", json=body))[-1]
    assert card["indicator"] == "warning" and "genotype" in card["summary"].lower()
    action = card["suggestions"][0]["actions"][0]
    assert action["type"] == "create" and action["resource"]["resourceType"] == "ServiceRequest"
    assert card["suggestions"][0]["label"] == "Order TPMT and NUDT15 genotyping"     # neither gene known


def test_order_select_only_looks_at_the_selected_orders(client):
    body = request("order-select", prefetch(CBC_NORMAL), draftOrders=draft_bundle(thiopurine_order()),
                   selections=["NutritionOrder/pureeddiet-simple"])
    assert cards_of(client.post("/cds-services/leukodx-order-select", json=body)) == []


def test_order_sign_clozapine_below_threshold_is_critical(client):
    order = {"resourceType": "MedicationRequest", "id": "cloz", "status": "draft", "intent": "order",
             "medicationCodeableConcept": {"text": "Clozaril 25 mg"}, "subject": {"reference": f"Patient/{PATIENT}"}}
    low = [obs("6690-2", 3.0, "10*9/L"), obs("751-8", 1.2, "10*9/L")]
    cards = cards_of(client.post("/cds-services/leukodx-order-sign",
                                 json=request("order-sign", prefetch(low), draftOrders=draft_bundle(order))))
    clozapine = next(c for c in cards if c["source"]["topic"]["code"] == "clozapine-anc")
    assert clozapine["indicator"] == "critical"


def test_hooks_library_order_contexts_are_accepted(client):
    for name, service in (("order-select-context-R4.json", "leukodx-order-select"),
                          ("order-sign-context-R4.json", "leukodx-order-sign")):
        context = json.loads((SPEC / "hooks-library" / name).read_text())["context"]
        body = {"hook": service.removeprefix("leukodx-"), "hookInstance": str(uuid.uuid4()), "context": context,
                "prefetch": prefetch(CBC_NORMAL)}
        assert cards_of(client.post(f"/cds-services/{service}", json=body)) == []


# ---- bad requests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mutate,status", [
    (lambda b: b.pop("hookInstance"), 400),
    (lambda b: b.update(hook="order-sign"), 400),
    (lambda b: b["context"].pop("patientId"), 400),
    (lambda b: b.update(fhirAuthorization={"access_token": "t", "token_type": "Bearer", "expires_in": 1,
                                           "scope": "s", "subject": "s"}), 400),
    (lambda b: b.update(fhirAuthorization={"access_token": "t", "token_type": "bearer"}), 400),   # cds-r-1 still
])
def test_invalid_requests(client, mutate, status):
    body = request("patient-view", prefetch(CBC_NORMAL))
    mutate(body)
    r = client.post("/cds-services/leukodx-patient-view", json=body)
    assert r.status_code == status and r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("auth", [
    {"token_type": "bearer"},                         # RFC 6749 5.1: case-insensitive
    {"subject": None},                                # no subject
    {"access_token": "x" * 10_000},                   # longer than the service accepts
])
def test_an_unusable_fhir_authorization_is_set_aside_not_a_400(client, auth):
    """A malformed fhirAuthorization beside a complete prefetch had been a 400, and the cards of a patient with an
    ANC of 0.3 were lost: the token is never needed then. When something must be fetched, the card says why it
    could not be (a lower-case "bearer" is Bearer, so that token is used)."""
    token = {"access_token": "t", "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
             "subject": "app", **auth}
    token = {k: v for k, v in token.items() if v is not None}
    body = {**request("patient-view", prefetch(CBC_SEVERE)), "fhirServer": "https://ehr.example/fhir",
            "fhirAuthorization": token}
    r = client.post("/cds-services/leukodx-patient-view", json=body)
    assert r.status_code == 200 and cards_of(r)[0]["indicator"] == "critical"
    if "subject" in auth:                             # a fetch that needed it names why it could not be made
        del body["prefetch"]["conditions"]
        detail = cards_of(client.post("/cds-services/leukodx-patient-view", json=body))[0]["detail"]
        assert "'conditions' could not be had (the fhirAuthorization sent could not be used (subject:" in detail


def test_a_token_scoped_to_another_patient_is_not_used(client):
    """fhirAuthorization.patient names another patient than context.patientId: nothing is fetched with it, and the
    card says why ('conditions' was missing from the prefetch)."""
    token = {"access_token": "t", "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
             "subject": "app", "patient": "someone-else"}
    body = {**request("patient-view", prefetch(CBC_SEVERE)), "fhirServer": "https://ehr.example/fhir",
            "fhirAuthorization": token}
    del body["prefetch"]["conditions"]
    detail = cards_of(client.post("/cds-services/leukodx-patient-view", json=body))[0]["detail"]
    assert "'conditions' could not be had (the fhirAuthorization token is for another patient" in detail


def test_unknown_service_and_oversized_prefetch(client):
    assert client.post("/cds-services/nope", json=request("patient-view", None)).status_code == 404
    big = request("patient-view", prefetch(CBC_NORMAL, conditions={"junk": "x" * CDS_LIMIT}))
    assert client.post("/cds-services/leukodx-patient-view", content=json.dumps(big),
                       headers={"content-type": "application/json"}).status_code == 413


# ---- feedback -------------------------------------------------------------------------------------

def test_spec_feedback_examples_are_stored(client):
    for name in ("feedback-accepted.json", "feedback-overridden-with-reason.json", "feedback-overridden-no-reason.json"):
        r = client.post("/cds-services/leukodx-patient-view/feedback",
                        content=(SPEC / "spec-v2.0.1" / name).read_bytes(), headers={"content-type": "application/json"})
        assert r.status_code == 200, (name, r.text)
    rows = list(feedback_store.store_for(get_settings().feedback_db_url).export())
    assert len(rows) == 3 and {r["outcome"] for r in rows} == {"accepted", "overridden"}
    import subprocess, sys
    from pathlib import Path as P
    exe = str(P(sys.executable).with_name("leukodx"))
    out = subprocess.run([exe, "feedback", "export", "--db", get_settings().feedback_db_url],
                         capture_output=True, text=True, timeout=60)
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert out.returncode == 0 and [x["card"] for x in lines] == [r["card"] for r in rows]


@pytest.mark.parametrize("entry", [
    {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2020-01-01T00:00:00Z"},
    {"card": "c", "outcome": "maybe", "outcomeTimestamp": "2020-01-01T00:00:00Z"},
    {"card": "c", "outcome": "overridden", "overrideReason": {}, "outcomeTimestamp": "2020-01-01T00:00:00Z"},
    {"outcome": "overridden", "outcomeTimestamp": "2020-01-01T00:00:00Z"},
])
def test_invalid_feedback_is_refused(client, entry):
    r = client.post("/cds-services/leukodx-patient-view/feedback", json={"feedback": [entry]})
    assert r.status_code == 400
    assert list(feedback_store.store_for(get_settings().feedback_db_url).export()) == []


def test_feedback_sent_as_text_plain_is_refused_like_a_service_call(client):
    """A text/plain POST needs no CORS preflight: the service calls refused it (415) but feedback had been stored."""
    body = (SPEC / "spec-v2.0.1" / "feedback-accepted.json").read_bytes()
    r = client.post("/cds-services/leukodx-patient-view/feedback", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert list(feedback_store.store_for(get_settings().feedback_db_url).export()) == []


def test_feedback_above_its_body_limit_is_413_as_the_calls_are(client):
    entry = {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2020-01-01T00:00:00Z"}
    big = json.dumps({"feedback": [entry] * (get_settings().max_body_bytes // 80 + 10)}).encode()
    assert len(big) > get_settings().max_body_bytes
    r = client.post("/cds-services/leukodx-patient-view/feedback", content=big,
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and f"exceeds {get_settings().max_body_bytes} bytes" in r.text   # refused unread
    assert list(feedback_store.store_for(get_settings().feedback_db_url).export()) == []


@pytest.mark.parametrize("entry,why", [
    ({"card": "c\u0000", "outcome": "accepted", "acceptedSuggestions": [{"id": "s"}],
      "outcomeTimestamp": "2020-01-01T00:00:00Z"}, "NUL character"),
    ({"card": "c", "outcome": "accepted", "acceptedSuggestions": [{"id": "s"}],
      "outcomeTimestamp": "Jane Doe MRN 12345"}, "ISO 8601"),
])
def test_feedback_that_cannot_be_stored_as_it_should_is_a_400(client, entry, why):
    """Security red-team round 29: a NUL character was a 500 on PostgreSQL that lost the whole batch, and any text (a
    name, an MRN) was stored as the outcome's time."""
    r = client.post("/cds-services/leukodx-patient-view/feedback",
                    json={"feedback": [{"card": "ok", "outcome": "accepted", "acceptedSuggestions": [{"id": "s"}],
                                        "outcomeTimestamp": "2020-01-01T00:00:00Z"}, entry]})
    assert r.status_code == 400 and why in r.text, r.text
    assert list(feedback_store.store_for(get_settings().feedback_db_url).export()) == []


def test_feedback_keeps_only_the_fields_the_spec_declares(client):
    """Security red-team round 27: a 900 KB undeclared comment and a patient's name had been stored beside a
    userComment held to 4,000 characters."""
    entry = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2020-01-01T00:00:00Z", "patientName": "Jane Roe",
             "overrideReason": {"reason": {"code": "r", "system": "s", "display": "d", "note": "x" * 1000},
                                "userComment": "ok", "userComment2": "y" * 900_000}}
    r = client.post("/cds-services/leukodx-patient-view/feedback", json={"feedback": [entry], "extra": "z"})
    assert r.status_code == 200, r.text
    [row] = list(feedback_store.store_for(get_settings().feedback_db_url).export())
    stored = json.dumps(row, default=str)
    assert "Jane Roe" not in stored and "y" * 100 not in stored and "x" * 100 not in stored and '"ok"' in stored


# ---- security: JWT on every call -----------------------------------------------------------------

ISS = "https://ehr.example.org"


@pytest.fixture
def secured(tmp_path, monkeypatch):
    key = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public.update(kid="k1", alg="ES384", use="sig")
    monkeypatch.setenv("LEUKODX_CDS_AUTH", "on")
    monkeypatch.setenv("LEUKODX_CDS_ISSUERS", json.dumps([{"iss": ISS, "jwks": {"keys": [public]}}]))
    monkeypatch.setenv("LEUKODX_FEEDBACK_DB_URL", f"sqlite:///{tmp_path}/fb.db")
    get_settings.cache_clear()
    with TestClient(create_app()) as c:
        yield c, key
    get_settings.cache_clear()


def token(key, aud="http://testserver/cds-services/leukodx-patient-view", **over) -> str:
    now = int(time.time())
    claims = {"iss": ISS, "sub": "client", "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    claims.update(over)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="ES384",
                      headers={"kid": "k1", "typ": "JWT"})


def call(c, bearer: str | None):
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
    return c.post("/cds-services/leukodx-patient-view", json=request("patient-view", prefetch(CBC_NORMAL)),
                  headers=headers)


def test_a_valid_token_is_accepted_and_a_replay_refused(secured):
    c, key = secured
    t = token(key)
    assert call(c, t).status_code == 200
    assert call(c, t).status_code == 401


def test_discovery_needs_no_token(secured):
    c, _ = secured
    assert c.get("/cds-services").status_code == 200


@pytest.mark.parametrize("attack", ["none", "tampered", "hs256", "wrong-aud", "expired", "unknown-iss", "no-token",
                                    "jku-elsewhere"])
def test_attack_tokens_get_a_bare_401(secured, attack):
    c, key = secured
    if attack == "none":
        t = jwt.encode({"iss": ISS, "aud": "x"}, None, algorithm="none")
    elif attack == "tampered":
        head, body, sig = token(key).split(".")
        t = ".".join((head, body, sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")))
    elif attack == "hs256":
        pem = key.public_key().public_bytes(encoding=__import__("cryptography").hazmat.primitives.serialization.Encoding.PEM,
                                            format=__import__("cryptography").hazmat.primitives.serialization.PublicFormat.SubjectPublicKeyInfo)
        now = int(time.time())
        import hmac, hashlib, base64
        def b64(x): return base64.urlsafe_b64encode(x).rstrip(b"=").decode()
        head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
        body = b64(json.dumps({"iss": ISS, "aud": "http://testserver/cds-services/leukodx-patient-view", "iat": now,
                               "exp": now + 60, "jti": "x"}).encode())
        sig = b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
        t = f"{head}.{body}.{sig}"
    elif attack == "wrong-aud":
        t = token(key, aud="https://elsewhere.example/cds-services/leukodx-patient-view")
    elif attack == "expired":
        t = token(key, iat=int(time.time()) - 4000, exp=int(time.time()) - 3000)
    elif attack == "unknown-iss":
        t = token(key, iss="https://evil.example")
    elif attack == "jku-elsewhere":
        now = int(time.time())
        t = jwt.encode({"iss": "https://other.example", "aud": "http://testserver/cds-services/leukodx-patient-view",
                        "iat": now, "exp": now + 60, "jti": "j"}, key, algorithm="ES384",
                       headers={"kid": "k1", "jku": "https://attacker.example/jwks.json"})
    else:
        t = None
    r = call(c, t)
    assert r.status_code == 401
    assert set(r.json()) <= {"type", "title", "status"}    # nothing about why


@pytest.mark.parametrize("ctype,status", [("text/plain", 415), ("application/x-www-form-urlencoded", 415),
                                          (None, 415), ("application/json; charset=utf-8", 200),
                                          ("application/fhir+json", 200)])
def test_a_cds_call_is_json_or_415(client, ctype, status):
    """A CDS call sent as a form or text/plain had been answered 200: such a POST needs no CORS preflight,
    so with JWT checks off (development) any web page could make one (security red-team)."""
    body = json.dumps(request("patient-view", prefetch([obs("6690-2", 1.0, "10*9/L"), obs("751-8", 0.3, "10*9/L")])))
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post("/cds-services/leukodx-patient-view", content=body.encode(), headers=headers)
    assert r.status_code == status
    if status == 415:
        assert r.headers["content-type"].startswith("application/problem+json") and "application/json" in r.text


@pytest.mark.parametrize("hook", ["order-sign", "order-select"])
def test_an_order_hook_without_its_draft_orders_is_refused_naming_the_field(client, hook):
    """draftOrders is REQUIRED in both hooks' contexts: an order-sign without it had answered the patient's card
    alone, saying nothing of the orders it never checked."""
    context = {"selections": ["MedicationRequest/d1"]} if hook == "order-select" else {}
    r = client.post(f"/cds-services/leukodx-{hook}", json=request(hook, prefetch(CBC_SEVERE), **context))
    assert r.status_code == 400 and "context.draftOrders is required" in r.text
