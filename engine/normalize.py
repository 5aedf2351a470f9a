"""Normalize: a structurally valid Case into canonical units, resolved codes and matched text.

Every problem is collected and raised together as one :class:`CaseError`: unknown test or LOINC
code, unknown or incompatible unit, implausible value (with the unit probably meant), negative
count, percentages above 100, a date after ``as_of``, an unknown TPMT/NUDT15 diplotype."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Optional, Union

from . import pgx
from .assessment import GeneStatus, Unrecognised
from .case import Case, Dose
from .errors import CaseError, Problem
from .kb import KnowledgeBase
from .timeutil import utc_date
from .doses import dose_mg_kg_day, taken_more_often_than
from .lab_value import Doubt, NormLab, _fmt, normalize_lab
from .vocabulary import (SUGGEST_MAX_NAMES, DrugIndex, current_cancer, duffy_prevalent, match_organ, oncologic_use,
                         read_conditions)

__all__ = ["NormLab", "NormMed", "NormCase", "normalize", "dose_mg_kg_day", "PCT_TESTS", "CLASS_WINDOWS"]
# classes that stay suspects longer than recent_drug_days, by their window's threshold (exposure.suspect_meds)
CLASS_WINDOWS = {"cytotoxic_chemotherapy": "chemotherapy_nadir_window_days", "anti_cd20": "anti_cd20_suspect_days"}

WHITE_PARTS = ("anc", "segmented_neutrophils", "bands", "lymphocytes", "monocytes", "eosinophils", "basophils")
PCT_TESTS = ("neutrophils_pct", "bands_pct", "lymphocytes_pct", "monocytes_pct", "eosinophils_pct",
             "basophils_pct", "blasts_pct")


@dataclass(frozen=True)
class NormMed:
    index: int
    text: str
    drug_id: Optional[str]
    drug_name: Optional[str]
    classes: frozenset[str]
    status: str
    start: Optional[date]
    end: Optional[date]
    dose_mg_kg_day: Optional[float]
    dose_mg_day: Optional[float] = None
    daily_instead_of_weekly: bool = False     # a weekly drug (drugs.yaml weekly_when_non_oncologic) given daily, or
                                              # more often than weekly_drug_max_takes_a_week
    dose: Union[Dose, str, None] = None       # as the case gives it (how often it is taken: pgx.within_reduced)
    oncologic: bool = False                   # used to treat cancer (vocabulary.oncologic_use: its indication first)


@dataclass
class NormCase:
    case: Case
    as_of: Optional[date]
    labs: list[NormLab]
    meds: list[NormMed]
    conditions: set[str]
    tpmt: GeneStatus
    nudt15: GeneStatus
    transplant_organ: Optional[str]
    duffy_prevalent_ancestry: bool
    warnings: list[str] = field(default_factory=list)
    unrecognised: list[Unrecognised] = field(default_factory=list)
    cancer_current: bool = False     # a cancer named as current: a drug without an indication treats it (oncologic_use)


def _duffy_from_diagnosis(case: Case, conditions: set[str], warnings: list[str]) -> Case:
    """A documented benign ethnic neutropenia (Duffy-null associated neutrophil count) with no Duffy status given is
    read as the Duffy-null phenotype, so that the clozapine label's BEN thresholds apply (starting clozapine at an
    ANC of 1.2 had been 'do not start'); a Duffy status given is kept, and a disagreement named."""
    if "benign_ethnic_neutropenia" not in conditions:
        return case
    if case.patient.duffy_null is False:
        warnings.append("history.conditions names benign ethnic neutropenia but patient.duffy_null is false: the "
                        "Duffy status given was used (the clozapine label's BEN thresholds do not apply).")
        return case
    if case.patient.duffy_null is None:
        warnings.append("history.conditions names benign ethnic neutropenia (Duffy-null associated neutrophil count): "
                        "read as a Duffy-null phenotype (patient.duffy_null), so the clozapine label's BEN "
                        "thresholds apply.")
        return case.model_copy(update={"patient": case.patient.model_copy(update={"duffy_null": True})})
    return case


def _classes(drug: dict[str, Any], oncologic: bool, conditions: set[str]) -> frozenset[str]:
    treating = drug.get("class_when_treating")
    if treating and not conditions.isdisjoint(treating):      # ciclosporin in aplastic anaemia (drugs.yaml)
        return frozenset(treating[c] for c in sorted(conditions & treating.keys()))
    classes = set(drug.get("classes", []))
    if drug.get("subclass"):
        classes.add(drug["subclass"])
    if oncologic and drug.get("oncologic_class"):
        classes = {drug["oncologic_class"]}
    elif not oncologic and drug.get("non_oncologic_class"):
        classes = {drug["non_oncologic_class"]}
    return frozenset(classes)


def normalize(kb: KnowledgeBase, case: Case, drugs: Optional[DrugIndex] = None) -> NormCase:
    problems: list[Problem] = []
    warnings: list[str] = []
    unrecognised: list[Unrecognised] = []
    doubtful: dict[int, Doubt] = {}
    labs = [n for i, lab in enumerate(case.labs) if (n := normalize_lab(kb, i, lab, problems, warnings, doubtful))]

    # as_of: given, else the latest lab time; never the wall clock.
    lab_times = [lab.time for lab in labs if lab.time]
    as_of = utc_date(case.as_of) if case.as_of else (max(lab_times).date() if lab_times else None)
    if as_of is None:
        warnings.append("No as_of and no lab times: timing rules (drug onset windows, transfusion, trends) were not applied.")

    # untimed values: at most one per test (it is the current value)
    untimed = defaultdict(list)
    for lab in labs:
        if lab.time is None:
            untimed[lab.test].append(lab.index)
    for test, idx in untimed.items():
        if len(idx) > 1:
            problems.append(Problem("labs", f"{len(idx)} values for {test} without a time (labs{idx}); give each a "
                                            f"time so they form a series", tuple(f"labs[{i}]" for i in idx[1:])))
    # several values of one test at the same time: the one named (left out of a partial assessment) is the later, or
    # of two counts or percentages whose lower side is the worse, the higher (the first had stood whatever it was:
    # an ANC of 1.6 before 0.4, an automated 66% before a manual 10%, as FHIR's keep_one already keeps the lower)
    seen: dict[tuple[str, Optional[datetime]], NormLab] = {}
    for lab in labs:
        if lab.time is not None:
            key, first = (lab.test, lab.time), seen.get((lab.test, lab.time))
            if first is not None:
                spec = kb.tests[lab.test]
                worse_low = spec["dimension"] == "count_per_volume" or spec.get("conflict_keeps_lower")
                named = first if worse_low and first.value > lab.value else lab
                problems.append(Problem(f"labs[{named.index}]", f"a second {lab.test} value at {lab.time.isoformat()} "
                                        f"(also labs[{(lab if named is first else first).index}])" +
                                        ("; the lower is the one kept in a partial assessment" if worse_low else "")))
                seen[key] = lab if named is first else first
            else:
                seen[key] = lab

    # percentages of one sample must not add up to more than 100
    by_time: dict[Optional[datetime], dict[str, float]] = defaultdict(dict)
    pct_index: dict[Optional[datetime], list[str]] = defaultdict(list)
    for lab in labs:
        if lab.test in PCT_TESTS:
            by_time[lab.time][lab.test] = lab.value
            pct_index[lab.time].append(f"labs[{lab.index}]")
    for t, pcts in by_time.items():
        total = sum(pcts.values())
        # 35% neutrophils sent as 0.35 "%" gave an ANC of 0.011 and two critical alerts: a differential of three
        # parts or more adding up to at most 1 percent, or of two adding up to 1, is one of fractions of 1, and is
        # refused rather than rescaled
        fractions = len(pcts) >= 2 and max(pcts.values()) <= 1.0 and total <= 1.05 and (len(pcts) >= 3 or total >= 0.95)
        if total > 100.0 + 1e-9 or fractions:
            said = (f"differential percentages{f' at {t.isoformat()}' if t else ''} add up to {_fmt(round(total, 6))} "
                    f"percent ({', '.join(f'{k} {_fmt(v)}' for k, v in sorted(pcts.items()))})")
            why = ("fractions of 1 sent as percentages? Send them in % (35 for 35%) or with the unit 1" if fractions
                   else "they cannot exceed 100")
            problems.append(Problem("labs", f"{said}{': ' if fractions else '; '}{why}", tuple(pct_index[t])))

    # the ANC cannot exceed the WBC of the same sample: neutrophils are white cells (the engine bounds an unknown
    # ANC by the WBC for the same reason). Which of the two is wrong cannot be told, so the ANC is the item
    # named: left out of a partial assessment, the WBC then bounds the ANC, and no tier rests on the ANC. The same
    # holds for every other white cell counted, one by one and together (lymphocytes 5.0 beside a WBC of 3.0 had
    # passed unremarked).
    counts: dict[Any, dict[str, NormLab]] = defaultdict(dict)
    for lab in labs:
        if lab.test in ("wbc", *WHITE_PARTS) and (lab.time is not None or lab.specimen):
            counts[lab.specimen or lab.time].setdefault(lab.test, lab)
    margin = kb.value("anc_above_wbc_margin")      # the two may differ by their rounding
    for draw in counts.values():
        wbc = draw.get("wbc")
        for part in draw.values():   # a profound reading stands only where its other unit's is above the draw's WBC;
            doubt = doubtful.pop(part.index, None)   # a very high one only beside a WBC (which it cannot exceed)
            if doubt is not None and doubt.high and wbc is None:
                problems.append(doubt.refused)
            elif doubt is not None and not doubt.high and wbc is not None and doubt.other > wbc.value + margin:
                warnings.append(doubt.accepted)
            elif doubt is not None and not doubt.high:
                problems.append(doubt.refused)
        if wbc is None:
            continue
        over = [part for test in WHITE_PARTS if (part := draw.get(test)) is not None and part.value > wbc.value + margin]
        for part in over:
            name = "ANC" if part.test == "anc" else part.test.replace("_", " ")
            problems.append(Problem(f"labs[{part.index}].value", f"{name} {_fmt(part.value)} {part.unit} is above the "
                                    f"WBC {_fmt(wbc.value)} {wbc.unit} of the same draw (labs[{wbc.index}]): they are "
                                    f"white cells, so one of the two values is wrong"))
        neutrophils = [draw["anc"]] if "anc" in draw else [draw[t] for t in ("segmented_neutrophils", "bands") if t in draw]
        parts = neutrophils + [draw[t] for t in ("lymphocytes", "monocytes", "eosinophils", "basophils") if t in draw]
        total = sum(part.value for part in parts)
        if not over and len(parts) > 1 and total > wbc.value + margin * len(parts):
            problems.append(Problem("labs", f"the white cells counted in the draw of labs[{wbc.index}] add up to "
                                    f"{_fmt(round(total, 6))} ({', '.join(f'{p.test} {_fmt(p.value)}' for p in parts)}), "
                                    f"above its WBC {_fmt(wbc.value)} {wbc.unit}: one of the values is wrong",
                                    tuple(f"labs[{p.index}]" for p in parts)))
    problems += [doubt.refused for doubt in doubtful.values()]     # no draw, or a second value of its test there

    def not_future(where: str, v: Union[date, datetime, None]) -> None:
        d = utc_date(v)
        if as_of and d and d > as_of:
            problems.append(Problem(where, f"{d.isoformat()} is in the future relative to as_of {as_of.isoformat()}"))

    for lab in labs:   # naive UTC; against an as_of given as a day, the draw's own day (19:30 at UTC-5 is not tomorrow)
        given = lab.time if isinstance(case.as_of, datetime) else case.labs[lab.index].time
        if as_of and given is not None and (given.date() if isinstance(given, datetime) else given) > as_of:
            not_future(f"labs[{lab.index}].time", lab.time)
    h = case.history
    not_future("history.tpmt_test_date", h.tpmt_test_date)
    not_future("history.last_transfusion", h.last_transfusion)
    if h.transplant:
        not_future("history.transplant.date", h.transplant.date)

    # conditions: history, medication indications
    conditions: set[str] = set()
    texts = [(f"history.conditions[{i}]", t) for i, t in enumerate(h.conditions)] + [
        (f"medications[{i}].indication", m.indication) for i, m in enumerate(case.medications) if m.indication]
    for where, text in texts:
        found, aside = read_conditions(kb, text)
        conditions.update(found)
        if aside:
            names = " or ".join(cid.replace("_", " ") for cid, _ in aside)
            warnings.append(f"{where} {text!r} was not read as {names}: {aside[0][1]!r} says it is absent, uncertain, "
                            f"someone else's, over or being prevented. Enter the condition alone if the patient has it.")
        if not found and not aside and where.startswith("history."):
            unrecognised.append(Unrecognised(field=where, text=text, kind="condition"))
    oncologic = any(current_cancer(kb, t) for _, t in texts)    # "history of breast cancer" makes no chemotherapy
    case = _duffy_from_diagnosis(case, conditions, warnings)

    drugs = drugs or DrugIndex(kb)
    meds: list[NormMed] = []
    unknown_drugs = 0
    for i, med in enumerate(case.medications):
        not_future(f"medications[{i}].start", med.start)
        start, end = utc_date(med.start), utc_date(med.end)
        if start and end and end < start:
            problems.append(Problem(f"medications[{i}].end", f"end {end} is before start {start}"))
        if med.status == "active" and end and as_of and end < as_of:
            warnings.append(f"medications[{i}] is 'active' but ended on {end}; it was treated as stopped then.")
        text = med.name or (f"RxNorm {med.rxnorm}" if med.rxnorm else f"ATC {med.atc}")
        match = drugs.lookup(med.name, med.rxnorm, med.atc)
        if match is None:
            suggest = bool(med.name) and unknown_drugs < SUGGEST_MAX_NAMES   # bounded work per case
            unknown_drugs += 1
            unrecognised.append(Unrecognised(field=f"medications[{i}]", text=text, kind="drug",
                                             suggestions=drugs.suggest(med.name) if suggest else []))
            continue
        if kb.not_systemic is not None and (form := kb.not_systemic.search(
                f"{med.name or ''} {med.dose if isinstance(med.dose, str) else ''}")):
            warnings.append(f"medications[{i}] {text!r}: {form.group(0).lower()!r} names a form not taken "
                            f"systemically; not weighed as a cause of the count (rules/drugs.yaml, not_systemic_forms).")
            continue
        med_onco = oncologic_use(kb, med.indication, oncologic)
        if med.status in ("stopped", "completed") and end is None:
            end = _undated_end(kb, med.status, f"medications[{i}] {text!r}", start, as_of,
                               _classes(match.drug, med_onco, conditions), warnings)
        matches = [match]
        named = drugs.lookup(med.name, None) if med.name and (med.rxnorm or med.atc) else None
        if named is not None and named.drug["id"] != match.drug["id"]:     # never one drug lost to the other
            matches.append(named)
            warnings.append(f"medications[{i}]: its code ({match.matched}) is {match.drug['name']} but its name "
                            f"{med.name!r} is {named.drug['name']}: both were assessed; check which is given.")
        read_dose = dose_mg_kg_day(med.dose, case.patient.weight_kg)
        for m in matches:
            dose, per_day, why = read_dose
            top = m.drug.get("max_label_mg_kg_day")
            if dose is not None and top and dose > top * kb.value("implausible_dose_factor"):
                why = (f"{dose:.3g} mg/kg/day is more than {kb.value('implausible_dose_factor'):g} times the label's "
                       f"highest dose ({top:g} mg/kg/day): taken as an entry or unit error and not used; check the dose "
                       f"and its unit")
                dose = per_day = None
            said = f"medications[{i}] {text!r}: {why}; dose-based rules were not applied to it."
            if why and said not in warnings:
                warnings.append(said)
            meds.append(NormMed(index=i, text=text, drug_id=m.drug["id"], drug_name=m.drug["name"],
                                classes=_classes(m.drug, med_onco, conditions), status=med.status, start=start, end=end,
                                dose_mg_kg_day=dose, dose_mg_day=per_day, dose=med.dose, oncologic=med_onco,
                                daily_instead_of_weekly=bool(m.drug.get("weekly_when_non_oncologic") and not med_onco
                                                             and taken_more_often_than(
                                                                 med.dose, kb.value("weekly_drug_max_takes_a_week")))))

    tpmt = nudt15 = None
    try:
        tpmt = pgx.resolve(kb, "tpmt", h.tpmt, h.tpmt_method)
    except pgx.PhenotypeError as e:
        problems.append(Problem("history.tpmt", str(e)))
    try:
        nudt15 = pgx.resolve(kb, "nudt15", h.nudt15)
    except pgx.PhenotypeError as e:
        problems.append(Problem("history.nudt15", str(e)))

    if problems:
        raise CaseError(problems)
    assert tpmt is not None and nudt15 is not None
    tpmt, nudt15 = (_recorded_deficiency(kb, status, conditions, warnings) for status in (tpmt, nudt15))
    organ = match_organ(kb, h.transplant.organ) if h.transplant else _recipient_of(kb, h, conditions)
    conditions -= set() if organ else {"transplant_recipient"}   # a donor, a candidate: no recipient in the output
    return NormCase(case=case, as_of=as_of, labs=labs, meds=meds, conditions=conditions, tpmt=tpmt, nudt15=nudt15,
                    transplant_organ=organ,
                    duffy_prevalent_ancestry=duffy_prevalent(kb, case.patient.ancestry), warnings=warnings,
                    unrecognised=unrecognised, cancer_current=oncologic)


def _recorded_deficiency(kb: KnowledgeBase, status: GeneStatus, conditions: set[str],
                         warnings: list[str]) -> GeneStatus:
    """A gene with no result sent, whose deficiency is recorded among the conditions ("TPMT deficiency" on a problem
    list: rules/conditions.yaml): its CPIC phenotype, said in a warning. A result sent always wins."""
    gene = status.gene.lower()
    found = next((word for word, cid in (("poor", f"{gene}_deficiency"), ("intermediate", f"{gene}_partial_deficiency"))
                  if cid in conditions), None)
    if found is None or status.phenotype == found:
        return status
    if status.phenotype != "unknown" or status.input is not None:
        warnings.append(f"A {status.gene} deficiency is recorded among the conditions, but the {status.gene} result sent "
                        f"({status.input}) was used: check which is right before dosing a thiopurine by it.")
        return status
    partial = found == "intermediate"
    warnings.append(f"{status.gene} was taken as {'an' if partial else 'a'} {found} metabolizer from a "
                    f"{'partial ' if partial else ''}{status.gene} deficiency recorded among the conditions (no "
                    f"{status.gene} result was sent): confirm it by the genotype or an activity result before dosing "
                    f"a thiopurine by it.")
    return pgx.resolve(kb, gene, found).model_copy(update={"input": f"{status.gene} deficiency (a recorded condition)"})


def _recipient_of(kb: KnowledgeBase, h: Any, conditions: set[str]) -> Optional[str]:
    """The organ of a transplant named among the conditions ("Kidney transplant status": a recipient's tacrolimus
    had been told 'do not start' by a rheumatology protocol), not a donor's or a candidate's; else None."""
    if "transplant_recipient" not in conditions:       # read as the vocabulary reads it: not "no kidney transplant"
        return None
    pattern, other = kb.conditions["transplant_recipient"], kb.transplant_not_recipient
    named = [t for t in h.conditions if pattern.search(t) and not (other and other.search(t))]   # not a donor ...
    return match_organ(kb, named[0]) if named else None


def _undated_end(kb: KnowledgeBase, status: str, named: str, start: Optional[date], as_of: Optional[date],
                 classes: frozenset[str], warnings: list[str]) -> Optional[date]:
    """The end of a course stopped or completed on a day not given: none (it may have ended any day since its start, a
    recent suspect), said; for a course completed and begun beyond its window (the onset window of drug-induced
    agranulocytosis, an anti-CD20 antibody's late-onset window), its start: an old course (carbimazole, or a
    cyclophosphamide, of 2019 had become the 'likely' cause, and the marrow was dropped)."""
    window = max(kb.value(w) for w in ["idiosyncratic_onset_max_days", *(CLASS_WINDOWS.get(c) for c in classes)] if w)
    if status == "completed" and start and as_of and (as_of - start).days > window:
        warnings.append(f"{named} was completed on a day not given and began {(as_of - start).days} days before "
                        f"{as_of}, beyond its {window:g}-day window as a suspect: dated by its start, not a recent suspect.")
        return start
    warnings.append(f"{named} was {status} on a day not given: it was treated as possibly {status} recently (a recent "
                    f"suspect), with no date for its last dose.")
    return None
