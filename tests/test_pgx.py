"""TPMT/NUDT15: the CPIC table row by row, diplotype mapping, and the rules built on them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from leukodx.engine import pgx
from leukodx.engine.assessment import GeneStatus

from conftest import base_case, lab

SHARED = Path(__file__).resolve().parents[2] / "shared" / "knowledge"
ROWS = json.loads((Path(__file__).resolve().parents[1] / "rules" / "pgx" /
                   "cpic_thiopurine_recommendations_2020-05.json").read_text())["rows"]
WORD = {v: k for k, v in pgx.CPIC_LABEL["tpmt"].items()} | {v: k for k, v in pgx.CPIC_LABEL["nudt15"].items()}


def test_the_table_has_all_75_rows():
    assert len(ROWS) == 75
    assert len({(r["drug"], r["tpmt_phenotype"], r["nudt15_phenotype"]) for r in ROWS}) == 75


@pytest.mark.skipif(not (SHARED / "derived").exists(), reason="shared reference data not present")
def test_the_shipped_table_is_the_reference_table():
    ref = json.loads((SHARED / "derived" / "cpic_thiopurine_recommendations_2020-05.json").read_text())["rows"]
    assert ROWS == ref


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['drug']}|{r['tpmt_phenotype']}|{r['nudt15_phenotype']}" for r in ROWS])
def test_recommendation_matches_cpic_row(kb, row):
    tpmt = GeneStatus(gene="TPMT", input=None, phenotype=WORD[row["tpmt_phenotype"]])
    nudt15 = GeneStatus(gene="NUDT15", input=None, phenotype=WORD[row["nudt15_phenotype"]])
    rec = pgx.recommendation(kb, row["drug"], tpmt, nudt15)
    assert rec is not None
    assert rec.recommendation == row["recommendation"]
    assert rec.classification == row["classification"]
    assert (rec.update_2024 or "") == row["superseded_note"]
    both_im = {tpmt.phenotype, nudt15.phenotype} <= {"intermediate", "possible_intermediate"}
    assert ("20-50%" in (rec.update_2024 or "")) == both_im      # the March 2024 double-IM change
    assert ("cpic_thiopurine_update_2024" in rec.sources) == both_im


def test_unknown_status_gives_no_row(kb):
    unknown = GeneStatus(gene="TPMT", input=None, phenotype="unknown")
    normal = GeneStatus(gene="NUDT15", input=None, phenotype="normal")
    assert pgx.recommendation(kb, "azathioprine", unknown, normal) is None


@pytest.mark.parametrize("gene,value,phenotype", [
    ("tpmt", "*1/*1", "normal"), ("tpmt", "*1/*3A", "intermediate"), ("tpmt", "*3A/*1", "intermediate"),
    ("tpmt", "*3A/*3A", "poor"), ("tpmt", "*3A/*8", "possible_intermediate"), ("tpmt", "*1/*8", "indeterminate"),
    ("nudt15", "*1/*3", "intermediate"), ("nudt15", "*3/*3", "poor"), ("nudt15", "*1/*9", "intermediate"),
    ("tpmt", "Poor Metabolizer", "poor"), ("tpmt", "possible intermediate", "possible_intermediate"),
    ("nudt15", "IM", "intermediate"), ("tpmt", "unknown", "unknown"),
])
def test_phenotype_from_word_or_diplotype(kb, gene, value, phenotype):
    assert pgx.resolve(kb, gene, value).phenotype == phenotype


@pytest.mark.parametrize("value", ["*99/*99", "*1/*300", "sort of low", "*1"])
def test_unmappable_values_are_refused(kb, value):
    with pytest.raises(pgx.PhenotypeError):
        pgx.resolve(kb, "tpmt", value)


def _thiopurine_case(**history):
    return base_case(labs=[lab("wbc", 2.5), lab("anc", 1.2), lab("hemoglobin", 13, "g/dL"), lab("platelets", 200)],
                     medications=[{"name": "azathioprine", "start": "2025-01-01"}], history=history)


def test_double_intermediate_gets_the_2024_recommendation(engine):
    a = engine.assess(_thiopurine_case(tpmt="*1/*3A", nudt15="*1/*3"))
    rec = a.pharmacogenomics.recommendations[0]
    assert "20-50%" in rec.update_2024
    assert "thiopurine_dose_per_cpic" in [s.id for s in a.steps]


def test_poor_metabolizer_on_thiopurine_alerts(engine):
    a = engine.assess(_thiopurine_case(tpmt="*3A/*3A", nudt15="normal"))
    assert "thiopurine_high_risk_genotype" in [x.id for x in a.alerts]
    assert a.causes[0].id == "thiopurine_myelotoxicity"


def test_normal_tpmt_does_not_exclude_toxicity(engine):
    a = engine.assess(_thiopurine_case(tpmt="normal", nudt15="normal"))
    thiopurine = next(c for c in a.causes if c.id == "thiopurine_myelotoxicity")
    assert any(e.rule == "thiopurine.normal_tpmt_does_not_exclude" for e in thiopurine.evidence)
    assert thiopurine.likelihood == "likely"


def test_unknown_status_asks_for_genotyping(engine):
    a = engine.assess(_thiopurine_case())
    assert "tpmt_nudt15_genotype" in [s.id for s in a.steps]
    assert any("TPMT" in m.item for m in a.missing_data)
    assert a.pharmacogenomics.recommendations == []


def test_activity_test_soon_after_transfusion_is_unreliable(engine):
    a = engine.assess(_thiopurine_case(tpmt="normal", nudt15="normal", tpmt_method="activity",
                                       tpmt_test_date="2025-02-01", last_transfusion="2025-01-10"))
    assert any("transfusion" in w for w in a.warnings)
    assert "tpmt_nudt15_genotype" in [s.id for s in a.steps]
    later = engine.assess(_thiopurine_case(tpmt="normal", nudt15="normal", tpmt_method="activity",
                                           tpmt_test_date="2025-02-01", last_transfusion="2024-09-01"))
    assert not any("transfusion" in w for w in later.warnings)
