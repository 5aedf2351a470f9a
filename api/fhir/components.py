"""Lab values carried in an Observation's ``component``: a CBC panel (57021-8) whose components are
coded WBC (6690-2), ANC (751-8), haemoglobin (718-7) ... each with its own ``valueQuantity``.

Some EHRs and devices send a blood count this way instead of one Observation per test (or per
``hasMember``); ignoring the components would leave such a patient with no count at all. Each
component whose LOINC code the knowledge base knows becomes a lab value of its Observation: the
Observation's time, status, ``issued``, ``meta`` and draw, the component's value, unit,
``dataAbsentReason`` and ``referenceRange``, read with the same checks as a top-level value (the
lab mapping is given a stand-in resource made of both). A component of another code is counted
in a warning, as an Observation of an unknown code is. Components are read only when at least one
has a known code: a blood-pressure or genotype Observation's components are not lab values.
"""
from __future__ import annotations

from typing import Any

from leukodx.engine.errors import Problem
from leukodx.engine.kb import KnowledgeBase

from .datatypes import as_list, code_label, loinc_codes
from .resources import Item
from .unread import named_count_left_out

__all__ = ["lab_components", "FROM_PARENT"]

FROM_PARENT = ("resourceType", "id", "status", "issued", "meta")      # what a component shares with its Observation
_FROM_COMPONENT = ("code", "dataAbsentReason", "referenceRange")       # and value[x]: what it has of its own


def lab_components(kb: KnowledgeBase, item: Item, labels: dict[str, int], skipped: list[Problem]
                   ) -> list[tuple[Item, str]]:
    """(stand-in Item, LOINC code) of each component of the Observation ``item`` with a code of
    rules/labs.yaml; when there is one, the other components' codes are counted in ``labels``, and one that
    names a blood count (unread.named_count: "Absolute Neutrophils" under a local code) is named in ``skipped``
    (it had been left out unseen, and the card said there was no differential)."""
    known: list[tuple[Item, str]] = []
    others: list[tuple[int, dict[str, Any], str]] = []
    for i, comp in enumerate(as_list(item.resource.get("component"))):
        if not isinstance(comp, dict):
            continue
        codes = loinc_codes(comp.get("code"))
        code = next((c for c in codes if c in kb.loinc), None)
        if code is None:
            others.append((i, comp, code_label(comp.get("code"), codes)))
        else:
            known.append((_stand_in(item, i, comp), code))
    if known:
        for i, comp, label in others:
            labels[label] = labels.get(label, 0) + 1
            left_out = named_count_left_out(f"{item.loc}.component[{i}]" if item.loc else f"component[{i}]", comp, label)
            skipped += [left_out] if left_out is not None else []
    return known


def _stand_in(item: Item, i: int, comp: dict[str, Any]) -> Item:
    """A resource the lab mapping reads as it reads an Observation: the component's value with its
    Observation's status and dates, found at ``<the Observation>.component[i]``."""
    parent = item.resource
    res = {k: parent[k] for k in FROM_PARENT if k in parent}
    res.update({k: v for k, v in comp.items() if k in _FROM_COMPONENT or k.startswith("value")})
    return Item(res, f"{item.loc}.component[{i}]" if item.loc else f"component[{i}]", None, item.container)
