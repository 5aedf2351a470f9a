"""The leukodx engine: one patient case in, one Assessment out.

    parse -> normalize -> derive -> reason -> rank -> explain -> render

Public API: :func:`assess`, :class:`Engine` (``assess``, ``check_orders``), :class:`CaseError`, the
models in :mod:`leukodx.engine.case`, :mod:`leukodx.engine.assessment` and :mod:`leukodx.engine.orders`.
"""
from .assessment import Assessment, NotAssessed
from .errors import CaseError, KnowledgeBaseError, LeukodxError, Problem
from .orders import OrderCheck, OrderInput
from .pipeline import Engine, assess, get_engine

__all__ = ["assess", "Engine", "get_engine", "Assessment", "NotAssessed", "OrderInput", "OrderCheck", "CaseError",
           "KnowledgeBaseError", "LeukodxError", "Problem"]
