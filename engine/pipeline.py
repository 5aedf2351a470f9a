"""One engine call: parse -> normalize -> derive -> reason -> rank -> explain.

``assess(case)`` is what every adapter (CLI, REST, CDS Hooks, replay) calls. An :class:`Engine`
holds the compiled knowledge base and the durable-rules rulesets; build it once per process,
after any fork (:func:`get_engine` does that lazily).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Optional

from .assessment import Assessment, NotAssessed
from .case import Case
from .derive import derive
from .explain import build_assessment
from .exposure import active_interactions, suspect_meds
from .kb import KnowledgeBase, default as default_kb
from .normalize import NormCase, normalize
from .orders import OrderCheck, OrderInput, check_orders
from .parse import load_document, parse_case
from .partial import assess_partially
from .rank import rank_causes
from .reason import DurableReasoner, PlainEvaluator, Reasoner, run_stages
from .units import registry
from .vocabulary import DrugIndex

__all__ = ["Engine", "get_engine", "assess", "ENGINE_VERSION"]

ENGINE_VERSION = "0.1.0"


class Engine:
    """The knowledge base compiled for one process. ``backend`` is "durable" (the product) or
    "plain" (the Python evaluator of the same conditions, for tests and explanations)."""

    def __init__(self, kb: Optional[KnowledgeBase] = None, backend: str = "durable"):
        self.kb = kb or default_kb()
        self.drugs = DrugIndex(self.kb)
        self.reasoner: Reasoner = DurableReasoner(self.kb) if backend == "durable" else PlainEvaluator(self.kb)
        self.backend = backend
        registry()   # load the unit definitions now rather than on the first case

    @property
    def healthy(self) -> bool:
        return not getattr(self.reasoner, "broken", False)

    def assess(self, raw: Any, ctcae_version: Optional[str] = None, partial: bool = False) -> Assessment:
        """Assess one case (a Case, a mapping, JSON/YAML text or bytes, or a path).

        Strict (the default): raises :class:`CaseError` (with every problem found) when anything in
        the case cannot be judged. ``partial=True`` (data from an EHR): each lab, medication or field
        that cannot be read is left out and listed in ``not_assessed``, and the rest is assessed;
        CaseError only when nothing assessable is left.
        """
        left_out: list[NotAssessed] = []
        if partial:
            (case, nc), left_out = assess_partially(_document(raw), self._read)
        else:
            case, nc = self._read(raw)
        d = derive(self.kb, nc, ctcae_version)
        firings, _ = run_stages(self.kb, self.reasoner, d.facts)
        interactions = active_interactions(self.kb, nc)
        causes = rank_causes(self.kb, firings, suspect_meds(self.kb, nc), interactions, d.count_day)
        return build_assessment(self.kb, nc, d, firings, causes, ENGINE_VERSION, left_out, interactions)

    def check_orders(self, orders: list[OrderInput], assessment: Optional[Assessment] = None,
                     tpmt: Optional[str] = None, nudt15: Optional[str] = None,
                     unhad: frozenset[str] = frozenset()) -> list[OrderCheck]:
        """What leukodx says about drugs being ordered (thiopurines against TPMT/NUDT15, clozapine against
        the ANC). Phenotypes come from the assessment, else from the results given. See :mod:`orders`."""
        return check_orders(self.kb, self.drugs, orders, assessment, tpmt, nudt15, unhad)

    def _read(self, raw: Any) -> tuple[Case, NormCase]:
        case = parse_case(raw)
        return case, normalize(self.kb, case, self.drugs)


def _document(raw: Any) -> dict[str, Any]:
    """The case as a mapping that partial assessment may change, never the caller's own: partial
    assessment (:func:`~.partial.assess_partially`) removes keys of the top level, of ``patient`` and of
    ``history``, and replaces the lists that hold what it removes, so those two levels are copied. (A deep
    copy of an EHR's case of hundreds of labs cost more than reading it.)"""
    if isinstance(raw, Case):
        return raw.model_dump(mode="json", exclude_unset=True)
    if isinstance(raw, Path):
        try:
            raw = raw.read_bytes()
        except OSError:
            parse_case(raw)   # raises the CaseError that says why
    if isinstance(raw, (str, bytes)):
        raw = load_document(raw)
    if not isinstance(raw, dict):
        parse_case(raw)   # raises the CaseError that says why
    return {key: dict(value) if isinstance(value, dict) else value for key, value in raw.items()}


_ENGINE: Optional[Engine] = None
_ENGINE_LOCK = threading.Lock()


def get_engine() -> Engine:
    """The process's engine, built on first use."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None or not _ENGINE.healthy:
            _ENGINE = Engine()
        return _ENGINE


def assess(raw: Any, ctcae_version: Optional[str] = None, partial: bool = False) -> Assessment:
    """Assess one case with the process's engine. See :meth:`Engine.assess`."""
    return get_engine().assess(raw, ctcae_version, partial)
