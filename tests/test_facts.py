"""The fact vocabulary (rules/facts.yaml): the engine produces only declared facts of the declared
type, and `leukodx rules check` refuses an undeclared fact or a text value a fact cannot take."""
from __future__ import annotations

import shutil

import pytest

from leukodx.cli.replay import find_case_files
from leukodx.engine import CaseError, KnowledgeBaseError
from leukodx.engine.derive import derive
from leukodx.engine.kb import load, rules_dir
from leukodx.engine.normalize import normalize
from leukodx.engine.parse import load_document, parse_case

from conftest import CASES


def test_every_fact_the_engine_produces_is_declared_with_its_type(kb, engine):
    produced: dict[str, set[type]] = {}
    for path in find_case_files([str(CASES)]):
        try:
            nc = normalize(kb, parse_case(load_document(path.read_bytes())), engine.drugs)
        except CaseError:
            continue
        for name, value in derive(kb, nc).facts.items():
            produced.setdefault(name, set()).add(type(value))
    assert len(produced) > 100
    undeclared = sorted(n for n in produced if n not in kb.facts)
    assert undeclared == []
    wrong = {n: t for n, t in produced.items() if t != {kb.facts.type_of(n)}}
    assert wrong == {}


def test_text_facts_take_only_their_values(kb):
    assert kb.facts.check_value("tpmt_phenotype", "poor") is None
    assert "not 'poorr'" in kb.facts.check_value("tpmt_phenotype", "poorr")
    assert kb.facts.check_value("transplant_organ", "hsct") is None


@pytest.mark.parametrize("old,new,words", [
    ("tpmt_phenotype: poor}", "tpmt_phenotype: poorr}", "tpmt_phenotype is one of"),
    ("tpmt_phenotype: poor}", "tpmt_phenotype: poor, bogus_fact: true}", "unknown fact 'bogus_fact'"),
])
def test_rules_check_refuses_what_the_vocabulary_does_not_allow(tmp_path, old, new, words):
    copy = tmp_path / "rules"
    shutil.copytree(rules_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    alerts = copy / "logic" / "alerts.yaml"
    alerts.write_text(alerts.read_text().replace(old, new, 1))
    with pytest.raises(KnowledgeBaseError) as e:
        load(copy)
    assert any(words in p for p in e.value.problems)
