"""TPMT and NUDT15 results -> ``history.tpmt`` / ``history.nudt15``.

An Observation whose code (text or a coding display) names the gene and whose value
(``valueString`` or ``valueCodeableConcept``) holds a diplotype (``*1/*3A``) or a metabolizer
phenotype word; the latest result of each gene wins. The words are passed on as the case contract
spells them; the engine resolves diplotypes and phenotypes.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from leukodx.engine.pgx import result_in_text

from .datatypes import as_str, codings, concept_text
from .patient import belongs, choose_patient
from .resources import Item, walk

__all__ = ["pgx_results", "map_pgx"]

_PGX_GENE = re.compile(r"\b(TPMT|NUDT15)\b", re.IGNORECASE)


def pgx_results(data: Any, patient_id: Optional[str] = None) -> dict[str, str]:
    """TPMT/NUDT15 results (diplotype or phenotype word) found in FHIR data, by gene (of ``patient_id``'s
    resources only, when given)."""
    items = walk(data)
    choice = choose_patient(items, patient_id, [])
    return map_pgx([i for i in items if belongs(i, choice)], [])


def map_pgx(mine: list[Item], warnings: list[str]) -> dict[str, str]:
    """{gene: result} of the patient's TPMT/NUDT15 Observations (genes in alphabetical order)."""
    found: dict[str, tuple[str, str]] = {}   # gene -> (time key, value)
    for item in mine:
        res = item.resource
        if item.type != "Observation":
            continue
        code_text = " ".join(filter(None, [concept_text(res.get("code"))] +
                                    [as_str(c.get("display")) for c in codings(res.get("code"))]))
        gene = _PGX_GENE.search(code_text or "")
        if not gene:
            continue
        value = as_str(res.get("valueString")) or concept_text(res.get("valueCodeableConcept"))
        if not value:
            warnings.append(f"{item.label}: {gene.group(1).upper()} result without a phenotype or diplotype was "
                            f"not used.")
            continue
        mapped = result_in_text(value)
        if mapped is None:
            warnings.append(f"{item.label}: {gene.group(1).upper()} result {value!r} was not understood.")
            continue
        when = as_str(res.get("effectiveDateTime")) or as_str(res.get("issued")) or ""
        key = gene.group(1).lower()
        if key not in found or when > found[key][0]:
            found[key] = (when, mapped)
    return {gene: value for gene, (_, value) in sorted(found.items())}
