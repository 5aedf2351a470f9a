"""Order checks: what leukodx says about a drug being ordered (CDS order-select / order-sign).

A thiopurine is checked against the patient's TPMT and NUDT15 phenotypes: the CPIC row, and the
starting-dose change of rules/pgx/dose_adjustments.yaml (a fraction of the ordered dose, a change
of frequency, or an alternative drug), or genotyping when a phenotype is unknown. Clozapine is
checked against the label's ANC thresholds (rules/orders.yaml, thresholds.yaml) and the current
assessment. Any drug is checked against its own label's count thresholds (rules/label_thresholds.yaml:
the assessment's rules of the family ``labels`` that fired for it) and against the interactions of
rules/interactions.yaml it takes part in (with the patient's drugs or another draft); a drug leukodx does not
know is named for a patient with something at stake. The checks of drugs other than thiopurines are in
order_others.py, the models in order_models.py. Adapters turn an :class:`OrderCheck` into their own format (a
CDS card with suggestions); they decide nothing.
"""
from __future__ import annotations

from typing import Any, Optional

from . import pgx
from .pgx import cpic_pattern, dose_adjustment, within_reduced
from .assessment import Assessment, GeneStatus
from .kb import KnowledgeBase
from .case import Dose
from .doses import dose_mg_kg_day
from .order_models import INTERMEDIATE, Advice, DoseChange, OrderCheck, OrderInput
from .order_others import (clozapine_check, cuts_the_dose, daily_instead_of_weekly, interactions_check, label_check,
                           no_count_check, not_known, withhold_check)
from .vocabulary import DrugIndex, oncologic_use

__all__ = ["OrderInput", "OrderCheck", "DoseChange", "check_orders"]

_REDUCED_START = "start at a reduced dose (CPIC)"     # what an intermediate metabolizer's check says to do
_DRASTIC = "drastically reduce the dose or use an alternative (CPIC)"   # and a poor metabolizer's


def _phenotype(status: GeneStatus) -> str:
    return status.phenotype.replace("_", " ")


def _thiopurine(kb: KnowledgeBase, order: OrderInput, drug: dict[str, Any], tpmt: GeneStatus, nudt15: GeneStatus,
                malignant: Optional[bool], unhad: frozenset[str] = frozenset()) -> OrderCheck:
    name, did = drug["name"], drug["id"]
    pheno = f"TPMT {_phenotype(tpmt)}, NUDT15 {_phenotype(nudt15)}"
    base = {"order": order.key, "drug": did, "drug_name": name, "topic": "thiopurine_pgx"}
    unknown = [g.gene for g in (tpmt, nudt15) if g.phenotype == "unknown"]
    poor = "poor" in (tpmt.phenotype, nudt15.phenotype)
    # one gene intermediate, the other untested: that gene's reduced start at least (CPIC's TPMT intermediate: 30-80%;
    # it had been "genotype before dosing" with the full dose standing), and the other gene genotyped
    intermediate = bool(unknown) and any(g.phenotype in INTERMEDIATE for g in (tpmt, nudt15))
    if unknown and not poor and not intermediate and "genotypes" in unhad:
        # the results could not be fetched: one may be on file (a "status unknown: genotype" had invited a second test)
        return OrderCheck(**base, priority="warning", genotype="possible", genes_to_test=unknown,
                          summary=f"{name.capitalize()} ordered; TPMT/NUDT15 results could not be had: check the "
                                  f"record before dosing (CPIC)",
                          detail=f"**TPMT/NUDT15 results could not be had.** CPIC doses {name} by TPMT and NUDT15 "
                                 f"phenotype: find the results on file, or genotype {' and '.join(unknown)}, before "
                                 f"starting, and monitor the CBC closely meanwhile.",
                          sources=["relling_cpic_2019"])
    if unknown and not poor and not intermediate:
        return OrderCheck(**base, priority="warning", genotype="recommended", genes_to_test=unknown,
                          summary=f"{name.capitalize()} ordered with {' and '.join(unknown)} status unknown: genotype "
                                  f"before dosing (CPIC)",
                          detail=f"**{pheno}.** CPIC doses {name} by TPMT and NUDT15 phenotype; genotype "
                                 f"{' and '.join(unknown)} before starting, and monitor the CBC closely meanwhile.",
                          sources=["relling_cpic_2019"])
    pattern = cpic_pattern(*(g.phenotype if g.phenotype != "unknown" or not intermediate else "normal"
                         for g in (tpmt, nudt15)))
    row = dose_adjustment(kb, did, pattern)
    rec = None if unknown else pgx.recommendation(kb, did, tpmt, nudt15)
    sources = list(dict.fromkeys([*row["sources"], *(rec.sources if rec else [])]))
    change = None
    if row.get("percent") or row.get("frequency"):
        low, high = row.get("percent") or (100, 100)
        freq = row.get("frequency") or {}
        change = DoseChange(factor=high / 100.0 if row.get("percent") and high != 100 else None,
                            times=freq.get("times"), per=freq.get("per"), wording=row["wording"],
                            percent_range=(low, high) if row.get("percent") else None)
    adjust: Advice = "recommended" if change and (change.factor or change.times) else "no"
    cancel: Advice = "no"
    if row.get("non_malignant") == "alternative":
        # malignancy: the reduced dose; other uses: another drug; indication unknown: both possible
        adjust = ("recommended" if malignant else "no" if malignant is False else "possible") if change else "no"
        cancel = "recommended" if malignant is False else "possible" if malignant is None else "no"
    if unknown and poor:          # a poor metabolizer with the other gene untested: still critical
        detail = (f"**{pheno}.** A poor metabolizer faces life-threatening myelosuppression at normal doses; CPIC "
                  f"advises {row['wording']}, or an alternative drug for non-malignant conditions. Genotype "
                  f"{' and '.join(unknown)} as well.")
    elif unknown:
        detail = (f"**{pheno}.** CPIC advises {row['wording']} for the intermediate metabolizer (at least: with the "
                  f"other gene also intermediate, the start is lower still). Genotype {' and '.join(unknown)} as well, "
                  f"and monitor the CBC closely.")
    else:
        assert rec is not None
        detail = f"**{pheno}** ({rec.classification} recommendation)\n\n{rec.update_2024 or rec.recommendation}"
        if rec.update_2024:
            detail += f"\n\n*Superseded 2020 text:* {rec.recommendation}"
        if rec.comments:
            detail += f"\n\n{rec.comments}"
    what = (_DRASTIC if poor else
            _REDUCED_START if row["priority"] == "warning" and change else
            "normal starting dose (CPIC)" if pattern == "normal" else "monitor closely (CPIC)")
    # a poor metabolizer's dose or drug change does not wait for the other gene: when one is recommended, genotyping
    # is offered beside it, not recommended too (a card lets the clinician choose at most one suggestion)
    # nor is it the recommended action for a poor metabolizer at all (the other gene does not change that advice)
    genotype: Advice = "no" if not unknown else "possible" if poor or "recommended" in (adjust, cancel) else "recommended"
    return OrderCheck(**base, priority=row["priority"], summary=f"{name.capitalize()} for a {pheno}: {what}",
                      detail=detail, genotype=genotype, genes_to_test=unknown, adjust=adjust, cancel=cancel,
                      dose_change=change, recommendation=rec, sources=sources)


def check_orders(kb: KnowledgeBase, drugs: DrugIndex, orders: list[OrderInput], assessment: Optional[Assessment],
                 tpmt: Optional[str] = None, nudt15: Optional[str] = None,
                 unhad: frozenset[str] = frozenset()) -> list[OrderCheck]:
    """One check per ordered drug leukodx has something to say about (thiopurines, clozapine).

    The phenotypes come from the assessment when there is one, else from the ``tpmt``/``nudt15``
    results given (a phenotype word or a diplotype; an unreadable one counts as unknown). ``unhad``: what the caller
    could not fetch ("genotypes": an untested gene may have a result on file; "conditions": a past clozapine
    agranulocytosis may be on record)."""
    if assessment is not None:
        t, n = assessment.pharmacogenomics.tpmt, assessment.pharmacogenomics.nudt15
        if not assessment.pharmacogenomics.tpmt_reliable:     # CPIC's caveats (transfusion, HSCT ...): as if untested
            t = _resolve(kb, "tpmt", None)
        if not assessment.pharmacogenomics.nudt15_reliable:   # a blood sample after an allogeneic HSCT
            n = _resolve(kb, "nudt15", None)
    else:
        t, n = (_resolve(kb, gene, value) for gene, value in (("tpmt", tpmt), ("nudt15", nudt15)))
    oncologic = assessment is not None and assessment.cancer_current     # a cancer named only as past is not one
    out: list[OrderCheck] = []
    matches = [drugs.lookup(order.name, order.rxnorm, order.atc) for order in orders]
    together = _together(orders, matches)
    for order, match in zip(orders, matches):
        if match is None:
            unknown = not_known(order, t.phenotype, n.phenotype, assessment)
            out += [unknown] if unknown is not None else []
            continue
        drug = match.drug
        if "thiopurine" in drug.get("classes", []):
            # the order's own indication decides when one is given (mercaptopurine for Crohn's disease beside a past
            # breast cancer is no cancer treatment: CPIC's alternative drug, not its reduced dose), as for a drug
            # taken; else the patient's conditions; with neither, not known
            known = bool(order.indication and order.indication.strip()) or bool(assessment and assessment.conditions)
            malignant = oncologic_use(kb, order.indication, oncologic) if known else None
            check = _thiopurine(kb, order, drug, t, n, malignant, unhad)
            whole = together.get(order.key, order)     # the drug's dose over all its drafts (two tablets' strengths)
            interacting = _with_interactions(kb, check, drug, assessment, whole)
            if interacting is check:         # no interaction's cut (which counts from CPIC's reduced dose)
                interacting = _already_reduced(kb, check, drug, whole, cpic_pattern(t.phenotype, n.phenotype), malignant)
            checked = _with_current_count(kb, _above_label(kb, interacting, drug, whole), assessment)
            if whole is not order:
                said = (f"With the other drafts of {drug['name']} in this order, {whole.dose.value:g} mg a day in all: "
                        f"the checks of the dose are of that total.")
                checked = checked.model_copy(update={"detail": f"**{said}**\n\n{checked.detail}"})
            out.append(checked)
            other = interactions_check(kb, order, drug, assessment) if assessment is not None else None
            out += [other] if other is not None else []      # azathioprine beside mercaptopurine: one thiopurine twice
        elif drug["id"] == "clozapine":    # and its interactions (beside carbamazepine it had been "may proceed")
            out.append(clozapine_check(kb, order, drug, assessment, "conditions" in unhad))
            other = interactions_check(kb, order, drug, assessment) if assessment is not None else None
            out += [other] if other is not None else []
        else:       # the label's and the protocol's checks; with neither and no count to check, what could not be
            checks = [c for c in (label_check(kb, order, drug, assessment), withhold_check(kb, order, drug, assessment))
                      if c] if assessment else []
            uncounted = None if checks else no_count_check(kb, order, drug, assessment)
            out += [c for c in (*checks, uncounted, interactions_check(kb, order, drug, assessment) if assessment
                                else None) if c]
        daily = daily_instead_of_weekly(kb, order, drug, oncologic)
        if daily is not None:
            out.append(daily)
    return out


def _together(orders: list[OrderInput], matches: list[Any]) -> dict[str, OrderInput]:
    """For a thiopurine ordered in several drafts (a 100 mg and a 50 mg tablet), each draft's order with the day's
    dose of them all, in mg a day, when every one of them gives it (each had been judged alone: 150 mg a day in a
    TPMT intermediate metabolizer passed twice as "already reduced", 2 x 200 mg as two normal starting doses)."""
    by_drug: dict[str, list[OrderInput]] = {}
    for order, match in zip(orders, matches):
        if match is not None and "thiopurine" in match.drug.get("classes", []):
            by_drug.setdefault(match.drug["id"], []).append(order)
    out: dict[str, OrderInput] = {}
    for same in by_drug.values():
        per_day = [dose_mg_kg_day(o.dose, o.weight_kg)[1] for o in same]
        if len(same) > 1 and all(d is not None for d in per_day):
            total = float(f"{sum(d for d in per_day if d is not None):.6g}")
            out.update({o.key: o.model_copy(update={"dose": Dose(value=total, unit="mg/d")}) for o in same})
    return out


def _above_label(kb: KnowledgeBase, check: OrderCheck, drug: dict[str, Any], order: OrderInput) -> OrderCheck:
    """An order above the label's highest daily dose per kg (drugs.yaml max_label_mg_kg_day): at least a warning
    that says so first (azathioprine 600 mg a day for 70 kg, 8.6 mg/kg/day, had been 'normal starting dose');
    beyond implausible_dose_factor times it, probably an entry or unit error. No dose change is then offered: CPIC
    reduces a normal starting dose, and a cut of this one (15,000 mg to 12,000 mg a day) had been one click away.
    With no weight the dose cannot be checked against it: a change offered says so (1,500 mg of azathioprine a day
    had been cut to 1,200 mg with nothing said)."""
    top = drug.get("max_label_mg_kg_day")
    per_kg, per_day, _ = dose_mg_kg_day(order.dose, order.weight_kg)
    if top and per_kg is None and per_day is not None and check.adjust != "no":
        said = (f"The weight is not known, so {per_day:g} mg a day could not be checked against the label's highest "
                f"dose ({top:g} mg/kg/day): check it before changing it.")
        return check.model_copy(update={"detail": f"**{said}**\n\n{check.detail}",
                                        "sources": list(dict.fromkeys([*check.sources, *drug.get("sources", [])]))})
    if not top or per_kg is None or per_kg <= top:
        return check
    error = per_kg > top * kb.value("implausible_dose_factor")
    said = (f"{per_kg:.2g} mg/kg/day is above the label's highest dose ({top:g} mg/kg/day)"
            + (": probably an entry or unit error" if error else "") + "; check the dose")
    kept = "" if check.adjust == "no" else " No dose change is offered: CPIC's reduction is of a normal starting dose."
    return check.model_copy(update={
        "priority": "critical" if check.priority == "critical" else "warning", "adjust": "no",
        "summary": f"{said}; {check.summary}", "detail": f"**{said[0].upper()}{said[1:]}.**{kept}\n\n{check.detail}",
        "sources": list(dict.fromkeys([*check.sources, *drug.get("sources", [])]))})


def _with_current_count(kb: KnowledgeBase, check: OrderCheck, a: Optional[Assessment]) -> OrderCheck:
    """A thiopurine ordered at counts that advise against starting it now: the check says so first, so that a CPIC
    'normal starting dose' is never read alone beside them. Critical when a thiopurine already taken would be
    stopped (Singh 2022, Table 6: an ANC below 1.0, or one that can only be below it, a WBC below 1.5 with no
    differential; a WBC below 2.5); a warning at a mild neutropenia (UK DMARD monitoring withholds below 1.6), or
    with no current count (the label's CBC monitoring starts with the first dose). The dose advice stands for when
    the counts allow; a dose change is then no longer the recommended action (it had been, beside "do not
    start": critical only). With a normal current count, the check as it is."""
    if a is None:
        return check
    r, wbc = a.risk_tier, (a.ctcae.wbc.value if a.ctcae.wbc is not None else None)
    anc = r.anc if r.anc is not None else r.anc_at_most if r.tier_at_least else None
    if r.anc is not None:
        said = f"ANC {r.anc_comparator or ''}{r.anc:g} now" + (
            f" ({r.tier} neutropenia)" if r.tier in ("mild", "moderate", "severe", "profound") else "")
    elif anc is not None:
        said = f"WBC {anc:g} with no differential now"
    else:
        said = f"WBC {wbc:g} now" if wbc is not None else "the count now"
    if anc is not None and anc < kb.value("moderate_anc") or wbc is not None and wbc < kb.value("thiopurine_stop_wbc"):
        priority, what = "critical", f"{said}: do not start until the count recovers"
    elif anc is not None and anc < kb.value("dmard_withhold_anc"):
        priority, what = "warning", (f"{said}: agree the start with the prescriber (a DMARD is withheld below "
                                     f"{kb.value('dmard_withhold_anc'):g})")
    elif not a.cbc.current:
        priority, what = "warning", "no current blood count: take a CBC with differential before starting"
    else:
        return check
    return check.model_copy(update={
        "priority": "critical" if "critical" in (priority, check.priority) else priority,
        "adjust": "possible" if priority == "critical" and check.adjust == "recommended" else check.adjust,
        "summary": f"{what[0].upper()}{what[1:]}; {check.summary}",
        "detail": f"**Current count:** {r.basis} A thiopurine suppresses the marrow further: one already taken is "
                  f"withdrawn below an ANC of {kb.value('moderate_anc'):g} x10^9/L and held below a WBC of "
                  f"{kb.value('thiopurine_stop_wbc'):g} (Singh 2022); the assessment card says what explains the count "
                  f"and what to do first. The dose below is for when the counts allow.\n\n{check.detail}",
        "sources": list(dict.fromkeys([*check.sources, *r.sources, "singh_ibd_thiopurines_2022",
                                       "nhs_dg_sulfasalazine_monitoring", "imuran_label"]))})


def _already_reduced(kb: KnowledgeBase, check: OrderCheck, drug: dict[str, Any], order: OrderInput,
                     pattern: str, malignant: Optional[bool]) -> OrderCheck:
    """CPIC's cut left out when the dose ordered is already within its reduced starting doses for the phenotype
    (:func:`~.pgx.within_reduced`): "dose reduction may not be recommended". For a poor metabolizer only with a
    malignancy (its rows' ``malignant_only``), at the row's ``reduced_priority``: mercaptopurine 10 mg/m2 on three days
    a week in a TPMT poor metabolizer's ALL had been told, critically, to reduce the dose drastically."""
    row = dose_adjustment(kb, drug["id"], pattern)
    found = within_reduced(row, drug["id"], order.dose, order.weight_kg, bool(malignant))
    if found is None:
        return check
    shown, reduced_to = found
    what = _DRASTIC if row.get("malignant_only") else _REDUCED_START
    return check.model_copy(update={
        "dose_change": None, "adjust": "no", "cancel": "no", "priority": row.get("reduced_priority", check.priority),
        "summary": check.summary.replace(what, f"{shown} is already a reduced dose (CPIC)"),
        "detail": f"**The dose ordered, {shown}, is already within CPIC's reduced starting doses** (up to {reduced_to} "
                  f"for {drug['name']}): it is not cut again; adjust it by the counts.\n\n{check.detail}"})


def _with_interactions(kb: KnowledgeBase, check: OrderCheck, drug: dict[str, Any],
                       assessment: Optional[Assessment], order: OrderInput) -> OrderCheck:
    """A dose reduction an interaction demands (allopurinol with azathioprine: a quarter) on top of CPIC's;
    none when the dose ordered is already at or below that share of the normal starting dose (the
    interaction's ``normal_start_mg_kg_day``): a dose reduced on purpose is not cut again."""
    if assessment is None:
        return check
    by_id = {i["id"]: i for i in kb.interactions}
    for found in assessment.interactions:
        spec = by_id.get(found.id, {})
        if not cuts_the_dose(spec, drug):
            continue
        others = " and ".join(found.drugs[1])
        if set(found.drugs[1]) & set(spec.get("dose_factor_not_with", [])):   # febuxostat: contraindicated
            return check.model_copy(update={
                "dose_change": None, "adjust": "no", "priority": "critical",
                "summary": f"{check.summary}; with {others}: contraindicated, do not combine",
                "detail": f"**{found.title}.** {found.effect} {found.action} No dose makes this combination right "
                          f"(the quarter dose is for allopurinol that cannot be avoided).\n\n{check.detail}",
                "sources": list(dict.fromkeys([*check.sources, *found.sources]))})
        factor = spec["dose_factor"]
        base = check.dose_change
        cpic = base.factor if base and base.factor else 1.0
        normal = spec.get("normal_start_mg_kg_day", {}).get(drug["id"])
        per_kg = dose_mg_kg_day(order.dose, order.weight_kg)[0]
        priority = "critical" if check.priority == "critical" else "warning"
        if per_kg is not None and normal is not None and per_kg <= normal * cpic * factor * (1 + 1e-9):
            return check.model_copy(update={
                "dose_change": None, "adjust": "no", "priority": priority,
                "summary": f"{check.summary}; with {others}: {per_kg:.2g} mg/kg/day, already reduced",
                "detail": f"**{found.title}.** {found.effect} {found.action} The dose ordered, {per_kg:.2g} mg/kg/day, "
                          f"is not cut again: it is at or below {normal * cpic * factor:.2g} mg/kg/day ({factor:.0%} "
                          f"of the normal starting dose of {normal:g} mg/kg/day"
                          f"{', after the CPIC reduction' if cpic < 1 else ''}).\n\n{check.detail}",
                "sources": list(dict.fromkeys([*check.sources, *found.sources]))})
        wording = (f"{base.wording if base else 'the dose ordered'}, then cut to {factor:.0%} for "
                   f"{others} ({found.title.lower()})")
        change = DoseChange(factor=cpic * factor,
                            times=base.times if base else None, per=base.per if base else None, wording=wording,
                            percent_range=base.percent_range if base else None)
        return check.model_copy(update={
            # the card offers one choice (at-most-one): the cut is the recommended one unless cancelling is; the
            # genotyping an unknown phenotype asks for is then offered, not recommended
            "dose_change": change, "adjust": ("possible" if check.cancel == "recommended" else "recommended")
            if check.adjust == "no" else check.adjust,
            "genotype": "possible" if check.genotype == "recommended" and check.cancel != "recommended"
            else check.genotype,
            "priority": priority, "summary": f"{check.summary}; with {others}: cut the dose",
            "detail": f"**{found.title}.** {found.effect} {found.action}\n\n{check.detail}",
            "sources": list(dict.fromkeys([*check.sources, *found.sources]))})
    return check


def _resolve(kb: KnowledgeBase, gene: str, value: Optional[str]) -> GeneStatus:
    try:
        return pgx.resolve(kb, gene, value)
    except pgx.PhenotypeError:
        return pgx.resolve(kb, gene, None)
