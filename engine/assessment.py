"""The Assessment: what the engine returns for one case. Every item carries the rules and
sources it rests on; `sources` holds the full catalogue entry of every source cited anywhere."""
from __future__ import annotations

from datetime import date, datetime
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from .kb_models import source_link

__all__ = ["Assessment", "NormalizedLab", "FindingOut", "RiskTier", "CtcaeGrade", "Ctcae", "AlertOut", "Evidence",
           "CauseOut", "StepOut", "BlockedStep", "MissingItem", "TraceItem", "SourceOut", "GeneStatus",
           "CpicRecommendation", "Pharmacogenomics", "CbcStatus", "NotAssessed", "ReferenceLimit", "InteractionOut", "Unrecognised", "CompactAssessment", "DISCLAIMER"]

DISCLAIMER = ("leukodx supports and does not replace clinical judgement. Verify each item against the cited "
              "sources and the patient before acting.")

Tier = Literal["normal", "mild", "moderate", "severe", "profound", "unknown"]
Urgency = Literal["immediate", "urgent", "routine"]
Scalar = Union[bool, float, str]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OriginalValue(_Out):
    value: float
    unit: str
    test: Optional[str] = None
    loinc: Optional[str] = None


class NormalizedLab(_Out):
    test: str
    name: str
    value: float
    unit: str
    time: Optional[Union[datetime, date]] = None
    lln: Optional[float] = None
    current: bool
    age_days: Optional[int] = None
    derived: bool = False
    derivation: Optional[str] = None
    original: Optional[OriginalValue] = None
    ref: Optional[str] = None
    comparator: Optional[str] = None     # the value was reported as a bound ("<" 0.5)


class FindingOut(_Out):
    id: str
    title: str
    description: str
    rules: list[str]
    facts: dict[str, Scalar]
    sources: list[str]


AncSource = Literal["reported", "derived", "lower_of_reported_and_derived", "bounded_by_wbc"]


class RiskTier(_Out):
    tier: Tier
    anc: Optional[float]
    anc_comparator: Optional[Literal["<", "<=", ">", ">="]] = Field(
        None, description="the ANC is a bound, not a measurement: below (<, <=) or above (>, >=) the value shown")
    basis: str
    anc_text: Optional[str] = Field(None, description="the ANC as shown: as the lab reports it, never rounded up onto a "
                                                      "tier cutoff it is below (1.499, not 1.5)")
    anc_derived: bool = False
    anc_source: Optional[AncSource] = None
    anc_time: Optional[Union[datetime, date]] = None
    anc_age_days: Optional[int] = None
    anc_at_most: Optional[float] = None
    tier_at_least: Optional[Tier] = None
    cutoffs: str
    duffy_null_note: Optional[str] = None
    sources: list[str]


class CtcaeGrade(_Out):
    term: str
    grade: int
    value: float
    criterion: str


class Ctcae(_Out):
    version: str
    wbc: Optional[CtcaeGrade] = None
    anc: Optional[CtcaeGrade] = None
    lymphocytes: Optional[CtcaeGrade] = None
    notes: list[str] = []
    sources: list[str]


Priority = Literal["critical", "warning", "info"]


class AlertOut(_Out):
    id: str
    title: str
    severity: Priority
    description: str
    rules: list[str]
    sources: list[str]


class Evidence(_Out):
    rule: str
    statement: str
    weight: float
    direction: Literal["for", "against", "neutral"]
    facts: dict[str, Scalar]
    sources: list[str]


class CauseOut(_Out):
    id: str
    title: str
    rank: int
    score: float
    likelihood: Literal["likely", "possible", "less_likely"]
    description: str
    agents: list[str] = []
    evidence: list[Evidence]
    sources: list[str]


class _Shared(_Out):
    """An entry the engine builds once and puts in every assessment that has it (engine/explain.py)."""
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepOut(_Shared):
    id: str
    title: str
    urgency: Urgency
    rationale: str
    reasons: list[str]
    rules: list[str]
    sources: list[str]


class BlockedStep(_Shared):
    id: str
    title: str
    reason: str
    rules: list[str]
    sources: list[str]


class MissingItem(_Out):
    item: str
    rules: list[str]


class TraceItem(_Out):
    rule: str
    family: str
    stage: int
    facts: dict[str, Scalar]


class SourceOut(_Shared):
    id: str
    citation: str
    year: int
    kind: str
    pmid: Optional[str] = None
    doi: Optional[str] = None
    url: Optional[str] = None

    def link(self) -> Optional[str]:
        """Where a reader opens the source: its URL, else PubMed, else the DOI resolver."""
        return source_link(self.url, self.pmid, self.doi)


class GeneStatus(_Out):
    gene: Literal["TPMT", "NUDT15"]
    input: Optional[str]
    phenotype: Literal["normal", "intermediate", "possible_intermediate", "poor", "indeterminate", "unknown"]
    diplotype: Optional[str] = None
    method: Optional[str] = None


class CpicRecommendation(_Out):
    drug: str
    tpmt_phenotype: str
    nudt15_phenotype: str
    recommendation: str
    classification: str
    implications: list[str]
    comments: Optional[str] = None
    update_2024: Optional[str] = None
    note: Optional[str] = None
    sources: list[str]


class Pharmacogenomics(_Out):
    tpmt: GeneStatus
    nudt15: GeneStatus
    tpmt_reliable: bool = True          # False: a TPMT result CPIC's caveats make unreliable (transfusion, HSCT ...)
    nudt15_reliable: bool = True        # False: a NUDT15 genotype from a blood sample after an allogeneic HSCT
    recommendations: list[CpicRecommendation] = []
    note: Optional[str] = None          # why no CPIC recommendation is shown for a thiopurine taken


class Unrecognised(_Out):
    """A drug or condition leukodx does not know, and was therefore not assessed; never silently assumed."""
    field: str
    text: str
    kind: Literal["drug", "condition"]
    suggestions: list[str] = []      # close names in the vocabulary: "did you mean" (never applied by leukodx)


class InteractionOut(_Out):
    """Two drugs taken together that raise marrow toxicity (rules/interactions.yaml)."""
    id: str
    title: str
    drugs: list[list[str]]          # the patient's drugs on each side
    effect: str
    action: str
    sources: list[str]


class ReferenceLimit(_Out):
    """The lower limit a value was judged against, and where it came from."""
    test: str
    lln: float
    unit: str
    basis: str
    sources: list[str] = []


class CbcStatus(_Out):
    """Which blood draw the tier, findings and alerts rest on, and how old it is."""
    current: bool
    time: Optional[Union[datetime, date]] = None
    age_days: Optional[int] = None
    max_age_days: int
    tests: list[str] = []
    note: str


class NotAssessed(_Out):
    """A piece of the input that could not be read and was left out (partial assessment)."""
    field: str
    value: Optional[str] = None
    reason: str


class CompactAssessment(_Out):
    """What a caller that acts on the result needs (issue 15: one representation of each value): the count
    it rests on, tier, alerts, causes and steps, with the source ids; the full Assessment has the rest."""
    case_id: str
    as_of: Optional[date]
    kb_version: str
    priority: Priority
    cbc: CbcStatus
    tier: Tier
    anc: Optional[float]
    anc_source: Optional[str] = None
    tier_at_least: Optional[Tier] = None
    alerts: list[dict[str, str]]
    causes: list[dict[str, Union[str, float, list[str]]]]
    steps: list[dict[str, str]]
    unrecognised: list[Unrecognised] = []
    not_assessed: list[str] = []
    disclaimer: str = DISCLAIMER


class Assessment(_Out):
    case_id: str
    as_of: Optional[date]
    kb_version: str
    engine_version: str
    disclaimer: str = DISCLAIMER
    priority: Priority = "info"
    unrecognised: list[Unrecognised] = []
    risk_tier: RiskTier
    cbc: CbcStatus
    ctcae: Ctcae
    alerts: list[AlertOut]
    findings: list[FindingOut]
    causes: list[CauseOut]
    steps: list[StepOut]
    steps_not_advised: list[BlockedStep]
    pharmacogenomics: Pharmacogenomics
    missing_data: list[MissingItem]
    conditions: list[str] = []
    cancer_current: bool = Field(False, description="a cancer named among the conditions as current, not only as past "
                                 "('history of breast cancer'): a drug ordered or taken with no indication of its own "
                                 "is taken as its treatment")
    interactions: list[InteractionOut] = []
    reference_limits: list[ReferenceLimit] = []
    not_assessed: list[NotAssessed] = []
    warnings: list[str]
    labs: list[NormalizedLab]
    sources: dict[str, SourceOut]
    trace: list[TraceItem]

    def compact(self) -> CompactAssessment:
        """The compact view (``?view=compact``): tier, alerts, causes and steps."""
        t = self.risk_tier
        return CompactAssessment(
            case_id=self.case_id, as_of=self.as_of, kb_version=self.kb_version, priority=self.priority, cbc=self.cbc,
            tier=t.tier, anc=t.anc, anc_source=t.anc_source, tier_at_least=t.tier_at_least,
            alerts=[{"id": a.id, "title": a.title, "severity": a.severity} for a in self.alerts],
            causes=[{"id": c.id, "title": c.title, "likelihood": c.likelihood, "score": c.score, "agents": c.agents}
                    for c in self.causes],
            steps=[{"id": s.id, "title": s.title, "urgency": s.urgency} for s in self.steps],
            unrecognised=self.unrecognised, not_assessed=[n.field for n in self.not_assessed])
