"""TPMT/NUDT15 (engine/pgx.py): the engine's CPIC recommendation for every drug x TPMT x NUDT15
phenotype pair checked against CPIC's own tables, diplotype mapping, and the rules built on them.

The reference is independent of the engine: CPIC's recommendation workbooks
(tests/fixtures/cpic/*_recommendation.xlsx, byte-for-byte copies of the upstream files the engine's
rules/pgx/cpic_thiopurine_recommendations_2020-05.json was made from; origin and licence in
tests/fixtures/README.md) are read here with the standard library, not through the engine's loader,
and the engine is asked for each of their 75 rows."""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from leukodx.engine import pgx
from leukodx.engine.assessment import GeneStatus

from conftest import FIXTURES, ROOT, base_case, lab

CPIC_XLSX = {drug: FIXTURES / "cpic" / f"{drug}_recommendation.xlsx"
             for drug in ("azathioprine", "mercaptopurine", "thioguanine")}
ENGINE_TABLE = ROOT / "rules" / "pgx" / "cpic_thiopurine_recommendations_2020-05.json"
_SHEET_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"


def read_xlsx_rows(path: Path) -> list[dict[str, str]]:
    """The first sheet of a workbook as dicts keyed by the header row (strings only, as CPIC's are)."""
    with zipfile.ZipFile(path) as z:
        shared = ["".join(t.text or "" for t in si.iter(f"{_SHEET_NS}t"))
                  for si in ET.fromstring(z.read("xl/sharedStrings.xml")).iter(f"{_SHEET_NS}si")]
        sheet = ET.fromstring(z.read("xl/worksheets/sheet1.xml"))
    grid = []
    for row in sheet.iter(f"{_SHEET_NS}row"):
        cells = {}
        for c in row.iter(f"{_SHEET_NS}c"):
            v = c.find(f"{_SHEET_NS}v")
            text = "" if v is None else v.text or ""
            if c.get("t") == "s":
                text = shared[int(text)]
            elif c.get("t") == "inlineStr":
                text = "".join(t.text or "" for t in c.iter(f"{_SHEET_NS}t"))
            cells[re.match(r"[A-Z]+", c.get("r")).group()] = text
        grid.append(cells)
    header = {col: name.strip() for col, name in grid[0].items()}
    rows = [{header[col]: text.strip() for col, text in cells.items() if col in header} for cells in grid[1:]]
    return [r for r in rows if any(r.values())]          # the mercaptopurine sheet has 4 empty rows at the end


# CPIC's phenotype labels -> the engine's phenotype words (written out here, not taken from pgx.CPIC_LABEL).
PHENOTYPE = {
    "TPMT normal metabolizer": "normal", "TPMT intermediate metabolizer": "intermediate",
    "Possible TPMT intermediate metabolizer": "possible_intermediate", "TPMT poor metabolizer": "poor",
    "NUDT15 normal metabolizer": "normal", "NUDT15 intermediate metabolizer": "intermediate",
    "Possible NUDT15 intermediate metabolizer": "possible_intermediate", "NUDT15 poor metabolizer": "poor",
    "Indeterminate": "indeterminate",
}
CPIC = [{"drug": drug, **row} for drug, path in CPIC_XLSX.items() for row in read_xlsx_rows(path)]
ROWS = json.loads(ENGINE_TABLE.read_text(encoding="utf-8"))["rows"]


def _id(drug: str, tpmt: str, nudt15: str) -> str:
    return f"{drug}|{tpmt}|{nudt15}"


def test_the_cpic_reference_has_every_pair_once():
    pairs = {(r["drug"], r["TPMT Phenotype"], r["NUDT15 Phenotype"]) for r in CPIC}
    assert len(CPIC) == len(pairs) == 75
    assert {p[0] for p in pairs} == set(CPIC_XLSX)
    assert {p[1] for p in pairs} == {k for k in PHENOTYPE if "NUDT15" not in k}     # 4 TPMT labels + Indeterminate
    assert {p[2] for p in pairs} == {k for k in PHENOTYPE if "TPMT" not in k}       # 4 NUDT15 labels + Indeterminate


def test_the_table_has_all_75_rows():
    assert len(ROWS) == 75
    assert len({(r["drug"], r["tpmt_phenotype"], r["nudt15_phenotype"]) for r in ROWS}) == 75


def test_the_shipped_table_is_the_cpic_table():
    """rules/pgx's table holds CPIC's rows unchanged (trimmed of surrounding spaces); only
    `superseded_note` is added, for the double-intermediate rows the March 2024 update changed."""
    reference = {_id(r["drug"], r["TPMT Phenotype"], r["NUDT15 Phenotype"]): {
        "tpmt_implication": r["TPMT Implications for Phenotypic Measures"],
        "nudt15_implication": r["NUDT15 Implications for Phenotypic Measures"],
        "recommendation": r["Therapeutic Recommendation"],
        "classification": r["Classification of Recommendation"],
        "comments": r["Comments"]} for r in CPIC}
    shipped = {_id(r["drug"], r["tpmt_phenotype"], r["nudt15_phenotype"]):
               {k: r[k] for k in ("tpmt_implication", "nudt15_implication", "recommendation", "classification",
                                  "comments")} for r in ROWS}
    assert shipped == reference


@pytest.mark.parametrize("ref", CPIC, ids=[_id(r["drug"], r["TPMT Phenotype"], r["NUDT15 Phenotype"]) for r in CPIC])
def test_recommendation_matches_cpic_row(kb, ref):
    tpmt = GeneStatus(gene="TPMT", input=None, phenotype=PHENOTYPE[ref["TPMT Phenotype"]])
    nudt15 = GeneStatus(gene="NUDT15", input=None, phenotype=PHENOTYPE[ref["NUDT15 Phenotype"]])
    rec = pgx.recommendation(kb, ref["drug"], tpmt, nudt15)
    assert rec is not None
    assert (rec.drug, rec.tpmt_phenotype, rec.nudt15_phenotype) == (ref["drug"], ref["TPMT Phenotype"],
                                                                    ref["NUDT15 Phenotype"])
    assert rec.recommendation == ref["Therapeutic Recommendation"]
    assert rec.classification == ref["Classification of Recommendation"]
    implications = [ref["TPMT Implications for Phenotypic Measures"], ref["NUDT15 Implications for Phenotypic Measures"]]
    assert rec.implications == [x for x in implications if x != "n/a"]
    assert rec.comments == ref["Comments"]                # every CPIC row has a comment
    # The March 2024 update (PMID 38230823): TPMT IM or possible IM with NUDT15 IM or possible IM now
    # starts at 20-50% of the normal dose; the 2020 row is kept and flagged, with the update cited.
    both_im = {tpmt.phenotype, nudt15.phenotype} <= {"intermediate", "possible_intermediate"}
    assert (rec.update_2024 is not None) == both_im
    if both_im:
        assert "20-50%" in rec.update_2024 and "38230823" in rec.update_2024
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


@pytest.mark.parametrize("text,phenotype", [("Intermediate metabolizer (*1/*3A)", "intermediate"),
                                            ("*1/*3A (heterozygous)", "intermediate"),
                                            ("TPMT: poor metabolizer", "poor"),
                                            # two no-function alleles: CPIC's poor (round 28: had read intermediate)
                                            ("Compound heterozygous", "poor"), ("Compound heterozygous *3A/*3C", "poor"),
                                            ("Homozygous or compound heterozygous", "poor")])
def test_a_case_reads_a_genotype_as_a_lab_words_it(kb, text, phenotype):
    """Clinical red-team round 25: a case's TPMT "Intermediate metabolizer (*1/*3A)" had been refused while the FHIR
    mapping read it (one reader: pgx.result_in_text)."""
    status = pgx.resolve(kb, "tpmt", text)
    assert (status.phenotype, status.input) == (phenotype, text)


@pytest.mark.parametrize("text", ["Poor metabolizer (*1/*1)", "*1/*3A or *3B/*3C", "Not deficient",
                                  "Normal activity not confirmed; low activity", "normal or poor"])
def test_a_genotype_text_that_says_more_than_one_thing_is_refused(kb, text):
    """Red-team rounds 25 and 28: a word beside a diplotype of another phenotype, two diplotypes, a negated word ("not
    deficient" had read poor) are never resolved one way."""
    with pytest.raises(pgx.PhenotypeError, match="says more than one"):
        pgx.resolve(kb, "tpmt", text)
