"""Derive: from normalized labs, medications and history to the facts the rules read.

* the current CBC: values grouped into draws (samples.py), the latest draw with a WBC or ANC no older
  than current_cbc_max_age_days; older counts are history;
* ANC = WBC x (neutrophils% + bands%) / 100, or segmented + band neutrophil counts, within one draw when no
  absolute count is given (samples.derived_count; likewise lymphocytes); a reported ANC that disagrees with the
  derived one by more than anc_disagreement_fraction gives way to the lower, and so does an ANC-only recount
  within cbc_same_draw_hours of a lower ANC (samples.lower_recount); without any ANC, the WBC bounds it (anc_max);
* the neutrophil risk tier and CTCAE grades (tables from rules/), with the count's date and age;
* trends (trends.py), the patient's context and drug exposure (exposure.py) and lower limits (limits.py) as facts;
* one flat fact per attribute, typed (float, bool, str) as rules/facts.yaml declares.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Optional

from pydantic import TypeAdapter

from .assessment import CbcStatus, Ctcae, CtcaeGrade, NormalizedLab, ReferenceLimit, RiskTier
from .kb import KnowledgeBase
from .limits import reference_limits
from .normalize import NormCase, NormLab
from .exposure import drug_facts, earlier_anc_facts, patient_facts, started_after
from .samples import (DERIVABLE, DIFFERENTIAL_TESTS, Sample, age_days, aware_utc, cbc_status, days_text,
                      derived_count, from_upper_bound, group_samples, lower_recount, other_differential,
                      unpaired_percentage)
from .trends import anc_by_draw, series_facts
from .units import count_text

__all__ = ["Derived", "derive", "tier_for", "ctcae_grades"]

_NUTRIENT_TESTS = ("vitamin_b12", "folate", "copper")
_LABS = TypeAdapter(list[NormalizedLab])


@dataclass
class Derived:
    facts: dict[str, Any]
    current: dict[str, float]
    labs_out: list[NormalizedLab]
    risk_tier: RiskTier
    ctcae: Ctcae
    warnings: list[str] = field(default_factory=list)
    cbc: Optional[CbcStatus] = None
    reference_limits: list[ReferenceLimit] = field(default_factory=list)
    count_day: Optional[date] = None     # the day the current count was drawn (rank: a drug started later is no cause)


def _shown(lab: NormLab) -> float:
    """A lab's value as shown: a "<" bound as written (it is judged just below it, normalize)."""
    return float(f"{lab.value:.10g}") if lab.comparator else lab.value


def _as_reported(lab: NormLab) -> str:
    if lab.comparator in ("<", "<="):
        return f"as reported ({lab.comparator}{_shown(lab):g}: a bound, judged as below it)"
    if lab.comparator:
        return f"as reported ({lab.comparator}{_shown(lab):g}: a bound, judged as the bound)"
    return "as reported"


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


def ctcae_grades(kb: KnowledgeBase, values: dict[str, float], llns: dict[str, float], version: str,
                 no_default: frozenset[str] = frozenset()) -> Ctcae:
    """CTCAE grades; a test in ``no_default`` (a child's WBC with no limit for the age) is not graded 1 against the
    adult default LLN (a 9-month-old's WBC of 3.0 had been "grade 1, < LLN 4")."""
    spec = kb.ctcae["versions"][version]
    out: dict[str, Optional[CtcaeGrade]] = {}
    notes: list[str] = []
    for test, term in spec["terms"].items():
        if test not in values:
            continue
        v = values[test]
        lln = llns.get(test, None if test in no_default else term.get("default_lln"))
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


def _current_values(kb: KnowledgeBase, nc: NormCase, samples: list[Sample], cbc: Optional[Sample]
                    ) -> dict[str, NormLab]:
    """Current value per test: WBC, ANC and the differential from the current CBC only (when there is one);
    any other value the latest within the CBC window (B12, folate and copper: within theirs)."""
    current: dict[str, NormLab] = {}
    if cbc is not None:
        current.update(cbc.values)
    cbc_days, nutrient_days = kb.value("current_cbc_max_age_days"), kb.value("current_nutrient_max_age_days")
    for sample in samples:                 # oldest first, so later values replace earlier ones
        for test, lab in sample.values.items():
            if test in DIFFERENTIAL_TESTS and cbc is not None:
                continue
            limit = nutrient_days if test in _NUTRIENT_TESTS else cbc_days
            age = age_days(lab.time, nc.as_of)
            if age is None or age <= limit:
                current[test] = lab
    return current


def _earlier_anc(kb: KnowledgeBase, samples: list[Sample], cbc: Optional[Sample],
                 anc_points: dict[Optional[datetime], float],
                 derived_anc: dict[str, tuple[Optional[datetime], float, str]], values: dict[str, float]
                 ) -> Optional[tuple[Sample, float, Optional[NormLab], str]]:
    """The current draw has a WBC and no ANC: the ANC (trends.anc_by_draw) of the latest earlier draw within
    anc_from_earlier_draw_hours when below that WBC, the worse side (an old normal ANC never masks a new low WBC):
    the draw, the ANC, its reported value's lab (None: derived there) and how it was had."""
    wbc = values.get("wbc")
    if cbc is None or cbc.time is None or wbc is None or "anc" in values:
        return None
    window = timedelta(hours=kb.value("anc_from_earlier_draw_hours"))
    for sample in reversed(samples):                       # newest first
        if sample.time is None or sample.time >= cbc.time:
            continue
        if cbc.time - sample.time > window:
            return None
        value = anc_points.get(sample.time)
        if value is None:
            continue
        given = sample.values.get("anc")
        if given is not None and given.value == value:
            lab, text = given, _as_reported(given)
        else:
            lab, text = None, f"derived from {derived_anc[sample.key][2]}"
        return (sample, value, lab, text) if value < wbc else None
    return None


def derive(kb: KnowledgeBase, nc: NormCase, ctcae_version: Optional[str] = None) -> Derived:
    warnings: list[str] = []
    samples = group_samples(nc.labs, kb.value("cbc_same_draw_hours"))
    max_age = int(kb.value("current_cbc_max_age_days"))
    cbcs = [s for s in samples if s.is_cbc]
    latest_cbc = cbcs[-1] if cbcs else None
    latest_age = age_days(latest_cbc.time, nc.as_of) if latest_cbc else None
    cbc = latest_cbc if latest_cbc is not None and (latest_age is None or latest_age <= max_age) else None
    current = _current_values(kb, nc, samples, cbc)

    # absolute counts derived within each draw
    derived_points: dict[str, dict[str, tuple[Optional[datetime], float, str]]] = {"anc": {}, "lymphocytes": {}}
    with_bands = kb.tests["neutrophils_pct"].get("includes_bands", ())
    for sample in samples:
        for target, pcts in DERIVABLE:
            got = derived_count(sample, target, pcts, with_bands)
            if got is not None:
                derived_points[target][sample.key] = (sample.time, got[0], got[1])

    facts: dict[str, Any] = {}
    values: dict[str, float] = {test: lab.value for test, lab in current.items()}
    llns: dict[str, float] = {test: lab.lln for test, lab in current.items() if lab.lln is not None}
    derived_current: dict[str, str] = {}     # target -> key of the draw its current value was derived in
    anc_source: Optional[str] = None
    anc_text = ""
    anc_below = False                        # the ANC was derived from a WBC or percentage reported as "<" a value
    tolerance = kb.value("anc_disagreement_fraction")

    def stand_in(draw: Sample, lab: Optional[NormLab]) -> str:
        """An earlier draw's ANC stands for the current draw's: its reported value ``lab``, else its derived one."""
        llns.pop("anc", None)
        if lab is None:
            derived_current["anc"], facts["anc_derived"] = draw.key, True
            return "derived"
        current["anc"] = lab
        if lab.lln is not None:
            llns["anc"] = lab.lln
        return "reported"
    if cbc is not None:
        for target, _pcts in DERIVABLE:
            point = derived_points[target].get(cbc.key)
            given = cbc.values.get(target)
            if point is None:
                if target == "anc" and given is not None:
                    anc_source, anc_text = "reported", _as_reported(given)
                continue
            _t, value, text = point
            if given is None:
                values[target] = value
                llns.pop(target, None)
                derived_current[target] = cbc.key
                facts[f"{target}_derived"] = True
                if target == "anc":
                    anc_source, anc_text = "derived", f"derived from {text}"
                    anc_below = from_upper_bound(cbc, _pcts)
                    if anc_below:
                        anc_text += " (from a value reported as a bound: the ANC is below it)"
                continue
            differs = value > 0 and abs(given.value - value) / max(given.value, value) > tolerance
            if target == "anc":
                anc_source, anc_text = "reported", _as_reported(given)
                if differs:
                    low = min(given.value, value)
                    values["anc"] = low
                    anc_source = "lower_of_reported_and_derived"
                    anc_text = (f"the lower of the reported ANC {given.value:g} and the one computed from the same "
                                f"draw ({text} = {value:g}), which differ by more than {tolerance:.0%}")
                    warnings.append(f"ANC: the reported absolute count {given.value:g} and the one computed from "
                                    f"the differential ({text} = {value:g}) differ by more than {tolerance:.0%}; the "
                                    f"lower ({low:g}) was used for the tier and the alerts. Check the differential "
                                    f"(a manual count) before acting on the higher value.")
                    if low == value:
                        derived_current["anc"] = cbc.key
                        facts["anc_derived"] = True
                        llns.pop("anc", None)
            elif differs:
                warnings.append(f"{target}: the reported absolute count {given.value:g} and the one computed from "
                                f"the differential ({text} = {value:g}) differ by more than {tolerance:.0%}; the "
                                f"reported value was used.")
    anc_points = anc_by_draw(samples, derived_points["anc"])     # the ANC of each draw: trends, courses, recounts
    earlier = _earlier_anc(kb, samples, cbc, anc_points, derived_points["anc"], values)
    if earlier is not None:             # the current draw's WBC with no differential: an earlier, lower ANC
        assert cbc is not None and cbc.time is not None
        anc_draw, value, lab, text = earlier
        values["anc"], anc_source = value, stand_in(anc_draw, lab)
        hours = (cbc.time - anc_draw.time).total_seconds() / 3600
        anc_text = (f"{text}, from the draw of {anc_draw.time:%Y-%m-%d %H:%M}, {hours:.3g} h before the latest count "
                    f"(WBC {values['wbc']:g} with no differential, which bounds the ANC above at that value)")
        warnings.append(f"ANC: the latest count (WBC {values['wbc']:g}, {cbc.time:%Y-%m-%d %H:%M}) has no "
                        f"differential; the ANC {value:g} of the draw {hours:.3g} h before it, lower than that WBC, "
                        f"was used for the tier and the alerts. Repeat the differential.")
    recount = lower_recount(samples, cbc, anc_points, kb.value("cbc_same_draw_hours"), tolerance)
    if recount is not None:             # an ANC-only recount shortly after a lower ANC: the lower stands
        assert cbc is not None and cbc.time is not None and recount[0].time is not None
        (draw, low), minutes = recount, (cbc.time - recount[0].time).total_seconds() / 60
        warnings.append(f"ANC: the latest count ({values['anc']:g}, {cbc.time:%Y-%m-%d %H:%M}) has no WBC and comes "
                        f"{minutes:.0f} min after an ANC of {low:g}: counts that far apart that close together cannot "
                        f"both be right; the lower was used for the tier and the alerts. Repeat the CBC with a "
                        f"differential.")
        anc_text = (f"the lower of two ANCs {minutes:.0f} min apart ({low:g} at {draw.time:%H:%M}, {values['anc']:g} "
                    f"after)")
        reported = draw.values.get("anc")
        values["anc"], anc_source = low, stand_in(draw, reported if reported is not None and reported.value == low
                                                  else None)
    other = other_differential(samples, cbc, kb.value("cbc_same_draw_hours"), with_bands)
    if other is not None and values.get("anc") is not None and values["anc"] - other[1] > tolerance * values["anc"]:
        draw, low, text = other          # a second differential of the draw, lower: the worse side stands
        warnings.append(f"ANC: a differential of {draw.time:%Y-%m-%d %H:%M} with no count of its own ({text} = {low:g}, "
                        f"with the latest WBC) is lower than the ANC {values['anc']:g} of the latest count; the lower was "
                        f"used for the tier and the alerts. Check which differential is valid (a manual count).")
        anc_text, values["anc"], anc_source = f"derived from {text} (a differential of {draw.time:%H:%M})", low, \
            stand_in(draw, None)
    # the ANC cannot exceed the WBC of the same draw: a bound when no ANC can be had
    anc_at_most: Optional[float] = None
    if "anc" not in values and "wbc" in values:
        anc_at_most = values["wbc"]
        anc_source, anc_text = "bounded_by_wbc", ""
    if "anc" in values or anc_at_most is not None:
        facts["anc_max"] = float(values.get("anc", anc_at_most))   # type: ignore[arg-type]
    for test, v in values.items():
        facts[test] = float(v)
    for test, v in llns.items():
        facts[f"{test}_lln"] = float(v)
    limits = reference_limits(kb, nc, llns, facts)
    facts.setdefault("lymphocytes_lln", kb.value("lymphocytes_lln_default"))
    for test in _NUTRIENT_TESTS:
        if test in values and f"{test}_lln" not in facts:
            default = kb.thresholds[f"{test}_lln_default"]
            facts[f"{test}_lln"] = float(default["value"])
            warnings.append(f"{kb.tests[test]['name']} has no lower limit from the lab; it was judged against "
                            f"{default['value']:g} {default['unit']} ({', '.join(default['sources'])}).")
    if latest_cbc is not None and cbc is None:
        facts["cbc_stale"] = True
        facts["latest_cbc_age_days"] = float(latest_age or 0)
    elif cbc is not None and latest_age is not None:
        facts["cbc_age_days"] = float(latest_age)

    # normalized labs out (originals kept), then derived ones: validated as one list (an EHR's case has hundreds,
    # and one call into pydantic-core for all of them costs a quarter less than a constructor call for each)
    current_ids = {id(lab) for test, lab in current.items() if test not in derived_current}
    rows: list[dict[str, Any]] = [
        {"test": lab.test, "name": kb.tests[lab.test]["name"], "value": _shown(lab), "unit": lab.unit,
         "time": aware_utc(lab.time), "lln": lab.lln, "age_days": age_days(lab.time, nc.as_of),
         "current": id(lab) in current_ids, "ref": lab.ref, "comparator": lab.comparator,
         "original": {"value": lab.original_value, "unit": lab.original_unit, "test": lab.original_test,
                      "loinc": lab.loinc}}
        for lab in sorted(nc.labs, key=lambda x: (x.test, x.time or datetime.max, x.index))]
    for target, points in derived_points.items():
        for key, (t, v, text) in sorted(points.items(), key=lambda kv: kv[1][0] or datetime.max):
            rows.append({"test": target, "name": kb.tests[target]["name"], "value": v, "unit": "10^9/L",
                         "time": aware_utc(t), "age_days": age_days(t, nc.as_of),
                         "current": derived_current.get(target) == key, "derived": True, "derivation": text})
    labs_out = _LABS.validate_python(rows)

    age = nc.case.patient.age_years
    for test in ("wbc", "hemoglobin"):
        if test in values and f"{test}_lln" not in facts:
            warnings.append(f"{kb.tests[test]['name']}: no lower limit for a patient of this age from the lab or from "
                            f"leukodx's reference table (rules/reference_intervals.yaml); give the lab's "
                            f"age-specific lower limit (lln) so that it can be judged.")
    if age is not None and age < 1:
        warnings.append(f"The neutropenia tiers (ANC below {kb.value('neutropenia_anc'):g}) apply from 1 year of age; "
                        f"an infant's normal range differs with age (it is not always lower: a newborn's is higher in "
                        f"the first days): judge the count by the laboratory's limit for the age.")
    if cbc is not None:
        series_facts(kb, nc, samples, cbc, anc_points, facts)
        alone = [lab for lab in cbc.values.values() if lab.day_only]
        if alone and len(alone) < len(cbc.values) and cbc.time is not None:     # paired by samples.group_samples
            warnings.append(f"{', '.join(kb.tests[lab.test]['name'] for lab in alone)}, dated {cbc.time.date()} with no "
                            f"time of day, was taken as part of that day's only timed draw ({cbc.time:%H:%M}).")
    patient_facts(kb, nc, facts)
    drug_facts(kb, nc, facts)
    earlier_anc_facts(kb, nc, anc_points, cbc.time if cbc is not None else None, facts,
                      {s.time: s.values["wbc"].value for s in samples if "wbc" in s.values and s.time not in anc_points})
    count_day = cbc.time.date() if cbc is not None and cbc.time is not None else None
    suspects = kb.derived.get("cause_drug_classes")
    if suspects is None:
        suspects = kb.derived["cause_drug_classes"] = {c for e in kb.causes.values() for c in e.drug_classes}
    for med in started_after([m for m in nc.meds if m.classes & suspects], count_day):
        warnings.append(f"medications[{med.index}] {med.text!r} started {med.start}, after the current count was "
                        f"drawn ({count_day}): it cannot have caused that count and is not ranked as its cause.")

    anc = values.get("anc")
    tier = tier_for(kb, anc)
    infant_lln = llns.get("anc") if age is not None and age < 1 else None     # the laboratory's limit for the age
    if tier == "mild" and infant_lln is not None and anc is not None and anc >= infant_lln:
        tier, facts["anc_normal_for_age"] = "normal", True      # the 1.5 cut-off applies from 1 year of age
    facts["risk_tier"] = tier
    anc_lab = current.get("anc") if derived_current.get("anc") is None else None
    anc_time = (anc_lab.time if anc_lab else earlier[0].time if earlier else recount[0].time if recount else cbc.time
                ) if cbc is not None else None
    anc_age = age_days(anc_time, nc.as_of)
    if anc is not None and anc_age is not None:
        facts["anc_age_days"] = float(anc_age)
    when = f" (blood drawn {anc_time.date().isoformat()}, {days_text(anc_age)} before {nc.as_of.isoformat()})" \
        if anc_time is not None and anc_age is not None and nc.as_of else ""
    tier_at_least = None
    bound = anc_lab.comparator if anc_lab is not None and anc == anc_lab.value else None   # reported as "<0.1"
    comparator = "<" if anc_below else bound
    if cbc is None and latest_cbc is not None:
        assert latest_cbc.time is not None and latest_age is not None
        basis = (f"No current CBC: the latest count was drawn {latest_cbc.time.date().isoformat()}, {latest_age} days "
                 f"before {nc.as_of}; counts older than {max_age} days are history and set no tier.")
    elif anc is not None:
        if comparator in ("<", "<=") and kb.value("profound_anc") <= anc < kb.value("neutropenia_anc"):  # or worse
            tier_at_least = tier
        worse = f"; the tier is {tier} or worse" if tier_at_least else ""
        basis = f"ANC {count_text(anc, _tier_cutoffs(kb))} x10^9/L {anc_text}{when}{worse}."
        if facts.get("anc_normal_for_age"):
            basis += (f" It is at or above the laboratory's lower limit for this infant ({infant_lln:g}): the 1.5 "
                      f"cut-off is for patients older than 1 year.")
    elif anc_at_most is not None:
        tier_at_least = tier_for(kb, anc_at_most) if anc_at_most < kb.value("neutropenia_anc") else None
        bound = (f"; the ANC cannot exceed the WBC, so the tier is {tier_at_least} or worse" if tier_at_least
                 else "; the WBC does not bound the ANC below the neutropenia cutoff")
        basis = (f"No ANC: no neutrophil count or percentage in the same draw as the WBC {round(anc_at_most, 2):g} x10^9/L"
                 f"{when}{bound}.{unpaired_percentage(samples, cbc) if cbc is not None else ''}")
    elif (pct := max((lab for lab in nc.labs if lab.test in ("neutrophils_pct", "bands_pct")),
                     key=lambda lab: lab.time or datetime.min, default=None)) is not None:
        drawn = f" (drawn {pct.time.date().isoformat()})" if pct.time is not None else ""
        basis = (f"No ANC: a {pct.test.split('_')[0].rstrip('s')} percentage of {_shown(pct):g} %{drawn} came with no "
                 f"WBC from the same draw, so the ANC cannot be derived; neutropenia is neither found nor ruled out.")
    else:
        basis = "No ANC: neither an absolute neutrophil count nor a WBC with neutrophil percentage was given."
    if anc is None and "last_anc" in facts:     # the latest ANC there is (exposure.earlier_anc_facts)
        basis += (f" The latest ANC, {facts['last_anc']:g} x10^9/L, was drawn {days_text(int(facts['last_anc_age_days']))}"
                  f" before {nc.as_of}; no neutrophil count since.")
    duffy_note = kb.duffy_null_note if nc.case.patient.duffy_null else None
    shown_anc = _shown(anc_lab) if anc_lab is not None and bound else anc
    risk = RiskTier(tier=tier, anc=shown_anc, anc_comparator=comparator, basis=basis,
                    anc_text=None if shown_anc is None else count_text(shown_anc, _tier_cutoffs(kb)),
                    anc_derived=bool(facts.get("anc_derived")),
                    anc_source=anc_source if cbc is not None else None, anc_time=aware_utc(anc_time), anc_age_days=anc_age,
                    anc_at_most=None if anc_at_most is None else float(f"{anc_at_most:.10g}"),
                    tier_at_least=tier_at_least,
                    cutoffs=_cutoffs_text(kb), duffy_null_note=duffy_note,
                    sources=["taplitz_asco_idsa_2018_prophylaxis", "freifeld_idsa_2011"] +
                            (["merz_2023"] if duffy_note else []))
    status = cbc_status(nc.as_of, cbc, latest_cbc, latest_age, max_age)
    version = ctcae_version or kb.ctcae.get("default_version", "5.0")
    grade_llns = {k: facts[f"{k}_lln"] for k in ("wbc", "lymphocytes", "anc") if f"{k}_lln" in facts}
    ctcae = ctcae_grades(kb, {k: values[k] for k in ("wbc", "anc", "lymphocytes") if k in values}, grade_llns, version,
                         frozenset({"wbc"}) if "wbc" in values and "wbc_lln" not in facts else frozenset())
    return Derived(facts=facts, current=values, labs_out=labs_out, risk_tier=risk, ctcae=ctcae, warnings=warnings,
                   cbc=status, reference_limits=limits, count_day=count_day)


def _tier_cutoffs(kb: KnowledgeBase) -> tuple[float, ...]:
    """The ANC's tier cutoffs (rules/thresholds.yaml), read once per knowledge base."""
    cutoffs = kb.derived.get("anc_tier_cutoffs")
    if cutoffs is None:
        keys = ("neutropenia_anc", "moderate_anc", "severe_anc", "profound_anc")
        cutoffs = kb.derived["anc_tier_cutoffs"] = tuple(kb.value(k) for k in keys)
    return cutoffs


def _cutoffs_text(kb: KnowledgeBase) -> str:
    """The tier cutoffs, rendered from rules/thresholds.yaml."""
    n, m, s, p = (f"{kb.value(k):.1f}" for k in ("neutropenia_anc", "moderate_anc", "severe_anc", "profound_anc"))
    return (f"normal >= {n}; mild {m} to < {n}; moderate {s} to < {m}; severe {p} to < {s}; profound < {p} "
            f"(x10^9/L); a value on a cutoff falls in the milder tier")
