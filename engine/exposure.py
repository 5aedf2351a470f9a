"""The patient's context as facts: demographics, history (fever, transfusion, transplant, TPMT
method, smear, conditions) and drug exposure per drug and per class (active, recent, days on, days
since the last dose, dose in mg/kg/day)."""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any, Optional

from .kb import KnowledgeBase
from .pgx import cpic_pattern, dose_adjustment, within_reduced
from .normalize import CLASS_WINDOWS, NormCase, NormMed

__all__ = ["suspect_meds", "patient_facts", "drug_facts", "active_interactions", "started_after", "earlier_anc_facts"]


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
        if h.temperature_site is not None:
            site = kb.vitals["body_temperature"]["sites"][h.temperature_site]
            facts["temperature_site_reliable"] = bool(site["reliable"])
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
    if h.medications_unknown:
        facts["medications_unknown"] = True
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
    _tpmt_result_facts(nc, facts)


def _tpmt_result_facts(nc: NormCase, facts: dict[str, Any]) -> None:
    """When a TPMT result was obtained, against what can make it unreliable (CPIC): a transfusion before it
    (an activity, or a result whose method is not given), an allogeneic HSCT before it (a blood sample holds
    the donor's cells and DNA), a thiopurine already taken (raises the activity), an acute leukaemia
    (activity falsely low at diagnosis). An undated result is taken as obtained at the case date."""
    h = nc.case.history
    if not h.tpmt:
        return
    tested = _as_day(h.tpmt_test_date) if h.tpmt_test_date else nc.as_of
    transfusion = h.last_transfusion and _as_day(h.last_transfusion)
    if h.tpmt_method in ("activity", None) and transfusion and tested:
        facts["tpmt_activity_days_after_transfusion"] = _days(tested, transfusion)
    if nc.transplant_organ == "hsct":
        hsct = h.transplant.date if h.transplant else None
        if hsct is None or tested is None or _as_day(hsct) <= tested:
            facts["tpmt_after_allogeneic_hsct"] = True
    if h.tpmt_method == "activity":
        if h.tpmt_test_date and any("thiopurine" in m.classes and m.start and m.start < tested for m in nc.meds):
            facts["tpmt_activity_on_thiopurine"] = True
        if "acute_leukemia" in nc.conditions:
            facts["tpmt_activity_with_acute_leukemia"] = True


def _as_day(v: Any) -> date:
    return v.date() if isinstance(v, datetime) else v


def drug_facts(kb: KnowledgeBase, nc: NormCase, facts: dict[str, Any]) -> None:
    """Per class and per drug: active, recent (active or stopped within recent_drug_days), days on,
    days since the last dose, and the highest computable dose in mg/kg/day; per drug, a weekly drug
    given daily (taken now or recently)."""
    as_of = nc.as_of
    recent_days = kb.value("recent_drug_days")
    suspect = False
    taken, stopped = False, False       # a suspect drug taken now; one taken recently and stopped
    for med in nc.meds:
        active, stop_unknown, last_dose = _exposure(med, as_of)
        recent = active or stop_unknown or (last_dose is not None and last_dose <= recent_days)
        # days on the drug: to the case date while taken; for a course stopped recently, its length (a drug
        # stopped two days ago after 24 days stays in the onset windows that its days on decide)
        days_on = _days(as_of, med.start) if active else (_days(med.end, med.start) if recent and med.end else None)
        for stem in [f"drug_{med.drug_id}", *sorted(med.classes)]:
            if active:
                facts[f"{stem}_active"] = True
            if recent:
                facts[f"{stem}_recent"] = True
            if days_on is not None:
                facts[f"{stem}_days_on"] = max(facts.get(f"{stem}_days_on", 0.0), days_on)
                facts[f"{stem}_min_days_on"] = min(facts.get(f"{stem}_min_days_on", days_on), days_on)
            if last_dose is not None:
                key = f"{stem}_days_since_last_dose"
                facts[key] = min(facts.get(key, last_dose), last_dose)
            if med.dose_mg_kg_day is not None:
                key = f"{stem}_dose_mg_kg_day"
                facts[key] = _r(max(facts.get(key, 0.0), med.dose_mg_kg_day))
        if recent and med.daily_instead_of_weekly:     # an overdose taken lately still has its toxicity ahead
            facts[f"drug_{med.drug_id}_daily_instead_of_weekly"] = True
        if recent and med.classes & kb.suspect_classes:
            suspect = True
            taken, stopped = taken or active, stopped or not active
        # an anti-CD20 antibody is a suspect from the late-onset window's start (rituximab 27 days before the count
        # explained nothing, yet had switched the viral and autoimmune serology off)
        if "anti_cd20" in med.classes and last_dose is not None and \
                kb.value("anti_cd20_min_days") <= last_dose <= kb.value("anti_cd20_suspect_days"):
            suspect = True
    if suspect:
        facts["any_suspect_drug_recent"] = True
    if _unrecognised_drug_recent(nc, recent_days, kb.value("idiosyncratic_onset_max_days"), kb.value("neutropenia_anc")):
        facts["unrecognised_drug_recent"] = True
    if stopped and not taken:
        facts["suspect_drugs_all_stopped"] = True
    interacting: set[str] = set()
    for interaction in active_interactions(kb, nc):
        facts[f"interaction_{interaction['id']}"] = True
        interacting.update(name for side in interaction["names"] for name in side)
        if _dose_already_cut(interaction, nc):
            facts[f"interaction_{interaction['id']}_dose_already_cut"] = True
    if _thiopurine_dose_already_reduced(kb, nc):
        facts["thiopurine_dose_within_cpic_reduced"] = True
    _baseline_facts(kb, nc, facts, interacting)


_MED_FIELD = re.compile(r"medications\[(\d+)\]")


def _unrecognised_drug_recent(nc: NormCase, recent_days: float, onset_max_days: float, normal_anc: float) -> bool:
    """Whether a drug leukodx does not know (not in the vocabulary) is taken now, or was stopped on a day not given or
    within ``recent_days``: not weighed, so a count is not "unexplained by any drug" (Tapazol, a methimazole brand,
    started five weeks before an ANC of 0.3, had left an urgent marrow "with no drug to explain it"). Not one with a
    normal ANC (``normal_anc``) measured on it after the typical onset window (``onset_max_days`` from its start): it
    was tolerated past the time drug agranulocytosis begins (amlodipine since 2019, an ANC of 3.9 on it six months
    before, had held back the marrow of a new ANC of 0.3)."""
    for u in nc.unrecognised:
        at = _MED_FIELD.fullmatch(u.field) if u.kind == "drug" else None
        med = nc.case.medications[int(at.group(1))] if at else None
        if med is None or not (med.status == "active" or med.end is None or nc.as_of is None
                               or (nc.as_of - _as_day(med.end)).days <= recent_days):
            continue
        start = _as_day(med.start) if med.start is not None else None
        # beside a cancer, an unknown drug may be its treatment, lowering the count cycle after cycle with normal counts
        # between (palbociclib): tolerance is not read then
        if start is None or nc.cancer_current or not any(
                lab.test == "anc" and lab.time is not None and lab.value >= normal_anc
                and (lab.time.date() - start).days >= onset_max_days for lab in nc.labs):
            return True
    return False


def _thiopurine_dose_already_reduced(kb: KnowledgeBase, nc: NormCase) -> bool:
    """Every thiopurine taken now dosed within CPIC's reduced starting doses for the phenotype (pgx.within_reduced:
    one gene intermediate, mercaptopurine up to 1.2 mg/kg/day; a poor metabolizer with a malignancy, mercaptopurine
    10 mg/m2 on three days a week): "if normal starting dose is already < ... 1.5 mg/kg/day, dose reduction may not be
    recommended". A dose not known is not taken as reduced."""
    pattern = cpic_pattern(nc.tpmt.phenotype, nc.nudt15.phenotype)
    taken = [m for m in nc.meds if "thiopurine" in m.classes and _exposure(m, nc.as_of)[0]]
    weight = nc.case.patient.weight_kg
    rows = [dose_adjustment(kb, m.drug_id or "", pattern) for m in taken]
    return bool(taken) and all(within_reduced(row, m.drug_id or "", m.dose, weight, m.oncologic) is not None
                               for m, row in zip(taken, rows))


def _dose_already_cut(interaction: dict[str, Any], nc: NormCase) -> bool:
    """Every drug taken now on the interaction's first side whose dose it cuts (``dose_factor``) is dosed at or
    below that share of its normal starting dose (``normal_start_mg_kg_day``): reduced for the interaction already.
    A dose not known is not taken as cut."""
    factor, normal = interaction.get("dose_factor"), interaction.get("normal_start_mg_kg_day") or {}
    if not factor:
        return False
    taken = [m for m in nc.meds if m.drug_id in normal and _exposure(m, nc.as_of)[0]]
    return bool(taken) and all(m.dose_mg_kg_day is not None and m.dose_mg_kg_day <= normal[m.drug_id] * factor + 1e-9
                               for m in taken)


def suspect_meds(kb: KnowledgeBase, nc: NormCase) -> list[NormMed]:
    """The medications a cause may name as its agent: taken now, stopped or completed on a day not given, or last
    taken within their class's window (recent_drug_days; a cytotoxic drug's nadir window, an anti-CD20 antibody's suspect
    window). A mycophenolate stopped 16 months before had been named beside today's tacrolimus."""
    default = kb.value("recent_drug_days")
    return [m for m in nc.meds if _taken_within(m, nc.as_of, max(
        [kb.value(CLASS_WINDOWS[c]) for c in m.classes if c in CLASS_WINDOWS], default=default))]


def _recent(kb: KnowledgeBase, nc: NormCase) -> list[Any]:
    """The medications taken now or stopped within recent_drug_days."""
    return [m for m in nc.meds if _taken_within(m, nc.as_of, kb.value("recent_drug_days"))]


def _taken_within(med: NormMed, as_of: Optional[date], days: float) -> bool:
    """Taken now, stopped or completed on a day not given, or last taken at most ``days`` before ``as_of``."""
    active, stop_unknown, last_dose = _exposure(med, as_of)
    return active or stop_unknown or (last_dose is not None and last_dose <= days)


def _exposure(med: NormMed, as_of: Optional[date]) -> tuple[bool, bool, Optional[float]]:
    """(taken now, ended on a day not given, days since the last dose). The last dose of a stopped or completed course
    is its end; without an end, a stopped or completed one may have ended any day from its start up to now (a stopped
    one often because of the count): its last dose is unknown (None), and it counts as recent (a completed one begun
    beyond the onset window is dated by its start by normalize). For an active course of a drug given in cycles
    (rituximab) the last dose is not known either, so none is assumed."""
    if med.status == "active" and not (med.end and as_of and med.end < as_of):
        return True, False, None
    if med.end is None and med.status in ("stopped", "completed"):
        return False, True, None
    return False, False, _days(as_of, med.end or med.start)


def active_interactions(kb: KnowledgeBase, nc: NormCase) -> list[dict[str, Any]]:
    """The interactions of rules/interactions.yaml whose two sides are both taken, each with the names of
    the drugs on each side (``names``)."""
    recent = _recent(kb, nc)
    out: list[dict[str, Any]] = []
    if not recent:               # no drug taken: no interaction (most CDS calls)
        return out
    now = [m for m in recent if _exposure(m, nc.as_of)[0]]
    for interaction in kb.interactions:
        names = []
        taken = now if interaction.get("taken_now") else recent     # a switch from one to the other is no duplication
        for side in interaction["sides"]:
            drugs, classes, needs = set(side.get("drugs", [])), set(side.get("classes", [])), side.get("with_class")
            low = side.get("not_at_or_below_mg_day", {})     # e.g. aspirin at antiplatelet doses does not count
            names.append(sorted({m.drug_name or m.text for m in taken if (m.drug_id in drugs or m.classes & classes)
                                 and (needs is None or needs in m.classes)
                                 and not (m.drug_id in low and m.dose_mg_day is not None
                                          and m.dose_mg_day <= low[m.drug_id])}))
        if all(names):
            out.append({**interaction, "names": names})
    return out


def _baseline_facts(kb: KnowledgeBase, nc: NormCase, facts: dict[str, Any], interacting: set[str]) -> None:
    """A drug whose patient was already neutropenic or leukopenic before it started, and whose count has not fallen
    by falling_drop_pct since: `drug_<id>_low_before_start` and `<class>_low_before_start` (evidence against that
    drug). Neutropenic by the reported ANC; leukopenic by the WBC against its lower limit, when the ANC has not
    fallen. A drug whose patient had a normal ANC before it started and is neutropenic now, the ANC having fallen
    by falling_drop_pct: `drug_<id>_fell_after_start` and `<class>_fell_after_start` (evidence for it), unless it
    takes part in an interaction (``interacting``: the combination is then the suspect, rules/interactions.yaml)."""
    current_anc, current_wbc = facts.get("anc"), facts.get("wbc")
    falling = kb.value("falling_drop_pct")

    def not_fallen(before: float, now: float) -> bool:   # as count_drop_pct: a fall of falling_drop_pct or more is falling
        return before <= 0 or (before - now) / before * 100.0 < falling
    for med in nc.meds:
        if med.start is None:
            continue
        before = [lab for lab in nc.labs if lab.time is not None and lab.time.date() <= med.start
                  and lab.test in ("anc", "wbc")]
        anc = max((lab for lab in before if lab.test == "anc"), key=lambda lab: lab.time, default=None)
        wbc = max((lab for lab in before if lab.test == "wbc"), key=lambda lab: lab.time, default=None)
        anc_low = anc is not None and current_anc is not None and anc.value < kb.value("neutropenia_anc") \
            and not_fallen(anc.value, current_anc)
        anc_fell = anc is not None and current_anc is not None and not not_fallen(anc.value, current_anc)
        # a WBC low before (WBC 3.4 before sulfasalazine, 3.3 on it: the ANC of 1.9 had decided alone) counts too,
        # unless the ANC has fallen since
        wbc_low = wbc is not None and current_wbc is not None and "wbc_lln" in facts \
            and wbc.value < facts["wbc_lln"] and not_fallen(wbc.value, current_wbc) and not anc_fell
        low = anc_low or wbc_low
        # normal before the drug and neutropenic since, having fallen: the count's course points at it
        fell = anc_fell and anc.value >= kb.value("neutropenia_anc") > current_anc \
            and (med.drug_name or med.text) not in interacting   # a combination's drug: the combination is the suspect
        if low or fell:
            kind = "low_before_start" if low else "fell_after_start"
            for stem in [f"drug_{med.drug_id}", *sorted(med.classes)]:
                facts[f"{stem}_{kind}"] = True


def earlier_anc_facts(kb: KnowledgeBase, nc: NormCase, anc_points: dict[Optional[datetime], float],
                      current: Optional[datetime], facts: dict[str, Any],
                      wbc_only: Optional[dict[Optional[datetime], float]] = None) -> None:
    """The lowest ANC of an earlier draw (any but the current count's, dated) taken while a course of a drug
    was taken, from the day after its start (a count of the start day is its baseline, as for
    `_low_before_start`) to its end (to the case date while taken, or when stopped or completed on a day not given: it may
    have been stopped for that count): `drug_<id>_lowest_earlier_anc`, and `<class>_taken_lowest_earlier_anc` for the
    drugs taken now, over all their courses. A value reported as a bound ("<0.5")
    counts as the bound. With no ANC now (a WBC alone, or no current count), the latest ANC there is and its age:
    `last_anc`, `last_anc_age_days`. With one, the lowest ANC of the draws within anc_from_earlier_draw_hours before
    it, a draw's WBC with no ANC (``wbc_only``) counting as its bound: `lowest_anc_hours_before` (an ANC of 0.3 in
    the morning, or a WBC of 0.4, had been left unsaid beside 1.8 in the afternoon)."""
    window = timedelta(hours=kb.value("anc_from_earlier_draw_hours"))
    if "anc" in facts and current is not None:
        before = [v for t, v in {**(wbc_only or {}), **anc_points}.items()
                  if t is not None and current - window <= t < current]
        if before:
            facts["lowest_anc_hours_before"] = float(min(before))
    if "anc" not in facts and nc.as_of is not None:
        dated = [t for t in anc_points if t is not None and t.date() <= nc.as_of]
        if dated:
            latest = max(dated)
            facts["last_anc"] = float(anc_points[latest])
            facts["last_anc_age_days"] = float((nc.as_of - latest.date()).days)
    taken: dict[str, frozenset[str]] = {}       # drug -> its classes, for the drugs taken now
    for med in nc.meds:
        if med.start is None or med.drug_id is None:
            continue
        active, stop_unknown, _ = _exposure(med, nc.as_of)
        if active:
            taken[med.drug_id] = med.classes
        end = nc.as_of if active or stop_unknown else med.end or med.start
        on = [v for t, v in anc_points.items() if t is not None and t != current and end is not None
              and med.start < t.date() <= end]
        if on:
            key = f"drug_{med.drug_id}_lowest_earlier_anc"
            facts[key] = min(facts.get(key, min(on)), min(on))
    # a drug taken now, and its lowest ANC on any course of it (restarted after an agranulocytosis on an earlier one: a
    # rechallenge, which had passed unsaid)
    for drug_id, classes in taken.items():
        if (low := facts.get(f"drug_{drug_id}_lowest_earlier_anc")) is not None:
            for cls in classes:
                facts[f"{cls}_taken_lowest_earlier_anc"] = min(facts.get(f"{cls}_taken_lowest_earlier_anc", low), low)


def started_after(meds: list[NormMed], count_day: Optional[date]) -> list[NormMed]:
    """The drugs started after the day the current count was drawn (they cannot have caused it)."""
    return [m for m in meds if count_day is not None and m.start is not None and m.start > count_day]
