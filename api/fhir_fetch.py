"""Transitional shim: the async FHIR client moved to :mod:`leukodx.api.fhir.fetch` (also re-exported
by :mod:`leukodx.api.fhir`). Kept only until ``api/routes/cds_hooks.py`` and
``tests/test_cds_conformance.py`` import from there; then delete this file."""
from .fhir.fetch import (MAX_BODY, MAX_CALL_BYTES, UNUSABLE, FetchError, FetchOutcome, address_allowed,
                         check_url, fetch_queries, fill_template, not_available, pages_note)

__all__ = ["MAX_BODY", "MAX_CALL_BYTES", "UNUSABLE", "FetchError", "FetchOutcome", "address_allowed", "check_url",
           "fetch_queries", "fill_template", "not_available", "pages_note"]
