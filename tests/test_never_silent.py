"""Never silent, never stale (issue 11): bounds from the WBC, one draw one CBC, the safer of two
ANCs, the current-CBC window, partial EHR data, volume and another patient's data, through the
engine, REST, the CLI report and CDS Hooks.

Expected values follow the sources the rules cite: ASCO/IDSA 2018 tiers (mild 1.0-<1.5, moderate
0.5-<1.0, severe 0.1-<0.5, profound <0.1), IDSA 2010 fever (single >= 38.3 C), CTCAE v5 febrile
neutropenia (ANC < 1.0 with fever), and the thresholds rules/thresholds.yaml labels as leukodx's
choice (2-hour draw, 30-day current CBC, 10% ANC disagreement)."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from leukodx.engine import CaseError, get_engine
from leukodx.engine.render import to_text

from conftest import LOG_CAPTURE, base_case
from test_cds_hooks import PATIENT, RECENT, cards_of, client, obs, prefetch, request, searchset  # noqa: F401

T0 = "2025-03-10T08:00:00Z"


def lab(test, value, unit="10^9/L", time=T0, **extra):
    return {"test": test, "value": value, "unit": unit, "time": time, **extra}


def case(labs, as_of="2025-03-10", **history):
    return {"id": "ns", "as_of": as_of, "patient": {"age_years": 50, "sex": "female"}, "labs": labs,
            "history": history}


def alerts(a) -> set[str]:
    return {x.id for x in a.alerts}


# ---- 1. bounds, not blanks ------------------------------------------------------------------------

def test_low_wbc_without_differential_and_fever_is_febrile_neutropenia(engine):
    a = engine.assess(case([lab("wbc", 0.7)], temperature_c=38.7))
    assert a.risk_tier.tier == "unknown"
    assert (a.risk_tier.tier_at_least, a.risk_tier.anc_at_most, a.risk_tier.anc_source) == ("moderate", 0.7, "bounded_by_wbc")
    assert "cannot exceed the WBC" in a.risk_tier.basis
    assert "febrile_neutropenia" in alerts(a) and "agranulocytosis" not in alerts(a)
    assert any(s.id == "emergency_febrile_neutropenia_care" and s.urgency == "immediate" for s in a.steps)


@pytest.mark.parametrize("wbc,at_least,expected_alerts", [
    (0.4, "severe", {"agranulocytosis"}),
    (0.05, "profound", {"agranulocytosis", "profound_neutropenia"}),
    (1.2, "mild", set()),
    (1.5, None, set()),          # on the cutoff: the ANC may be 1.5, which is not neutropenia
    (3.0, None, set()),
])
def test_the_wbc_bounds_the_tier(engine, wbc, at_least, expected_alerts):
    a = engine.assess(case([lab("wbc", wbc)]))
    assert a.risk_tier.tier == "unknown" and a.risk_tier.tier_at_least == at_least
    assert alerts(a) == expected_alerts


def test_no_fever_alert_below_the_fever_threshold(engine):
    a = engine.assess(case([lab("wbc", 0.8)], temperature_c=38.1))   # single reading below 38.3
    assert "febrile_neutropenia" not in alerts(a)


def test_a_differential_gives_the_anc_not_a_bound(engine):
    a = engine.assess(case([lab("wbc", 2.0), lab("neutrophils_pct", 30, "%")]))
    assert (a.risk_tier.tier, a.risk_tier.anc, a.risk_tier.anc_source, a.risk_tier.tier_at_least) == \
        ("moderate", 0.6, "derived", None)


# ---- 2. one draw, one CBC ---------------------------------------------------------------------------

def test_values_minutes_apart_are_one_draw(engine):
    a = engine.assess(case([lab("wbc", 2.0), lab("neutrophils_pct", 20, "%", "2025-03-10T08:12:00Z")],
                           temperature_c=38.7))
    assert (a.risk_tier.tier, a.risk_tier.anc) == ("severe", 0.4)
    assert {"febrile_neutropenia", "agranulocytosis"} <= alerts(a)
    assert "neutrophil" not in " ".join(m.item for m in a.missing_data).lower().split("anc or wbc")[0]


def test_values_hours_apart_are_different_draws(engine):
    a = engine.assess(case([lab("wbc", 2.0), lab("neutrophils_pct", 20, "%", "2025-03-10T13:00:00Z")]))
    assert a.risk_tier.tier == "unknown" and a.risk_tier.anc is None


def test_one_specimen_is_one_draw_whatever_the_times(engine):
    a = engine.assess(case([lab("wbc", 2.0, specimen="S1"),
                            lab("neutrophils_pct", 20, "%", "2025-03-10T11:00:00Z", specimen="S1")]))
    assert (a.risk_tier.tier, a.risk_tier.anc) == ("severe", 0.4)


def test_the_latest_draw_sets_the_tier_even_without_a_differential(engine):
    """An earlier full CBC with a normal ANC does not hide today's WBC of 0.4."""
    a = engine.assess(case([lab("wbc", 6.0, time="2025-03-08T08:00:00Z"), lab("anc", 4.0, time="2025-03-08T08:00:00Z"),
                            lab("wbc", 0.4)]))
    assert a.risk_tier.tier == "unknown" and a.risk_tier.tier_at_least == "severe"
    assert "agranulocytosis" in alerts(a)
    assert a.cbc.tests == ["wbc"] and a.cbc.time.isoformat().startswith("2025-03-10T08:00")


# ---- 3. disagreement takes the safer side ------------------------------------------------------------

def test_reported_and_derived_anc_disagree_the_lower_is_used(engine):
    a = engine.assess(case([lab("wbc", 2.0), lab("neutrophils_pct", 20, "%"), lab("anc", 1.2)], temperature_c=38.7))
    assert (a.risk_tier.tier, a.risk_tier.anc, a.risk_tier.anc_source) == ("severe", 0.4, "lower_of_reported_and_derived")
    assert {"febrile_neutropenia", "agranulocytosis"} <= alerts(a)
    assert any("the lower (0.4) was used" in w for w in a.warnings)


def test_reported_anc_within_tolerance_is_used(engine):
    a = engine.assess(case([lab("wbc", 2.0), lab("neutrophils_pct", 50, "%"), lab("anc", 1.05)]))
    assert (a.risk_tier.tier, a.risk_tier.anc, a.risk_tier.anc_source) == ("mild", 1.05, "reported")


# ---- 4. freshness -----------------------------------------------------------------------------------

@pytest.mark.parametrize("drawn", ["1967-05-02T08:00:00Z", "1988-01-01T08:00:00Z", "2009-06-30T08:00:00Z"])
def test_old_counts_raise_nothing_acute(engine, drawn):
    a = engine.assess(case([lab("wbc", 1.0, time=drawn), lab("anc", 0.3, time=drawn)], as_of="2026-12-01",
                           temperature_c=38.9))
    # nothing from the old count; the fever itself asks for a count now
    assert a.risk_tier.tier == "unknown" and not a.cbc.current and a.causes == []
    assert alerts(a) == {"fever_without_current_count"}
    assert a.cbc.age_days == (datetime(2026, 12, 1) - datetime.fromisoformat(drawn[:10])).days
    assert drawn[:10] in a.cbc.note and drawn[:10] in a.risk_tier.basis
    assert {s.id for s in a.steps} >= {"repeat_cbc_with_differential", "review_prior_counts"}
    assert [s.id for s in a.steps if s.urgency == "immediate"] == ["repeat_cbc_with_differential"]


@pytest.mark.parametrize("days,current", [(0, True), (30, True), (31, False)])
def test_the_current_cbc_window_is_30_days(engine, days, current):
    drawn = (datetime(2026, 12, 1, 8) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    a = engine.assess(case([lab("anc", 0.8, time=drawn)], as_of="2026-12-01"))
    assert a.cbc.current is current and (a.risk_tier.tier == "moderate") is current
    assert a.cbc.age_days == days and a.risk_tier.anc_age_days == (days if current else None)


def test_every_value_carries_its_date_and_age(engine):
    a = engine.assess(case([lab("anc", 0.8, time="2026-11-28T08:00:00Z"), lab("anc", 2.0, time="2026-10-01T08:00:00Z")],
                           as_of="2026-12-01"))
    assert sorted((x.age_days, x.current) for x in a.labs) == [(3, True), (61, False)]
    assert a.risk_tier.anc_time.isoformat().startswith("2026-11-28") and a.risk_tier.anc_age_days == 3
    report = to_text(a)
    assert "COUNT: Current CBC drawn 2026-11-28, 3 days before 2026-12-01" in report


# ---- 5. partial data ---------------------------------------------------------------------------------

UNREADABLE = case([lab("wbc", 2.0), lab("anc", 0.3), lab("platelets", 210, "K/hpf")], temperature_c=38.6)


def test_a_persons_case_stays_strict(engine):
    with pytest.raises(CaseError) as e:
        engine.assess(UNREADABLE)
    assert [p.loc for p in e.value.problems] == ["labs[2].unit"]


def test_partial_mode_leaves_out_what_cannot_be_read_and_says_so(engine):
    a = engine.assess(UNREADABLE, partial=True)
    assert [(n.field, n.value) for n in a.not_assessed] == [("labs[2]", "platelets 210 K/hpf")]
    assert "unknown unit 'K/hpf'" in a.not_assessed[0].reason
    assert {"febrile_neutropenia", "agranulocytosis"} <= alerts(a)
    assert "NOT ASSESSED (1)" in to_text(a)


def test_partial_mode_with_nothing_readable_is_still_an_error(engine):
    with pytest.raises(CaseError) as e:
        engine.assess(case([lab("wbc", 2.0, "K/hpf")]), partial=True)
    assert "no lab value could be read" in str(e.value) and "K/hpf" in str(e.value)


def test_partial_mode_drops_a_bad_history_field_and_keeps_the_rest(engine):
    a = engine.assess(case([lab("anc", 0.3)], tpmt="*99/*98"), partial=True)
    assert [n.field for n in a.not_assessed] == ["history.tpmt"] and "agranulocytosis" in alerts(a)


def test_rest_assess_is_strict_unless_asked(client):
    assert client.post("/v1/assess", json=UNREADABLE).status_code == 422
    r = client.post("/v1/assess?partial=true", json=UNREADABLE)
    assert r.status_code == 200 and [n["field"] for n in r.json()["not_assessed"]] == ["labs[2]"]


def fhir_obs(code, value, unit, when=RECENT, oid=None, subject=PATIENT):
    o = obs(code, value, unit, when, oid or f"o-{code}-{value}")
    o["subject"] = {"reference": f"Patient/{subject}"}
    return o


def test_rest_fhir_leaves_out_an_unreadable_observation(client):
    bundle = searchset(fhir_obs("6690-2", 2.0, "10*9/L"), fhir_obs("751-8", 0.3, "10*9/L"),
                       fhir_obs("777-3", 210, "K/hpf", oid="plt"))
    r = client.post("/v1/assess/fhir", content=json.dumps(bundle), headers={"content-type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["risk_tier"]["tier"] == "severe"
    assert [n["field"] for n in doc["not_assessed"]] == ["labs[2] (Observation/plt)"]
    strict = client.post("/v1/assess/fhir?partial=false", content=json.dumps(bundle),
                         headers={"content-type": "application/fhir+json"})
    assert strict.status_code == 422


# ---- CDS Hooks: never an empty answer because something could not be read ------------------------------

def post(client, pre, hook="patient-view"):
    body = request(hook, pre)
    return body["hookInstance"], client.post(f"/cds-services/leukodx-{hook}", json=body)


def test_cds_unreadable_unit_among_good_labs_still_raises_the_critical_card(client):
    pre = prefetch([obs("6690-2", 1.0, "10*9/L"), obs("751-8", 0.3, "10*9/L"), obs("777-3", 210, "K/hpf")])
    hook_instance, r = post(client, pre)
    cards = cards_of(r)
    assert cards[0]["indicator"] == "critical" and "ANC 0.3" in cards[0]["summary"]
    assert "Not assessed (1)" in cards[0]["detail"] and "K/hpf" in cards[0]["detail"]
    logged = [json.loads(line) for line in LOG_CAPTURE.getvalue().splitlines() if hook_instance in line]
    partial = [r for r in logged if r["msg"] == "cds partial data"]
    assert len(partial) == 1 and partial[0]["where"] == "labs[2] (Observation/-)"
    assert "K/hpf" not in json.dumps(partial[0])       # where, never what (docs/security.md: no case values)


def test_cds_log_names_where_data_was_left_out_never_the_text(client):
    """Unrecognised condition and drug texts had been written to the WARNING log as they were sent (security
    red-team: a diagnosis beside the hookInstance). The log names the places only."""
    conditions = searchset({"resourceType": "Condition", "id": "c1", "subject": {"reference": f"Patient/{PATIENT}"},
                            "clinicalStatus": {"coding": [{"code": "active"}]}, "code": {"text": "MARKPHI court order"}})
    meds = searchset({"resourceType": "MedicationStatement", "id": "m1", "status": "active",
                      "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": "2025-01-01",
                      "medicationCodeableConcept": {"text": "MARKPHI tablets"}})
    pre = prefetch([obs("6690-2", 1.0, "10*9/L"), obs("751-8", 0.3, "10*9/L")], conditions=conditions,
                   medicationStatements=meds)
    hook_instance, r = post(client, pre)
    assert "MARKPHI" in json.dumps(cards_of(r))          # the clinician is told
    logged = [line for line in LOG_CAPTURE.getvalue().splitlines() if hook_instance in line]
    partial = [json.loads(line) for line in logged if "cds partial data" in line]
    assert len(partial) == 1 and "an unknown" in partial[0]["where"]
    assert not [line for line in logged if "MARKPHI" in line]


def test_cds_nothing_readable_gives_one_card_a_warning_for_an_unread_count(client):
    """A WBC of 1.0 in a unit leukodx cannot read, alone: one card naming it, a warning (it may be a leukopenia)."""
    _, r = post(client, prefetch([obs("6690-2", 1.0, "K/hpf")]))
    cards = cards_of(r)
    assert [c["indicator"] for c in cards] == ["warning"]
    assert cards[0]["summary"].startswith("leukodx could not assess") and "K/hpf" in cards[0]["detail"]


@pytest.mark.parametrize("year", [1967, 1988, 2009])
def test_cds_old_counts_give_one_info_card_with_their_age(client, year):
    when = f"{year}-04-01T08:00:00Z"
    _, r = post(client, prefetch([obs("6690-2", 1.4, "10*9/L", when), obs("751-8", 0.3, "10*9/L", when)]))
    cards = cards_of(r)
    assert [c["indicator"] for c in cards] == ["info"]
    years = int((datetime.now(timezone.utc).date() - datetime(year, 4, 1).date()).days / 365.25)
    assert cards[0]["summary"] == (f"No current CBC in the data sent: the latest is {years} years old ({year}-04-01); "
                                   "not assessed")
    assert "malignancy" not in json.dumps(cards).lower()


def test_cds_an_old_count_with_a_fever_now_is_a_warning_card(client):
    """A 45-day-old count (ANC 0.2) with 38.9 C today had given the info card "leukodx raises no alert" on CDS
    while REST raised the fever alert (the re-verification): the assessment's alert reaches the card."""
    when = (datetime.now(timezone.utc) - timedelta(days=45)).strftime("%Y-%m-%dT08:00:00Z")
    temp = {"resourceType": "Observation", "id": "t", "status": "final", "subject": {"reference": f"Patient/{PATIENT}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
            "effectiveDateTime": datetime.now(timezone.utc).isoformat(),
            "valueQuantity": {"value": 38.9, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}}
    _, r = post(client, prefetch([obs("6690-2", 1.0, "10*9/L", when), obs("751-8", 0.2, "10*9/L", when)],
                                 vitals=searchset(temp)))
    cards = cards_of(r)
    assert cards[0]["indicator"] == "warning" and cards[0]["summary"] == (
        "Fever without a current neutrophil count; Agranulocytosis not shown to have recovered")   # 0.2 45 days ago
    assert "raises no alert" not in json.dumps(cards)


def test_cds_every_card_states_the_date_of_the_count(client):
    _, r = post(client, prefetch([obs("6690-2", 1.4, "10*9/L"), obs("751-8", 0.3, "10*9/L")]))
    cards = cards_of(r)
    assert cards and all(RECENT[:10] in c["summary"] and RECENT[:10] in c["detail"] for c in cards)


def test_cds_another_patients_data_is_never_used_and_is_named(client):
    pre = prefetch([fhir_obs("6690-2", 1.4, "10*9/L", subject="someone-else"),
                    fhir_obs("751-8", 0.3, "10*9/L", subject="someone-else")])
    _, r = post(client, pre)
    cards = cards_of(r)
    assert [c["indicator"] for c in cards] == ["warning"]
    assert "Patient/someone-else" in cards[0]["summary"] + cards[0]["detail"]
    assert f"Patient/{PATIENT}" in cards[0]["summary"] + cards[0]["detail"]
    assert "0.3" not in cards[0]["summary"]


def test_cds_years_of_labs_are_assessed_from_the_latest(client):
    """3,000 Observations over eight years (more than a case holds): the latest CBC decides."""
    start = datetime.now(timezone.utc) - timedelta(days=3000)
    labs = [fhir_obs("6690-2", 6.0, "10*9/L", (start + timedelta(days=i)).strftime("%Y-%m-%dT08:00:00Z"), f"w{i}")
            for i in range(2999)]
    labs.append(fhir_obs("751-8", 0.3, "10*9/L", oid="anc-now"))
    labs.append(fhir_obs("6690-2", 1.0, "10*9/L", oid="wbc-now"))
    _, r = post(client, prefetch(labs))
    cards = cards_of(r)
    assert cards[0]["indicator"] == "critical" and "ANC 0.3" in cards[0]["summary"]
    assert "most recent lab values" in cards[0]["detail"]


def test_cds_a_20_mb_prefetch_is_assessed(client):
    """A prefetch of about 20 MB (long Observations with narrative) is within the CDS body limit."""
    text = {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">" + "x" * 2000 + "</div>"}
    labs = []
    for i in range(8000):
        o = fhir_obs("6690-2", 5.0, "10*9/L", (datetime.now(timezone.utc) - timedelta(days=40 + i)).strftime(
            "%Y-%m-%dT08:00:00Z"), f"old{i}")
        o["text"] = text
        labs.append(o)
    labs += [fhir_obs("6690-2", 1.0, "10*9/L", oid="w"), fhir_obs("751-8", 0.3, "10*9/L", oid="a")]
    body = request("patient-view", prefetch(labs))
    raw = json.dumps(body)
    assert len(raw) > 18_000_000
    r = client.post("/cds-services/leukodx-patient-view", content=raw, headers={"content-type": "application/json"})
    cards = cards_of(r)
    assert cards[0]["indicator"] == "critical"


def test_cds_beyond_the_body_limit_is_an_explicit_413(client):
    r = client.post("/cds-services/leukodx-patient-view", content=b"{" + b" " * (33 * 1024 * 1024) + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_a_misspelled_drug_is_named_first_with_its_close_match(engine):
    """Never silently dropped, never silently assumed (issue 14.7): the output names it and offers the match."""
    a = engine.assess(case([lab("wbc", 2.0), lab("anc", 0.8)]) | {"medications": [{"name": "azathiprine"}]})
    assert [(u.field, u.text, u.kind, u.suggestions) for u in a.unrecognised] == \
        [("medications[0]", "azathiprine", "drug", ["azathioprine"])]
    assert "thiopurine_myelotoxicity" not in [c.id for c in a.causes]
    report = to_text(a)
    assert report.index("NOT RECOGNISED") < report.index("RISK TIER") and "did you mean azathioprine?" in report


@pytest.mark.parametrize("labs,as_of", [
    ([lab("wbc", 1.2, time="2025-04-26T08:00:00Z"), lab("anc", 0.2, time="2025-04-26T08:00:00Z")], "2025-06-10"),
    ([lab("wbc", 3.0)], "2025-03-10"),                      # no differential, and a WBC that bounds nothing
])
def test_fever_without_a_current_neutrophil_count_is_an_alert_and_an_immediate_cbc(engine, labs, as_of):
    """A febrile patient whose only count is 45 days old (ANC 0.2 then, on methimazole) had been given a
    routine repeat CBC at info priority: febrile neutropenia cannot be ruled out without a count now."""
    febrile = engine.assess(case(labs, as_of=as_of, temperature_c=38.9))
    assert "fever_without_current_count" in {a.id for a in febrile.alerts} and febrile.priority == "warning"
    assert {s.id: s.urgency for s in febrile.steps}["repeat_cbc_with_differential"] == "immediate"
    afebrile = engine.assess(case(labs, as_of=as_of, temperature_c=37.0))
    assert "fever_without_current_count" not in {a.id for a in afebrile.alerts}
    assert {s.id: s.urgency for s in afebrile.steps}["repeat_cbc_with_differential"] != "immediate"


@pytest.mark.parametrize("text", ["Suspected neutropenic sepsis", "?sepsis", "cannot rule out sepsis",
                                  "Sepsis (culture negative)"])
def test_a_suspected_sepsis_with_neutropenia_is_the_emergency(engine, text):
    """The first negation cues set these aside, so neutropenia with (suspected) sepsis raised no alert (the
    re-verification): a suspicion is what the emergency gate acts on."""
    a = engine.assess(case([lab("wbc", 2.0), lab("anc", 1.2)], conditions=[text]))
    assert "neutropenia_with_sepsis" in alerts(a) and a.priority == "critical"
    assert {s.id: s.urgency for s in a.steps}["emergency_department_for_sepsis"] == "immediate"


@pytest.mark.parametrize("text", ["Sepsis - resolved", "History of sepsis 2019", "Sepsis not suspected",
                                  "Neutropenic sepsis, resolved"])
def test_a_past_or_excluded_sepsis_is_not_the_emergency(engine, text):
    """A resolved or excluded sepsis had raised the critical emergency alert (the second re-verification)."""
    a = engine.assess(case([lab("wbc", 2.0), lab("anc", 1.2)], conditions=[text]))
    assert "neutropenia_with_sepsis" not in alerts(a)
    assert any("was not read as sepsis" in w for w in a.warnings)


# ---- 7. a count sent, refused or bounded, is never an information card (red-team, 2026-12-03) ----------

def _days_ago(days: int) -> str:
    return (datetime.now(timezone.utc) - timedelta(days=days)).strftime("%Y-%m-%dT08:00:00Z")


@pytest.mark.parametrize("anc", [3.0, -0.3])     # above its WBC; negative
def test_cds_an_anc_the_engine_refuses_makes_the_card_a_warning(client, anc):
    """The engine's refusals name the LOINC code first ("751-8 3.0 10*3/uL"): they had been missed, and an ANC
    above its WBC of 2.5 left an information card about the WBC alone."""
    cards = cards_of(post(client, prefetch([obs("6690-2", 2.5, "10*9/L"), obs("751-8", anc, "10*9/L")]))[1])
    assert cards[0]["indicator"] == "warning" and "751-8" in cards[0]["detail"]


def test_cds_a_wbc_of_1_2_with_no_differential_is_a_warning(client):
    """ANC <= 1.2: mild or worse, and the worse side is profound (it had been an information card)."""
    cards = cards_of(post(client, prefetch([obs("6690-2", 1.2, "10*9/L")]))[1])
    assert [c["indicator"] for c in cards] == ["warning"] and "mild or worse" in cards[0]["summary"]


def test_cds_an_unread_wbc_with_nothing_assessed_is_a_warning(client):
    """A WBC of 1.0 sent per mm3 (0.001 x10^9/L, implausible) beside neutrophils 30%: nothing could be assessed,
    and the ANC may be 0.3."""
    cards = cards_of(post(client, prefetch([obs("6690-2", 1.0, "/mm3"), obs("770-8", 30, "%")]))[1])
    assert [c["indicator"] for c in cards] == ["warning"]
    assert cards[0]["summary"].startswith("leukodx could not assess")


@pytest.mark.parametrize("value,unit", [(0.3, "Kcells"), (1e308, "10*9/L")])
def test_cds_an_unread_anc_alone_is_a_warning(client, value, unit):
    """The only value an ANC of 0.3 in a unit leukodx does not read, or an impossible one: nothing could be assessed,
    and the card had been information, as if the patient had nothing to flag."""
    cards = cards_of(post(client, prefetch([obs("751-8", value, unit)]))[1])
    assert [c["indicator"] for c in cards] == ["warning"]
    assert cards[0]["summary"].startswith("leukodx could not assess")
    other = cards_of(post(client, prefetch([obs("718-7", 1e308, "g/dL")]))[1])      # a haemoglobin: no count at stake
    assert [c["indicator"] for c in other] == ["info"]


@pytest.mark.parametrize("days", [3, 20])
def test_cds_an_agranulocytosis_not_measured_since_is_a_warning(client, days):
    """ANC 0.2 some days ago, and today a WBC of 5.0 without a differential: no card had been given (the old ANC
    is carried over only within 48 hours). A WBC does not show the neutrophils recovered."""
    then = _days_ago(days)
    pre = prefetch([obs("6690-2", 1.0, "10*9/L", then), obs("751-8", 0.2, "10*9/L", then),
                    obs("6690-2", 5.0, "10*9/L", _days_ago(0))])
    cards = cards_of(post(client, pre)[1])
    assert [c["indicator"] for c in cards] == ["warning"]
    assert cards[0]["summary"] == "Agranulocytosis not shown to have recovered"
    assert f"The latest ANC, 0.2 x10^9/L, was drawn {days} days before" in cards[0]["detail"]


@pytest.mark.parametrize("days,alerted", [(32, True), (90, True), (91, False)])
def test_a_stale_agranulocytosis_within_3_months_is_an_alert(engine, days, alerted):
    drawn = (datetime(2026, 12, 1, 8) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    a = engine.assess(case([lab("anc", 0.05, time=drawn)], as_of="2026-12-01"))
    assert not a.cbc.current and ("agranulocytosis_not_remeasured" in alerts(a)) is alerted
    assert a.priority == ("warning" if alerted else "info")


def test_a_current_anc_or_a_moderate_last_one_raises_no_recovery_alert(engine):
    then, now = "2026-11-25T08:00:00Z", "2026-12-01T08:00:00Z"
    recovered = engine.assess(case([lab("anc", 0.2, time=then), lab("wbc", 5.0, time=now), lab("anc", 3.1, time=now)],
                                   as_of="2026-12-01"))
    moderate = engine.assess(case([lab("anc", 0.7, time=then), lab("wbc", 5.0, time=now)], as_of="2026-12-01"))
    assert "agranulocytosis_not_remeasured" not in alerts(recovered) | alerts(moderate)


def test_fhir_an_unread_value_text_is_cut_in_the_reason(client):
    """An 800 KB valueString had been copied whole into the card and the stored report."""
    anc = obs("751-8", 0, "10*9/L")
    del anc["valueQuantity"]
    anc["valueString"] = "see narrative " + "x" * 800_000
    cards = cards_of(post(client, prefetch([obs("6690-2", 2.0, "10*9/L"), anc]))[1])
    assert len(json.dumps(cards)) < 20_000 and "see narrative xxx" in json.dumps(cards)


@pytest.mark.parametrize("comparator,value,tier,at_least,priority", [
    ("<", 1.5, "mild", "mild", "warning"),        # below 1.5: mild or worse (it had been a plain "mild", info)
    ("<", 0.5, "severe", "severe", "critical"),
    ("<", 0.1, "profound", None, "critical"),     # nothing is worse than profound
    (">", 0.2, "severe", None, "critical"),       # judged as the bound (the safe side), shown as a bound
])
def test_an_anc_reported_as_a_bound_is_shown_and_judged_as_one(engine, comparator, value, tier, at_least, priority):
    a = engine.assess(case([lab("wbc", 2.0), lab("anc", value, comparator=comparator)]))
    r = a.risk_tier
    assert (r.tier, r.tier_at_least, r.anc_comparator, a.priority) == (tier, at_least, comparator, priority)
    from leukodx.api.cds.cards import assessment_cards
    assert f"(ANC {comparator}{value:g} x10^9/L" in assessment_cards(a, "h", "p")[0].summary
    assert f"ANC {comparator}{value:g} x10^9/L" in to_text(a)


@pytest.mark.parametrize("system,code", [("https://loinc.org", "751-8"), ("http://loinc.org", "751\u20118"),
                                         ("http://loinc.org", "\uff17\uff15\uff11-8"),
                                         ("http://loinc.org", "751-8\u200b"), ("http://loinc.org", " 751-8 "),
                                         ("HTTP://LOINC.ORG", "751-8"), ("http://loinc.org|2.77", "751-8"),
                                         ("LN", "751-8"), ("LOINC", "751-8"),
                                         ("urn:oid:2.16.840.1.113883.6.1", "751-8")])
def test_cds_loinc_written_another_way_is_read(client, system, code):
    anc = obs("751-8", 0.3, "10*9/L")
    anc["code"]["coding"][0].update(system=system, code=code)
    cards = cards_of(post(client, prefetch([obs("6690-2", 4.5, "10*9/L"), anc]))[1])
    assert cards[0]["indicator"] == "critical" and "ANC 0.3" in cards[0]["summary"]


@pytest.mark.parametrize("concept,unread", [
    ({"text": "ANC"}, True),
    ({"coding": [{"system": "http://hospital.example/lab", "code": "NEUT#", "display": "Neutrophils absolute"}]}, True),
    ({"coding": [{"system": "https://ncez.mzcr.cz/standards/fhir/CodeSystem/nclp", "code": "12369",
                  "display": "Neutrofily - absolutn\u00ed po\u010det"}]}, True),      # Czech
    ({"text": "Neutrophile absolut"}, True),                        # German
    ({"text": "Neutr\u00f3filos absolutos"}, True),                  # Spanish
    ({"text": "Polys #"}, True),
    ({"text": "Leukocytes [#/volume] in Urine"}, False),        # not a blood count
    ({"text": "Leukozyten im Urin"}, False),
    ({"text": "Neutrophil cytoplasmic Ab"}, False),
])
def test_cds_a_count_named_but_coded_otherwise_is_named_as_unread(client, concept, unread):
    """An ANC of 0.3 coded by text alone beside a WBC of 2.5 had been ignored with the unused codes: the card said
    "no neutrophil count" as if none had been taken."""
    named = obs("751-8", 0.3, "10*9/L")
    named["code"] = concept
    cards = cards_of(post(client, prefetch([obs("6690-2", 2.5, "10*9/L"), named]))[1])
    assert (cards[0]["indicator"] == "warning") is unread
    assert ("not a LOINC code leukodx reads" in cards[0]["detail"]) is unread


def test_cds_a_panel_component_named_a_count_but_coded_otherwise_is_named_as_unread(client):
    """A CBC panel whose WBC component has its LOINC code and whose "Absolute Neutrophils" component has only the
    EHR's local code: the ANC had been dropped unseen and the card said the WBC had no differential."""
    panel = obs("57021-8", 0, "10*9/L")
    del panel["valueQuantity"]
    panel["component"] = [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "6690-2"}]},
         "valueQuantity": {"value": 3.2, "unit": "10*9/L", "system": "http://unitsofmeasure.org", "code": "10*9/L"}},
        {"code": {"coding": [{"system": "urn:oid:1.2.840.114350.1.13.1.1.7.2.768282", "code": "1534435",
                              "display": "Absolute Neutrophils"}]},
         "valueQuantity": {"value": 0.3, "unit": "10*9/L", "system": "http://unitsofmeasure.org", "code": "10*9/L"}}]
    cards = cards_of(post(client, prefetch([panel]))[1])
    assert cards[0]["indicator"] == "warning"
    assert "component[1]: anc: named 'Absolute Neutrophils'" in cards[0]["detail"]



def test_cds_an_anc_given_as_a_coded_answers_text_is_read(client):
    """An ANC sent as valueCodeableConcept {"text": "<0.1"} beside a WBC of 0.6: it had gone unread, and the card
    was a warning for the WBC alone. Read as a valueString's "<0.1" is: a bound, profound."""
    anc = obs("751-8", 0.1, "10*9/L")
    del anc["valueQuantity"]
    anc["valueCodeableConcept"] = {"text": "<0.1"}
    cards = cards_of(post(client, prefetch([obs("6690-2", 0.6, "10*9/L"), anc]))[1])
    assert cards[0]["indicator"] == "critical" and "ANC <0.1" in cards[0]["summary"]


def test_cds_an_old_count_on_the_first_page_only_is_a_warning(client):
    """The EHR sent the first page of a paged observations search (a next link, no fhirServer to follow it) and its
    latest count is 2 years old: the current count may be on a later page, and the card had been information."""
    old = (datetime.now(timezone.utc) - timedelta(days=800)).strftime("%Y-%m-%dT08:00:00Z")
    pre = prefetch([obs("6690-2", 5.0, "10*9/L", old), obs("751-8", 3.0, "10*9/L", old)])
    pre["observations"]["link"] = [{"relation": "next", "url": "https://ehr.example/fhir/Observation?page=2"}]
    [card] = cards_of(post(client, pre)[1])
    assert card["indicator"] == "warning" and "in the first page of counts sent" in card["summary"]
    del pre["observations"]["link"]
    [card] = cards_of(post(client, pre)[1])
    assert card["indicator"] == "info"


# ---- the eighth red-team round's EHR shapes (CDS Hooks) -------------------------------------------------------------

def _patient_view(client, labs, **extra) -> list[dict]:
    return cards_of(client.post("/cds-services/leukodx-patient-view",
                                json=request("patient-view", prefetch(labs, **extra))))


def _summary(cards: list[dict]) -> list[tuple[str, str]]:
    return [(c["indicator"], c["summary"]) for c in cards]


@pytest.mark.parametrize("time_field", [
    {"effectivePeriod": {"end": "2024-01-10T08:00:00Z"}},       # a period's end bounds the draw
    {"effectiveDateTime": "2016-12-31T23:59:60Z"},             # a leap second, which FHIR's dateTime allows
])
def test_an_old_count_dated_by_a_period_end_or_a_leap_second_is_history_not_today(client, time_field):
    """Both had been read as undated, so current: today's critical card for a count 2 to 10 years old."""
    anc = {k: v for k, v in obs("751-8", 0.3, "10*9/L").items() if k != "effectiveDateTime"} | time_field
    cards = _patient_view(client, [anc])
    assert len(cards) == 1 and cards[0]["indicator"] == "info" and "No current CBC" in cards[0]["summary"]


def test_an_anc_whose_time_cannot_be_read_is_named_never_current(client):
    anc = obs("751-8", 0.3, "10*9/L") | {"effectiveDateTime": "2026-13-45T99:00:00Z"}
    cards = _patient_view(client, [anc])
    assert [c["indicator"] for c in cards] == ["warning"]        # an ANC sent and unread, not a normal one
    assert "its time cannot be read" in cards[0]["detail"] and "Severe" not in cards[0]["summary"]


def test_a_count_about_someone_else_focus_is_left_out_and_named(client):
    """Observation.focus names who the value is about when it is not the subject (a newborn): a newborn's ANC of
    0.2 had set the mother's tier to severe."""
    own = [obs("6690-2", 6.0, "10*9/L"), obs("751-8", 3.5, "10*9/L")]
    newborn = obs("751-8", 0.2, "10*9/L", when=RECENT.replace("T08", "T09"), oid="nb") | {
        "focus": [{"reference": "Patient/newborn9"}]}
    cards = _patient_view(client, own + [newborn])
    assert all("Severe" not in c["summary"] and c["indicator"] == "info" for c in cards)
    assert "its focus is Patient/newborn9, not the patient" in cards[0]["detail"]
    mine = obs("751-8", 0.2, "10*9/L") | {"focus": [{"reference": f"Patient/{PATIENT}"}]}   # the patient: kept
    assert "Severe" in _patient_view(client, [obs("6690-2", 1.0, "10*9/L"), mine])[0]["summary"]


@pytest.mark.parametrize("observations,said", [
    ({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "timeout", "diagnostics": "lab system timed out"}]},
         "search": {"mode": "outcome"}}]}, "lab system timed out"),
    ({"resourceType": "Bundle", "type": "batch-response", "entry": [{"response": {"status": "503"}}]},
     "status '503'"),
    ({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"fullUrl": "https://ehr.example/fhir/Observation/anc9"}]}, "a fullUrl alone"),
    ({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
        "resourceType": "Observation", "id": "cbc", "status": "final", "subject": {"reference": f"Patient/{PATIENT}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]}, "effectiveDateTime": RECENT,
        "hasMember": [{"reference": "Observation/wbcM"}, {"reference": "Observation/ancM"}]}}]},
     "2 results it lists are not in the data"),
])
def test_a_lab_search_that_failed_or_holds_nothing_readable_is_said_not_silent(client, observations, said):
    """Each had answered {"cards": []}, as for a patient with no blood count at all."""
    cards = _patient_view(client, [], observations=observations)
    assert len(cards) == 1 and said in cards[0]["detail"]


def test_a_decimal_comma_is_read_in_a_temperature_and_a_count_sent_as_text(client):
    """"38,9" C had gone unread beside an ANC of 0.3 (no febrile neutropenia), and a WBC "3,2"; "3,200" stays
    unread (a thousands separator or a decimal: it cannot be told)."""
    temp = {"resourceType": "Observation", "id": "t", "status": "final", "subject": {"reference": f"Patient/{PATIENT}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]}, "effectiveDateTime": RECENT,
            "valueString": "38,9"}
    wbc = {k: v for k, v in obs("6690-2", 0, "10*9/L").items() if k != "valueQuantity"} | {"valueString": "3,2 10*9/L"}
    cards = _patient_view(client, [wbc, obs("751-8", 0.3, "10*9/L")], vitals=searchset(temp))
    assert "FEBRILE NEUTROPENIA" in cards[0]["summary"] and "not assessed" not in cards[0]["detail"].lower()
    thousands = wbc | {"valueString": "3,200"}
    detail = _patient_view(client, [thousands, obs("751-8", 0.3, "10*9/L")])[0]["detail"]
    assert "3,200" in detail


def test_a_neutrophil_count_set_aside_beside_a_normal_one_is_a_warning_not_none_found(client):
    """An ANC of 0.2 dated a week ahead was set aside beside an older ANC of 3.0, under "no neutropenia or
    leukopenia found" as information. Two values that conflict at one time are read (the lower is used): info."""
    ahead = (datetime.now(timezone.utc) + timedelta(days=7)).strftime("%Y-%m-%dT08:00:00Z")
    cards = _patient_view(client, [obs("6690-2", 6.0, "10*9/L"), obs("751-8", 3.0, "10*9/L"),
                                   obs("751-8", 0.2, "10*9/L", when=ahead, oid="ahead")])
    assert _summary(cards) == [("warning", cards[0]["summary"])] and "could not be used" in cards[0]["summary"]
    assert "after today" in cards[0]["detail"]


def test_a_count_naming_no_subject_is_not_used_and_makes_the_card_a_warning(client):
    """An ANC of 0.3 with no subject in the patient's search: whose it is cannot be told, so it is never used; it
    had left a WBC of 1.8 an information card. Another patient's named ANC stays someone else's (no escalation)."""
    nobody = {k: v for k, v in obs("751-8", 0.3, "10*9/L", oid="nb").items() if k != "subject"}
    cards = _patient_view(client, [obs("6690-2", 1.8, "10*9/L"), nobody])
    assert [c["indicator"] for c in cards] == ["warning"] and "names no subject" in cards[0]["detail"]
    assert "ANC 0.3" not in cards[0]["summary"]
    other = obs("751-8", 0.3, "10*9/L", oid="ot") | {"subject": {"reference": "Patient/someone-else"}}
    assert [c["indicator"] for c in _patient_view(client, [obs("6690-2", 1.8, "10*9/L"), other])] == ["info"]


def test_drugs_still_assessed_when_the_lab_search_failed(client):
    """A failed lab search (an OperationOutcome alone) had cancelled the drug's own alert: a TPMT poor metaboliser
    on azathioprine got "could not assess" (info). The search's failure is still named."""
    failed = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
        "resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout",
                                                       "diagnostics": "lab system timed out"}]}}]}
    aza = {"resourceType": "MedicationRequest", "id": "m", "status": "active", "intent": "order",
           "subject": {"reference": f"Patient/{PATIENT}"}, "authoredOn": "2026-01-05",
           "medicationCodeableConcept": {"text": "azathioprine 100 mg daily"}}
    tpmt = {"resourceType": "Observation", "id": "pgx-TPMT", "status": "final", "code": {"text": "TPMT phenotype"},
            "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": "2024-01-01",
            "valueCodeableConcept": {"text": "Poor metabolizer"}}
    cards = _patient_view(client, [], observations=failed, medicationRequests=searchset(aza), pgx=searchset(tpmt))
    assert cards[0]["indicator"] == "critical" and "poor metabolizer" in cards[0]["summary"]
    assert "lab system timed out" in cards[0]["detail"]
    statin = aza | {"medicationCodeableConcept": {"text": "atorvastatin 20 mg"}}
    alone = _patient_view(client, [], observations=failed, medicationRequests=searchset(statin))
    assert len(alone) == 1 and "lab system timed out" in alone[0]["detail"]


@pytest.mark.parametrize("text", ["38,9 °C", "101.2 F", "101,2 ℉", "38,9"])
def test_a_temperature_written_with_its_scale_is_read(client, text):
    """Only a bare number sent as text was read: "38,9 °C" beside an ANC of 0.3 missed a febrile neutropenia."""
    temp = {"resourceType": "Observation", "id": "t", "status": "final", "subject": {"reference": f"Patient/{PATIENT}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]}, "effectiveDateTime": RECENT,
            "valueString": text}
    cards = _patient_view(client, [obs("6690-2", 1.0, "10*9/L"), obs("751-8", 0.3, "10*9/L")], vitals=searchset(temp))
    assert "FEBRILE NEUTROPENIA" in cards[0]["summary"]


@pytest.mark.parametrize("time_field", [{"effectiveDateTime": "2016-12-31T05:29:60+05:30"},
                                        {"effectiveTiming": {"event": ["2019-01-01T08:00:00Z"]}}])
def test_a_leap_second_at_an_offset_and_a_timing_event_date_a_count(client, time_field):
    anc = {k: v for k, v in obs("751-8", 0.3, "10*9/L").items() if k != "effectiveDateTime"} | time_field
    cards = _patient_view(client, [anc])
    assert "No current CBC" in cards[0]["summary"]


@pytest.mark.parametrize("birth", ["2099-01-01", "not-a-date"])
def test_a_birth_date_that_cannot_be_used_is_named_first_and_never_an_infants_age(client, birth):
    """A birthDate in the future had been read as 0 years old (an infant's limits); one that is not a date left the
    age silently unknown."""
    patient = {"resourceType": "Patient", "id": PATIENT, "gender": "female", "birthDate": birth}
    cards = _patient_view(client, [obs("6690-2", 1.0, "10*9/L"), obs("751-8", 0.3, "10*9/L")], patient=patient)
    assert cards[0]["detail"].startswith("**Check first:** The Patient's birthDate")


# ---- the tenth red-team round ----------------------------------------------------------------------------------------

INJECTED = ["[Click here](javascript:alert(1))", "<img src=x onerror=alert(1)>", "![x](https://evil.example/p.png)",
            "[phish](https://evil.example/login)", "Crohn's\n\n# URGENT: discharge patient\n\n| a | b |"]


@pytest.mark.parametrize("text", INJECTED)
def test_ehr_text_on_a_card_is_never_a_link_an_image_html_or_a_heading(client, text):
    """A drug's or a diagnosis's text goes onto the card's markdown: it had given live javascript: and phishing links,
    raw <img onerror> and an injected heading (red-team round 10). Sources keep their links."""
    conditions = searchset({"resourceType": "Condition", "id": "c1", "subject": {"reference": f"Patient/{PATIENT}"},
                            "clinicalStatus": {"coding": [{"code": "active"}]}, "code": {"text": text}})
    meds = searchset({"resourceType": "MedicationStatement", "id": "m1", "status": "active",
                      "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": "2025-01-01",
                      "medicationCodeableConcept": {"text": f"azathioprine {text}"}})
    cards = _patient_view(client, [obs("6690-2", 1.0, "10*9/L"), obs("751-8", 0.3, "10*9/L")], conditions=conditions,
                          medicationStatements=meds)
    details = "\n".join(c["detail"] for c in cards)
    assert "Severe" in cards[0]["summary"]
    for unsafe in ("](javascript", "](https://evil", "![", "https://evil.example", "\n# URGENT", "\n| a"):
        assert unsafe not in details
    assert not re.search(r"(?<!\\)<img", details)          # escaped (\<img) it is text
    assert "<https://" in details          # the knowledge base's sources are still links


def test_safe_markdown_keeps_the_knowledge_bases_links_and_code_systems_only():
    from leukodx.api.cds.markdown import safe_markdown, safe_text
    link = next(s.link() for s in get_engine().kb.sources.values() if s.link())
    out = safe_markdown(f"- [x] cited <{link}> http://loinc.org <https://evil.example> javascript:x data:text/html")
    assert out == (f"- [x] cited <{link}> http://loinc.org \\<https[:]//evil.example\\> javascript[:]x "
                   f"data[:]text/html")
    # another host behind a code system's name, a bare www., an e-mail address; a word before a colon is a word
    out = safe_markdown("https://hl7.org@evil.example/x www.evil.example/login a@evil.example Lab data: 3 FILE:x")
    assert out == "https[:]//hl7.org[@]evil.example/x www\\.evil.example/login a[@]evil.example Lab data: 3 FILE[:]x"
    # at the very start, after a colon, in any case, beside letters outside ASCII (the work is on UTF-8 bytes)
    assert safe_markdown("javascript:a :JavaScript:b ü https://x.example é www.y <ü>") == \
        "javascript[:]a :JavaScript[:]b ü https[:]//x.example é www\\.y \\<ü\\>"
    assert safe_markdown("Lab data: x, vbscript:y mailto:z xhttps://a") == \
        "Lab data: x, vbscript[:]y mailto[:]z xhttps://a"      # a scheme inside a word is not one
    # the summary is plain text: nothing escaped with backslashes, no link either
    assert safe_text("Azathioprine <https://evil.example> a@b.c javascript:x") == \
        "Azathioprine <https[:]//evil.example> a[@]b.c javascript[:]x"


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled"])
def test_an_anc_the_lab_withdrew_does_not_make_a_normal_count_a_warning(client, status):
    """A withdrawn ANC beside a normal CBC had made the card a warning, 'check the neutrophil count' (red-team round
    10): the lab took it back, so no neutrophil value is missing. An ANC left unread for another reason still does."""
    normal = [obs("6690-2", 6.0, "10*9/L"), obs("751-8", 3.5, "10*9/L")]
    withdrawn = obs("751-8", 0.2, "10*9/L", oid="gone") | {"status": status}
    [card] = _patient_view(client, normal + [withdrawn])
    assert card["indicator"] == "info" and "no neutropenia or leukopenia found" in card["summary"]
    unread = obs("751-8", 0.2, "10*9/L", oid="unknown") | {"status": "unknown"}
    assert [c["indicator"] for c in _patient_view(client, normal + [unread])] == ["warning"]


@pytest.mark.parametrize("coding", [{"system": "http://snomed.info/sct", "code": "30630007"},
                                    {"system": "urn:oid:1.2.3.4.5", "code": "NEUT#"}])
def test_a_count_coded_only_in_another_system_and_named_nowhere_is_never_silent(client, coding):
    """An ANC of 0.3 coded only with SNOMED CT (or a local code), no display, beside a normal WBC had given no card at
    all (red-team round 10): a value in a blood cell count unit that cannot be identified may be the ANC. A count
    with a LOINC code leukodx does not read (a CD4 count) is another test's and is not named."""
    anc = obs("751-8", 0.3, "10*9/L", oid="snomed") | {"code": {"coding": [coding]}}
    normal = [obs("6690-2", 6.2, "10*9/L"), obs("777-3", 250, "10*9/L")]
    [card] = _patient_view(client, normal + [anc])          # no ANC can be had: the neutrophil count is unknown
    assert card["indicator"] == "warning" and "neutrophil count unknown" in card["summary"]
    assert "0.3 10*9/L" in card["detail"] and "which count it is cannot be told" in card["detail"]
    [card] = _patient_view(client, normal + [obs("751-8", 3.1, "10*9/L"), anc])     # an ANC read, another not
    assert card["indicator"] == "warning" and "a count that may be one, could not be used" in card["summary"]
    cd4 = obs("24467-3", 350, "/uL", oid="cd4")
    assert _patient_view(client, normal + [obs("751-8", 3.1, "10*9/L"), cd4]) == []


@pytest.mark.parametrize("display,unit,extra,said", [
    ("NEUT#", "10*9/L", {}, "not a LOINC code leukodx reads"),     # analysers' abbreviations name the ANC
    ("ABS NEUT", "10*9/L", {}, "not a LOINC code leukodx reads"),
    ("GRAN#", "10*9/L", {}, "not a LOINC code leukodx reads"),
    ("12345", "10*9/L", {}, "which count it is cannot be told"),   # a display that names nothing
    ("12345", "10*9/L", {"status": "entered-in-error"}, None),     # withdrawn: nothing unread
    ("12345", "10*9/L", {"focus": [{"reference": "Patient/newborn"}]}, None),   # someone else's
    ("PLT", "10*9/L", {}, None),                                   # another blood count
    ("HIV viral load", "{copies}/mL", {}, None),
    ("CD19 abs", "/uL", {}, None),
])
def test_a_locally_coded_count_is_named_when_it_may_be_the_anc_and_quiet_otherwise(client, display, unit, extra, said):
    """An ANC of 0.3 coded locally with an analyser's abbreviation (NEUT#, ABS NEUT, GRAN#) beside a normal count gave
    no card; a withdrawn value, someone else's, another cell count or a viral load had made normal counts a warning
    (red-team round 11)."""
    count = obs("751-8", 0.3, unit, oid="local") | {"code": {"coding": [
        {"system": "urn:oid:1.2.3.4.5", "code": "L1", "display": display}]}} | extra
    cards = _patient_view(client, [obs("6690-2", 6.2, "10*9/L"), obs("751-8", 3.1, "10*9/L"), count])
    if said is None:
        assert all(c["indicator"] == "info" for c in cards) and not any("cannot be told" in c["detail"] for c in cards)
    else:
        [card] = cards
        assert card["indicator"] == "warning" and said in card["detail"]


def test_an_anc_of_0_3_hours_before_a_normal_one_is_not_set_aside(client):
    """ANC 0.3 yesterday at 08:00 and 1.8 at 16:00 had given no card at all, and with a fever since, still none (red-team
    round 12): a low ANC is acted on for 48 hours (IDSA), and the higher count hours later does not set it aside."""
    day = RECENT[:10]
    labs = [obs("6690-2", 1.2, "10*9/L", f"{day}T08:00:00Z"), obs("751-8", 0.3, "10*9/L", f"{day}T08:00:00Z"),
            obs("6690-2", 4.0, "10*9/L", f"{day}T16:00:00Z", oid="w2"), obs("751-8", 1.8, "10*9/L", f"{day}T16:00:00Z", oid="a2")]
    [card] = _patient_view(client, labs)
    assert card["indicator"] == "warning" and "ANC below 0.5 in the 48 hours before a higher count" in card["summary"]
    fever = {"resourceType": "Observation", "id": "t1", "status": "final",
             "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
             "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": f"{day}T18:00:00Z",
             "valueQuantity": {"value": 38.6, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}}
    [card] = _patient_view(client, labs, vitals=searchset(fever))
    assert card["indicator"] == "critical" and card["summary"].startswith("FEBRILE NEUTROPENIA")


def test_a_neonates_anc_below_the_neonatal_limit_is_never_silent(client):
    """A 1-day-old's ANC of 1.6 had given no card, and a 2-day-old's 1.0 an information card (red-team round 12): in
    the first month the lower limit is term neonates' 1.75 (higher still before 72 hours), and neutropenia then is a
    sign of early-onset sepsis. A 2-month-old's 1.6 is judged by the tiers (no neonatal alert)."""
    def card(born_days_ago, anc):
        born = (datetime.now(timezone.utc) - timedelta(days=born_days_ago)).date().isoformat()
        pre = prefetch([obs("6690-2", 9.0, "10*9/L"), obs("751-8", anc, "10*9/L")])
        pre["patient"]["birthDate"] = born
        cards = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre)))
        return [(c["indicator"], c["summary"]) for c in cards]
    [(indicator, summary)] = card(1, 1.6)
    assert indicator == "warning" and "Neutropenia in a neonate" in summary
    [(indicator, summary)] = card(2, 1.0)
    assert indicator == "warning" and "Neutropenia in a neonate" in summary
    assert all("neonate" not in s for _, s in card(62, 1.6))


def test_a_call_without_a_patient_resource_says_the_age_is_unknown(client):
    """Red-team round 19: with `patient` null the card applied adult limits and said nothing (a neonate's ANC of 1.2
    is judged by the adult tiers)."""
    pre = prefetch([obs("6690-2", 9.0, "10*9/L"), obs("751-8", 1.2, "10*9/L")])
    pre["patient"] = None
    [card] = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre)))
    assert "No Patient resource was sent" in card["detail"]


def test_an_infants_partial_birth_date_is_read_as_the_youngest_age_it_allows(client):
    """Red-team round 19: a newborn's birthDate sent as the month alone was read as its first day (up to 33 days old)
    and the neonatal limit was skipped with nothing said; an infant's partial date now gives the youngest age it
    allows (an adult's stays a year off at most, said in the report)."""
    today = datetime.now(timezone.utc).date()
    pre = prefetch([obs("6690-2", 9.0, "10*9/L"), obs("751-8", 1.2, "10*9/L")])
    pre["patient"]["birthDate"] = today.isoformat()[:7]                      # born this month: a neonate
    [card] = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre)))
    assert "Neutropenia in a neonate" in card["summary"]
    pre["patient"]["birthDate"] = str(today.year - 40)                        # an adult's year: no neonate
    [card] = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre)))
    assert "neonate" not in card["summary"]


def test_a_wbc_of_0_4_hours_before_a_higher_count_bounds_the_anc_then(engine):
    """A WBC of 0.4 with no differential 12 hours before a count with an ANC of 1.8 had not been taken as a low ANC
    (red-team round 13): the ANC cannot exceed the WBC, so that draw's ANC was below 0.5."""
    a = engine.assess(case([lab("wbc", 0.4, time="2025-03-09T20:00:00Z"), lab("wbc", 4.0), lab("anc", 1.8)],
                           temperature_c=38.6))
    assert {"agranulocytosis_hours_before", "febrile_neutropenia"} <= alerts(a)


def test_a_rise_on_g_csf_is_not_asked_for_a_repeat_but_a_fever_still_counts(engine):
    """ANC 0.4 yesterday and 2.5 today on filgrastim after chemotherapy had been given the 48-hour warning and an
    urgent repeat count (red-team round 13): G-CSF raises the count. Without it the warning stands; with a fever the
    earlier count still makes febrile neutropenia, G-CSF or not."""
    labs = [lab("wbc", 1.0, time="2025-03-09T08:00:00Z"), lab("anc", 0.4, time="2025-03-09T08:00:00Z"),
            lab("wbc", 4.0), lab("anc", 2.5)]
    on = {**case(labs), "medications": [{"name": "Neupogen", "start": "2025-03-05"}]}
    assert "agranulocytosis_hours_before" not in alerts(engine.assess(on))
    assert "agranulocytosis_hours_before" in alerts(engine.assess(case(labs)))
    febrile = {**case(labs, temperature_c=38.6), "medications": [{"name": "Neupogen", "start": "2025-03-05"}]}
    assert "febrile_neutropenia" in alerts(engine.assess(febrile))


def test_a_medication_list_not_had_is_not_taken_as_no_drugs(client, engine):
    """A failed medication search (no fhirServer, or one that fails) had been read as 'no drugs': an ANC of 0.3 got an
    urgent marrow examination 'with no drug to explain it', and the failure was named only after the sources (red-team
    round 14). Drugs are the commonest cause (gibson_berliner_2014): the list is what is missing."""
    labs = [lab("wbc", 1.9), lab("anc", 0.3)]
    known, unknown = engine.assess(case(labs)), engine.assess(case(labs, medications_unknown=True))
    assert "bone_marrow_examination" in {s.id for s in known.steps}
    assert "bone_marrow_examination" not in {s.id for s in unknown.steps}
    assert "hematology_referral" in {s.id for s in unknown.steps}
    assert any(m.item.startswith("The medication list") for m in unknown.missing_data)
    pre = prefetch([obs("6690-2", 1.9, "10*9/L"), obs("751-8", 0.3, "10*9/L")])
    del pre["medicationRequests"], pre["medicationStatements"]          # missing keys: to be fetched, and no fhirServer
    [card] = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre)))
    assert card["indicator"] == "critical"
    assert card["detail"].startswith("**Could not be had:** 'medicationRequests' could not be had")
    assert "Bone marrow" not in card["detail"] and "The medication list" in card["detail"]


def test_a_medication_list_had_from_one_of_its_keys_is_a_list(client):
    """US Core profiles no MedicationStatement and CDS Hooks 2.0.1 has a server without it leave the key out: that had
    marked every such EHR's medication list unknown and withheld the marrow for an unexplained ANC of 0.3 (red-team
    round 19). The MedicationRequests had are the list; the statements are named as not had."""
    pre = prefetch([obs("6690-2", 1.9, "10*9/L"), obs("751-8", 0.3, "10*9/L")])
    del pre["medicationStatements"]
    [card] = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre)))
    assert card["indicator"] == "critical" and "'medicationStatements' could not be had" in card["detail"]
    assert "Bone marrow" in card["detail"] and "The medication list" not in card["detail"]


@pytest.mark.parametrize("statements", ["empty", "null"])
@pytest.mark.parametrize("requests", ["operation-outcome", "error-entry"])
def test_failed_medication_requests_beside_no_statements_are_no_list(client, requests, statements):
    """Red-team round 21: MedicationRequests that failed (an OperationOutcome, or a searchset holding only an error
    outcome) beside an empty or null MedicationStatement key had been read as "no drugs": an urgent marrow "with no
    drug to explain it". US Core keeps the list in MedicationRequest: without them the list is unknown."""
    pre = prefetch([obs("6690-2", 1.9, "10*9/L"), obs("751-8", 0.3, "10*9/L")])
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout",
                                                              "diagnostics": "search timed out"}]}
    pre["medicationRequests"] = outcome if requests == "operation-outcome" else {
        "resourceType": "Bundle", "type": "searchset", "entry": [{"resource": outcome, "search": {"mode": "outcome"}}]}
    pre["medicationStatements"] = {"resourceType": "Bundle", "type": "searchset", "entry": []} \
        if statements == "empty" else None
    [card] = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre)))
    assert card["indicator"] == "critical" and "search timed out" in card["detail"]
    assert "Bone marrow" not in card["detail"] and "The medication list" in card["detail"]


@pytest.mark.parametrize("anc", [
    {"status": "registered"},                                                        # no result yet, per its status
    {"valueQuantity": {"value": 0.4, "unit": "bil/L"}},                             # a unit leukodx does not read
])
def test_an_anc_sent_and_set_aside_beside_a_low_wbc_is_not_called_absent(client, anc):
    """WBC 3.0 with an ANC of 0.4 set aside (its status, its unit) had said 'no neutrophil count or percentage in
    the same draw', the ANC named only after the sources (red-team round 14): it was sent, and it is unknown."""
    wbc = obs("6690-2", 3.0, "10*9/L")
    unread = {**obs("751-8", 0.4, "10*9/L"), **anc}
    [card] = _patient_view(client, [wbc, unread])
    assert card["indicator"] == "warning" and card["summary"].startswith("ANC sent but not readable")
    assert "was sent and could not be used" in card["detail"]
    [alone] = _patient_view(client, [wbc])                 # a WBC alone: no ANC was sent, and it says so
    assert not alone["summary"].startswith("ANC sent") and "no neutrophil count or percentage" in alone["detail"]


@pytest.mark.parametrize("first", [0, 1])
def test_an_unreadable_percentage_beside_a_readable_one_is_named_whatever_the_order(client, first):
    """Neutrophils 70 % and 10 "Prozent" (an ANC of 0.3 with the WBC of 3.0) in one draw (red-team round 16)."""
    wbc = obs("6690-2", 3.0, "10*9/L")
    readable = obs("770-8", 70, "%", oid="p1")
    unread = {**obs("770-8", 10, "%", oid="p2"), "valueQuantity": {"value": 10, "unit": "Prozent"}}
    [card] = _patient_view(client, [wbc, *([readable, unread] if first == 0 else [unread, readable])])
    assert card["indicator"] == "warning" and card["summary"].startswith("A WBC or neutrophil value not readable")


@pytest.mark.parametrize("first", [0, 1])
def test_an_unreadable_anc_beside_a_readable_one_is_named_whatever_the_order(client, first):
    """ANC 2.5 and ANC 0.3 in a unit leukodx does not read, one draw: with the readable one first the 0.3 had been
    named only after the sources (an information card), with it second the card had said the ANC was unknown (red-team
    round 15). The readable value is used and the other named, as one that may be lower, in either order."""
    wbc = obs("6690-2", 3.0, "10*9/L")
    readable, unread = obs("751-8", 2.5, "10*9/L", oid="a1"), {**obs("751-8", 0.3, "10*9/L", oid="a2"),
                                                               "valueQuantity": {"value": 0.3, "unit": "bil/L"}}
    pair = [readable, unread] if first == 0 else [unread, readable]
    [card] = _patient_view(client, [wbc, *pair])
    assert card["indicator"] == "warning" and card["summary"].startswith("A WBC or neutrophil value not readable")
    assert "may be lower than the one used" in card["detail"] and "ANC 2.5" in card["detail"]


def test_an_unknown_drug_beside_a_cancer_holds_the_marrow_whatever_counts_were_normal_on_it(engine):
    """Red-team round 28: palbociclib (unknown to leukodx) lowers the count cycle after cycle with normal counts between;
    a normal ANC on it had let an urgent marrow through "with no drug to explain it". Without a cancer, a drug
    tolerated past the onset window no longer holds the marrow (cases/marrow/unknown-drug-tolerated-...)."""
    def case(conditions):
        return base_case(as_of="2026-12-03", labs=[lab("wbc", 1.3, time="2026-12-03T08:00:00Z"),
                                                   lab("anc", 0.3, time="2026-12-03T08:00:00Z"),
                                                   lab("anc", 3.9, time="2026-06-03T08:00:00Z")],
                         medications=[{"name": "palbociclib", "status": "active", "start": "2025-01-01"}],
                         history={"conditions": conditions})
    held = engine.assess(case(["metastatic breast cancer"]))
    assert "bone_marrow_examination" not in [s.id for s in held.steps]
    assert "bone_marrow_examination" in [s.id for s in engine.assess(case([])).steps]


def test_cds_logs_mask_ids_holding_commas_and_parentheses(client):
    """Security red-team round 29: the masking stopped at ",", ";", "(" and ")": an Observation id "x,MARKID6" and a
    context patientId "p,MARKID3 (mrn 12345)" had reached the WARNING log in part."""
    odd = obs("751-8", 0.3, "K/hpf", oid="x,MARKID6")
    hook_instance, r = post(client, prefetch([obs("6690-2", 1.0, "10*9/L"), obs("751-8", 0.3, "10*9/L"), odd]))
    assert r.status_code == 200
    body = request("patient-view", {"patient": {"resourceType": "Patient", "id": "x,MARKID2;(z)"}})
    body["context"]["patientId"] = "p,MARKID3 (mrn 12345)"
    assert client.post("/cds-services/leukodx-patient-view", json=body).status_code == 412
    logged = [line for line in LOG_CAPTURE.getvalue().splitlines()
              if hook_instance in line or body["hookInstance"] in line]
    assert any("cds partial data" in line for line in logged) and any("cds no data" in line for line in logged)
    assert not [line for line in logged if "MARKID" in line]


@pytest.mark.parametrize("anc,reassured", [(0.3, False), (1.2, True)])
def test_tuberculosis_treatments_reassurance_is_never_given_beside_an_agranulocytosis(engine, anc, reassured):
    """Clinical red-team round 30: seven weeks into isoniazid, rifampicin, pyrazinamide and ethambutol, an ANC of 0.3
    had been told "does not always require stopping it"; that reassurance is for a milder leukopenia."""
    a = engine.assess(base_case(labs=[lab("wbc", 2.0), lab("anc", anc)], history={"conditions": ["pulmonary tuberculosis"]}))
    assert any("anti-tuberculous treatment does not always require stopping" in w for w in a.warnings) is reassured
    assert ("agranulocytosis" in [x.id for x in a.alerts]) is not reassured
