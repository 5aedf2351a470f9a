"""The patient: which Patient resource the case is about, which resources are theirs, and the
demographics of the case (``sex``, ``age_years``, ``weight_kg``, ``ancestry``).

With ``patient_id``, or when the data holds several patients, only resources whose ``subject`` is
that patient (``Patient/<id>``, or the ``fullUrl`` of the Patient entry such as ``urn:uuid:...``)
are used; a contained resource without a subject takes its container's. With exactly one Patient,
that Patient is the patient: a resource naming another subject is left out (a Bundle of one Patient
and another patient's labs must never be assessed as one person), one naming no subject is kept
(many EHR Bundles leave the subject out of the entries of a patient's own document). Without any
Patient, the subjects the resources name are the only clue: :func:`several_subjects` lets the
mapping refuse to merge two of them.
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Optional

from .datatypes import PARTIAL_DATE, as_dict, as_list, as_str, codings, concept_text, is_number, quantity_unit
from .resources import REFERENCE, Item, subject_ref
from .vitals import Weight, latest_weight

__all__ = ["PatientChoice", "choose_patient", "duffy_status", "belongs", "subjects", "several_subjects", "demographics",
           "default_id", "birth_date", "completed_age", "holds_age", "reached_age"]

SEXES = ("female", "male", "other", "unknown")
RACE_EXT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
ETHNICITY_EXT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"


@dataclass
class PatientChoice:
    item: Optional[Item]
    refs: set[str]              # references that point to the patient (Patient/<id>, fullUrl)
    filtering: bool             # only resources of this patient are used
    unnamed_kept: bool = False  # (when filtering) a resource that names no subject is the patient's too
    caution: Optional[str] = None   # what must be checked before acting on the data (another patient's Patient)

    @property
    def wanted(self) -> str:
        """The patient, as messages name it."""
        named = sorted(r for r in self.refs if r.startswith("Patient/"))
        return named[0] if named else (self.item.label if self.item is not None else "the chosen patient")


def choose_patient(items: list[Item], patient_id: Optional[str], warnings: list[str]) -> PatientChoice:
    """The Patient whose id is ``patient_id``, else the first; warns when there are several or none."""
    patients = [i for i in items if i.type == "Patient"]
    distinct: list[Item] = []
    seen: set[frozenset[str]] = set()
    for p in patients:
        key = frozenset(_patient_refs(p)) or frozenset({p.loc})
        if key not in seen:
            seen.add(key)
            distinct.append(p)
    if patient_id:
        pid = patient_id.strip().removeprefix("Patient/")
        matches = [p for p in distinct if f"Patient/{pid}" in _patient_refs(p)
                   or p.full_url in (pid, f"urn:uuid:{pid}")]
        chosen = matches[0] if matches else None
        refs = {f"Patient/{pid}"} | {r for m in matches for r in _patient_refs(m)}   # all copies of this patient
        caution = None
        if chosen is None and distinct:    # the EHR sent someone else's Patient: its other data may be theirs too
            named = sorted({r for p in distinct for r in _patient_refs(p) if r.startswith("Patient/")})
            others = ", ".join(named[:3])[:200]
            caution = (f"The Patient resource sent ({others or distinct[0].label}) is not Patient/{pid[:64]}, the "
                       f"patient of this request: it was not used (sex, age, weight and ancestry unknown); check that "
                       f"the data is this patient's before acting.")
            warnings.append(caution)
        elif chosen is None:
            warnings.append(f"No Patient resource with id {pid!r}: sex, age, weight and ancestry are unknown.")
        elif len(distinct) > len(matches):
            warnings.append(f"{len(distinct)} Patient resources; used {chosen.label} and only its data.")
        return PatientChoice(chosen, refs, True, caution=caution)
    if not distinct:
        warnings.append("No Patient resource: sex, age, weight and ancestry are unknown.")
        return PatientChoice(None, set(), False)
    chosen = distinct[0]
    if len(distinct) > 1:
        warnings.append(f"{len(distinct)} Patient resources; used the first, {chosen.label}, and only its data "
                        f"(pass patient_id to choose).")
        return PatientChoice(chosen, _patient_refs(chosen), True)
    refs = _patient_refs(chosen)
    # One Patient is the patient; without an id or fullUrl nothing can point to it, so the subjects decide
    # (see several_subjects), as without a Patient.
    return PatientChoice(chosen, refs, bool(refs), unnamed_kept=True)


def belongs(item: Item, choice: PatientChoice) -> bool:
    """``item`` is a resource of the chosen patient (always, when not filtering)."""
    if not choice.filtering:
        return True
    ref = subject_ref(item)
    if ref is None:
        named = _subject_identifier(item)
        if named is not None and choice.item is not None:
            own = _identifiers(choice.item.resource)
            if named in own:
                return True
            if any(system == named[0] for system, _ in own):    # the same kind of number, another value
                return False
        return choice.unnamed_kept
    if ref in choice.refs:
        return True
    m = REFERENCE.search(ref)
    return bool(m and f"{m.group(1)}/{m.group(2)}" in choice.refs)


def _subject_identifier(item: Item) -> Optional[tuple[Optional[str], str]]:
    """(system, value) of a subject given by identifier only (``subject.identifier``), else None."""
    ident = as_dict(as_dict(item.resource.get("subject")).get("identifier"))
    value = as_str(ident.get("value"))
    return (as_str(ident.get("system")), value) if value else None


def _identifiers(patient: dict[str, Any]) -> set[tuple[Optional[str], str]]:
    return {(as_str(i.get("system")), v) for i in as_list(patient.get("identifier")) if isinstance(i, dict)
            and (v := as_str(i.get("value")))}


def subjects(items: list[Item]) -> list[str]:
    """The distinct subject references of ``items``, in order."""
    return list(dict.fromkeys(ref for i in items if (ref := subject_ref(i))))


def several_subjects(items: list[Item], choice: PatientChoice, types: tuple[str, ...]) -> list[str]:
    """The distinct subjects (``Patient/p1``, ``urn:uuid:...``) the resources of ``types`` in ``items``
    name, when the choice could not say whose data it is (no Patient, or one without an id) and they name
    more than one; else []. Two spellings of one reference (``Patient/p1``, ``https://ehr/fhir/Patient/p1``)
    are one."""
    if choice.filtering:
        return []
    found: dict[str, None] = {}
    for item in items:
        ref = subject_ref(item) if item.type in types else None
        if ref:
            m = REFERENCE.search(ref)
            found.setdefault(f"{m.group(1)}/{m.group(2)}" if m else ref, None)
    return list(found) if len(found) > 1 else []


def demographics(choice: PatientChoice, weights: list[Weight], ref: Optional[date],
                 warnings: list[str], cautions: Optional[list[str]] = None) -> dict[str, Any]:
    """``case.patient``: sex from ``gender``, age at ``ref`` (else at the latest weight), the latest
    weight, and the text of the US Core race and ethnicity extensions as ancestry."""
    out: dict[str, Any] = {}
    weight = latest_weight(weights, ref)
    if choice.caution and cautions is not None:
        cautions.append(choice.caution)
    elif choice.item is None and cautions is not None:   # said on the card: a child's or a neonate's limits need the age
        cautions.append("No Patient resource was sent: the age and sex are unknown, and no age- or sex-specific limit "
                        "was applied.")
    if choice.item is not None:
        res, where = choice.item.resource, choice.item.label
        gender = as_str(res.get("gender"))
        if gender in SEXES:
            out["sex"] = gender
        elif gender:
            warnings.append(f"{where}: gender {gender!r} is not a FHIR gender; sex left unknown.")
        at = ref or (max(t for t, _ in weights if t).date() if any(t for t, _ in weights) else None)
        age = _age(res.get("birthDate"), at, where, warnings)
        if age is not None:
            out["age_years"] = age
        elif at is not None and (birth := as_str(res.get("birthDate"))) and cautions is not None:
            cautions.append(f"The Patient's birthDate {birth[:40]!r} cannot be used (not a date, or a future one): "
                            f"the age is unknown and no age-specific limit was applied.")
        died = as_str(res.get("deceasedDateTime"))
        if died or res.get("deceasedBoolean") is True:
            caution = (f"the patient is recorded as deceased{f' ({died[:10]})' if died else ''}: check that this is "
                       f"the right patient before acting on the assessment")
            warnings.append(f"{where}: {caution}.")
            if cautions is not None:
                cautions.append(caution[0].upper() + caution[1:] + ".")
    if weight is not None:
        out["weight_kg"] = weight
    if choice.item is not None:
        ancestry = _ancestry(choice.item.resource)
        if ancestry:
            out["ancestry"] = ancestry
    return out


def default_id(choice: PatientChoice) -> str:
    """The case id when none is given: the Patient's id, else ``fhir``."""
    rid = as_str(choice.item.resource.get("id")) if choice.item else None
    return rid[:200] if rid else "fhir"


def _patient_refs(item: Item) -> set[str]:
    refs: set[str] = set()
    rid = as_str(item.resource.get("id"))
    if rid:
        refs.add(f"Patient/{rid}")
    if item.full_url:
        refs.add(item.full_url)
        m = REFERENCE.search(item.full_url)
        if m and m.group(1) == "Patient":
            refs.add(f"Patient/{m.group(2)}")
    return refs


def birth_date(choice: PatientChoice) -> Optional[date]:
    """The chosen Patient's birthDate (a partial one by its first day), or None (no Patient, none given, not a
    date: :func:`demographics` says which)."""
    return _born(as_str(choice.item.resource.get("birthDate"))) if choice.item is not None else None


def completed_age(born: date, at: date, unit: str) -> int:
    """Whole ``unit``s (years, months, weeks or days) from ``born`` to ``at``."""
    if unit == "years":
        return at.year - born.year - ((at.month, at.day) < (born.month, born.day))
    if unit == "months":
        return (at.year - born.year) * 12 + at.month - born.month - (at.day < born.day)
    return (at - born).days // (7 if unit == "weeks" else 1)


_AGE_UNITS = {"a": "years", "mo": "months", "wk": "weeks", "d": "days"}     # UCUM, and the words
_AGE_UNITS |= {word + plural: word + "s" for word in ("year", "month", "week", "day") for plural in ("", "s")}
_DAYS_IN = {"years": 365.25, "months": 30.4375, "weeks": 7, "days": 1}


def reached_age(born: date, age: Any) -> Optional[date]:
    """The day a patient born on ``born`` reached ``age`` (a FHIR Age: years, months, weeks or days): whole years and
    months on the calendar (the 29th of February's birthday in a common year on the 28th), the rest in days; None
    when it cannot be read or lies beyond the calendar."""
    q = as_dict(age)
    value, unit = q.get("value"), _AGE_UNITS.get((quantity_unit(q) or "").strip().lower())
    if not is_number(value) or unit is None or value < 0:
        return None
    try:
        if float(value).is_integer() and unit in ("years", "months"):
            year, month = divmod(born.month - 1 + int(value) * (12 if unit == "years" else 1), 12)
            year, month = born.year + year, month + 1
            return date(year, month, min(born.day, calendar.monthrange(year, month)[1]))
        return born + timedelta(days=float(value) * _DAYS_IN[unit])
    except (OverflowError, ValueError):     # beyond year 9999
        return None


def holds_age(age: Any, aged: Optional[tuple[date, date]]) -> bool:
    """A referenceRange's ``age`` (a Range of years, months, weeks or days) holds the patient's age: whole
    units completed on the value's day, as laboratories band ages ("5-11 years" holds 11 years and 9
    months); a bound that is not a whole number is compared in days. Unreadable, or no age to check: no."""
    if aged is None or not isinstance(age, dict) or not (age.get("low") or age.get("high")):
        return False
    born, day = aged
    for side in ("low", "high"):
        q = as_dict(age.get(side))
        if not q:
            continue
        bound, unit = q.get("value"), _AGE_UNITS.get((quantity_unit(q) or "").strip().lower())
        if not is_number(bound) or unit is None:
            return False
        whole = float(bound).is_integer()
        mine = completed_age(born, day, unit) if whole else (day - born).days
        limit = bound if whole else bound * _DAYS_IN[unit]
        if (mine < limit) if side == "low" else (mine > limit):
            return False
    return True


def _born(s: Optional[str]) -> Optional[date]:
    if s is None:
        return None
    if PARTIAL_DATE.match(s):
        s = s + ("-01" if len(s) == 7 else "-01-01")
    try:
        return date.fromisoformat(s[:10])
    except ValueError:
        return None


def _last_day(first: date, partial: str) -> date:
    """The last day a partial date ("2026-11", "2026") allows, from its first."""
    if len(partial) == 7:
        return first.replace(day=calendar.monthrange(first.year, first.month)[1])
    return first.replace(month=12, day=31)


def _age(birth: Any, at: Optional[date], where: str, warnings: list[str]) -> Optional[float]:
    s = as_str(birth)
    if s is None:
        return None
    if at is None:
        warnings.append(f"{where}: no as_of and no dated lab, so age_years could not be computed.")
        return None
    born = _born(s)
    if born is None:
        warnings.append(f"{where}: birthDate {s!r} is not a date; age left out.")
        return None
    if born > at + timedelta(days=1):   # had read as 0 years old (a day's time-zone slack for a newborn)
        warnings.append(f"{where}: birthDate {s!r} is after {at.isoformat()}; age left out.")
        return None
    if PARTIAL_DATE.match(s):
        latest = min(_last_day(born, s), at)
        if completed_age(latest, at, "years") < 2:
            # an infant's age by the youngest its birthDate allows: a newborn's "2026-11" had been read as the 1st,
            # 33 days old, and the neonate's limit was skipped with nothing said
            born = latest
            warnings.append(f"{where}: birthDate {s!r} is a partial date; an infant's age was taken as the youngest "
                            f"it allows (born {born.isoformat()}).")
        else:
            warnings.append(f"{where}: birthDate {s!r} is a partial date; the age may be a year off.")
    years = completed_age(born, at, "years")
    if years >= 2:
        return years
    # under two, in whole months: WHO's haemoglobin limits change at 6 months and at 2 years (rules/
    # reference_intervals.yaml), and a 10-month-old read as 0 years matched no row, so her anaemia went unseen
    return round(max(completed_age(born, at, "months"), 0) / 12, 2)


def _ancestry(res: dict[str, Any]) -> Optional[str]:
    """Text of the US Core race and ethnicity extensions (their `text`, else their codings' displays)."""
    parts: list[str] = []
    for ext in as_list(res.get("extension")):
        url = as_str(as_dict(ext).get("url")) or ""
        if url.split("|")[0] not in (RACE_EXT, ETHNICITY_EXT):
            continue
        subs = [s for s in as_list(ext.get("extension")) if isinstance(s, dict)]
        text = next((t for s in subs if s.get("url") == "text" and (t := as_str(s.get("valueString")))), None)
        if not text:
            displays = [d for s in subs if s.get("url") in ("ombCategory", "detailed")
                        and (d := as_str(as_dict(s.get("valueCoding")).get("display")))]
            text = ", ".join(dict.fromkeys(displays)) or None
        if text:
            parts.append(text)
    return "; ".join(parts)[:500] or None


# A Duffy blood group result (an Observation whose code names the Duffy group) as laboratories write its phenotype:
# Fy(a-b-) is the Duffy-null phenotype, an Fy(a+...) or Fy(...b+) one is not; "Duffy null" or "Duffy negative" in
# words. ISBT's notation; the engine weighs the status (merz_2023), the mapping only reads it.
_DUFFY_CODE = re.compile(r"duffy|\bfy\s*\(|\bfy[ab]\b|\bfy\s*:", re.I)
_FY = re.compile(r"fy\s*\(\s*a\s*([+-])\s*,?\s*b\s*([+-])\s*\)"          # Fy(a-b-)
                 r"|fy\s*:\s*(-?)1\s*,\s*(-?)2\b"                             # ISBT FY:-1,-2
                 r"|fya\s*(pos\w*|neg\w*|[+-])\W+fyb\s*(pos\w*|neg\w*|[+-])", re.I)   # Fya negative, Fyb negative
_DUFFY_NULL_WORDS = re.compile(r"duffy[- ]?(null|negative)|\bfy\s*null", re.I)
_MINUS = str.maketrans(dict.fromkeys("\u2212\u2010\u2011\u2012\u2013\u2014\ufe63\uff0d", "-"))


def _negative(sign: str) -> bool:
    return sign == "-" or sign.lower().startswith("neg")         # ISBT: FY:1 (no minus) is positive


def duffy_status(items: list[Item], warnings: list[str]) -> Optional[bool]:
    """The patient's Duffy-null status from a Duffy blood group Observation (the latest), None when there is none
    or it says neither (named in ``warnings``). A Fy(a-b-) result had been ignored: a Duffy-null patient's ANC of
    1.2 on clozapine got the general population's "do not start"."""
    found: list[tuple[str, bool]] = []
    for item in items:
        res = item.resource
        if item.type != "Observation" or "valueQuantity" in res or not _DUFFY_CODE.search(" ".join(filter(None, [
                concept_text(res.get("code")), *(as_str(c.get("display")) for c in codings(res.get("code")))]))):
            continue                # (a measured value is no blood group phenotype: a lab's count is passed over fast)
        text = (as_str(res.get("valueString")) or concept_text(res.get("valueCodeableConcept")) or "").translate(_MINUS)
        fy = _FY.search(text)
        if fy or _DUFFY_NULL_WORDS.search(text):
            when = as_str(res.get("effectiveDateTime")) or as_str(res.get("issued")) or ""
            signs = [g for g in fy.groups() if g is not None] if fy else []
            found.append((when, bool(_DUFFY_NULL_WORDS.search(text)) or (len(signs) == 2 and all(map(_negative, signs)))))
        elif text:
            warnings.append(f"{item.label}: Duffy result {text[:60]!r} was not understood (Fy(a-b-) is Duffy null); "
                            f"Duffy status left unknown.")
    return max(found)[1] if found else None

