"""The prefetch templates of the CDS services: what a service asks the EHR to send with each call, built from
the knowledge base (its lab, genotype and vital-sign codes) once per version."""
from __future__ import annotations

from typing import Iterable

from leukodx.engine import Engine

from ..fhir.vitals import VitalCodes, vital_codes

__all__ = ["templates", "CBC_PANEL_LOINC", "VITALS_PANEL_LOINC"]

_P = "{{context.patientId}}"
# CBC and differential panels whose values may be components: 58410-2 (Synthea's), 57021-8, 57782-5, 69742-5, 24318-8,
# 69738-3 (value sets of github.com/nmdp-ig/cibmtr-reporting-ig, build/input/fsh/terminology/observations/); the
# vital-signs panel 85353-1 (FHIR R4 value set observation-vitalsignresult), whose temperature may be a component.
CBC_PANEL_LOINC = ("58410-2", "57021-8", "57782-5", "69742-5", "24318-8", "69738-3")
VITALS_PANEL_LOINC = ("85353-1",)


def _loinc_list(codes: Iterable[str]) -> str:
    return ",".join(f"http://loinc.org|{c}" for c in codes)


def _prefetch(kb_loinc: Iterable[str], pgx_loinc: Iterable[str], vitals: VitalCodes) -> dict[str, str]:
    """The prefetch templates: reads, patient references, token equality, _sort and _count only
    (CDS Hooks 2.0.1's recommended query subset). `observations` asks for the lab codes of the knowledge
    base and the CBC panel (whose values may come as its components); `pgx` for the TPMT/NUDT15 result
    codes of rules/pgx/result_codes.yaml (HL7 Genomics Reporting genotypes of other genes come with them);
    `vitals` for body temperature and weight (without it no EHR sends a temperature, and febrile neutropenia
    could never be seen; every site's code of rules/vitals.yaml); `conditions` for every Condition, whatever its
    status (api/fhir/conditions.py reads the status)."""
    return {
        "patient": f"Patient/{_P}",
        "observations": f"Observation?patient={_P}&code={_loinc_list([*kb_loinc, *CBC_PANEL_LOINC])}&_sort=-date"
                        f"&_count=200",
        "pgx": f"Observation?patient={_P}&code={_loinc_list(pgx_loinc)}&_sort=-date&_count=50",
        "vitals": f"Observation?patient={_P}&code={_loinc_list([*vitals.all, *VITALS_PANEL_LOINC])},"
                  f"{','.join(f'http://snomed.info/sct|{c}' for c in vitals.snomed)}&_sort=-date&_count=50",
        "medicationRequests": f"MedicationRequest?patient={_P}&_sort=-authoredon&_count=100",
        "medicationStatements": f"MedicationStatement?patient={_P}&_count=100",
        # every status: a resolved clozapine agranulocytosis still forbids a rechallenge, a relapse or an encounter
        # diagnosis with no status (a sepsis) is current; the mapping judges status and abatement itself
        "conditions": f"Condition?patient={_P}&_sort=-recorded-date&_count=200",
    }


_TEMPLATES: dict[str, dict[str, str]] = {}     # knowledge-base version -> its prefetch templates


def templates(eng: Engine) -> dict[str, str]:
    """The prefetch templates of the engine's knowledge base, built once per version (every call uses them)."""
    found = _TEMPLATES.get(eng.kb.version)
    if found is None:
        found = _TEMPLATES[eng.kb.version] = _prefetch(sorted(eng.kb.loinc), eng.kb.pgx_codes, vital_codes(eng.kb))
    return found
