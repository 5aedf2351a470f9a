"""Partial assessment: leave out what cannot be read, assess the rest, and say what was left out.

A person's case is judged strictly (every problem is an error). Data from an EHR is judged
partially: each problem's input item (a lab, a medication, a condition, a history or patient field)
is removed and listed as :class:`NotAssessed`, and the rest is assessed. What cannot be removed
(the document itself, or no lab left) is still an error.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional, TypeVar

from .assessment import NotAssessed
from .errors import CaseError, Problem

__all__ = ["assess_partially"]

T = TypeVar("T")
_ITEM = re.compile(r"^(labs|medications|history\.conditions)\[(\d+)\]")
_FIELD = re.compile(r"^(patient|history)\.([a-z_0-9]+)")
_TOP = ("as_of", "id", "title", "rationale")
# the parts of an item left out alone, the item itself kept: a medication's dose or indication (the drug is known), a
# lab value's lower limit of normal (the value is judged against leukodx's own limits: a negative limit, or one in a
# unit pint cannot read, had taken an ANC of 0.3 and its tier away)
_ASIDE = {"medications": {"dose": "the drug", "indication": "the drug"},
          "labs": {"lln": "the value", "lln_unit": "the value"}}


def _describe(item: Any) -> Optional[str]:
    if isinstance(item, dict):
        if "value" in item and ("test" in item or "loinc" in item):
            return " ".join(str(item.get(k)) for k in ("test", "loinc", "value", "unit") if item.get(k) is not None)[:200]
        if "name" in item or "rxnorm" in item or "atc" in item:
            return str(item.get("name") or (f"RxNorm {item['rxnorm']}" if item.get("rxnorm") else
                                            f"ATC {item.get('atc')}"))[:200]
        return None
    return None if item is None else str(item)[:200]


def _target(loc: str) -> Optional[tuple[str, Any]]:
    """(list name, index) or (section, field) or ("", top-level key) that a problem's location names."""
    m = _ITEM.match(loc)
    if m:
        return m.group(1), int(m.group(2))
    m = _FIELD.match(loc)
    if m:
        return m.group(1), m.group(2)
    if loc in _TOP:
        return "", loc
    return None


def _remove(doc: dict[str, Any], problems: list[Problem], out: list[NotAssessed],
            origin: dict[str, list[int]]) -> list[Problem]:
    """Remove what each problem names from doc; returns the problems that name nothing removable.
    ``origin`` keeps, for each list items were removed from, the index in the caller's case of each item
    left, so that what is left out in a later round is named by the caller's index."""
    drop: dict[str, set[int]] = {}
    fatal: list[Problem] = []
    for p in problems:
        targets = [t for loc in (p.items or (p.loc,)) if (t := _target(loc)) is not None]
        if not targets:
            fatal.append(p)
            continue
        for where, key in targets:
            if isinstance(key, int):
                items = doc.get("history", {}).get("conditions") if where == "history.conditions" else doc.get(where)
                if not isinstance(items, list) or key >= len(items):
                    fatal.append(p)
                    continue
                item = items[key]
                ref = item.get("ref") if isinstance(item, dict) else None
                first = origin.get(where, range(len(items)))[key]
                field = f"{where}[{first}]" + (f" ({ref})" if isinstance(ref, str) else "")
                # the part of the item the problem is about, when the message does not name it (`unit: String
                # should have at most 60 characters`)
                part = p.loc[len(f"{where}[{key}]"):].lstrip(".") if p.loc.startswith(f"{where}[{key}].") else ""
                reason = f"{part}: {p.msg}" if part and part not in p.msg else p.msg
                aside = part.split(".")[0]
                kept = _ASIDE.get(where, {}).get(aside)
                if kept is not None and isinstance(item, dict):
                    # only a part cannot be read: the item stays, without it (a negative azathioprine dose had taken
                    # the drug, and a TPMT poor metabolizer's alert, away); a limit goes with its unit
                    gone = ("lln", "lln_unit") if where == "labs" else (aside,)
                    if aside in item:
                        out.append(NotAssessed(field=f"{field}.{aside}", value=str(item.get(aside))[:200],
                                               reason=f"{reason}; {kept} was assessed without its {aside}"))
                        doc[where] = items = list(items)       # copies of the list and the item: never the caller's
                        items[key] = {k: v for k, v in item.items() if k not in gone}
                    continue
                out.append(NotAssessed(field=field, value=_describe(item), reason=reason))
                drop.setdefault(where, set()).add(key)
            else:
                section = doc if where == "" else doc.get(where)
                if not isinstance(section, dict) or key not in section:
                    fatal.append(p)
                    continue
                out.append(NotAssessed(field=p.loc, value=_describe(section[key]), reason=p.msg))
                del section[key]
    for where, idx in drop.items():
        items = doc["history"]["conditions"] if where == "history.conditions" else doc[where]
        origin[where] = [o for i, o in enumerate(origin.get(where, range(len(items)))) if i not in idx]
        if where == "history.conditions":
            doc["history"]["conditions"] = [c for i, c in enumerate(doc["history"]["conditions"]) if i not in idx]
        else:
            doc[where] = [x for i, x in enumerate(doc[where]) if i not in idx]
    return fatal


def assess_partially(doc: dict[str, Any], run: Callable[[dict[str, Any]], T], rounds: int = 4
                     ) -> tuple[T, list[NotAssessed]]:
    """run(doc) until it no longer raises CaseError, removing what each error names. Raises CaseError
    (with what was left out listed first) when the rest cannot be assessed."""
    left_out: list[NotAssessed] = []
    origin: dict[str, list[int]] = {}
    for _ in range(rounds):
        try:
            return run(doc), left_out
        except CaseError as e:
            fatal = _remove(doc, e.problems, left_out, origin)
            if fatal or not doc.get("labs"):
                raise CaseError(fatal or [Problem("labs", "no lab value could be read; nothing was assessed")]
                                + [Problem(n.field, f"left out: {n.reason}") for n in left_out]) from None
    return run(doc), left_out
