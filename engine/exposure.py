"""The patient's context as facts: demographics, history (fever, transfusion, transplant, TPMT
method, smear, conditions) and drug exposure per drug and per class (active, recent, days on, days
since the last dose, dose in mg/kg/day)."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any, Optional

from .kb import KnowledgeBase
from .normalize import NormCase

__all__ = ["patient_facts", "drug_facts"]


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def _days(a: Optional[date], b: Optional[date]) -> Optional[float]:
    return float((a - b).days) if a and b else None


def patient_facts(kb: KnowledgeBase, nc: NormCase, facts: dict[str, Any]) -> None:
    p, h = nc.case.patient, nc.case.history
    facts["sex"] = p.sex
    if p.age_years is not None:
        facts["age_years"] = float(p.age_years)
    if p.weight_kg is not None:
        facts["weight_kg"] = float(p.weight_kg)
    if p.duffy_null is not None:
        facts["duffy_null"] = p.duffy_null
    if nc.duffy_prevalent_ancestry:
        facts["duffy_prevalent_ancestry"] = True
    if h.temperature_c is not None:
        facts["temperature_c"] = float(h.temperature_c)
    if h.fever_sustained_1h is not None:
        facts["fever_sustained_1h"] = h.fever_sustained_1h
    if h.splenomegaly or "splenomegaly" in nc.conditions:
        facts["splenomegaly"] = True
    elif h.splenomegaly is False:
        facts["splenomegaly"] = False
    if h.alcohol_use_disorder or "alcohol_use_disorder" in nc.conditions:
        facts["alcohol_use_disorder"] = True
    elif h.alcohol_use_disorder is False:
        facts["alcohol_use_disorder"] = False
    for s in h.smear_findings:
        facts[f"smear_{s}"] = True
    for c in nc.conditions:
        facts[f"condition_{c}"] = True
    as_of = nc.as_of
    transfusion = h.last_transfusion and _as_day(h.last_transfusion)
    if transfusion and as_of:
        facts["days_since_transfusion"] = _days(as_of, transfusion)
    if nc.transplant_organ:
        facts["transplant_organ"] = nc.transplant_organ
        if h.transplant and h.transplant.date and as_of:
            facts["days_since_transplant"] = _days(as_of, _as_day(h.transplant.date))
    facts["tpmt_phenotype"] = nc.tpmt.phenotype
    facts["nudt15_phenotype"] = nc.nudt15.phenotype
    if h.tpmt_method:
        facts["tpmt_method"] = h.tpmt_method
        if h.tpmt_method == "activity" and transfusion:
            tested = _as_day(h.tpmt_test_date) if h.tpmt_test_date else as_of   # undated: assume tested now
            if tested:
                facts["tpmt_activity_days_after_transfusion"] = _days(tested, transfusion)


def _as_day(v: Any) -> date:
    return v.date() if isinstance(v, datetime) else v


def drug_facts(kb: KnowledgeBase, nc: NormCase, facts: dict[str, Any]) -> None:
    """Per class and per drug: active, recent (active or stopped within recent_drug_days), days on,
    days since the last dose, and the highest computable dose in mg/kg/day."""
    as_of = nc.as_of
    recent_days = kb.value("recent_drug_days")
    suspect = False
    for med in nc.meds:
        last = med.end or (med.start if med.status != "active" else None)
        active = med.status == "active" and not (med.end and as_of and med.end < as_of)
        since_last = 0.0 if active else _days(as_of, last)
        recent = active or (since_last is not None and since_last <= recent_days)
        days_on = _days(as_of, med.start) if active else None
        # The last dose is known for a stopped or completed course (its end, else its start). For an
        # active course of a drug given in cycles (rituximab) it is not, so none is assumed.
        last_dose = None if active else _days(as_of, med.end or med.start)
        for stem in [f"drug_{med.drug_id}", *sorted(med.classes)]:
            if active:
                facts[f"{stem}_active"] = True
            if recent:
                facts[f"{stem}_recent"] = True
            if days_on is not None:
                facts[f"{stem}_days_on"] = max(facts.get(f"{stem}_days_on", 0.0), days_on)
            if last_dose is not None:
                key = f"{stem}_days_since_last_dose"
                facts[key] = min(facts.get(key, last_dose), last_dose)
            if med.dose_mg_kg_day is not None:
                key = f"{stem}_dose_mg_kg_day"
                facts[key] = _r(max(facts.get(key, 0.0), med.dose_mg_kg_day))
        if recent and med.classes & kb.suspect_classes:
            suspect = True
        if "anti_cd20" in med.classes and last_dose is not None and last_dose <= kb.value("anti_cd20_suspect_days"):
            suspect = True
    if suspect:
        facts["any_suspect_drug_recent"] = True
