"""Condition resources -> ``history.conditions``.

A Condition that is not resolved/inactive nor refuted/entered-in-error gives its ``code.text``
(else a coding display), each text once (case-insensitively). A condition whose onset is after the
date the case is judged at did not exist then: it is left out with a warning.
"""
from __future__ import annotations

from datetime import date
from typing import Optional

from .datatypes import When, after, as_dict, codes, concept_text, later_warning, parse_when
from .resources import Item

__all__ = ["map_conditions"]

CONDITION_SKIP_CLINICAL = ("resolved", "inactive")
CONDITION_SKIP_VERIFICATION = ("refuted", "entered-in-error")


def map_conditions(mine: list[Item], ref: Optional[date], warnings: list[str]) -> list[str]:
    """The texts of the patient's current Conditions, in input order."""
    texts: dict[str, str] = {}
    later: list[str] = []
    for item in mine:
        if item.type != "Condition":
            continue
        mapped = _condition(item, warnings)
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


def _condition(item: Item, warnings: list[str]) -> Optional[tuple[str, Optional[When]]]:
    res = item.resource
    clinical = set(codes(res.get("clinicalStatus")))
    verification = set(codes(res.get("verificationStatus")))
    if clinical & set(CONDITION_SKIP_CLINICAL) or verification & set(CONDITION_SKIP_VERIFICATION):
        return None
    text = concept_text(res.get("code"))
    if not text:
        warnings.append(f"{item.label}: a Condition without text or display; skipped.")
        return None
    onset, _ = parse_when(res.get("onsetDateTime") or as_dict(res.get("onsetPeriod")).get("start"))
    return text, onset
