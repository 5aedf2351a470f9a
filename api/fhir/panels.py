"""Reports and panels around lab Observations: the draw a value belongs to, the time a value without its
own takes from the report or panel listing it, the values a report or panel entered in error withdraws,
and the results a report or panel lists that the data does not hold. Read by :mod:`.observations` and
:mod:`.mapping`."""
from __future__ import annotations

from typing import Optional

from leukodx.engine.errors import Problem

from .datatypes import When, as_list, as_str, reference
from .duplicates import later_version
from .resources import MAX_DEPTH, Index, Item

__all__ = ["draws", "inherited_times", "results_not_sent", "withdrawn"]


def results_not_sent(mine: list[Item], index: Index, warnings: list[str]) -> list[Problem]:
    """Name the results a DiagnosticReport (``result``) or a panel Observation (``hasMember``) lists that are not
    in the data (not fetched with it): a report's ANC left out of the prefetch is otherwise never seen. Returned
    as problems too, which the mapping names on the card when nothing else could be read (a CBC panel whose WBC
    and ANC were not sent had given no card)."""
    problems: list[Problem] = []
    for item in mine:
        field = {"DiagnosticReport": "result", "Observation": "hasMember"}.get(item.type)
        if field is None or field not in item.resource:
            continue
        missing = [ref for r in as_list(item.resource.get(field)) if (ref := reference(r))
                   and index.resolve(ref, item) is None]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            said = (f"{len(missing)} result{'s' if len(missing) != 1 else ''} it lists "
                    f"{'are' if len(missing) != 1 else 'is'} not in the data and could not be read ({shown})")
            warnings.append(f"{item.label}: {said}.")
            problems.append(Problem(item.loc, said))
    return problems


def draws(items: list[Item], index: Index) -> tuple[dict[int, str], set[str]]:
    """(Observation -> the draw it belongs to, the draws that are Specimens). The draw: its ``specimen``
    reference, else the DiagnosticReport whose ``result`` lists it, else the panel Observation whose
    ``hasMember`` lists it (a report or panel whose values share a collection time with another's is
    joined to it by :func:`.observations._one_draw_per_time`)."""
    out: dict[int, str] = {}
    for item in items:
        if item.type == "Observation":
            ref = reference(item.resource.get("specimen"))
            if ref:
                out[id(item.resource)] = ref
    specimens = set(out.values())
    for kind, field in (("DiagnosticReport", "result"), ("Observation", "hasMember")):
        for parent in items:
            if parent.type != kind:
                continue
            key = parent.full_url or f"{kind}/{as_str(parent.resource.get('id')) or parent.loc}"
            for ref in as_list(parent.resource.get(field)):
                child = index.resolve(reference(ref), parent)
                if child is not None and child.type == "Observation":
                    out.setdefault(id(child.resource), out.get(id(parent.resource), key))
    return out, specimens


# A report or panel with one of these statuses takes the values it holds or lists with it: entered in error, or
# cancelled (FHIR R4 DiagnosticReport.status and Observation.status: "the report is unavailable because the measurement
# was not started or not completed"; a cancelled report's ANC of 0.3 had driven a critical card: round 33).
WITHDRAWING = frozenset({"entered-in-error", "cancelled"})


def withdrawn(items: list[Item], index: Index) -> dict[int, Item]:
    """Observations that are contained in, or listed by (``result``, ``hasMember``), a DiagnosticReport or
    panel Observation whose status is entered-in-error or cancelled -> that report or panel: withdrawn with it, whatever
    their own status says (a contained resource does not exist apart from its container); and the other versions
    of an Observation entered in error (the same id: FHIR's entered-in-error is every version of the resource; an
    EHR sending its history had had the ANC of 0.3 it retracted drive a critical card)."""
    out: dict[int, Item] = {}
    retracted = {rid: item for item in items if item.type == "Observation" and item.container is None
                 and as_str(item.resource.get("status")) == "entered-in-error" and (rid := as_str(item.resource.get("id")))}
    for item in items if retracted else ():
        if item.type == "Observation" and item.container is None and \
                (other := retracted.get(as_str(item.resource.get("id")) or "")) is not None and other is not item \
                and later_version(other.resource, item.resource) is not True:   # a version after the error stands
            out[id(item.resource)] = other
    for item in items:
        container = item.container
        while container is not None:
            if container.type in ("DiagnosticReport", "Observation") and \
                    as_str(container.resource.get("status")) in WITHDRAWING:
                out[id(item.resource)] = container
                break
            container = container.container
    for parent in items:
        if parent.type in ("DiagnosticReport", "Observation") and \
                as_str(parent.resource.get("status")) in WITHDRAWING:
            for ref in as_list(parent.resource.get("result")) + as_list(parent.resource.get("hasMember")):
                child = index.resolve(reference(ref), parent)
                if child is not None and child.type == "Observation":
                    out.setdefault(id(child.resource), parent)
    return out


def inherited_times(items: list[Item], index: Index) -> dict[int, tuple[When, Item]]:
    """Observations without a time of their own -> (time, parent) of the DiagnosticReport (`result`) or
    panel Observation (`hasMember`) listing them, through at most MAX_DEPTH levels of panels."""
    parents = [p for p in items if (p.type == "DiagnosticReport" and "result" in p.resource)
               or (p.type == "Observation" and "hasMember" in p.resource)]
    inherited: dict[int, tuple[When, Item]] = {}
    if not parents:                   # (a search result of lab values alone)
        return inherited
    own: dict[int, Optional[When]] = {}
    for item in items:
        if item.type in ("Observation", "DiagnosticReport"):
            own[id(item.resource)] = item.own_time()
    for _ in range(MAX_DEPTH):
        changed = False
        for parent in parents:
            t = own.get(id(parent.resource))
            if t is None and id(parent.resource) in inherited:
                t = inherited[id(parent.resource)][0]
            if t is None:
                continue
            refs = parent.resource.get("result" if parent.type == "DiagnosticReport" else "hasMember")
            for ref in as_list(refs):
                child = index.resolve(reference(ref), parent)
                if (child is None or child.type != "Observation" or own.get(id(child.resource)) is not None
                        or id(child.resource) in inherited):
                    continue
                inherited[id(child.resource)] = (t, parent)
                changed = True
        if not changed:
            break
    return inherited
