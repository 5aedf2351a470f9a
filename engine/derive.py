"""Derive: from normalized labs, medications and history to the facts the rules read.

* ANC = WBC x (neutrophils% + bands%) / 100 when no absolute count is given (likewise
  lymphocytes), per sample; a given absolute count that disagrees with the computed one by more
  than 10% is reported.
* the series (ANC where it can be had, else WBC): points, fall from the prior 90-day maximum,
  span of the current run of low values, nadir-to-nadir intervals;
* the neutrophil risk tier and CTCAE grades (tables from rules/);
* one flat fact per attribute, typed (float, bool, str) before durable-rules sees it.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Optional

from .assessment import Ctcae, CtcaeGrade, NormalizedLab, OriginalValue, RiskTier
from .kb import KnowledgeBase
from .normalize import NormCase, NormLab

__all__ = ["Derived", "derive", "tier_for", "ctcae_grades"]

_SUSPECT_CLASSES = ("thiopurine", "immunosuppressant", "cytotoxic_chemotherapy", "idiosyncratic_agranulocytosis",
                    "antimicrobial_myelotoxic", "immune_checkpoint_inhibitor")
# Anti-CD20 late-onset neutropenia appears weeks to months after the last dose, so the drug stays
# a suspect for a year after it (longer than any onset reported by Wolach 2010 / Dunleavy 2010).
_ANTI_CD20_SUSPECT_DAYS = 365


@dataclass
class Derived:
    facts: dict[str, Any]
    current: dict[str, float]
    labs_out: list[NormalizedLab]
    risk_tier: RiskTier
    ctcae: Ctcae
    warnings: list[str] = field(default_factory=list)


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def tier_for(kb: KnowledgeBase, anc: Optional[float]) -> str:
    """Neutrophil risk tier; a value exactly on a cutoff falls in the milder tier."""
    if anc is None:
        return "unknown"
    if anc >= kb.value("neutropenia_anc"):
        return "normal"
    if anc >= kb.value("moderate_anc"):
        return "mild"
    if anc >= kb.value("severe_anc"):
        return "moderate"
    if anc >= kb.value("profound_anc"):
        return "severe"
    return "profound"


def ctcae_grades(kb: KnowledgeBase, values: dict[str, float], llns: dict[str, float], version: str) -> Ctcae:
    spec = kb.ctcae["versions"][version]
    out: dict[str, Optional[CtcaeGrade]] = {}
    notes: list[str] = []
    for test, term in spec["terms"].items():
        if test not in values:
            continue
        v = values[test]
        lln = llns.get(test, term.get("default_lln"))
        grade, criterion = 0, "not decreased"
        for g in term["grades"]:
            bound = lln if g["below"] == "lln" else g["below"]
            if bound is not None and v < bound:
                grade = g["grade"]
                criterion = f"< {'LLN ' + format(bound, 'g') if g['below'] == 'lln' else format(bound, 'g')} x10^9/L"
                break
        else:
            if any(g["below"] == "lln" for g in term["grades"]) and lln is None:
                criterion = "not below the grade 2 cutoff; grade 1 needs the lab's LLN, which was not given"
        out[test] = CtcaeGrade(term=term["term"], grade=grade, value=v, criterion=criterion)
    if "lymphocytes" not in spec["terms"] and "lymphocytes" in values:
        notes.append(f"Lymphocyte count decreased is not graded in CTCAE v{version}.")
    return Ctcae(version=version, notes=notes, sources=list(spec["sources"]) + list(kb.ctcae.get("sources", [])), **out)


def _utc(t: Optional[datetime]) -> Optional[datetime]:
    """Sample times are kept as naive UTC inside the engine; the output says so (RFC 3339, with Z)."""
    return t.replace(tzinfo=timezone.utc) if t is not None else None


def _later(a: Optional[datetime], b: Optional[datetime]) -> bool:
    """Is sample time a later than b? An untimed value is the current sample, later than any timed one."""
    if a is None:
        return b is not None
    return b is not None and a > b


def _days(a: Optional[date], b: Optional[date]) -> Optional[float]:
    return float((a - b).days) if a and b else None


def derive(kb: KnowledgeBase, nc: NormCase, ctcae_version: Optional[str] = None) -> Derived:
    warnings: list[str] = []
    labs_out: list[NormalizedLab] = []
    # samples: time -> test -> lab (untimed values are the current sample)
    samples: dict[Optional[datetime], dict[str, NormLab]] = defaultdict(dict)
    for lab in nc.labs:
        samples[lab.time][lab.test] = lab
    current: dict[str, NormLab] = {}
    for lab in nc.labs:
        if lab.test not in current or _later(lab.time, current[lab.test].time):
            current[lab.test] = lab

    # per-sample derived absolute counts
    derived_points: dict[str, dict[Optional[datetime], float]] = {"anc": {}, "lymphocytes": {}}
    derivation_text: dict[tuple[str, Optional[datetime]], str] = {}
    for t, sample in samples.items():
        wbc = sample.get("wbc")
        if not wbc:
            continue
        for target, pcts in (("anc", ("neutrophils_pct", "bands_pct")), ("lymphocytes", ("lymphocytes_pct",))):
            if pcts[0] not in sample:
                continue
            pct = sum(sample[p].value for p in pcts if p in sample)
            value = _r(wbc.value * pct / 100.0)
            parts = " + ".join(f"{p.replace('_pct', '')} {sample[p].value:g}%" for p in pcts if p in sample)
            text = f"WBC {wbc.value:g} x ({parts}) / 100"
            given = sample.get(target)
            if given is None:
                derived_points[target][t] = value
                derivation_text[(target, t)] = text
            elif value > 0 and abs(given.value - value) / max(given.value, value) > 0.10:
                when = f" at {t.isoformat()}" if t else ""
                warnings.append(f"{target.upper() if target == 'anc' else target}{when}: the reported absolute count "
                                f"{given.value:g} and the one computed from the differential ({text} = {value:g}) "
                                f"differ by more than 10%; the reported value was used.")

    facts: dict[str, Any] = {}
    values: dict[str, float] = {test: lab.value for test, lab in current.items()}
    llns: dict[str, float] = {test: lab.lln for test, lab in current.items() if lab.lln is not None}
    derived_current: dict[str, Optional[datetime]] = {}
    for target, points in derived_points.items():
        # a derived count is current when its sample is later than any reported one
        for t in points:
            reported = current.get(target)
            if (reported is None or _later(t, reported.time)) and (
                    target not in derived_current or _later(t, derived_current[target])):
                derived_current[target] = t
        if target in derived_current:
            values[target] = points[derived_current[target]]
            llns.pop(target, None)
            facts[f"{target}_derived"] = True
    for test, v in values.items():
        facts[test] = float(v)
    for test, v in llns.items():
        facts[f"{test}_lln"] = float(v)
    facts.setdefault("wbc_lln", kb.value("wbc_lln_default"))
    facts.setdefault("lymphocytes_lln", kb.value("lymphocytes_lln_default"))
    for test in ("vitamin_b12", "folate", "copper"):
        if test in values and f"{test}_lln" not in facts:
            default = kb.thresholds[f"{test}_lln_default"]
            facts[f"{test}_lln"] = float(default["value"])
            warnings.append(f"{kb.tests[test]['name']} has no lower limit from the lab; it was judged against "
                            f"{default['value']:g} {default['unit']} ({', '.join(default['sources'])}).")

    # normalized labs out (originals kept), then derived ones
    for lab in sorted(nc.labs, key=lambda x: (x.test, x.time or datetime.max, x.index)):
        labs_out.append(NormalizedLab.model_construct(
            test=lab.test, name=kb.tests[lab.test]["name"], value=lab.value, unit=lab.unit, time=_utc(lab.time),
            lln=lab.lln,
            current=current.get(lab.test) is lab and lab.test not in derived_current,
            original=OriginalValue.model_construct(value=lab.original_value, unit=lab.original_unit, test=lab.original_test,
                                   loinc=lab.loinc)))
    for target, points in derived_points.items():
        for t, v in sorted(points.items(), key=lambda kv: kv[0] or datetime.max):
            labs_out.append(NormalizedLab.model_construct(
                test=target, name=kb.tests[target]["name"], value=v, unit="10^9/L", time=_utc(t),
                current=target in derived_current and derived_current[target] == t,
                derived=True, derivation=derivation_text[(target, t)]))

    age = nc.case.patient.age_years
    if age is not None and age < 15:
        warnings.append("The WBC (4.0) and anaemia (WHO adult) cutoffs are for adolescents and adults; children's "
                        "reference ranges differ, so give the lab's age-specific lower limits (lln)."
                        + (" The neutropenia tiers (ANC below 1.5) apply from 1 year of age; an infant's normal ANC "
                           "can be lower." if age < 1 else ""))
    _series_facts(kb, nc, samples, derived_points["anc"], facts)
    _patient_facts(kb, nc, facts)
    _drug_facts(kb, nc, facts)

    tier = tier_for(kb, values.get("anc"))
    facts["risk_tier"] = tier
    anc = values.get("anc")
    if anc is None:
        basis = "No ANC: neither an absolute neutrophil count nor a WBC with neutrophil percentage was given."
    elif facts.get("anc_derived"):
        basis = f"ANC {anc:g} x10^9/L derived from {derivation_text[('anc', derived_current['anc'])]}."
    else:
        basis = f"ANC {anc:g} x10^9/L as reported."
    duffy_note = None
    if nc.case.patient.duffy_null:
        duffy_note = ("Duffy-null phenotype: the healthy neutrophil count is lower (median ANC 2.8 vs 5.0 x10^9/L; "
                      "23.8% of Duffy-null people are below 2.0) and infections are not increased. The tier uses the "
                      "standard cutoffs; a mild neutropenia may be this patient's normal.")
    risk = RiskTier(tier=tier, anc=anc, basis=basis, anc_derived=bool(facts.get("anc_derived")),
                    cutoffs="normal >= 1.5; mild 1.0 to < 1.5; moderate 0.5 to < 1.0; severe 0.1 to < 0.5; "
                            "profound < 0.1 (x10^9/L); a value on a cutoff falls in the milder tier",
                    duffy_null_note=duffy_note,
                    sources=["taplitz_asco_idsa_2018_prophylaxis", "freifeld_idsa_2011"] +
                            (["merz_2023"] if duffy_note else []))
    version = ctcae_version or kb.ctcae.get("default_version", "5.0")
    grade_llns = {"wbc": facts["wbc_lln"], "lymphocytes": facts["lymphocytes_lln"]}
    if "anc_lln" in facts:
        grade_llns["anc"] = facts["anc_lln"]
    ctcae = ctcae_grades(kb, {k: values[k] for k in ("wbc", "anc", "lymphocytes") if k in values}, grade_llns, version)
    return Derived(facts=facts, current=values, labs_out=labs_out, risk_tier=risk, ctcae=ctcae, warnings=warnings)


def _series_facts(kb: KnowledgeBase, nc: NormCase, samples: dict[Optional[datetime], dict[str, NormLab]],
                  derived_anc: dict[Optional[datetime], float], facts: dict[str, Any]) -> None:
    """Trend facts over the ANC series (the WBC series when no ANC can be had)."""
    anc_points = {t: s["anc"].value for t, s in samples.items() if "anc" in s}
    for t, v in derived_anc.items():
        anc_points.setdefault(t, v)
    wbc_points = {t: s["wbc"].value for t, s in samples.items() if "wbc" in s}
    # the ANC series where it has at least two points, else the WBC series
    basis, points = ("anc", anc_points) if len(anc_points) >= 2 or len(wbc_points) < 2 else ("wbc", wbc_points)
    if not points:
        return
    as_of_dt = datetime.combine(nc.as_of, datetime.min.time()) if nc.as_of else None
    series = sorted(((t or as_of_dt, v) for t, v in points.items() if (t or as_of_dt) is not None),
                    key=lambda p: p[0])
    facts["series_points"] = float(len(series)) if series else 1.0
    if len(series) < 2:
        return
    low = kb.value("neutropenia_anc") if basis == "anc" else facts["wbc_lln"]
    latest_t, latest_v = series[-1]
    window = kb.value("trend_lookback_days")
    prior = [v for t, v in series[:-1] if (latest_t - t).days <= window]
    if prior and max(prior) > 0:
        facts["count_drop_pct"] = _r(max(0.0, (max(prior) - latest_v) / max(prior) * 100.0))
    run_start = None
    for t, v in reversed(series):
        if v < low:
            run_start = t
        else:
            break
    facts["low_span_days"] = float((latest_t - run_start).days) if run_start else 0.0
    if basis == "anc":
        facts["cyclic_intervals"] = float(_cyclic_intervals(kb, series))


def _cyclic_intervals(kb: KnowledgeBase, series: list[tuple[datetime, float]]) -> int:
    """Nadir-to-nadir intervals of cyclic length (14-35 days) with a recovery between the nadirs.

    A nadir episode is a run of consecutive values below the nadir level; its time is that of its
    lowest value. Two episodes count as one interval when a value at or above the neutropenia
    cutoff lies between them.
    """
    nadir_level, recovery = kb.value("cyclic_nadir_anc"), kb.value("neutropenia_anc")
    lo, hi = kb.value("cyclic_min_days"), kb.value("cyclic_max_days")
    episodes: list[tuple[datetime, float, bool]] = []   # (time of minimum, minimum, recovered before it)
    current: Optional[list[Any]] = None
    recovered = False
    for t, v in series:
        if v < nadir_level:
            if current is None:
                current, recovered = [t, v, recovered], False
            elif v < current[1]:
                current[0], current[1] = t, v
        else:
            if current is not None:
                episodes.append((current[0], current[1], current[2]))
                current = None
            recovered = recovered or v >= recovery
    if current is not None:
        episodes.append((current[0], current[1], current[2]))
    return sum(1 for a, b in zip(episodes, episodes[1:]) if b[2] and lo <= (b[0] - a[0]).days <= hi)


def _patient_facts(kb: KnowledgeBase, nc: NormCase, facts: dict[str, Any]) -> None:
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


def _drug_facts(kb: KnowledgeBase, nc: NormCase, facts: dict[str, Any]) -> None:
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
        if recent and med.classes & set(_SUSPECT_CLASSES):
            suspect = True
        if "anti_cd20" in med.classes and last_dose is not None and last_dose <= _ANTI_CD20_SUSPECT_DAYS:
            suspect = True
    if suspect:
        facts["any_suspect_drug_recent"] = True
