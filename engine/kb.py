"""The knowledge base: rules/ loaded, checked and compiled.

rules/ holds data a clinician can review (see rules/README.md):

    sources/*.yaml   catalogue of guidelines, labels, studies        thresholds.yaml  named cutoffs
    labs.yaml        tests, LOINC codes, units, plausible ranges     drugs.yaml       drug vocabulary
    conditions.yaml  free-text vocabulary                            ctcae.yaml       CTCAE grading
    causes.yaml, steps.yaml, alerts.yaml, findings.yaml              catalogues of what rules conclude
    logic/*.yaml     the rules, one file per family                  pgx/             CPIC and PharmCAT tables

:func:`load` returns a :class:`KnowledgeBase` or raises :class:`KnowledgeBaseError` listing every
problem (`leukodx rules check`).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import conditions as C
from .case import SMEAR_FINDINGS
from .errors import KnowledgeBaseError

__all__ = ["KnowledgeBase", "Rule", "Conclusion", "load", "rules_dir", "TIERS", "URGENCY_ORDER"]

TIERS = ("normal", "mild", "moderate", "severe", "profound", "unknown")
URGENCY_ORDER = {"immediate": 0, "urgent": 1, "routine": 2}
PHENOTYPES = ("normal", "intermediate", "possible_intermediate", "poor", "indeterminate", "unknown")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        return next(k for k in ("finding", "alert", "cause", "step", "block_step", "missing", "warning")
                    if getattr(self, k) is not None)


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
    transplant_organs: dict[str, re.Pattern[str]]
    duffy_ancestry: re.Pattern[str]
    duffy_ancestry_sources: list[str]
    causes: dict[str, CatalogueEntry]
    steps: dict[str, CatalogueEntry]
    alerts: dict[str, CatalogueEntry]
    findings: dict[str, CatalogueEntry]
    ctcae: dict[str, Any]
    cpic: list[dict[str, Any]]
    cpic_source: dict[str, Any]
    diplotypes: dict[str, dict[str, str]]
    rules: list[Rule] = field(default_factory=list)
    families: dict[str, list[Rule]] = field(default_factory=dict)   # family -> rules, KB order
    family_titles: dict[str, str] = field(default_factory=dict)
    stages: list[tuple[int, list[str]]] = field(default_factory=list)  # (stage, families)
    rulesets: dict[str, list[Rule]] = field(default_factory=dict)       # durable-rules ruleset -> rules
    stage_rulesets: list[tuple[int, list[str]]] = field(default_factory=list)   # (stage, ruleset names)

    def value(self, name: str) -> float:
        return float(self.thresholds[name]["value"])

    def rule(self, rule_id: str) -> Rule:
        return self._by_id[rule_id]

    def __post_init__(self) -> None:
        self._by_id: dict[str, Rule] = {}

    # ---- the facts rules may read -----------------------------------------------------------
    def fact_type(self, name: str) -> type | None:
        return _fact_type(self, name)


_STATIC_FACTS: dict[str, type] = {
    "age_years": float, "weight_kg": float, "sex": str, "duffy_null": bool, "duffy_prevalent_ancestry": bool,
    "temperature_c": float, "fever_sustained_1h": bool, "splenomegaly": bool, "alcohol_use_disorder": bool,
    "days_since_transfusion": float, "transplant_organ": str, "days_since_transplant": float,
    "tpmt_phenotype": str, "nudt15_phenotype": str, "tpmt_method": str, "tpmt_activity_days_after_transfusion": float,
    "anc_derived": bool, "lymphocytes_derived": bool, "risk_tier": str, "anc_max": float,
    "cbc_stale": bool, "latest_cbc_age_days": float,
    "series_points": float, "count_drop_pct": float, "low_span_days": float, "cyclic_intervals": float,
    "any_suspect_drug_recent": bool,
}
_CLASS_SUFFIX = {"active": bool, "recent": bool, "days_on": float, "days_since_last_dose": float, "dose_mg_kg_day": float}


def _fact_type(kb: KnowledgeBase, name: str) -> type | None:
    if name in _STATIC_FACTS:
        return _STATIC_FACTS[name]
    if name in kb.tests or (name.endswith("_lln") and name[:-4] in kb.tests):
        return float
    for prefix, ids in (("finding_", kb.findings), ("alert_", kb.alerts), ("condition_", kb.conditions),
                        ("smear_", SMEAR_FINDINGS)):
        if name.startswith(prefix) and name[len(prefix):] in ids:
            return bool
    for suffix, typ in _CLASS_SUFFIX.items():
        if name.endswith("_" + suffix):
            stem = name[: -len(suffix) - 1]
            if stem in kb.drug_classes:
                return typ
            if stem.startswith("drug_") and any(d["id"] == stem[5:] for d in kb.drugs):
                return typ
    return None


def rules_dir() -> Path:
    """Where the knowledge base lives: the installed `leukodx.rules` package (rules/ in a checkout)."""
    return Path(str(resources.files("leukodx.rules")))


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml when available: 10x faster


def _read_yaml(path: Path, problems: list[str]) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError) as e:
        problems.append(f"{path.name}: cannot read: {e}")
        return None


def _version(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".yaml", ".json") :
            h.update(p.relative_to(root).as_posix().encode())
            h.update(b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _patterns(items: list[str], where: str, problems: list[str]) -> re.Pattern[str]:
    """One case-insensitive pattern matching any of the vocabulary's patterns, each anchored at a
    word start (patterns that begin with \\b or a group anchor themselves)."""
    parts = []
    for p in items:
        part = p if p.startswith(("\\b", "(?")) else rf"(?<![\w]){p}"
        try:
            re.compile(part)
        except re.error as e:
            problems.append(f"{where}: bad pattern {p!r}: {e}")
            continue
        parts.append(f"(?:{part})")
    return re.compile("|".join(parts) or r"(?!)", re.IGNORECASE)


def _entries(model: type[Any], items: Any, where: str, problems: list[str], into: Optional[dict[str, Any]] = None
             ) -> dict[str, Any]:
    """Validate a list of catalogue entries (each with an `id`), reporting bad entries and duplicates."""
    out: dict[str, Any] = {} if into is None else into
    for i, raw in enumerate(items or []):
        try:
            e = model.model_validate(raw)
        except ValidationError as err:
            problems.append(f"{where}[{i}]: {err.errors()[0]['msg']} at {err.errors()[0]['loc']}")
            continue
        if e.id in out:
            problems.append(f"{where}: duplicate id {e.id!r}")
        out[e.id] = e
    return out


def _catalogue(data: Any, key: str, name: str, problems: list[str]) -> dict[str, CatalogueEntry]:
    return _entries(CatalogueEntry, (data or {}).get(key, []), name, problems)


def _diplotypes(root: Path, problems: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    words = {"Normal Metabolizer": "normal", "Intermediate Metabolizer": "intermediate",
             "Possible Intermediate Metabolizer": "possible_intermediate", "Poor Metabolizer": "poor",
             "Indeterminate": "indeterminate"}
    for gene in ("TPMT", "NUDT15"):
        try:
            data = json.loads((root / "pgx" / f"{gene}_phenotype.json").read_text())
        except (OSError, ValueError) as e:
            problems.append(f"pgx/{gene}_phenotype.json: {e}")
            continue
        table: dict[str, str] = {}
        for d in data["diplotypes"]:
            a, b = d["diplotype"].split("/")
            table[f"{a}/{b}"] = table[f"{b}/{a}"] = words[d["phenotype"]]
        out[gene.lower()] = table
    return out


def load(root: Path | None = None) -> KnowledgeBase:
    """Load, check and compile the knowledge base. Raises KnowledgeBaseError with every problem."""
    root = root or rules_dir()
    problems: list[str] = []

    sources: dict[str, Source] = {}
    for path in sorted((root / "sources").glob("*.yaml")):
        _entries(Source, _read_yaml(path, problems), f"sources/{path.name}", problems, into=sources)
    for s in sources.values():
        if not (s.url or s.pmid or s.doi) and s.kind != "review":
            problems.append(f"sources: {s.id} has no url, pmid or doi")

    th = _read_yaml(root / "thresholds.yaml", problems) or {}
    thresholds = th.get("thresholds", {})
    labs = _read_yaml(root / "labs.yaml", problems) or {}
    tests = labs.get("tests", {})
    loinc = {code: test for test, spec in tests.items() for code in spec.get("loinc", [])}
    drugs = (_read_yaml(root / "drugs.yaml", problems) or {}).get("drugs", [])
    classes = {c for d in drugs for c in d.get("classes", [])}
    classes |= {d[k] for d in drugs for k in ("subclass", "oncologic_class", "non_oncologic_class") if d.get(k)}
    vocab = _read_yaml(root / "conditions.yaml", problems) or {}
    duffy = vocab.get("duffy_prevalent_ancestry", {})
    cpic_doc = json.loads((root / "pgx" / "cpic_thiopurine_recommendations_2020-05.json").read_text())

    kb = KnowledgeBase(
        version=_version(root), sources=sources, thresholds=thresholds, likelihood=th.get("likelihood", {}),
        tests=tests, loinc=loinc, drugs=drugs, drug_classes=classes,
        conditions={k: _patterns(v, f"conditions.{k}", problems) for k, v in vocab.get("conditions", {}).items()},
        transplant_organs={k: _patterns(v, f"transplant_organs.{k}", problems)
                           for k, v in vocab.get("transplant_organs", {}).items()},
        duffy_ancestry=_patterns(duffy.get("patterns", []), "duffy_prevalent_ancestry", problems),
        duffy_ancestry_sources=duffy.get("sources", []),
        causes=_catalogue(_read_yaml(root / "causes.yaml", problems), "causes", "causes.yaml", problems),
        steps=_catalogue(_read_yaml(root / "steps.yaml", problems), "steps", "steps.yaml", problems),
        alerts=_catalogue(_read_yaml(root / "alerts.yaml", problems), "alerts", "alerts.yaml", problems),
        findings=_catalogue(_read_yaml(root / "findings.yaml", problems), "findings", "findings.yaml", problems),
        ctcae=_read_yaml(root / "ctcae.yaml", problems) or {},
        cpic=cpic_doc["rows"], cpic_source=cpic_doc, diplotypes=_diplotypes(root, problems),
    )
    _compile_rules(kb, root, problems)
    _check_references(kb, problems)
    if problems:
        raise KnowledgeBaseError(problems)
    return kb


def _compile_rules(kb: KnowledgeBase, root: Path, problems: list[str]) -> None:
    numbers = {k: float(v["value"]) for k, v in kb.thresholds.items() if isinstance(v, dict) and "value" in v}
    produced_at: dict[str, int] = {}     # "finding_x" / "alert_x" -> stage that concludes it
    specs: list[tuple[FamilySpec, str]] = []
    for path in sorted((root / "logic").glob("*.yaml")):
        raw = _read_yaml(path, problems)
        try:
            specs.append((FamilySpec.model_validate(raw), path.name))
        except ValidationError as err:
            for e in err.errors()[:5]:
                problems.append(f"logic/{path.name}: {e['msg']} at {'.'.join(map(str, e['loc']))}")
    specs.sort(key=lambda s: (s[0].stage, s[0].family))
    seen: set[str] = set()
    for fam, _ in specs:
        for r in fam.rules:
            for c in r.then:
                if c.kind in ("finding", "alert"):
                    name = f"{c.kind}_{getattr(c, c.kind)}"
                    produced_at[name] = min(produced_at.get(name, fam.stage), fam.stage)
    order = 0
    for fam, fname in specs:
        if fam.family in kb.families:
            problems.append(f"logic/{fname}: family {fam.family!r} defined twice")
        kb.families[fam.family] = []
        kb.family_titles[fam.family] = fam.title
        for r in fam.rules:
            where = f"logic/{fname}: {r.id}"
            if r.id in seen:
                problems.append(f"{where}: duplicate rule id")
            seen.add(r.id)
            try:
                node = C.parse(r.when, numbers, kb.fact_type)
            except C.ConditionError as e:
                problems.append(f"{where}: condition does not compile: {e}")
                continue
            for name in C.facts_used(node):
                if name.startswith(("finding_", "alert_")):
                    if name not in produced_at:
                        problems.append(f"{where}: reads {name}, which no rule concludes")
                    elif produced_at[name] >= fam.stage:
                        problems.append(f"{where}: reads {name} concluded at stage {produced_at[name]}; "
                                        f"a rule may only read findings and alerts of earlier stages")
            for c in r.then:
                problems.extend(f"{where}: {p}" for p in _check_conclusion(kb, c))
            rule = Rule(id=r.id, family=fam.family, stage=fam.stage, order=order, statement=r.statement,
                        rationale=r.rationale, condition=node, durable=C.to_durable(node), then=tuple(r.then),
                        sources=tuple(r.sources), facts=tuple(C.facts_used(node)), file=f"logic/{fname}",
                        test=C.compile_python(node))
            order += 1
            kb.rules.append(rule)
            kb.families[fam.family].append(rule)
    for fam, _ in specs:
        if not kb.stages or kb.stages[-1][0] != fam.stage:
            kb.stages.append((fam.stage, []))
        kb.stages[-1][1].append(fam.family)
    _pack_rulesets(kb)
    kb._by_id = {r.id: r for r in kb.rules}


MAX_RULES_PER_RULESET = 60


def _pack_rulesets(kb: KnowledgeBase) -> None:
    """Whole families of one stage packed into as few rulesets as durable-rules' limits allow
    (first fit, largest family first; a family is never split). Fewer rulesets, fewer sessions."""
    for stage, families in kb.stages:
        packs: list[list[str]] = []
        for family in sorted(families, key=lambda f: (-len(kb.families[f]), f)):
            room = next((p for p in packs if sum(len(kb.families[f]) for f in p) + len(kb.families[family])
                         <= MAX_RULES_PER_RULESET), None)
            if room is None:
                packs.append(room := [])
            room.append(family)
        names = ["+".join(sorted(p)) for p in packs]
        for name in names:
            kb.rulesets[name] = [r for f in name.split("+") for r in kb.families[f]]
        kb.stage_rulesets.append((stage, names))


def _check_conclusion(kb: KnowledgeBase, c: Conclusion) -> list[str]:
    set_fields = [k for k in ("finding", "alert", "cause", "step", "block_step", "missing", "warning")
                  if getattr(c, k) is not None]
    if len(set_fields) != 1:
        return [f"a conclusion needs exactly one of finding/alert/cause/step/block_step/missing/warning, got {set_fields}"]
    kind = set_fields[0]
    value = getattr(c, kind)
    catalogue = {"finding": kb.findings, "alert": kb.alerts, "cause": kb.causes, "step": kb.steps,
                 "block_step": kb.steps}.get(kind)
    out = []
    if catalogue is not None and value not in catalogue:
        out.append(f"unknown {kind} id {value!r}")
    if kind == "cause" and c.weight is None:
        out.append(f"cause {value} needs a weight")
    if kind != "cause" and c.weight is not None:
        out.append("weight only goes with cause")
    if kind == "step" and c.urgency is None:
        out.append(f"step {value} needs an urgency")
    if kind != "step" and c.urgency is not None:
        out.append("urgency only goes with step")
    return out


def _check_references(kb: KnowledgeBase, problems: list[str]) -> None:
    cited: set[str] = set()

    def need(ids: Any, where: str) -> None:
        for s in ids or []:
            cited.add(s)
            if s not in kb.sources:
                problems.append(f"{where}: unknown source id {s!r}")

    for r in kb.rules:
        need(r.sources, f"{r.file}: {r.id}")
    for name, cat in (("causes", kb.causes), ("steps", kb.steps), ("alerts", kb.alerts), ("findings", kb.findings)):
        for e in cat.values():
            need(e.sources, f"{name}.yaml: {e.id}")
    for cause in kb.causes.values():
        for cls in cause.drug_classes:
            if cls not in kb.drug_classes:
                problems.append(f"causes.yaml: {cause.id}: unknown drug class {cls!r}")
    for k, t in kb.thresholds.items():
        need(t.get("sources"), f"thresholds.yaml: {k}")
    for d in kb.drugs:
        need(d.get("sources"), f"drugs.yaml: {d.get('id')}")
    need(kb.duffy_ancestry_sources, "conditions.yaml: duffy_prevalent_ancestry")
    need(kb.ctcae.get("sources"), "ctcae.yaml")
    for v in (kb.ctcae.get("versions") or {}).values():
        need(v.get("sources"), "ctcae.yaml")
    need(kb.cpic_source.get("leukodx_sources"), "pgx/cpic_thiopurine_recommendations_2020-05.json")
    for s in sorted(set(kb.sources) - cited):
        problems.append(f"sources: {s} is cited by nothing (remove it or cite it)")
    fired_kinds = {(c.kind, getattr(c, c.kind)) for r in kb.rules for c in r.then}
    for kind, cat in (("cause", kb.causes), ("step", kb.steps), ("alert", kb.alerts), ("finding", kb.findings)):
        for cid in cat:
            if (kind, cid) not in fired_kinds:
                problems.append(f"{kind} {cid!r} is in the catalogue but no rule concludes it")


@lru_cache(maxsize=1)
def default() -> KnowledgeBase:
    """The installed knowledge base, loaded once per process."""
    return load()
