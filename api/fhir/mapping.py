"""FHIR R4 -> leukodx case: :func:`map_bundle`, the one mapping used by ``POST /v1/assess/fhir`` and
the CDS Hooks service.

It builds a case in the contract of :mod:`leukodx.engine.case` from the resources of one patient
(:mod:`.patient`), plus what was left out and why. Nothing is guessed; each part is its own module:
labs (:mod:`.observations`), body weight and temperature (:mod:`.vitals`), medications
(:mod:`.medications`), conditions (:mod:`.conditions`), TPMT/NUDT15 results (:mod:`.pgx`).

Snapshot date: a medication that starts, or a condition whose onset is, after the date the case is
judged at (``as_of``, else the date of the latest lab, as the engine does) did not exist then; it is
left out with a warning rather than sent to the engine, which would refuse it. Partial FHIR dates
(``2024``, ``2024-03``) are left out with a warning (a partial ``birthDate`` gives an age that may
be a year off). Anything else the contract or the engine would refuse (a value in a wrong unit, an
implausible count) is passed through unchanged, so that the engine reports it with its reason. The
output holds numbers as JSON numbers and dates as ISO 8601 strings, and only the keys of the
contract; the same input always gives the same case and the same warnings in the same order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Optional

from leukodx.engine.assessment import Assessment, NotAssessed
from leukodx.engine.case import MAX_CONDITIONS, MAX_LABS, MAX_MEDICATIONS, MAX_TEXT
from leukodx.engine.errors import Problem
from leukodx.engine.kb import KnowledgeBase
from leukodx.engine.timeutil import utc_date

from .conditions import map_conditions
from .medications import map_medications
from .lab_values import LabValue
from .observations import map_observations
from .panels import results_not_sent
from .patient import (PatientChoice, belongs, birth_date, choose_patient, default_id, demographics, duffy_status,
                      several_subjects, subjects)
from .pgx import map_pgx
from .datatypes import as_dict, as_list, as_str, concept_text, fmt, is_number, parse_when
from .resources import FhirMappingError, Index, Item, subject_ref, walk_parts
from .vitals import latest_temperature_day, temperature

__all__ = ["Mapped", "map_bundle", "bundle_to_case"]

FUTURE_TOLERANCE_DAYS = 1        # a result dated up to a day ahead (a time zone written wrong) is kept
_SUBJECT_TYPES = ("Observation", "MedicationRequest", "MedicationStatement", "MedicationAdministration",
                  "MedicationDispense", "Condition")


@dataclass
class Mapped:
    """A case dict in the engine's contract, and what the mapping left out: ``warnings`` (text) and
    ``not_assessed`` (each resource or group of resources left out, with the reason); ``cautions``: the
    warnings a clinician must see before acting (the patient recorded as deceased), which a CDS card shows."""
    case: dict[str, Any]
    warnings: list[str]
    not_assessed: list[NotAssessed]
    cautions: list[str] = field(default_factory=list)
    drafts: list[int] = field(default_factory=list)     # places in case["medications"] of draft orders being signed
    # with drugs and no lab value: why no lab could be used ("no lab value leukodx can use", then a failed search or
    # unread values), said when the drugs give nothing to flag
    labs_unread: list[Problem] = field(default_factory=list)

    def drugs_alone(self) -> bool:
        """No lab value and no temperature: the case holds only what the drugs need without a count (a monitoring
        overdue, a poor metabolizer)."""
        return not self.case["labs"] and "temperature_c" not in self.case.get("history", {})

    def without_drafts(self) -> dict[str, Any]:
        """The case as the patient is now: the draft orders being signed are not taken yet, so they explain
        nothing of the count (a draft azathioprine had been named the cause of an agranulocytosis and had taken
        its work-up away). The order check assesses the case with them."""
        meds = [m for i, m in enumerate(self.case.get("medications", [])) if i not in self.drafts]
        return {**self.case, "medications": meds}

    def noted_in(self, assessment: Assessment) -> Assessment:
        """The assessment of this case with what the mapping left out in it: its warnings (marked
        "FHIR:") before the engine's, its not_assessed items before the engine's."""
        return assessment.model_copy(update={"warnings": [f"FHIR: {w}" for w in self.warnings] + assessment.warnings,
                                             "not_assessed": self.not_assessed + assessment.not_assessed})


def map_bundle(data: Any, *, kb: KnowledgeBase, case_id: Optional[str] = None, patient_id: Optional[str] = None,
               as_of: Optional[date] = None, include_draft: bool = False, max_labs: int = MAX_LABS) -> Mapped:
    """A case for the engine whose knowledge base is ``kb`` from FHIR R4 data, with what was left out.

    ``data``: a Bundle, a resource, or a list of them (see :func:`~.resources.resources_from`).
    ``patient_id`` selects the patient (and only its resources); ``as_of`` is the date the case is
    judged at (put in the case; default: the engine takes the latest lab time); ``include_draft``
    keeps draft MedicationRequests (counted as active). Only the ``max_labs`` most recent lab values
    are kept (the current CBC and the trend need the recent ones); the older ones are counted in
    ``not_assessed``. Raises :class:`FhirMappingError` when the data is not FHIR resources, when
    no Patient (and no ``patient_id``) says whose data it is and the resources name several subjects,
    or when it holds no lab value leukodx can use for this patient (each skipped lab Observation is then a
    problem with its reason, and data of another patient is named); but with ``as_of`` given, a body
    temperature alone makes a case with no labs: a fever with no blood count is one the engine must see; and
    so does a medication when no lab Observation was sent at all.
    """
    warnings: list[str] = []
    items, broken = walk_parts(data)
    outcomes = _search_outcomes(items)
    left_out = [NotAssessed(field=p.loc or "resource", reason=p.msg) for p in broken] + outcomes
    index = Index(items)
    choice = choose_patient(items, patient_id, warnings)
    _refuse_several_subjects(items, choice)
    mine: list[Item] = []
    theirs: list[Item] = []           # the Observations, medications and Conditions of someone else (or no one)
    for i in items:
        if i.type == "Patient":
            continue
        if belongs(i, choice):
            mine.append(i)
        elif i.type in _SUBJECT_TYPES:
            theirs.append(i)
    wanted = f"Patient/{patient_id.strip().removeprefix('Patient/')}" if patient_id else choice.wanted
    if theirs:
        left_out.append(_theirs(theirs, wanted, warnings))
        left_out += _nobodys_counts(theirs, kb)

    labs, weights, skipped = map_observations(kb, items, mine, index, warnings, birth_date(choice))
    unsent = results_not_sent(mine, index, warnings)    # named on the card when no lab value could be read
    if unsent and not any(lab.test in ("wbc", "anc") for lab in labs):   # or when no white count could
        left_out += [NotAssessed(field=p.loc, reason=p.msg) for p in unsent]
    labs = _placed_in_time(labs, skipped, warnings)
    left_out += [NotAssessed(field=p.loc or "Observation", reason=p.msg) for p in skipped]
    if len(labs) > max_labs:
        left_out.append(_keep_recent(labs, max_labs, warnings))

    lab_times = [lab.utc for lab in labs if lab.utc is not None]
    if as_of is not None and lab_times:
        # The EHR's today can be a day ahead of UTC's: a count drawn this morning in Sydney and dated by the
        # day alone reads as tomorrow in UTC. Such a result was kept above (up to FUTURE_TOLERANCE_DAYS ahead);
        # the case is judged on its date, so that the engine does not refuse as "in the future" what is today's.
        as_of = max(utc_date(as_of), max(lab_times).date())
    ref = utc_date(as_of) if as_of is not None else (max(lab_times).date() if lab_times else None)
    if as_of is None and ref is not None:
        # a fever measured within current_temperature_max_age_days after the last count (the same evening, past
        # UTC midnight) is the case's now, not a reading "after the case date" left out; a later one (years
        # after the last count) is still left out and named
        later = latest_temperature_day(mine, kb)
        if later is not None and 0 < (later - ref).days <= kb.value("current_temperature_max_age_days"):
            ref = as_of = later
    unread_temperatures: list[Problem] = []
    # with a case date given, a temperature dated up to FUTURE_TOLERANCE_DAYS after it is today's where it was taken, as
    # a count is (a fever of 38.9 dated tomorrow in UTC had been left out, the card listing the temperature as missing)
    temp = temperature(mine, ref, warnings, kb, unread_temperatures,
                       grace_days=FUTURE_TOLERANCE_DAYS if as_of is not None else 0)
    left_out += [NotAssessed(field=p.loc or "Observation", reason=p.msg) for p in unread_temperatures]
    # a temperature without a count is assessed (a fever needs a count), on a known case date only: with no
    # lab and no as_of, nothing would date the case, and a fever of years ago would read as one of today
    # so is a medication without a count (clozapine with no ANC on record is monitoring overdue, a thiopurine in a
    # poor metabolizer an alert), even when the lab search failed or its values could not be read (kept in
    # Mapped.labs_unread)
    nothing: Optional[FhirMappingError] = None
    if not labs and (temp.celsius is None or as_of is None):
        problems = [*broken, *skipped, *unsent, *(Problem(n.field, n.reason) for n in outcomes)]   # a failed search
        theirs_labs = [i for i in theirs if i.type == "Observation"]
        if theirs_labs:
            named = subjects(theirs_labs)[:5]
            problems.insert(0, Problem("subject", f"the lab Observations belong to {', '.join(named)}, not to {wanted}; "
                                                  f"data of another patient is never used" if named else
                                       f"the lab Observations belong to no patient (no subject): they cannot be told "
                                       f"to be {wanted}'s and are not used; send each with its subject"))
        nothing = FhirMappingError([Problem("", "no lab value leukodx can use: it needs an Observation with a LOINC "
                                                "code of rules/labs.yaml (a WBC, ANC, differential ...), a usable "
                                                "status and a valueQuantity with a unit"), *problems])
        if as_of is None:
            raise nothing

    case: dict[str, Any] = {"id": case_id or default_id(choice)}
    if as_of is not None:
        case["as_of"] = as_of.isoformat()
    cautions: list[str] = []
    case["patient"] = demographics(choice, weights, ref, warnings, cautions)
    duffy = duffy_status(mine, warnings)
    if duffy is not None:
        case["patient"]["duffy_null"] = duffy
    case["labs"] = [lab.as_dict() for lab in labs]
    unread_drugs: list[Problem] = []
    meds = map_medications(kb, mine, index, ref, include_draft, warnings, unread_drugs)
    left_out += [NotAssessed(field=p.loc or "medication", reason=p.msg) for p in unread_drugs]
    drafts: list[int] = []
    if meds:
        case["medications"] = _fitted_medications(meds, warnings, left_out)
        drafts = [i for i, med in enumerate(case["medications"]) if med.pop("_draft", False)]
    elif nothing is not None:
        raise nothing
    unread_conditions: list[Problem] = []
    conditions = [_fitted_text(c, "a Condition's text", warnings) for c in
                  map_conditions(mine, ref, warnings, kb, unread_conditions, birth_date(choice))]
    left_out += [NotAssessed(field=p.loc or "Condition", reason=p.msg) for p in unread_conditions]
    if len(conditions) > MAX_CONDITIONS:
        left_out.append(NotAssessed(field="Condition", value=f"{len(conditions) - MAX_CONDITIONS} conditions",
                                    reason=f"beyond the first {MAX_CONDITIONS} current conditions of the list"))
        warnings.append(f"{len(conditions) - MAX_CONDITIONS} current conditions beyond the first {MAX_CONDITIONS} "
                        f"were not read.")
        del conditions[MAX_CONDITIONS:]
    pgx_skipped: list[Problem] = []
    history: dict[str, Any] = map_pgx(kb, mine, warnings, pgx_skipped)
    left_out += [NotAssessed(field=p.loc or "Observation", reason=p.msg) for p in pgx_skipped]
    if temp.celsius is not None:
        history["temperature_c"] = temp.celsius
        if temp.site:
            history["temperature_site"] = temp.site
        if temp.sustained:
            history["fever_sustained_1h"] = True
    if conditions:
        history["conditions"] = conditions
    if history:
        case["history"] = history
    return Mapped(case, warnings, left_out, cautions, drafts, nothing.problems if nothing is not None else [])


def _placed_in_time(labs: list[LabValue], skipped: list[Problem], warnings: list[str]) -> list[LabValue]:
    """The lab values that can be placed in time. A value dated after today (a wrong date: a 2052 haemoglobin
    had become the date the case was judged at, and made every real count too old) is left out, and so is a
    value with no usable date of its own while others have one (a partial date such as "2019-06" had made a
    2019 ANC the current count, above today's WBC): the engine takes an undated value as current. Each is
    named as not assessed."""
    limit = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=FUTURE_TOLERANCE_DAYS)
    dated = any(lab.utc is not None for lab in labs)
    # a value dated by its day alone beside a timed value of the same test that day: which is later cannot be told
    timed = {(lab.test, lab.utc.date()): lab for lab in labs if lab.utc is not None and isinstance(lab.time, datetime)}
    kept = []
    for lab in labs:
        future = lab.utc is not None and lab.utc > limit
        twin = timed.get((lab.test, lab.utc.date())) if lab.utc is not None and not isinstance(lab.time, datetime) \
            else None
        if not future and twin is None and (lab.utc is not None or not dated):
            kept.append(lab)
            continue
        shown = f"{lab.test} {fmt(lab.value) if is_number(lab.value) else lab.value} {lab.unit}"
        if twin is not None and not future:
            assert twin.utc is not None
            why = (f"{shown} is dated {lab.time} with no time of day, beside {twin.test} "
                   f"{fmt(twin.value) if is_number(twin.value) else twin.value} {twin.unit} at {twin.utc:%H:%M} UTC the "
                   f"same day: which is the later cannot be told, and the timed one was used")
        elif future:
            assert lab.utc is not None
            why = f"{shown} is dated {lab.utc.date().isoformat()}, after today: a result cannot come from the future"
        else:
            why = (f"{shown} has no usable date of its own while the other values are dated: it cannot be placed "
                   f"among them, and would otherwise be taken as the current value")
        skipped.append(Problem(lab.item.loc, why))
        warnings.append(f"{lab.item.label}: {why}; left out.")
    return kept


def bundle_to_case(data: Any, *, kb: Optional[KnowledgeBase] = None, case_id: Optional[str] = None,
                   patient_id: Optional[str] = None, as_of: Optional[date] = None,
                   include_draft: bool = False) -> tuple[dict, list[str]]:
    """``(case, warnings)``: see :func:`map_bundle`. Without ``kb``, the knowledge base of the
    process's engine (the one :func:`leukodx.engine.assess` uses): for tests and scripts."""
    if kb is None:
        from leukodx.engine import get_engine
        kb = get_engine().kb
    m = map_bundle(data, kb=kb, case_id=case_id, patient_id=patient_id, as_of=as_of, include_draft=include_draft)
    return m.case, m.warnings


def _refuse_several_subjects(items: list[Item], choice: PatientChoice) -> None:
    """No Patient says whose data this is and the resources name several subjects: merging them would
    assess two people as one, and choosing one would be a guess, so the caller must say which."""
    found = several_subjects(items, choice, _SUBJECT_TYPES)
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise FhirMappingError([Problem("subject", f"the resources belong to {len(found)} different subjects "
                                                   f"({shown}) and no Patient resource says which one this is; "
                                                   f"data of two patients is never merged: say which patient with "
                                                   f"?patient=ID (POST /v1/assess/fhir) or --patient ID (CLI)")])


def _search_outcomes(items: list[Item]) -> list[NotAssessed]:
    """An OperationOutcome among the data with an error or warning (a search's "some results were suppressed"):
    the results may be incomplete, and the card says so with the EHR's own words (a search's information
    issues, "N results", are not)."""
    out = []
    for item in items:
        if item.type != "OperationOutcome":
            continue
        issues = [as_dict(i) for i in as_list(item.resource.get("issue"))
                  if as_str(as_dict(i).get("severity")) in ("fatal", "error", "warning")]
        if issues:
            said = "; ".join(filter(None, (as_str(i.get("diagnostics")) or concept_text(i.get("details"))
                                           or as_str(i.get("code")) for i in issues[:3])))[:200]
            out.append(NotAssessed(field=item.loc, reason=f"the EHR reported that the data may be incomplete: "
                                                          f"{said or 'an issue with no text'}"))
    return out


def _theirs(theirs: list, wanted: str, warnings: list[str]) -> NotAssessed:
    """The resources of another patient (or of none), left out."""
    n = len(theirs)
    found = subjects(theirs)
    shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "") if found else "no subject"
    warnings.append(f"{n} Observation, medication or Condition resource{'s' if n != 1 else ''} of another patient "
                    f"or with no subject {'were' if n != 1 else 'was'} left out.")
    one = n == 1
    return NotAssessed(field="subject", value=shown[:200],
                       reason=f"{n} resource{'' if one else 's'} belong{'s' if one else ''} to another patient than "
                              f"{wanted} (or name{'s' if one else ''} no subject) and {'was' if one else 'were'} not "
                              f"used")


def _nobodys_counts(theirs: list[Item], kb: KnowledgeBase) -> list[NotAssessed]:
    """Each lab value among them that names no subject at all, by its test: never used (whose it is cannot be told),
    but a count sent and unread, which the card shows as such (an ANC of 0.3 with no subject, in a search for the
    patient's, had left an information card)."""
    out = []
    for item in theirs:
        test = next((kb.loinc[c] for c in item.loinc if c in kb.loinc), None) if item.type == "Observation" else None
        if test is not None and subject_ref(item) is None:
            out.append(NotAssessed(field=item.loc, value=test, reason=f"{test}: the Observation names no subject, so "
                                                                      f"whose count it is cannot be told; not used"))
    return out


def _fitted_text(text: str, what: str, warnings: list[str]) -> str:
    """A text cut to the case contract's MAX_TEXT characters (its start read), so that a long one costs its tail
    and not the whole resource (a 728-character sig had lost the azathioprine it belonged to)."""
    if len(text) <= MAX_TEXT:
        return text
    warnings.append(f"{what} of {len(text)} characters was read to its first {MAX_TEXT}.")
    return text[:MAX_TEXT]


def _fitted_medications(meds: list[dict[str, Any]], warnings: list[str], left_out: list[NotAssessed]
                        ) -> list[dict[str, Any]]:
    """The medications within the case contract: texts cut to MAX_TEXT, except a dose text (cut, it could be read
    as another dose: it is left out, and the dose rules skip the drug); beyond MAX_MEDICATIONS, the active ones
    and then the most recently started kept, the rest named as not assessed (501 orders had lost the whole
    assessment)."""
    for med in meds:
        for key in ("name", "indication"):
            if isinstance(med.get(key), str):
                med[key] = _fitted_text(med[key], f"a medication's {key}", warnings)
        if isinstance(med.get("dose"), str) and len(med["dose"]) > MAX_TEXT:
            warnings.append(f"the dose text of {med.get('name') or med.get('rxnorm')!r} has {len(med['dose'])} "
                            f"characters (more than {MAX_TEXT}): it was not read, and dose-based rules were not "
                            f"applied to the drug.")
            del med["dose"]
    if len(meds) <= MAX_MEDICATIONS:
        return meds
    ranked = sorted(meds, key=lambda m: (m.get("status") != "active", -_day_number(m.get("start"))))
    dropped = len(meds) - MAX_MEDICATIONS
    left_out.append(NotAssessed(field="medication", value=f"{dropped} medications",
                                reason=f"beyond the {MAX_MEDICATIONS} kept (the active ones, then the most recently "
                                       f"started): older stopped orders"))
    warnings.append(f"{dropped} medications beyond the {MAX_MEDICATIONS} active or most recently started were not "
                    f"read.")
    keep = {id(m) for m in ranked[:MAX_MEDICATIONS]}
    return [m for m in meds if id(m) in keep]


def _day_number(when: Any) -> int:
    """A mapped medication's start (ISO text) as a day number for sorting; 0 when it has none."""
    day = utc_date(parse_when(when)[0]) if isinstance(when, str) else None
    return day.toordinal() if day else 0


def _keep_recent(labs: list[LabValue], max_labs: int, warnings: list[str]) -> NotAssessed:
    """Keep the ``max_labs`` most recent values in ``labs`` (untimed ones last); the rest, left out."""
    labs.sort(key=lambda lab: (lab.utc is None, lab.utc or datetime.min), reverse=True)
    dropped = labs[max_labs:]
    del labs[max_labs:]
    oldest = min((x.utc for x in dropped if x.utc is not None), default=None)
    newest = max((x.utc for x in dropped if x.utc is not None), default=None)
    span = f" ({oldest.date()} to {newest.date()})" if oldest and newest else ""
    warnings.append(f"{len(dropped)} older lab values{span} beyond the {max_labs} most recent were not used.")
    return NotAssessed(field="Observation", value=f"{len(dropped)} lab values{span}",
                       reason=f"older than the {max_labs} most recent lab values, which hold the current CBC and the "
                              f"trend")

