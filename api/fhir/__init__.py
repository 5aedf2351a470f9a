"""FHIR R4 in leukodx: map an EHR's FHIR data to a case, and fetch what a CDS Hooks call did not prefetch.

    resources.py     flatten Bundles, lists and contained resources; resolve references
    datatypes.py     read FHIR data types (strings, codes, quantities, dates) without raising
    patient.py       which patient, which resources are theirs, demographics
    observations.py  lab Observations -> case.labs
    lab_units.py     a lab value's unit: which spelling, never one of two that disagree
    components.py    lab values in an Observation's components (a CBC panel sent as one Observation)
    duplicates.py    two values of one test at one time: which is kept
    vitals.py        body weight and temperature
    medications.py   MedicationRequest/MedicationStatement -> case.medications
    dosage.py        dosage instructions -> the dose per day (or week)
    conditions.py    Condition -> history.conditions
    pgx.py           TPMT/NUDT15 results -> history.tpmt/nudt15
    mapping.py       map_bundle: the case, with what was left out (the entry point)
    fetch.py         the async FHIR client for CDS Hooks (deadline, SSRF guard, paging)

The names below are the public API; everything else is internal to this package.
"""
from .fetch import (MAX_BODY, MAX_CALL_BYTES, UNUSABLE, FetchError, FetchOutcome, address_allowed, check_url,
                    fetch_queries, fill_template, not_available, pages_note)
from .datatypes import WITHDRAWN
from .dosage import order_dose
from .mapping import Mapped, bundle_to_case, map_bundle
from .medications import OrderDrug, medication_name_and_code, order_drugs
from .pgx import pgx_results
from .resources import MAX_DEPTH, MAX_RESOURCES, FhirMappingError, resources_from, resources_of_type
from .unread import UNNAMED_COUNT

__all__ = ["FhirMappingError", "Mapped", "map_bundle", "bundle_to_case", "resources_from", "resources_of_type",
           "pgx_results", "medication_name_and_code", "order_drugs", "order_dose", "OrderDrug", "MAX_DEPTH",
           "MAX_RESOURCES", "fetch_queries", "fill_template", "FetchError", "FetchOutcome", "UNUSABLE", "pages_note",
           "not_available", "check_url", "address_allowed", "MAX_BODY", "MAX_CALL_BYTES", "WITHDRAWN", "UNNAMED_COUNT"]
