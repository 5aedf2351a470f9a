"""The leukodx engine: one patient case in, one Assessment out.

    parse -> normalize -> derive -> reason -> rank -> explain -> render

Public API: :func:`assess`, :class:`Engine`, :class:`CaseError`, the models in
:mod:`leukodx.engine.case` and :mod:`leukodx.engine.assessment`.
"""
from .errors import CaseError, KnowledgeBaseError, LeukodxError, Problem
from .pipeline import Engine, assess, get_engine

__all__ = ["assess", "Engine", "get_engine", "CaseError", "KnowledgeBaseError", "LeukodxError", "Problem"]
