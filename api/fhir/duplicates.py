"""Two values of one test at one time: which one the case keeps, and the warning that says why.

An EHR sends two when a result was revised (a preliminary ANC, then the corrected one), when a
search returns two versions of one result, or when a result was sent twice. Keeping whichever came
first in the Bundle would assess a superseded value (a preliminary ANC of 1.6 over the corrected 0.4),
so the later state of the result wins, in this order:

0. for two versions of one resource (the same id), the later version (``meta.versionId``, else
   ``meta.lastUpdated``): the resource's current state (version 10, final, had lost to version 9, amended);
1. the status: corrected or amended over final, final over preliminary (FHIR's order of a result's
   life; ``status`` is one of these four, the lab mapping having skipped the others);
2. the later ``issued`` (released later), when both have one;
3. the later ``meta.lastUpdated``, when both have one.

When none of these decides, the first is kept as before, and when the two values differ the
warning says that they conflict: choosing the lower count would be a clinical choice the data does
not support, so the conflict is shown to the clinician instead.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from leukodx.engine.timeutil import utc_naive

from .datatypes import as_dict, as_str, parse_when
from .resources import Item

__all__ = ["preferred", "later_version"]

_STATUS_RANK = {"preliminary": 0, "final": 1, "amended": 2, "corrected": 2}


def preferred(first: Item, first_value: str, second: Item, second_value: str,
              shown: str) -> tuple[bool, str, bool]:
    """(whether ``second`` replaces ``first``, the warning, whether they conflict: differ and nothing says
    which is right) for two values (``first_value``, ``second_value``, as text with their units) of the test
    and time named in ``shown`` ("anc value at 2026-12-01T08:00")."""
    newer = later_version(first.resource, second.resource)
    if newer is not None:
        keep, drop = (second, first) if newer else (first, second)
        kept, dropped = (second_value, first_value) if newer else (first_value, second_value)
        return newer, (f"{keep.label}: its {shown}, {kept}, was kept over {dropped} of {drop.label} because it is a "
                       f"later version of the same result; {dropped} was not used."), False
    for field, read in (("status", _status), ("issued", _issued), ("meta.lastUpdated", _updated)):
        a, b = read(first.resource), read(second.resource)
        if a is None or b is None or a == b:
            continue
        keep, drop = (second, first) if b > a else (first, second)
        kept, dropped = (second_value, first_value) if keep is second else (first_value, second_value)
        why = (f"its status {as_str(keep.resource.get('status'))!r} supersedes "
               f"{as_str(drop.resource.get('status'))!r}" if field == "status" else f"its {field} is later")
        return keep is second, (f"{keep.label}: its {shown}, {kept}, was kept over {dropped} of {drop.label} "
                                f"because {why}; {dropped} was not used."), False
    if first_value == second_value:
        return False, (f"{second.label}: a second {shown} with the same value, {second_value} (first: "
                       f"{first.label}); the first was kept."), False
    return False, (f"{second.label}: a second {shown}, {second_value}, conflicts with {first_value} of {first.label}; "
                   f"neither status, issued nor meta.lastUpdated says which is right, so the first was kept: check "
                   f"which result is valid."), True


def later_version(a: dict[str, Any], b: dict[str, Any]) -> Optional[bool]:
    """Whether ``b`` is a later version than ``a`` of the same resource (the same type and id): by ``meta.versionId``
    when both are whole numbers, else by ``meta.lastUpdated``; None when they are not two versions of one resource
    or nothing orders them."""
    rid = as_str(a.get("id"))
    if not rid or rid != as_str(b.get("id")) or a.get("resourceType") != b.get("resourceType"):
        return None
    va, vb = (as_str(as_dict(r.get("meta")).get("versionId")) for r in (a, b))
    if va and vb and va.isdigit() and vb.isdigit() and int(va) != int(vb):
        return int(vb) > int(va)
    ua, ub = _updated(a), _updated(b)
    return None if ua is None or ub is None or ua == ub else ub > ua


def _status(res: dict[str, Any]) -> Optional[int]:
    return _STATUS_RANK.get(as_str(res.get("status")) or "")


def _instant(raw: Any) -> Optional[datetime]:
    when, _ = parse_when(raw)
    return utc_naive(when) if when is not None else None


def _issued(res: dict[str, Any]) -> Optional[datetime]:
    return _instant(res.get("issued"))


def _updated(res: dict[str, Any]) -> Optional[datetime]:
    return _instant(as_dict(res.get("meta")).get("lastUpdated"))
