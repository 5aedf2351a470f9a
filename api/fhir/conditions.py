"""Condition resources -> ``history.conditions``.

A Condition that is not refuted/entered-in-error gives its ``code.text`` (else a coding display),
each text once (case-insensitively), when it was current at the date the case is judged at; one
whose verification status is unconfirmed, provisional or differential is given as "suspected <text>",
which the vocabulary treats as a suspicion (rules/conditions.yaml ``not_a_diagnosis``):

* its onset is not after that date (a later one did not exist then: left out with a warning);
* it had not abated by then: an ``abatementDateTime`` (or ``abatementPeriod.end``) on or before the
  date leaves it out, whatever its clinical status says (with a warning when the status still says
  active); a resolved or inactive condition whose abatement is after the date was still current then
  (a screening judged at a past date) and is kept; resolved or inactive with no abatement date: left
  out, as the status says.
"""
from __future__ import annotations

from datetime import date
from typing import Optional

from .datatypes import When, after, as_dict, codes, concept_text, later_warning, parse_when
from .resources import Item

__all__ = ["map_conditions"]

CONDITION_SKIP_CLINICAL = ("resolved", "inactive")
CONDITION_SKIP_VERIFICATION = ("refuted", "entered-in-error")
CONDITION_UNCERTAIN_VERIFICATION = ("unconfirmed", "provisional", "differential")


def map_conditions(mine: list[Item], ref: Optional[date], warnings: list[str]) -> list[str]:
    """The texts of the patient's Conditions current at ``ref``, in input order."""
    texts: dict[str, str] = {}
    later: list[str] = []
    for item in mine:
        if item.type != "Condition":
            continue
        mapped = _condition(item, ref, warnings)
        if mapped is None:
            continue
        text, onset = mapped
        if after(onset, ref):
            later.append(item.label)
            continue
        texts.setdefault(text.casefold(), text)
    if later:
        assert ref is not None
        warnings.append(later_warning(len(later), "condition", "began", ref, later))
    return list(texts.values())


def _condition(item: Item, ref: Optional[date], warnings: list[str]) -> Optional[tuple[str, Optional[When]]]:
    res = item.resource
    clinical = set(codes(res.get("clinicalStatus")))
    verification = set(codes(res.get("verificationStatus")))
    if verification & set(CONDITION_SKIP_VERIFICATION):
        return None
    abated, _ = parse_when(res.get("abatementDateTime") or as_dict(res.get("abatementPeriod")).get("end"))
    ended = clinical & set(CONDITION_SKIP_CLINICAL)
    if abated is not None and ref is not None:
        if not after(abated, ref):            # over by the date the case is judged at
            if not ended:
                warnings.append(f"{item.label}: abated on {abated.isoformat()[:10]} although its clinical status "
                                f"is {', '.join(sorted(clinical)) or 'not given'}; not counted as current.")
            return None
    elif ended:
        return None
    text = concept_text(res.get("code"))
    if not text:
        warnings.append(f"{item.label}: a Condition without text or display; skipped.")
        return None
    uncertain = sorted(verification & set(CONDITION_UNCERTAIN_VERIFICATION))
    if uncertain:   # read as a suspicion: the vocabulary sets it aside (a suspicion of sepsis still counts)
        warnings.append(f"{item.label}: verification status {', '.join(uncertain)}: read as suspected {text!r}.")
        text = f"suspected {text}"
    onset, _ = parse_when(res.get("onsetDateTime") or as_dict(res.get("onsetPeriod")).get("start"))
    return text, onset
