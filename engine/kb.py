"""The knowledge base: rules/ loaded, checked and compiled.

rules/ holds data a clinician can review (see rules/README.md):

    sources/*.yaml   catalogue of guidelines, labels, studies        thresholds.yaml  named cutoffs
    labs.yaml        tests, LOINC codes, units, plausible ranges     drugs.yaml       drug vocabulary
    conditions.yaml  free-text vocabulary                            ctcae.yaml       CTCAE grading
    causes.yaml, steps.yaml, alerts.yaml, findings.yaml              catalogues of what rules conclude
    facts.yaml       the facts rules may read                        pgx/             CPIC and PharmCAT tables,
    orders.yaml      what the order check says (clozapine)                            thiopurine dose changes
    logic/*.yaml     the rules, one file per family

:func:`load` returns a :class:`KnowledgeBase` or raises :class:`KnowledgeBaseError` listing every
problem (`leukodx rules check`). Reading is in kb_read.py, the file shapes in kb_models.py, the
fact vocabulary in facts.py, rule compilation in kb_compile.py, cross-checks in kb_check.py.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from .case import SMEAR_FINDINGS
from .errors import KnowledgeBaseError
from .facts import FactVocabulary
from .kb_check import check_references
from . import kb_numbers
from .kb_numbers import check_numbers
from .kb_compile import compile_rules
from .kb_models import CatalogueEntry, Conclusion, Rule, Source
from .kb_read import DocumentCache, catalogue, diplotypes, entries, patterns, read_yaml, use_cache, version_of

__all__ = ["KnowledgeBase", "Rule", "Conclusion", "load", "default", "rules_dir", "code_system", "TIERS", "URGENCY_ORDER"]

TIERS = ("normal", "mild", "moderate", "severe", "profound", "unknown")
URGENCY_ORDER = {"immediate": 0, "urgent": 1, "routine": 2}
PHENOTYPES = ("normal", "intermediate", "possible_intermediate", "poor", "indeterminate", "unknown")


@dataclass
class KnowledgeBase:
    version: str
    sources: dict[str, Source]
    thresholds: dict[str, dict[str, Any]]
    likelihood: dict[str, float]
    tests: dict[str, dict[str, Any]]
    loinc: dict[str, str]
    drugs: list[dict[str, Any]]
    drug_classes: set[str]
    conditions: dict[str, re.Pattern[str]]
    negation: dict[str, re.Pattern[str]]  # conditions.yaml not_a_diagnosis: absent/uncertain cues before and after
    suspicion_counts: frozenset[str]      # conditions a suspicion is enough for (the emergency gate)
    acute_conditions: frozenset[str]      # conditions a past mention does not make current
    episode_conditions: frozenset[str]    # acute ones an old problem-list entry is read as past for
    lasting_conditions: frozenset[str]    # diagnoses that still matter once over (a resolved Condition is kept)
    transplant_not_recipient: Optional[re.Pattern[str]]   # a donor, a candidate ... (conditions.yaml)
    negation_sources: list[str]
    transplant_organs: dict[str, re.Pattern[str]]
    duffy_ancestry: re.Pattern[str]
    duffy_ancestry_sources: list[str]
    duffy_null_note: str
    oncologic_conditions: frozenset[str]
    cancer_as_past: dict[str, re.Pattern[str]]   # conditions.yaml cancer_as_past: its cues
    condition_codes: dict[str, dict[str, str]]   # conditions.yaml codes: system -> {code, or prefix ending in *: id}
    condition_codes_sources: list[str]
    not_neoplasm_codes: dict[str, dict[str, str]]   # conditions.yaml not_neoplasm_codes, as condition_codes' tables
    not_neoplasm_codes_sources: list[str]
    suspect_classes: frozenset[str]
    atc_sources: list[str]                      # drugs.yaml atc_sources: where the drugs' ATC codes come from
    not_systemic: Optional[re.Pattern[str]]     # a medication text naming a topical or eye form (drugs.yaml)
    other_product: Optional[re.Pattern[str]]    # a medication text naming another product first (drugs.yaml)
    causes: dict[str, CatalogueEntry]
    steps: dict[str, CatalogueEntry]
    alerts: dict[str, CatalogueEntry]
    findings: dict[str, CatalogueEntry]
    ctcae: dict[str, Any]
    cpic: list[dict[str, Any]]
    cpic_source: dict[str, Any]
    diplotypes: dict[str, dict[str, str]]
    facts: FactVocabulary
    dose_adjustments: list[dict[str, Any]]
    orders: dict[str, Any]
    tier_priority: dict[str, str]
    tier_at_least_priority: dict[str, str]   # a tier known only as "this or worse" -> its least priority
    reference_intervals: dict[str, Any]
    interactions: list[dict[str, Any]]
    label_thresholds: list[dict[str, Any]]
    vitals: dict[str, Any]           # rules/vitals.yaml: body temperature codes and sites, body weight codes
    tier_priority_sources: list[str]
    step_priority: dict[str, str]    # step id -> the least priority it gives when immediate or urgent
    grade_priority: dict[int, str]   # CTCAE grade of a count -> the least priority it gives
    grade_priority_sources: list[str]
    pgx_codes: dict[str, Any]        # rules/pgx/result_codes.yaml: LOINC code -> {gene, kind, display}
    gene_studied_code: str           # the genotype component that names the gene
    pgx_answers: dict[str, str]      # result_codes.yaml answers: LOINC answer code -> phenotype word
    pgx_hgnc: dict[str, str]         # result_codes.yaml hgnc: HGNC gene id -> gene symbol
    rules: list[Rule] = field(default_factory=list)
    families: dict[str, list[Rule]] = field(default_factory=dict)   # family -> rules, KB order
    family_titles: dict[str, str] = field(default_factory=dict)
    stages: list[tuple[int, list[str]]] = field(default_factory=list)  # (stage, families)
    rulesets: dict[str, list[Rule]] = field(default_factory=dict)       # durable-rules ruleset -> rules
    stage_rulesets: list[tuple[int, list[str]]] = field(default_factory=list)   # (stage, ruleset names)
    derived: dict[str, Any] = field(default_factory=dict, repr=False)   # values computed once from it (explain.py)

    def value(self, name: str) -> float:
        return float(self.thresholds[name]["value"])

    def rule(self, rule_id: str) -> Rule:
        return self._by_id[rule_id]

    def __post_init__(self) -> None:
        self._by_id: dict[str, Rule] = {}

    def fact_type(self, name: str) -> type | None:
        """The type of a fact rules may read (rules/facts.yaml); None for an unknown fact."""
        return self.facts.type_of(name)


def rules_dir() -> Path:
    """Where the knowledge base lives: the installed `leukodx.rules` package (rules/ in a checkout)."""
    return Path(str(resources.files("leukodx.rules")))


def load(root: Path | None = None) -> KnowledgeBase:
    """Load, check and compile the knowledge base. Raises KnowledgeBaseError with every problem."""
    root = root or rules_dir()
    version = version_of(root)
    # The cache is named by the files' bytes and by the prose checker's own code, and is written only after a
    # load with no problem: when it exists, these files passed that check with this code, so the check (two
    # thirds of a load, 60 ms a process) is not run again. Every other check runs on every load.
    cache = DocumentCache(root, f"{version}-{_prose_checker()}")
    use_cache(cache)
    try:
        kb = _load(root, version, check_prose=not cache.loaded)
    finally:
        use_cache(None)
    cache.save()           # only a knowledge base that loaded without problems is cached
    return kb


@lru_cache(maxsize=1)
def _prose_checker() -> str:
    return hashlib.sha256(Path(kb_numbers.__file__).read_bytes()).hexdigest()[:12]


def _load(root: Path, version: str, check_prose: bool = True) -> KnowledgeBase:
    problems: list[str] = []

    sources: dict[str, Source] = {}
    for path in sorted((root / "sources").glob("*.yaml")):
        entries(Source, read_yaml(path, problems), f"sources/{path.name}", problems, into=sources)
    for s in sources.values():
        if not (s.url or s.pmid or s.doi) and s.kind != "review":
            problems.append(f"sources: {s.id} has no url, pmid or doi")

    th = read_yaml(root / "thresholds.yaml", problems) or {}
    thresholds = th.get("thresholds", {})
    labs = read_yaml(root / "labs.yaml", problems) or {}
    tests = labs.get("tests", {})
    loinc = {code: test for test, spec in tests.items() for code in spec.get("loinc", [])}
    drug_doc = read_yaml(root / "drugs.yaml", problems) or {}
    drugs = drug_doc.get("drugs", [])
    classes = {c for d in drugs for c in d.get("classes", [])}
    classes |= {d[k] for d in drugs for k in ("subclass", "oncologic_class", "non_oncologic_class") if d.get(k)}
    classes |= {c for d in drugs for c in (d.get("class_when_treating") or {}).values()}
    vocab = read_yaml(root / "conditions.yaml", problems) or {}
    duffy = vocab.get("duffy_prevalent_ancestry", {})
    negation = vocab.get("not_a_diagnosis", {})
    pgx_codes = read_yaml(root / "pgx" / "result_codes.yaml", problems) or {}
    cpic_doc = json.loads((root / "pgx" / "cpic_thiopurine_recommendations_2020-05.json").read_text())

    conditions = {k: patterns(v, f"conditions.{k}", problems) for k, v in vocab.get("conditions", {}).items()}
    organs = {k: patterns(v, f"transplant_organs.{k}", problems) for k, v in vocab.get("transplant_organs", {}).items()}
    findings = catalogue(read_yaml(root / "findings.yaml", problems), "findings", "findings.yaml", problems)
    alert_doc = read_yaml(root / "alerts.yaml", problems) or {}
    alerts = catalogue(alert_doc, "alerts", "alerts.yaml", problems)
    interaction_ids = [i.get("id") for i in (read_yaml(root / "interactions.yaml", problems) or {}).get("interactions", [])]
    facts = FactVocabulary(read_yaml(root / "facts.yaml", problems), {"interaction": interaction_ids,
        "test": tests, "finding": findings, "alert": alerts, "condition": conditions, "smear": SMEAR_FINDINGS,
        "class": sorted(classes), "drug": [d.get("id") for d in drugs], "transplant_organs": organs}, problems)
    kb = KnowledgeBase(
        version=version, sources=sources, thresholds=thresholds, likelihood=th.get("likelihood", {}),
        tests=tests, loinc=loinc, drugs=drugs, drug_classes=classes,
        conditions=conditions, transplant_organs=organs,
        negation={k: patterns(negation.get(k, []), f"not_a_diagnosis.{k}", problems)
                  for k in ("absent_before", "absent_after", "uncertain_before", "uncertain_after", "past_before",
                            "past_after", "current_before", "pseudo")},
        suspicion_counts=frozenset(negation.get("suspicion_counts", [])),
        acute_conditions=frozenset(negation.get("acute", [])),
        episode_conditions=frozenset(negation.get("episodes", [])),
        lasting_conditions=frozenset(vocab.get("history_that_lasts", [])),
        transplant_not_recipient=patterns(vocab["transplant_not_a_recipient"], "transplant_not_a_recipient", problems)
        if vocab.get("transplant_not_a_recipient") else None,
        negation_sources=negation.get("sources", []),
        duffy_ancestry=patterns(duffy.get("patterns", []), "duffy_prevalent_ancestry", problems),
        duffy_ancestry_sources=duffy.get("sources", []), duffy_null_note=" ".join(str(duffy.get("note", "")).split()),
        oncologic_conditions=frozenset(vocab.get("oncologic", [])),
        cancer_as_past={k: patterns(vocab.get("cancer_as_past", {}).get(k, []), f"cancer_as_past.{k}", problems)
                        for k in ("past_right_before", "past_right_after", "treated_now", "not_now_before",
                                  "chemotherapy_reason")},
        condition_codes=_condition_codes(vocab.get("codes", {})),
        condition_codes_sources=list(vocab.get("codes", {}).get("sources", [])),
        not_neoplasm_codes=_condition_codes({
            "not_a_neoplasm": {k: v for k, v in vocab.get("not_neoplasm_codes", {}).items() if k != "sources"},
            "system_aliases": vocab.get("codes", {}).get("system_aliases", {})}),
        not_neoplasm_codes_sources=list(vocab.get("not_neoplasm_codes", {}).get("sources", [])),
        suspect_classes=frozenset(drug_doc.get("suspect_classes", [])),
        atc_sources=list(drug_doc.get("atc_sources", [])),
        not_systemic=re.compile(r"\b(" + "|".join(map(re.escape, drug_doc["not_systemic_forms"])) + r")\b", re.I)
        if drug_doc.get("not_systemic_forms") else None,
        other_product=re.compile(r"\s*(" + "|".join(map(re.escape, drug_doc["other_products_first"])) + r")\b", re.I)
        if drug_doc.get("other_products_first") else None,
        causes=catalogue(read_yaml(root / "causes.yaml", problems), "causes", "causes.yaml", problems),
        steps=catalogue(read_yaml(root / "steps.yaml", problems), "steps", "steps.yaml", problems),
        alerts=alerts, findings=findings,
        ctcae=read_yaml(root / "ctcae.yaml", problems) or {},
        cpic=cpic_doc["rows"], cpic_source=cpic_doc, diplotypes=diplotypes(root, problems), facts=facts,
        dose_adjustments=(read_yaml(root / "pgx" / "dose_adjustments.yaml", problems) or {}).get("adjustments", []),
        orders=read_yaml(root / "orders.yaml", problems) or {},
        reference_intervals=read_yaml(root / "reference_intervals.yaml", problems) or {},
        interactions=(read_yaml(root / "interactions.yaml", problems) or {}).get("interactions", []),
        label_thresholds=(read_yaml(root / "label_thresholds.yaml", problems) or {}).get("labels", []),
        vitals=read_yaml(root / "vitals.yaml", problems) or {},
        tier_priority=alert_doc.get("tier_priority", {}),
        tier_at_least_priority=alert_doc.get("tier_at_least_priority", {}),
        tier_priority_sources=alert_doc.get("tier_priority_sources", []),
        step_priority=alert_doc.get("step_priority", {}),
        grade_priority={int(k): v for k, v in (alert_doc.get("grade_priority") or {}).items()},
        grade_priority_sources=alert_doc.get("grade_priority_sources", []),
        pgx_codes=pgx_codes.get("codes", {}), gene_studied_code=str(pgx_codes.get("gene_studied_component", "")),
        pgx_answers={str(k).upper(): str(v) for k, v in (pgx_codes.get("answers") or {}).items()},
        pgx_hgnc={str(k).upper(): str(v) for k, v in (pgx_codes.get("hgnc") or {}).items()},
    )
    compile_rules(kb, root, problems)
    check_references(kb, problems)
    if check_prose:
        problems.extend(check_numbers(root, kb.thresholds))   # a statement's numbers agree with its thresholds
    if problems:
        raise KnowledgeBaseError(problems)
    return kb


@lru_cache(maxsize=1)
def default() -> KnowledgeBase:
    """The installed knowledge base, loaded once per process."""
    return load()


def _condition_codes(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    """conditions.yaml ``codes`` by system (lower case, as ``code_system`` reads a coding's): each code (dots removed,
    upper case) to the condition it names; a system's other names (``system_aliases``: its OID) share its table."""
    out: dict[str, dict[str, str]] = {}
    for cid, systems in doc.items():
        if cid in ("sources", "system_aliases"):
            continue
        for system, codes in systems.items():
            for code in codes:
                out.setdefault(system.lower(), {})[str(code).replace(".", "").upper()] = cid
    for alias, system in doc.get("system_aliases", {}).items():
        out[alias.lower()] = out.setdefault(system.lower(), {})
    return out


def code_system(system: object) -> str:
    """A coding's system as the knowledge base's code tables key it: trimmed, lower case, no trailing slash
    ("http://snomed.info/SCT/" is SNOMED CT)."""
    return system.strip().rstrip("/").lower() if isinstance(system, str) else ""
