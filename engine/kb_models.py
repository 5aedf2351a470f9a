"""The shapes of the knowledge base's files (pydantic, strict) and of a compiled rule."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from . import conditions as C

__all__ = ["Source", "Conclusion", "RuleSpec", "FamilySpec", "CatalogueEntry", "Rule", "CONCLUSION_KINDS"]

CONCLUSION_KINDS = ("finding", "alert", "cause", "step", "block_step", "missing", "warning")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def source_link(url: Optional[str], pmid: Optional[str], doi: Optional[str]) -> Optional[str]:
    """Where a reader opens a source: its URL, else PubMed, else the DOI resolver."""
    return url or (f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/" if pmid else None) or (
        f"https://doi.org/{doi}" if doi else None)


class Source(_Strict):
    id: str
    citation: str
    year: int
    kind: Literal["guideline", "label", "study", "review", "data"]
    pmid: Optional[str] = None
    doi: Optional[str] = None
    url: Optional[str] = None
    supports: str
    checked: str

    def link(self) -> Optional[str]:
        return source_link(self.url, self.pmid, self.doi)


class Conclusion(_Strict):
    """What a rule concludes when it fires: exactly one of finding, alert, cause, step, block_step,
    missing or warning, with its qualifiers."""
    finding: Optional[str] = None
    alert: Optional[str] = None
    cause: Optional[str] = None
    weight: Optional[float] = None
    step: Optional[str] = None
    urgency: Optional[Literal["immediate", "urgent", "routine"]] = None
    block_step: Optional[str] = None
    missing: Optional[str] = None
    warning: Optional[str] = None

    @cached_property
    def kind(self) -> str:
        return next(k for k in CONCLUSION_KINDS if getattr(self, k) is not None)


class RuleSpec(_Strict):
    id: str = Field(pattern=r"^[a-z0-9_]+\.[a-z0-9_]+$")
    statement: str
    when: dict[str, Any]
    then: list[Conclusion] = Field(min_length=1)
    sources: list[str] = Field(min_length=1)
    rationale: Optional[str] = None


class FamilySpec(_Strict):
    family: str = Field(pattern=r"^[a-z0-9_]+$")
    stage: int = Field(ge=1, le=9)
    title: str
    rules: list[RuleSpec] = Field(min_length=1)


class CatalogueEntry(_Strict):
    id: str
    title: str
    description: str
    sources: list[str] = Field(min_length=1)
    drug_classes: list[str] = []
    severity: Optional[Literal["critical", "warning"]] = None   # alerts only
    agents_from: Optional[Literal["interactions"]] = None        # causes whose agents are combinations
    # causes whose drugs act within an onset window (two thresholds of thresholds.yaml, in days on the drug): a
    # drug within it is named first among the agents
    onset_window: Optional[tuple[str, str]] = None


@dataclass(frozen=True)
class Rule:
    id: str
    family: str
    stage: int
    order: int                      # position in the knowledge base, for a stable trace
    statement: str
    rationale: Optional[str]
    condition: C.Node
    durable: dict[str, Any]
    then: tuple[Conclusion, ...]
    sources: tuple[str, ...]
    facts: tuple[str, ...]          # facts the condition reads (shown in the trace)
    file: str
    test: C.Predicate               # the condition compiled to plain Python
