"""TPMT and NUDT15 results -> ``history.tpmt`` / ``history.nudt15``.

An Observation is a TPMT or NUDT15 result when its code (text or a coding display) names the gene,
or when it carries a LOINC code of rules/pgx/result_codes.yaml (the gene then comes from the code,
from the value for a two-gene test, or from the `gene-studied` component of an HL7 Genomics
Reporting genotype). Its value (``valueString`` or ``valueCodeableConcept``; without one, its
``interpretation`` or a component's value, when they agree) must hold a diplotype (``*1/*3A``) or a
metabolizer phenotype word, and its status must be a result's, as for a lab value
(final, amended, corrected, preliminary: an entered-in-error or cancelled genotype is skipped with a
warning); of results giving one phenotype the latest is used; results that disagree are named, and the poorer
function is used (a genotype does not change: one of them is wrong); of two at the same time the one whose status,
issued or meta.lastUpdated supersedes the other (a corrected genotype). Single-variant results and measured
enzyme activities
are named in a warning, never turned into a phenotype. The words are passed on as the case contract
spells them; the engine resolves diplotypes and phenotypes.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Optional

from leukodx.engine.errors import Problem
from leukodx.engine.kb import KnowledgeBase
from leukodx.engine.pgx import PhenotypeError, resolve, result_in_text
from leukodx.engine.timeutil import utc_naive

from .datatypes import as_dict, as_list, as_str, codings, concept_text, loinc_codes, not_a_result
from .duplicates import preferred
from .patient import belongs, choose_patient, several_subjects
from .resources import Item, walk_readable

__all__ = ["pgx_results", "map_pgx", "MAX_RESULT_TEXT"]

# the genes by symbol or by name (a code's text "Thiopurine methyltransferase genotype")
_PGX_GENE = re.compile(r"\b(TPMT|NUDT15|thiopurine\s+S?-?\s*methyl\s*transferase|nudix\s+hydrolase\s+15)\b",
                       re.IGNORECASE)
_PHENOTYPE_OR_STAR = re.compile(r"\*\d|metaboli[sz]er", re.IGNORECASE)
MAX_RESULT_TEXT = 10_000   # a longer result text is not searched for a diplotype (1 MB took 0.35 s, 5 MB 1.7 s)
_NOT_READ = {"variant": "a single-variant result; a phenotype needs the whole diplotype",
             "activity": "a measured enzyme activity; leukodx does not turn a number into a phenotype"}


def pgx_results(kb: KnowledgeBase, data: Any, patient_id: Optional[str] = None) -> dict[str, str]:
    """TPMT/NUDT15 results (diplotype or phenotype word) found in FHIR data, by gene (of ``patient_id``'s
    resources only, when given). For an order check when the data could not be assessed: the parts of
    ``data`` that cannot be read are passed over (the mapping's refusal has named them)."""
    items = walk_readable(data)
    choice = choose_patient(items, patient_id, [])
    if several_subjects(items, choice, ("Observation",)):
        return {}                      # whose genotype it is cannot be told: two patients' are never merged
    return map_pgx(kb, [i for i in items if belongs(i, choice)], [])


def map_pgx(kb: KnowledgeBase, mine: list[Item], warnings: list[str],
            skipped: Optional[list[Problem]] = None) -> dict[str, str]:
    """{gene: result} of the patient's TPMT/NUDT15 Observations (genes in alphabetical order). A result
    whose status is not a result's is also added to ``skipped`` (when given), to be listed as not assessed."""
    found: dict[str, Result] = {}
    for item in mine:
        if item.type != "Observation":
            continue
        res = item.resource
        if kb.pgx_codes.keys().isdisjoint(item.loinc):
            if not kb.loinc.keys().isdisjoint(item.loinc):
                continue               # coded as a blood-count test leukodx reads: a lab, not a genotype
            spec = None
        else:
            spec = next(kb.pgx_codes[c] for c in item.loinc if c in kb.pgx_codes)
        value = as_str(res.get("valueString")) or concept_text(res.get("valueCodeableConcept")) or \
            _pharmvar_code(res.get("valueCodeableConcept")) or _answer(kb, res.get("valueCodeableConcept"))
        genes = _genes(kb, res, spec, value)
        if not genes:
            continue
        if not value and not (spec is not None and spec["kind"] in _NOT_READ):
            value = _elsewhere(kb, res, item.label, warnings, genes)
        named = "/".join(g.upper() for g in genes)
        why = not_a_result(as_str(res.get("status")))
        if why:                                    # as for a lab value: a retracted genotype is no genotype
            warnings.append(f"{item.label}: {named} result {(value or '')[:60]!r}: {why}; skipped.")
            if skipped is not None:
                skipped.append(Problem(item.loc, f"{named} result: {why}"))
            continue
        if value and len(value) > MAX_RESULT_TEXT:
            warnings.append(f"{item.label}: {named} result text of {len(value):,} characters was not read (at most "
                            f"{MAX_RESULT_TEXT:,}: a laboratory's report of a genotype is far shorter); give the "
                            f"phenotype or diplotype.")
            continue
        if spec is not None and spec["kind"] in _NOT_READ:
            shown = value or _quantity(res.get("valueQuantity")) or "without a value"
            warnings.append(f"{item.label}: {named} result {shown!r} was not used: {_NOT_READ[spec['kind']]}; give "
                            f"the laboratory's phenotype or diplotype.")
            if skipped is not None:        # a result exists: the card says so, not "status unknown" alone
                skipped.append(Problem(item.loc, f"{named} result {shown[:60]!r}: {_NOT_READ[spec['kind']]}; read "
                                                 f"the laboratory's interpretation"))
            continue
        if not value:
            warnings.append(f"{item.label}: {named} result without a phenotype or diplotype was not used.")
            continue
        when = item.own_time()
        utc = utc_naive(when) if when is not None else None
        for gene, part in _per_gene(genes, value):
            mapped = result_in_text(part, kb.diplotypes.get(gene)) if part is not None else None
            if part is None:
                warnings.append(f"{item.label}: {named} result {value!r} does not say which part is {gene.upper()}'s; "
                                f"the {gene.upper()} result was not used.")
            elif mapped is None:
                warnings.append(f"{item.label}: {gene.upper()} result {part!r} was not understood.")
                if skipped is not None:
                    skipped.append(Problem(item.loc, f"{gene.upper()} result {part[:60]!r}: not a phenotype or "
                                                     f"diplotype leukodx reads; read the laboratory's report"))
            elif gene not in found:
                found[gene] = (utc, mapped, item)
            elif utc == found[gene][0]:
                _same_time(kb, gene, (utc, mapped, item), found, warnings, skipped)
            else:
                found[gene] = _one_of_two(kb, gene, found[gene], (utc, mapped, item), warnings, skipped)
    return {gene: value for gene, (_, value, _) in sorted(found.items())}


Result = tuple[Optional[datetime], str, Item]     # (UTC time, result, its Observation)


_POORER_FIRST = ("poor", "intermediate", "possible_intermediate", "indeterminate", "normal")


def _one_of_two(kb: KnowledgeBase, gene: str, old: Result, new: Result, warnings: list[str],
                skipped: Optional[list[Problem]]) -> Result:
    """Two results of ``gene`` at different times: the later when they give one phenotype; when they do not, the
    poorer function, named as a conflict. A germline genotype does not change, so one of the two is wrong, and the
    poorer is the safe side for dosing (a poor metabolizer's *3A/*3A of 2023 had been replaced in silence by a
    *1/*1 of 2024, and the order card said "normal starting dose")."""
    def rank(result: Result) -> int:
        phenotype = _phenotype(kb, [gene], result[1])      # an unreadable result ranks last
        return _POORER_FIRST.index(phenotype) if phenotype in _POORER_FIRST else len(_POORER_FIRST)
    if rank(old) == rank(new):
        return new if _later(new[0], old[0]) else old
    kept, other = (old, new) if rank(old) < rank(new) else (new, old)
    why = (f"{gene.upper()} results disagree: {kept[1]!r} ({kept[2].label}) and {other[1]!r} ({other[2].label}); a "
           f"genotype does not change, so one is wrong: the poorer function, {kept[1]!r}, was used. Check which "
           f"result is valid before dosing.")
    warnings.append(why)
    if skipped is not None:
        skipped.append(Problem(other[2].loc, why))
    return kept


def _later(a: Optional[datetime], b: Optional[datetime]) -> bool:
    """``a`` is later than ``b`` (a result without a time is older than any with one)."""
    return a is not None and (b is None or a > b)


def _same_time(kb: KnowledgeBase, gene: str, new: Result, found: dict[str, Result], warnings: list[str],
               skipped: Optional[list[Problem]]) -> None:
    """Two results of ``gene`` at the same time: the one whose status, issued or meta.lastUpdated says it
    supersedes the other (a corrected genotype over the original) stays, as for a lab value; of two that differ
    with nothing to choose between them, the poorer function (:func:`_one_of_two`)."""
    utc, value, item = new
    old_value, old_item = found[gene][1], found[gene][2]
    when = f"at {utc.isoformat()}" if utc is not None else "without a time"
    replace, warning, conflict = preferred(old_item, old_value, item, value, f"{gene.upper()} result {when}")
    if conflict:
        found[gene] = _one_of_two(kb, gene, found[gene], new, warnings, skipped)
        return
    if replace or value != old_value:
        warnings.append(warning)
    if replace:
        found[gene] = new


def _gene_ids(text: str) -> set[str]:
    """The genes ``text`` names, by symbol or by name."""
    return {"tpmt" if g.lower().startswith(("tpmt", "thiopurine")) else "nudt15" for g in _PGX_GENE.findall(text)}


_PHARMVAR = ("http://www.pharmvar.org", "https://www.pharmvar.org")


def _pharmvar_code(concept: Any) -> Optional[str]:
    """A genotype coded with PharmVar's star-allele names and no text or display ("TPMT*3A/TPMT*3A", the HL7
    Genomics Reporting IG's way): the code is the allele call. Codes of other systems are not allele names."""
    return next((code for c in codings(concept) if as_str(c.get("system")) in _PHARMVAR
                 and (code := as_str(c.get("code")))), None)


def _answer(kb: KnowledgeBase, concept: Any) -> Optional[str]:
    """A phenotype coded as a LOINC answer with no text or display (LA9657-3, "Poor metabolizer"): its word
    (rules/pgx/result_codes.yaml answers). A TPMT poor metabolizer sent so had been "status unknown"."""
    return next((kb.pgx_answers[code.upper()] for c in codings(concept) if loinc_codes({"coding": [c]})
                 and (code := as_str(c.get("code"))) and code.upper() in kb.pgx_answers), None)


def _hgnc(kb: KnowledgeBase, component: dict[str, Any]) -> Optional[str]:
    """The gene symbol of a gene-studied component coded with its HGNC id alone ("HGNC:12014", no display)."""
    return next((kb.pgx_hgnc[code.upper()] for c in codings(component.get("valueCodeableConcept"))
                 if (code := as_str(c.get("code"))) and code.upper() in kb.pgx_hgnc), None)


def _genes(kb: KnowledgeBase, res: dict[str, Any], spec: Optional[dict[str, Any]], value: Optional[str]) -> list[str]:
    """The genes an Observation reports on: named in its code's text, else given by its LOINC code."""
    code_text = " ".join(filter(None, [concept_text(res.get("code"))] +
                                [as_str(c.get("display")) for c in codings(res.get("code"))]))
    named = sorted(_gene_ids(code_text))
    if named or spec is None:
        return named
    if spec["gene"] == "both":
        return ["nudt15", "tpmt"]
    if spec["gene"] == "component":
        studied = " ".join(filter(None, (concept_text(c.get("valueCodeableConcept")) or _hgnc(kb, c)
                                         for c in as_list(res.get("component")) if isinstance(c, dict)
                                         and kb.gene_studied_code in loinc_codes(c.get("code")))))
        # the IG's value is often "TPMT *1/*3A" even when the component is coded without a display
        return sorted(_gene_ids(studied or value or ""))
    return [spec["gene"]]


def _elsewhere(kb: KnowledgeBase, res: dict[str, Any], label: str, warnings: list[str], genes: list[str]
               ) -> Optional[str]:
    """A result without a value of its own, from what else it holds: its ``interpretation`` text, or a
    ``component``'s value (not the gene-studied one), where a diplotype or a metabolizer phrase is read. Only
    when they all say the same phenotype (a diplotype *1/*3A beside "Intermediate metabolizer" agree: they had been
    called a disagreement and the result dropped), the diplotype first; two that differ are named, and none is used."""
    texts = [concept_text(c) for c in as_list(res.get("interpretation"))]
    texts += [as_str(c.get("valueString")) or concept_text(c.get("valueCodeableConcept"))
              for c in as_list(res.get("component"))
              if isinstance(c, dict) and kb.gene_studied_code not in loinc_codes(c.get("code"))]
    # a diplotype or a metabolizer phrase only: an interpretation flag "Normal" (v3 N) says nothing of a phenotype
    found = {text: read for text in texts if text and len(text) <= MAX_RESULT_TEXT
             and _PHENOTYPE_OR_STAR.search(text) and (read := result_in_text(text)) is not None}
    if len({_phenotype(kb, genes, read) for read in found.values()}) > 1:
        warnings.append(f"{label}: no value, and its interpretation and components say different things "
                        f"({', '.join(repr(t[:60]) for t in found)}); not used.")
        return None
    return next((t for t, read in found.items() if read.startswith("*")), next(iter(found), None))


def _phenotype(kb: KnowledgeBase, genes: list[str], read: str) -> str:
    """The phenotype a diplotype or word stands for, for a result about one gene (else the text itself)."""
    if len(genes) != 1:
        return read
    try:
        return resolve(kb, genes[0], read).phenotype
    except PhenotypeError:
        return read


def _per_gene(genes: list[str], value: str) -> list[tuple[str, Optional[str]]]:
    """(gene, the part of the value about it): a two-gene result ("TPMT *1/*1; NUDT15 *1/*3") is cut
    at each gene's name, and a gene the value does not name gets None (never the other gene's
    result); a one-gene result is the whole value."""
    if len(genes) == 1:
        return [(genes[0], value)]
    parts = re.split(r"\b(TPMT|NUDT15)\b", value, flags=re.IGNORECASE)
    by_gene = {parts[i].lower(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    return [(g, by_gene.get(g)) for g in genes]


def _quantity(q: Any) -> Optional[str]:
    q = as_dict(q)
    value = q.get("value")
    return f"{value} {as_str(q.get('unit')) or as_str(q.get('code')) or ''}".strip() if value is not None else None
