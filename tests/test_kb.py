"""The knowledge base: `rules check` passes, and each kind of defect it must catch is caught."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from leukodx.engine import Engine, KnowledgeBaseError
from leukodx.engine.kb import load, rules_dir
from leukodx.engine.kb_numbers import check_numbers
from leukodx.cli.replay import find_case_files, replay_file

from conftest import CASES


def test_the_shipped_knowledge_base_is_valid(kb):
    assert len(kb.rules) >= 100
    assert len(kb.drugs) >= 80
    assert {"thiopurine_myelotoxicity", "duffy_null_associated_neutrophil_count", "pseudoleukopenia"} <= set(kb.causes)
    assert len(kb.version) == 16


def test_every_rule_cites_known_sources_and_every_source_is_cited(kb):
    cited = {s for r in kb.rules for s in r.sources}
    assert all(s in kb.sources for s in cited)
    for r in kb.rules:
        assert r.statement.strip() and r.sources


def test_drug_vocabulary_has_no_ambiguous_names(kb):
    seen = {}
    for d in kb.drugs:
        for name in [d["name"], *d.get("brands", []), *d.get("synonyms", [])]:
            key = name.casefold()
            assert seen.get(key, d["id"]) == d["id"], f"{name} names {seen[key]} and {d['id']}"
            seen[key] = d["id"]


@pytest.fixture
def kb_copy(tmp_path, monkeypatch) -> Path:
    # a cache of its own: a test that switches a check off must not leave a cache that skips it for the next
    monkeypatch.setenv("LEUKODX_CACHE_DIR", str(tmp_path / "cache"))
    dest = tmp_path / "rules"
    shutil.copytree(rules_dir(), dest, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return dest


def _edit(path: Path, fn) -> None:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


@pytest.mark.parametrize("defect,message", [
    ("rule without a source", "at least 1 item"),
    ("unknown source id", "unknown source id"),
    ("duplicate rule id", "duplicate rule id"),
    ("unused source", "cited by nothing"),
    ("condition that does not compile", "does not compile"),
    ("unknown fact", "unknown fact"),
    ("unknown threshold", "unknown threshold"),
    ("unknown cause", "unknown cause id"),
    ("finding read at its own stage", "earlier stages"),
    ("drug class for an unknown condition", "class_when_treating names an unknown condition"),
])
def test_rules_check_catches(kb_copy, defect, message):
    logic = kb_copy / "logic" / "benign.yaml"

    def first_rule(fn):
        _edit(logic, lambda d: fn(d["rules"][0]))

    if defect == "rule without a source":
        first_rule(lambda r: r.update(sources=[]))
    elif defect == "unknown source id":
        first_rule(lambda r: r.update(sources=["made_up_2099"]))
    elif defect == "duplicate rule id":
        _edit(logic, lambda d: d["rules"].append(dict(d["rules"][0])))
    elif defect == "unused source":
        src = kb_copy / "sources" / "extra.yaml"
        src.write_text(yaml.safe_dump([{"id": "orphan", "citation": "x", "year": 2000, "kind": "study",
                                        "url": "https://example.org", "supports": "x", "checked": "x"}]))
    elif defect == "condition that does not compile":
        first_rule(lambda r: r.update(when={"anc": {"approximately": 1}}))
    elif defect == "unknown fact":
        first_rule(lambda r: r.update(when={"ancc": {"lt": 1}}))
    elif defect == "unknown threshold":
        first_rule(lambda r: r.update(when={"anc": {"lt": "$no_such"}}))
    elif defect == "unknown cause":
        first_rule(lambda r: r.update(then=[{"cause": "bad_luck", "weight": 1}]))
    elif defect == "finding read at its own stage":
        _edit(kb_copy / "logic" / "findings.yaml",
              lambda d: d["rules"][0].update(when={"finding_neutropenia": True}))
    elif defect == "drug class for an unknown condition":
        _edit(kb_copy / "drugs.yaml",
              lambda d: d["drugs"][0].update(class_when_treating={"aplastic_anaemia_typo": "aplastic_anemia_treatment"}))
    with pytest.raises(KnowledgeBaseError) as e:
        load(kb_copy)
    assert any(message in p for p in e.value.problems), e.value.problems


def test_the_prose_check_is_skipped_only_for_files_that_passed_it(kb_copy, monkeypatch):
    """The number-in-prose check runs once per version of the files; an edit, or a load that failed, runs it again."""
    import leukodx.engine.kb as kb_module
    calls = []

    def counted(root, thresholds):
        calls.append(root)
        return check_numbers(root, thresholds)

    monkeypatch.setattr(kb_module, "check_numbers", counted)
    load(kb_copy)
    load(kb_copy)
    assert len(calls) == 1
    _edit(kb_copy / "thresholds.yaml", lambda d: d["thresholds"]["neutropenia_anc"].update(value=1.0))
    for _ in range(2):                       # refused both times: a failed load leaves no cache behind
        with pytest.raises(KnowledgeBaseError):
            load(kb_copy)
    assert len(calls) == 3


def test_a_flipped_threshold_is_refused_by_the_number_check(kb_copy):
    """Lower the neutropenia cutoff from 1.5 to 1.0: its own meaning and the rules' prose still say 1.5."""
    _edit(kb_copy / "thresholds.yaml", lambda d: d["thresholds"]["neutropenia_anc"].update(value=1.0))
    with pytest.raises(KnowledgeBaseError) as e:
        load(kb_copy)
    assert any("neutropenia_anc" in p for p in e.value.problems)


def test_a_flipped_threshold_makes_cases_fail(kb_copy, monkeypatch):
    """The second safety net: with the number check off, the case library notices the same flip."""
    monkeypatch.setattr("leukodx.engine.kb.check_numbers", lambda root, thresholds: [])
    _edit(kb_copy / "thresholds.yaml", lambda d: d["thresholds"]["neutropenia_anc"].update(value=1.0))
    broken = Engine(load(kb_copy), backend="plain")
    failed = [p.name for p in find_case_files([str(CASES)]) if not replay_file(p, broken).passed]
    assert len(failed) >= 3, failed


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["body_temperature"]["sites"].pop("temporal"), "are not the case's"),
    (lambda d: d["body_temperature"]["sites"]["axillary"]["loinc"].append("8331-1"), "LOINC code 8331-1 is listed"),
    (lambda d: d["body_temperature"]["sites"]["oral"]["loinc"].append("6690-2"), "also a lab test"),
    (lambda d: d["body_temperature"]["sites"]["rectal"].pop("reliable"), "site rectal needs"),
    (lambda d: d["body_temperature"].update(sources=["no_such_source"]), "unknown source id 'no_such_source'"),
])
def test_a_defect_in_the_vital_sign_codes_is_refused(kb_copy, edit, message):
    _edit(kb_copy / "vitals.yaml", edit)
    with pytest.raises(KnowledgeBaseError) as e:
        load(kb_copy)
    assert any(message in p for p in e.value.problems), e.value.problems


def test_families_pack_into_the_fewest_rulesets_the_limit_allows():
    """First fit had packed stage 3's families (33, 23, 22, 21, 18, 15, 14, 13, 9, 6 and 5 rules) into four rulesets
    of at most 60 where three hold them: each ruleset is one more assert and retract per case."""
    from leukodx.engine.kb_compile import MAX_RULES_PER_RULESET, _fewest_packs
    sizes = dict(zip("abcdefghijk", (33, 23, 22, 21, 18, 15, 14, 13, 9, 6, 5)))
    packs = _fewest_packs(sizes, MAX_RULES_PER_RULESET)
    assert len(packs) == 3 and sorted(f for p in packs for f in p) == sorted(sizes)
    assert all(sum(sizes[f] for f in p) <= MAX_RULES_PER_RULESET for p in packs)
    assert _fewest_packs(sizes, MAX_RULES_PER_RULESET) == packs                    # the same every time
    assert _fewest_packs({"a": 61, "b": 1}, 60) == [["a"], ["b"]]                 # over the limit: alone (refused)
