"""One engine call: parse -> normalize -> derive -> reason -> rank -> explain.

``assess(case)`` is what every adapter (CLI, REST, CDS Hooks, replay) calls. An :class:`Engine`
holds the compiled knowledge base and the durable-rules rulesets; build it once per process,
after any fork (:func:`get_engine` does that lazily).
"""
from __future__ import annotations

import threading
from typing import Any, Optional

from .assessment import Assessment
from .derive import derive
from .explain import build_assessment
from .kb import KnowledgeBase, default as default_kb
from .normalize import normalize
from .parse import parse_case
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

    def assess(self, raw: Any, ctcae_version: Optional[str] = None) -> Assessment:
        """Assess one case (a Case, a mapping, JSON/YAML text or bytes, or a path).

        Raises :class:`CaseError` (with every problem found) when the case cannot be judged.
        """
        case = parse_case(raw)
        nc = normalize(self.kb, case, self.drugs)
        d = derive(self.kb, nc, ctcae_version)
        firings, _ = run_stages(self.kb, self.reasoner, d.facts)
        causes = rank_causes(self.kb, firings, nc.meds)
        return build_assessment(self.kb, nc, d, firings, causes, ENGINE_VERSION)


_ENGINE: Optional[Engine] = None
_ENGINE_LOCK = threading.Lock()


def get_engine() -> Engine:
    """The process's engine, built on first use."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None or not _ENGINE.healthy:
            _ENGINE = Engine()
        return _ENGINE


def assess(raw: Any, ctcae_version: Optional[str] = None) -> Assessment:
    """Assess one case with the process's engine. See :meth:`Engine.assess`."""
    return get_engine().assess(raw, ctcae_version)
