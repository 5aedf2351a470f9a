"""TPMT and NUDT15: phenotype from what the case gives (a phenotype word or a diplotype mapped
through the PharmCAT/CPIC tables), and the CPIC recommendation for a thiopurine."""
from __future__ import annotations

import re
from typing import Mapping, Optional, Union

from .assessment import CpicRecommendation, GeneStatus
from .case import Dose
from .doses import dose_mg_kg_day, dose_mg_m2_day, dosed_daily, takes_a_week
from .kb import KnowledgeBase
from .order_models import INTERMEDIATE

__all__ = ["resolve", "recommendation", "one_gene_recommendation", "result_in_text", "PhenotypeError", "CPIC_LABEL",
           "cpic_pattern", "dose_adjustment"]

_WORDS = {
    "normal": "normal", "nm": "normal", "normal metabolizer": "normal", "wild type": "normal", "wildtype": "normal",
    "intermediate": "intermediate", "im": "intermediate", "intermediate metabolizer": "intermediate",
    "heterozygous": "intermediate",
    "possible_intermediate": "possible_intermediate", "possible intermediate": "possible_intermediate",
    "possible intermediate metabolizer": "possible_intermediate",
    "poor": "poor", "pm": "poor", "poor metabolizer": "poor", "deficient": "poor", "homozygous deficient": "poor",
    # a genotype reported by zygosity (CPIC: one no-function allele is intermediate, two are poor)
    "heterozygous variant": "intermediate", "heterozygous mutant": "intermediate",
    "homozygous variant": "poor", "homozygous mutant": "poor", "homozygous wild type": "normal",
    "homozygous wildtype": "normal",
    # two different no-function alleles (*3A/*3C): CPIC's poor metabolizer ("heterozygous" inside it had read as
    # intermediate: red-team round 28)
    "compound heterozygous": "poor", "compound heterozygote": "poor", "homozygous or compound heterozygous": "poor",
    "indeterminate": "indeterminate", "unknown": "unknown", "not tested": "unknown", "untested": "unknown",
    # TPMT activity as CPIC names the phenotypes' activity (normal or high; intermediate; low or deficient)
    "normal activity": "normal", "high activity": "normal", "intermediate activity": "intermediate",
    "low activity": "poor", "deficient activity": "poor", "low or deficient activity": "poor",
    "absent activity": "poor", "low or absent activity": "poor",
}
# Phenotype -> the words the CPIC tables use, per gene.
CPIC_LABEL = {
    "tpmt": {"normal": "TPMT normal metabolizer", "intermediate": "TPMT intermediate metabolizer",
             "possible_intermediate": "Possible TPMT intermediate metabolizer", "poor": "TPMT poor metabolizer",
             "indeterminate": "Indeterminate"},
    "nudt15": {"normal": "NUDT15 normal metabolizer", "intermediate": "NUDT15 intermediate metabolizer",
               "possible_intermediate": "Possible NUDT15 intermediate metabolizer", "poor": "NUDT15 poor metabolizer",
               "indeterminate": "Indeterminate"},
}
_DIPLOTYPE = re.compile(r"^\s*(\*\w+)\s*[/|]\s*(\*\w+)\s*$")     # "|": a phased call
_GENE_NAME = re.compile(r"\b(?:TPMT|NUDT15)\b\s*", re.IGNORECASE)     # "TPMT*3A/TPMT*3A", "low TPMT activity"


class PhenotypeError(ValueError):
    pass


_IN_TEXT = re.compile(r"\*\w+\s*[/|]\s*\*\w+")
# phrases as labs write them, longest first so that "possible intermediate" wins over "intermediate"
_PHRASES = sorted((w for w in _WORDS if len(w) > 2), key=len, reverse=True)


_NEGATION = re.compile(r"\b(?:not|no|non|negative|without)\b")


def result_in_text(text: str, diplotypes: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """A diplotype (``*1/*3A``) or a phenotype word found in a lab's free text ("TPMT: Intermediate
    metabolizer (*1/*3A)"), in the form :func:`resolve` reads; None when there is neither, or when the text does not
    say one thing: two diplotypes ("*1/*3A or *3B/*3C"), phenotype words that differ, a phenotype word beside a
    diplotype whose phenotype (``diplotypes``, the gene's table) differs ("Poor metabolizer (*1/*3A)"), or a negation
    beside a phenotype word ("not deficient", "normal activity not confirmed"). The one reader of these words (the
    case and the FHIR mapping alike)."""
    text = _GENE_NAME.sub("", text)
    calls = {m.group(0).replace(" ", "").replace("|", "/").upper() for m in _IN_TEXT.finditer(text)}
    folded = " ".join(_IN_TEXT.sub(" ", text).casefold().replace("_", " ").replace("-", " ").split())
    if not calls and folded in _WORDS:        # a value that is a word alone, the short ones too ("PM", "IM")
        return _WORDS[folded]
    said = set()
    for phrase in _PHRASES:                   # longest first: each span read once ("compound heterozygous")
        if re.search(rf"\b{re.escape(phrase)}\b", folded):
            said.add(_WORDS[phrase])
            folded = re.sub(rf"\b{re.escape(phrase)}\b", " ", folded)
    if len(calls) > 1 or len(said) > 1 or (said and _NEGATION.search(folded)):
        return None
    if calls:
        [call] = calls
        phenotype = diplotypes.get(call) if diplotypes is not None else None
        return None if said and phenotype is not None and said != {phenotype} else call
    return next(iter(said), None)


def resolve(kb: KnowledgeBase, gene: str, value: Optional[str], method: Optional[str] = None) -> GeneStatus:
    """A phenotype word or a diplotype to a GeneStatus. Raises PhenotypeError for what cannot be mapped."""
    label = "TPMT" if gene == "tpmt" else "NUDT15"
    if value is None:
        return GeneStatus(gene=label, input=None, phenotype="unknown", method=method)
    m = _DIPLOTYPE.match(_GENE_NAME.sub("", value))
    if m:
        diplotype = f"{m.group(1).upper()}/{m.group(2).upper()}"
        phenotype = kb.diplotypes[gene].get(diplotype)
        if phenotype is None:
            raise PhenotypeError(f"unknown {label} diplotype {value!r}: not in the CPIC/PharmCAT {label} table")
        return GeneStatus(gene=label, input=value, phenotype=phenotype, diplotype=diplotype, method=method)
    word = " ".join(value.replace("-", " ").casefold().split())
    if word.replace(" ", "_") in _WORDS:
        word = word.replace(" ", "_")
    if word not in _WORDS and (found := result_in_text(value, kb.diplotypes[gene])) is not None and found != value:
        # a lab's wording ("Intermediate metabolizer (*1/*3A)"), read as the FHIR mapping reads it (it had been refused);
        # one that does not say one thing is refused, never resolved one way
        return resolve(kb, gene, found, method).model_copy(update={"input": value})
    if word not in _WORDS:
        raise PhenotypeError(f"{value!r} is neither a {label} phenotype (normal, intermediate, possible_intermediate, "
                             f"poor, indeterminate, unknown) nor a diplotype such as *1/*3A, or it says more than one "
                             f"(two diplotypes, a phenotype another than its diplotype's, or one negated)")
    return GeneStatus(gene=label, input=value, phenotype=_WORDS[word], method=method)


def recommendation(kb: KnowledgeBase, drug: str, tpmt: GeneStatus, nudt15: GeneStatus) -> Optional[CpicRecommendation]:
    """The CPIC row for a thiopurine and the two phenotypes; None when either gene is unknown."""
    if tpmt.phenotype == "unknown" or nudt15.phenotype == "unknown":
        return None
    return _row(kb, drug, CPIC_LABEL["tpmt"][tpmt.phenotype], CPIC_LABEL["nudt15"][nudt15.phenotype])


def one_gene_recommendation(kb: KnowledgeBase, drug: str, tpmt: GeneStatus, nudt15: GeneStatus
                            ) -> Optional[CpicRecommendation]:
    """With one gene untested and the other of reduced function (intermediate, possible intermediate or poor), CPIC's
    post-test alert for "No <gene> result on file" gives the known gene's dose, as with the other gene normal, adding
    that it is not known whether the other gene's result would further change it (a TPMT poor metabolizer starting
    mercaptopurine had been given no dose at all). None otherwise (a normal result alone: no reason to adjust)."""
    genes = {"tpmt": tpmt, "nudt15": nudt15}
    missing = [g for g, status in genes.items() if status.phenotype == "unknown"]
    if len(missing) != 1:
        return None
    other, known = missing[0], genes["nudt15" if missing[0] == "tpmt" else "tpmt"]
    if known.phenotype not in ("intermediate", "possible_intermediate", "poor"):
        return None
    labels = {g: CPIC_LABEL[g]["normal" if g == other else status.phenotype] for g, status in genes.items()}
    rec = _row(kb, drug, labels["tpmt"], labels["nudt15"], untested=other)
    gene = other.upper()
    on_file = f"No {gene} result on file"
    return rec.model_copy(update={
        f"{other}_phenotype": on_file,
        "note": f"{on_file}: CPIC's post-test alert for this case gives the dose of the {known.gene} result alone (as "
                f"with {gene} normal); it is not known whether {gene} results would further change the recommended "
                f"dose or drug. Genotype {gene}."})


def _row(kb: KnowledgeBase, drug: str, t: str, n: str, untested: Optional[str] = None) -> CpicRecommendation:
    """The row of CPIC's table; with ``untested``, without that gene's implication (its result is not known)."""
    row = next((r for r in kb.cpic if r["drug"] == drug and r["tpmt_phenotype"] == t and r["nudt15_phenotype"] == n),
               None)
    if row is None:  # the table has every pair; a missing row is a knowledge-base defect
        raise LookupError(f"CPIC table has no row for {drug}, {t}, {n}")
    sources = ["relling_cpic_2019", "cpic_thiopurine_tables_2020"]
    if row["superseded_note"]:
        sources.append("cpic_thiopurine_update_2024")
    return CpicRecommendation(
        drug=drug, tpmt_phenotype=t, nudt15_phenotype=n, recommendation=row["recommendation"],
        classification=row["classification"],
        implications=[x for g in ("tpmt", "nudt15") if (x := row[f"{g}_implication"]) and x != "n/a" and g != untested],
        comments=row["comments"] or None, update_2024=row["superseded_note"] or None, sources=sources)


def cpic_pattern(tpmt: str, nudt15: str) -> str:
    """Which row pattern of pgx/dose_adjustments.yaml a TPMT and NUDT15 phenotype pair falls in (first match wins)."""
    if tpmt == "poor":
        return "tpmt_poor"
    if nudt15 == "poor":
        return "nudt15_poor"
    if tpmt in INTERMEDIATE and nudt15 in INTERMEDIATE:
        return "both_intermediate"
    if tpmt in INTERMEDIATE or nudt15 in INTERMEDIATE:
        return "one_intermediate"
    if tpmt == "normal" and nudt15 == "normal":
        return "normal"
    return "indeterminate"


def dose_adjustment(kb: KnowledgeBase, drug: str, pattern: str) -> dict:
    """The row of pgx/dose_adjustments.yaml for the drug at the pattern (the knowledge base check asks for exactly
    one)."""
    for row in kb.dose_adjustments:
        if row["pattern"] == pattern and drug in row["drugs"]:
            return row
    raise LookupError(f"pgx/dose_adjustments.yaml has no row for {drug}, {pattern}")   # rules check prevents it


def within_reduced(row: dict, drug: str, dose: Union[Dose, str, None], weight_kg: Optional[float],
                   malignant: bool) -> Optional[tuple[str, str]]:
    """(the dose as shown, CPIC's reduced dose as shown) when ``dose`` is at or below the row's reduced starting dose
    for the drug (pgx/dose_adjustments.yaml ``reduced_up_to_mg_kg_day``, ``reduced_up_to_mg_m2_day``); None otherwise,
    when the dose says too little, or for a poor metabolizer's row (``malignant_only``) when the drug does not treat a
    malignancy (CPIC: an alternative drug then). A daily dose is compared as it is (75 mg/m2 once a week is no reduced
    daily dose); for a row with a ``frequency`` (a TPMT poor metabolizer: three days a week) the dose of each day it
    is given, on at most that many days a week (a weekly total says neither)."""
    if row.get("malignant_only") and not malignant:
        return None
    frequency = row.get("frequency") or {}
    times = frequency.get("times") if frequency.get("per") == "week" else None
    for key, unit in (("reduced_up_to_mg_kg_day", "mg/kg"), ("reduced_up_to_mg_m2_day", "mg/m2")):
        top = (row.get(key) or {}).get(drug)
        per_day = dose_mg_kg_day(dose, weight_kg)[0] if unit == "mg/kg" else dose_mg_m2_day(dose)
        if top is None or per_day is None:
            continue
        digits = ".2g" if unit == "mg/kg" else ".3g"
        if times is None:
            if not dosed_daily(dose):
                return None
            if per_day <= top * (1 + 1e-9):
                return f"{per_day:{digits}} {unit}/day", f"{top:g} {unit}/day"
            continue
        takes = takes_a_week(dose)        # None for a weekly total: 30 mg/m2 once a week is no 10 on three days
        if takes is not None and takes <= times + 1e-9 and per_day * 7 / takes <= top * (1 + 1e-9):
            return (f"{per_day * 7 / takes:{digits}} {unit} on {takes:g} days a week",
                    f"{top:g} {unit}/day on {times:g} days a week")
    return None
