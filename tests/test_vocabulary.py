"""Vocabulary (engine/vocabulary.py, used by normalize): free text to knowledge-base ids. Drug names
are matched after NFKC, removal of invisible characters and case folding; condition words are not
mistaken for abbreviations; transplant organs are recognised."""
from __future__ import annotations

import pytest

from leukodx.engine.vocabulary import match_conditions, match_organ

from conftest import base_case, lab


def test_unicode_tricks_in_drug_names_still_match(engine):
    for name in ["Aza\u200bthioprine", "ＩＭＵＲＡＮ", "imuran\u00ad", "  AZATHIOPRINE 50 mg tablet "]:
        a = engine.assess(base_case(labs=[lab("wbc", 2.5), lab("anc", 1.0)],
                                    medications=[{"name": name, "start": "2025-01-01"}]))
        assert "thiopurine_myelotoxicity" in [c.id for c in a.causes], name


@pytest.mark.parametrize("text,expected,absent", [
    ("allergic to all penicillins", set(), {"acute_leukemia"}),
    ("ALL in remission", {"acute_leukemia", "cancer"}, set()),
    ("uses hearing aids", set(), {"hiv"}),
    ("hiv infection, on ART", {"hiv", "viral_infection"}, set()),
    ("Crohn's disease", {"crohns_disease", "inflammatory_bowel_disease"}, set()),
    ("cap on a tooth", set(), {"pneumonia"}),
])
def test_condition_vocabulary_does_not_mistake_words_for_abbreviations(kb, text, expected, absent):
    found = set(match_conditions(kb, text))
    assert found == expected and not (absent & found)


@pytest.mark.parametrize("text,organ", [("kidney allograft", "kidney"), ("allo-HCT", "hsct"),
                                        ("allogeneic stem cell transplant", "hsct"), ("renal", "kidney")])
def test_transplant_organs(kb, text, organ):
    assert match_organ(kb, text) == organ
