"""Cross-checks of a loaded knowledge base: every id a rule, catalogue entry, threshold, drug or
table cites exists, every source is cited, every catalogue entry is concluded by some rule."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .case import ATC_CODE

if TYPE_CHECKING:
    from .kb import KnowledgeBase

__all__ = ["check_references"]


def check_references(kb: KnowledgeBase, problems: list[str]) -> None:
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
    for cls in kb.suspect_classes - kb.drug_classes:
        problems.append(f"drugs.yaml: suspect_classes: unknown drug class {cls!r}")
    for cond in kb.oncologic_conditions - set(kb.conditions):
        problems.append(f"conditions.yaml: oncologic: unknown condition {cond!r}")
    if not kb.duffy_null_note:
        problems.append("conditions.yaml: duffy_prevalent_ancestry needs a note")
    thiopurines = [d["id"] for d in kb.drugs if "thiopurine" in d.get("classes", [])]
    for pattern in ("tpmt_poor", "nudt15_poor", "both_intermediate", "one_intermediate", "normal", "indeterminate"):
        for drug in thiopurines:
            rows = [r for r in kb.dose_adjustments if r.get("pattern") == pattern and drug in r.get("drugs", [])]
            if len(rows) != 1:
                problems.append(f"pgx/dose_adjustments.yaml: {len(rows)} rows for {drug}, {pattern} (need exactly 1)")
    for r in kb.dose_adjustments:
        need(r.get("sources"), f"pgx/dose_adjustments.yaml: {r.get('pattern')}")
        if r.get("priority") not in ("critical", "warning", "info"):
            problems.append(f"pgx/dose_adjustments.yaml: {r.get('pattern')}: priority must be critical, warning or info")
    need(kb.orders.get("clozapine", {}).get("sources"), "orders.yaml: clozapine")
    if not kb.gene_studied_code:
        problems.append("pgx/result_codes.yaml: gene_studied_component is missing")
    for code, spec in kb.pgx_codes.items():
        if not isinstance(spec, dict) or spec.get("gene") not in ("tpmt", "nudt15", "both", "component") or \
                spec.get("kind") not in ("genotype", "interpretation", "variant", "activity"):
            problems.append(f"pgx/result_codes.yaml: {code}: needs gene (tpmt, nudt15, both, component) and kind "
                            f"(genotype, interpretation, variant, activity)")
    need(kb.tier_priority_sources, "alerts.yaml: tier_priority")
    need(kb.grade_priority_sources, "alerts.yaml: grade_priority")
    if kb.grade_priority and not kb.grade_priority_sources:
        problems.append("alerts.yaml: grade_priority has no grade_priority_sources")
    drug_ids = {d.get("id") for d in kb.drugs}
    for i in kb.interactions:
        need(i.get("sources"), f"interactions.yaml: {i.get('id')}")
        if len(i.get("sides", [])) != 2:
            problems.append(f"interactions.yaml: {i.get('id')}: needs two sides")
        for side in i.get("sides", []):
            for d in set(side.get("drugs", [])) - drug_ids:
                problems.append(f"interactions.yaml: {i.get('id')}: unknown drug {d!r}")
            for c in set(side.get("classes", [])) - kb.drug_classes:
                problems.append(f"interactions.yaml: {i.get('id')}: unknown drug class {c!r}")
    for test, table in kb.reference_intervals.items():
        need(table.get("sources"), f"reference_intervals.yaml: {test}")
        if test not in kb.tests:
            problems.append(f"reference_intervals.yaml: unknown test {test!r}")
    for e in kb.alerts.values():
        if e.severity is None:
            problems.append(f"alerts.yaml: {e.id} needs a severity (critical or warning)")
    for k, t in kb.thresholds.items():
        need(t.get("sources"), f"thresholds.yaml: {k}")
    for d in kb.drugs:
        need(d.get("sources"), f"drugs.yaml: {d.get('id')}")
        if d.get("weekly_when_non_oncologic") and d["weekly_when_non_oncologic"] not in kb.alerts:
            problems.append(f"drugs.yaml: {d.get('id')}: weekly_when_non_oncologic names no alert of alerts.yaml")
        for cond in set(d.get("class_when_treating") or {}) - set(kb.conditions):
            problems.append(f"drugs.yaml: {d.get('id')}: class_when_treating names an unknown condition {cond!r}")
        for code in d.get("atc") or []:
            if not re.match(ATC_CODE, str(code)):
                problems.append(f"drugs.yaml: {d.get('id')}: atc {code!r} is not a WHO ATC 5th-level code")
    if any(d.get("atc") for d in kb.drugs) and not kb.atc_sources:
        problems.append("drugs.yaml: atc codes need atc_sources")
    need(kb.atc_sources, "drugs.yaml: atc_sources")
    need(kb.duffy_ancestry_sources, "conditions.yaml: duffy_prevalent_ancestry")
    need(kb.negation_sources, "conditions.yaml: not_a_diagnosis")
    if kb.condition_codes:
        need(kb.condition_codes_sources, "conditions.yaml: codes")
    if any(kb.not_neoplasm_codes.values()):
        need(kb.not_neoplasm_codes_sources, "conditions.yaml: not_neoplasm_codes")
    for cond in {c for codes in kb.condition_codes.values() for c in codes.values()} - set(kb.conditions):
        problems.append(f"conditions.yaml: codes: unknown condition {cond!r}")
    for cond in kb.episode_conditions - kb.acute_conditions:     # read as past: only an acute one's past cue counts
        problems.append(f"conditions.yaml: not_a_diagnosis: episode {cond!r} is not in acute")
    for cond in (kb.suspicion_counts | kb.acute_conditions | kb.episode_conditions) - set(kb.conditions):
        problems.append(f"conditions.yaml: not_a_diagnosis (suspicion_counts, acute): unknown condition {cond!r}")
    for cond in kb.lasting_conditions - set(kb.conditions):
        problems.append(f"conditions.yaml: history_that_lasts: unknown condition {cond!r}")
    need(kb.ctcae.get("sources"), "ctcae.yaml")
    _check_vitals(kb, need, problems)
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


def _check_vitals(kb: KnowledgeBase, need: Any, problems: list[str]) -> None:
    """rules/vitals.yaml: sourced, its temperature sites those a case may name, each code in one place."""
    from .case import TEMPERATURE_SITES
    temp = kb.vitals.get("body_temperature") or {}
    need(temp.get("sources"), "vitals.yaml: body_temperature")
    sites = temp.get("sites") or {}
    if set(sites) != set(TEMPERATURE_SITES):
        problems.append(f"vitals.yaml: body_temperature sites {sorted(sites)} are not the case's "
                        f"{sorted(TEMPERATURE_SITES)}")
    codes = [*temp.get("unspecified_loinc", []), *(kb.vitals.get("body_weight") or {}).get("loinc", [])]
    codes += [c for site in sites.values() for c in site.get("loinc", [])]
    body_sites = [c for site in sites.values() for c in site.get("body_site", [])]
    snomed = [c for site in sites.values() for c in site.get("snomed", [])]
    for kind, listed in (("LOINC", codes), ("bodySite", body_sites), ("SNOMED CT", snomed)):
        for code in sorted({c for c in listed if listed.count(c) > 1}):
            problems.append(f"vitals.yaml: {kind} code {code} is listed more than once")
    for code in sorted(set(codes) & set(kb.loinc)):
        problems.append(f"vitals.yaml: LOINC {code} is also a lab test of labs.yaml")
    for name, site in sites.items():
        if not isinstance(site.get("reliable"), bool) or not site.get("title"):
            problems.append(f"vitals.yaml: body_temperature site {name} needs a title and reliable: true or false")
