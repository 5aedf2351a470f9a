"""The leukodx engine: one patient case in, one Assessment out.

    parse -> normalize -> derive -> reason -> rank -> explain -> render

Public API: :func:`assess`, :class:`Engine` (``assess``, ``check_orders``), :class:`CaseError`, and the
public modules: ``case`` (the input contract), ``assessment`` and ``orders`` (the outputs), ``parse``
(documents with limits), ``render`` (JSON and text), ``errors``, ``kb`` and ``conditions`` (the knowledge
base, for reviewers' tools), ``units``, ``timeutil`` and ``pgx`` (shared by the FHIR mapping). Every other module
is internal to the pipeline (tests/test_layout.py keeps the adapters off them).
"""
from .assessment import Assessment, NotAssessed
from .errors import CaseError, KnowledgeBaseError, LeukodxError, Problem
from .orders import OrderCheck, OrderInput
from .pipeline import ENGINE_VERSION, Engine, assess, get_engine
from .vocabulary import rxnorm_codes

__all__ = ["assess", "Engine", "get_engine", "ENGINE_VERSION", "Assessment", "NotAssessed", "OrderInput", "OrderCheck",
           "CaseError", "KnowledgeBaseError", "LeukodxError", "Problem", "rxnorm_codes"]
