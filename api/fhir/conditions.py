"""Condition resources -> ``history.conditions``.

A Condition that is not refuted/entered-in-error gives its ``code.text`` (else a coding display),
each text once (case-insensitively), when it was current at the date the case is judged at; one
whose verification status is unconfirmed, provisional or differential is given as "suspected <text>",
which the vocabulary treats as a suspicion (rules/conditions.yaml ``not_a_diagnosis``):

* its onset is not after that date (a later one did not exist then: left out with a warning). The onset is
  ``onsetDateTime`` or ``onsetPeriod.start``; an ``onsetAge`` (or an ``onsetRange`` of ages, by its upper bound)
  placed by the patient's birth date; the date, or the one year, an ``onsetString`` names; else ``recordedDate``;
* it had not abated by then: an ``abatementDateTime`` (or ``abatementPeriod.end``) on or before the
  date leaves it out, whatever its clinical status says (with a warning when the status still says
  active); a resolved or inactive condition whose abatement is after the date was still current then
  (a screening judged at a past date) and is kept; resolved or inactive with no abatement date: left
  out, as the status says.

A Condition with codes and no text or display is read by the codes of rules/conditions.yaml ``codes``
(SNOMED CT sepsis, ICD-10 A40/A41 ...) as the condition they name; one whose codes name nothing leukodx
knows is a problem in ``unread``, named on the output, not only a warning.
"""
from __future__ import annotations

import calendar
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any, Optional

from leukodx.engine.errors import Problem
from leukodx.engine.kb import KnowledgeBase, code_system
from leukodx.engine.timeutil import utc_date

from .datatypes import (When, after, as_dict, as_list, as_str, codes, codings, concept_text, later_warning, parse_when,
                        partial_day)
from .patient import reached_age
from .resources import Item

__all__ = ["map_conditions", "reason_read", "coded"]

CONDITION_SKIP_CLINICAL = ("resolved", "inactive")
CONDITION_SKIP_VERIFICATION = ("refuted", "entered-in-error")
CONDITION_UNCERTAIN_VERIFICATION = ("unconfirmed", "provisional", "differential")


def map_conditions(mine: list[Item], ref: Optional[date], warnings: list[str], kb: Optional[KnowledgeBase] = None,
                   unread: Optional[list[Problem]] = None, born: Optional[date] = None) -> list[str]:
    """The texts of the patient's Conditions current at ``ref``, in input order; ``born``, the patient's birth date,
    places an onset given as an age."""
    texts: dict[str, str] = {}
    later: list[str] = []
    for item in mine:
        if item.type != "Condition":
            continue
        mapped = _condition(item, ref, warnings, kb, unread, born)
        if mapped is None:
            continue
        text, onset, latest = mapped
        if after(onset, ref):
            later.append(item.label)
            continue
        # a recurrence or a relapse is happening now (FHIR R4 condition-clinical: children of active), whatever its
        # first onset (a recurrent febrile neutropenia recorded today had been read as an old episode)
        again = _status(item.resource.get("clinicalStatus")) & {"recurrence", "relapse"}
        stale = None if again else _stale_episode(text, latest, ref, kb, _on_problem_list(item.resource))
        if stale is not None:
            why, text = stale
            warnings.append(f"{item.label}: {why}.")
        texts.setdefault(text.casefold(), text)
    if later:
        assert ref is not None
        warnings.append(later_warning(len(later), "condition", "began", ref, later))
    return list(texts.values())


def _condition(item: Item, ref: Optional[date], warnings: list[str], kb: Optional[KnowledgeBase] = None,
               unread: Optional[list[Problem]] = None, born: Optional[date] = None
               ) -> Optional[tuple[str, Optional[When], Optional[date]]]:
    res = item.resource
    clinical, verification = _status(res.get("clinicalStatus")), _status(res.get("verificationStatus"))
    if verification & set(CONDITION_SKIP_VERIFICATION):
        return None
    abated, _ = parse_when(res.get("abatementDateTime") or as_dict(res.get("abatementPeriod")).get("end"))
    ended = clinical & set(CONDITION_SKIP_CLINICAL)
    over = ended or (abated is not None and ref is not None and not after(abated, ref))
    if over and _lasting(concept_text(res.get("code")), kb):
        warnings.append(f"{item.label}: {', '.join(sorted(ended)) or 'abated'}, and kept as history: a diagnosis that "
                        f"still matters once over (rules/conditions.yaml history_that_lasts).")
    elif abated is not None and ref is not None:
        if not after(abated, ref):            # over by the date the case is judged at
            if not ended:
                warnings.append(f"{item.label}: abated on {abated.isoformat()[:10]} although its clinical status "
                                f"is {', '.join(sorted(clinical)) or 'not given'}; not counted as current.")
            return None
        if ended and after(abated, datetime.now(timezone.utc).date()):   # an abatement still to come is no date
            warnings.append(f"{item.label}: its abatement date {abated.isoformat()[:10]} is in the future; its "
                            f"clinical status ({', '.join(sorted(ended))}) was taken: not counted as current.")
            return None
    elif ended:
        return None
    text = concept_text(res.get("code"))
    if not text:
        named = _coded(res.get("code"), kb)
        if named is None:
            shown = ", ".join(f"{as_str(c.get('system')) or 'no system'} {as_str(c.get('code'))}"
                              for c in codings(res.get("code")) if as_str(c.get("code")))[:200]
            warnings.append(f"{item.label}: a Condition without text or display; skipped.")
            if unread is not None:
                unread.append(Problem(item.loc, f"a diagnosis sent as codes only ({shown or 'no code'}), none of them "
                                                f"one leukodx reads: not assessed"))
            return None
        text = named.replace("_", " ")
        warnings.append(f"{item.label}: a Condition without text or display, read as {text!r} from its code.")
    if "remission" in clinical and not (kb and any(kb.conditions[c].search(text) for c in kb.oncologic_conditions
                                                    if c in kb.conditions)):
        # FHIR R4: a child of inactive, read as past (a sepsis in remission had been an active one); not a cancer, whose
        # remission is when its maintenance is given (an ALL in remission had made mercaptopurine "non-malignant")
        warnings.append(f"{item.label}: clinical status remission: read as a past {text!r}.")
        text = f"history of {text}"
    uncertain = sorted(verification & set(CONDITION_UNCERTAIN_VERIFICATION))
    if uncertain:   # read as a suspicion: the vocabulary sets it aside (a suspicion of sepsis still counts)
        warnings.append(f"{item.label}: verification status {', '.join(uncertain)}: read as suspected {text!r}.")
        text = f"suspected {text}"
    first, last = _onset(res, born, item.label, warnings)
    recorded = _days(as_str(res.get("recordedDate")))
    if first is None:       # without an onset, the day it was recorded bounds it (a "neutropenic fever" recorded in
        return text, recorded[0], recorded[1]                            # 2024 is not one now)
    if recorded[1] is not None and (last is None or recorded[1] < last):
        last = recorded[1]                                               # it began before it was recorded
    return text, first, last


def _lasting(text: Optional[str], kb: Optional[KnowledgeBase]) -> bool:
    """Whether a Condition's text names a diagnosis that matters once over (a clozapine agranulocytosis)."""
    return bool(text and kb and any(kb.conditions[c].search(text) for c in kb.lasting_conditions if c in kb.conditions))


def _onset(res: dict[str, Any], born: Optional[date], label: str, warnings: list[str]
           ) -> tuple[Optional[When], Optional[date]]:
    """(the earliest, the latest day) a Condition's onset can have been: from ``onsetDateTime`` or
    ``onsetPeriod.start`` ("2020" from 2020-01-01 to 2020-12-31); an ``onsetAge`` placed by the birth date (age 56:
    from the 56th birthday to the day before the 57th), an ``onsetRange`` of ages from its low to its high bound; the
    date, or the one year, an ``onsetString`` names. The earliest says whether it existed at a date, the latest
    whether it is older than a limit: a sepsis 'at age 56' of a 56-year-old, or 'since 1 Dec 2026', had been read as
    begun on the year's first day, and so as past."""
    raw = res.get("onsetDateTime") or as_dict(res.get("onsetPeriod")).get("start")
    if raw:
        return _days(as_str(raw))
    if res.get("onsetAge") or res.get("onsetRange"):
        span = as_dict(res.get("onsetRange"))
        low, high = (res.get("onsetAge"),) * 2 if res.get("onsetAge") else (span.get("low"), span.get("high"))
        first = _aged(born, low)[0] if low else born          # no low bound: it can have begun at birth
        last = _aged(born, high)[1] if high else None
        if first is not None and (not high or last is not None):
            return first, last
        warnings.append(f"{label}: its onset is an age that cannot be placed in time (no birth date, or not an age in "
                        f"years, months, weeks or days); dated by when it was recorded, if it was.")
        return None, None
    return _said(as_str(res.get("onsetString")))


def _aged(born: Optional[date], age: Any) -> tuple[Optional[date], Optional[date]]:
    """(the day a patient born on ``born`` reached ``age``, the last day at that age): age 56 years, from the 56th
    birthday to the day before the 57th; a fraction of a unit, that day alone."""
    first = reached_age(born, age) if born is not None else None
    value = as_dict(age).get("value")
    if first is None or not float(value).is_integer():
        return first, first
    after = reached_age(born, {**as_dict(age), "value": value + 1})
    return first, (after - timedelta(days=1) if after is not None else first)


def _days(text: Optional[str]) -> tuple[Optional[When], Optional[date]]:
    """(the first, the last day) of a FHIR date or dateTime: a partial one ("2020", "2020-05") spans its year or
    month; anything else: (None, None)."""
    when = parse_when(text)[0] if text else None
    if when is not None:
        return when, utc_date(when)
    first = partial_day(text)
    if first is None:
        return None, None
    text = (text or "").strip()
    if len(text) == 4:
        return first, date(first.year, 12, 31)
    return first, date(first.year, first.month, calendar.monthrange(first.year, first.month)[1])


_YEAR = re.compile(r"(?<![0-9])(1[89][0-9]{2}|2[0-9]{3})(?![0-9])")


def _said(text: Optional[str]) -> tuple[Optional[When], Optional[date]]:
    """When an onset's text says it began: a FHIR date in it, else the one year it names ("since March 2019": from
    its first to its last day), else (None, None) ("in childhood", "two weeks ago", two years)."""
    if not text:
        return None, None
    first, last = _days(text)
    if first is not None:
        return first, last
    years = set(_YEAR.findall(text))
    if len(years) != 1:
        return None, None
    year = int(years.pop())
    return date(year, 1, 1), date(year, 12, 31)


def _status(concept: object) -> set[str]:
    """A Condition's clinical or verification status as FHIR's codes, from its codes, displays or text in any case
    ("Refuted", {"text": "refuted"}, "Entered in error"): a refuted sepsis written as text only, or a code in capitals,
    had been taken as an active one."""
    said = [*codes(concept), *(as_str(c.get("display")) for c in codings(concept)), as_str(as_dict(concept).get("text"))]
    words = {"-".join(w.casefold().replace("_", " ").split()) for w in said if w}
    return words | {code for w in words for phrase, code in _STATUS_PHRASES if phrase in w}


# statuses written as phrases ("No longer active", "Ruled out", "Not confirmed"): the FHIR code they say
_STATUS_PHRASES = (("not-active", "inactive"), ("no-longer-active", "inactive"), ("ruled-out", "refuted"),
                   ("not-confirmed", "unconfirmed"), ("unconfirm", "unconfirmed"), ("error", "entered-in-error"))


def _on_problem_list(res: dict[str, Any]) -> bool:
    """A problem-list entry: its category says so, or it has a clinical status and no category saying otherwise (an
    encounter diagnosis, or a Condition with no clinicalStatus, which FHIR R4 con-3 requires of a problem-list item,
    is a record of a visit)."""
    categories = {c for concept in as_list(res.get("category")) for c in codes(concept)}
    if "problem-list-item" in categories:
        return True
    return "encounter-diagnosis" not in categories and bool(_status(res.get("clinicalStatus")))


def _stale_episode(text: str, latest: Optional[date], ref: Optional[date], kb: Optional[KnowledgeBase],
                   listed: bool = True) -> Optional[tuple[str, str]]:
    """(why, the text read as past: "history of ...") for an acute episode on the problem list that is not current, or
    None: a fever (or febrile neutropenia) whose onset is older than a current temperature may be
    (current_temperature_max_age_days: an episode of 2019 left active is no fever now); another episode
    (conditions.yaml not_a_diagnosis ``episodes``: sepsis, pneumonia ...) older than acute_condition_max_age_days (a
    sepsis recorded three years before had made a mild neutropenia an emergency); a pregnancy older than
    pregnancy_max_age_days; off the problem list (``listed`` False: an encounter diagnosis), any acute condition, the
    viral infections too. Read as past, never dropped: the vocabulary sets the episode aside and keeps a chronic
    condition the same text names ("Sepsis in CLL patient")."""
    if kb is None or ref is None or latest is None:          # the latest day it can have begun
        return None
    day = latest
    age = (ref - day).days
    if age <= kb.value("current_temperature_max_age_days"):
        return None
    named = {cid for cid in (kb.episode_conditions if listed else kb.acute_conditions)
             if (p := kb.conditions.get(cid)) and p.search(text)}
    if not named:
        return None
    if {"fever", "febrile_neutropenia"} & named:
        days, what = kb.value("current_temperature_max_age_days"), "a fever recorded with its onset on or before"
    elif named <= {"pregnancy", "pregnancy_second_trimester", "pregnancy_not_second_trimester"}:
        days, what = kb.value("pregnancy_max_age_days"), "a pregnancy recorded with its onset on or before"
    else:
        days, what = kb.value("acute_condition_max_age_days"), "an acute illness recorded with its onset on or before"
    if age <= days:
        return None
    marked = "still marked active" if listed else "recorded at a visit"
    return (f"{what} {day} and {marked} is not current (older than {days:g} days): read as past",
            _PAST.sub(r"\1history of ", text))


_PAST = re.compile(r"(^|[,;:.]\s*)")     # each clause's start: the vocabulary's past cue counts within its clause


def _coded(concept: object, kb: Optional[KnowledgeBase]) -> Optional[str]:
    """The condition one of the concept's codings names (rules/conditions.yaml ``codes``), or None."""
    return coded(concept, kb.condition_codes) if kb is not None else None


def reason_read(concept: object, kb: Optional[KnowledgeBase]) -> Optional[str]:
    """A drug's reason (a CodeableConcept) as text: its text or display; else the condition its code names
    (``codes``), or the code itself when ICD-10 places it in a chapter without neoplasms (``not_neoplasm_codes``:
    "K50.9 (ICD-10)", a reason that is no cancer); else None."""
    if text := concept_text(concept):
        return text
    if named := _coded(concept, kb):
        return named.replace("_", " ")
    for c in codings(concept) if kb is not None else ():
        if coded({"coding": [c]}, kb.not_neoplasm_codes):
            return f"{as_str(c.get('code'))} (ICD-10)"
    return None


def coded(concept: object, tables: dict[str, dict[str, str]]) -> Optional[str]:
    """What ``tables`` (system -> code or category ending in * -> name) give one of the concept's codings, or None."""
    for c in codings(concept):
        table, code = tables.get(code_system(c.get("system"))), as_str(c.get("code"))
        if not table or not code:
            continue
        key = code.replace(".", "").upper()
        found = table.get(key) or next((cid for k, cid in table.items() if k.endswith("*") and key.startswith(k[:-1])),
                                       None)
        if found:
            return found
    return None
