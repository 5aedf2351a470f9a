"""The leukodx engine: one patient case in, one Assessment out.

    parse -> normalize -> derive -> reason -> rank -> explain -> render

Public API: :func:`assess`, :class:`Engine` (``assess``, ``check_orders``), :class:`CaseError`, and the
public modules: ``case`` (the input contract), ``assessment`` and ``orders`` (the outputs), ``parse``
(documents with limits), ``render`` (JSON and text), ``errors``, ``kb`` and ``conditions`` (the knowledge
base, for reviewers' tools), ``units``, ``timeutil`` and ``pgx`` (shared by the FHIR mapping). Every other module
is internal to the pipeline (tests/test_layout.py keeps the adapters off them).
"""
from __future__ import annotations

import importlib
from typing import Any

# Each name and the module it lives in. They are imported on first use (PEP 562), so a process that needs only
# the errors (`leukodx serve`'s supervisor, `leukodx --help`) does not pay for pint, pydantic and the pipeline.
_HOME = {"Assessment": "assessment", "NotAssessed": "assessment", "CaseError": "errors",
         "KnowledgeBaseError": "errors", "LeukodxError": "errors", "Problem": "errors", "OrderCheck": "orders",
         "OrderInput": "orders", "ENGINE_VERSION": "pipeline", "Engine": "pipeline", "assess": "pipeline",
         "get_engine": "pipeline", "rxnorm_codes": "vocabulary"}

__all__ = ["assess", "Engine", "get_engine", "ENGINE_VERSION", "Assessment", "NotAssessed", "OrderInput", "OrderCheck",
           "CaseError", "KnowledgeBaseError", "LeukodxError", "Problem", "rxnorm_codes"]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'leukodx.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value        # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
