"""Rank (engine/rank.py): the evidence for and against each cause summed and ranked. A cause is
listed only when a rule supports it; the drugs behind a drug cause are named as its agents."""
from __future__ import annotations

from conftest import base_case, lab


def test_duffy_null_isolated_mild_neutropenia_no_marrow(engine):
    a = engine.assess(base_case(patient={"sex": "female", "age_years": 30, "duffy_null": True},
                                labs=[lab("wbc", 3.2), lab("anc", 1.2), lab("hemoglobin", 13, "g/dL"),
                                      lab("platelets", 220)]))
    assert a.causes[0].id == "duffy_null_associated_neutrophil_count"
    assert "bone_marrow_examination" not in [s.id for s in a.steps]
    assert a.risk_tier.duffy_null_note and "merz_2023" in a.risk_tier.sources


def test_causes_without_support_are_not_listed_and_each_item_has_sources(engine):
    a = engine.assess(base_case())
    assert a.causes == [] and a.alerts == [] and a.risk_tier.tier == "normal"
    b = engine.assess(base_case(labs=[lab("wbc", 2.0), lab("anc", 0.8)],
                                medications=[{"name": "Bactrim", "start": "2025-02-10"}]))
    for item in [*b.causes, *b.steps, *b.alerts, *b.findings]:
        assert item.sources and all(s in b.sources for s in item.sources)
    assert b.causes[0].id == "idiosyncratic_drug_agranulocytosis"
    assert b.causes[0].agents == ["trimethoprim-sulfamethoxazole"]   # the vocabulary's name for "Bactrim"
