"""Order checks of drugs other than thiopurines: clozapine against the label's ANC thresholds (rules/orders.yaml),
any drug against its own label's count thresholds and the interactions it takes part in, a weekly drug ordered daily,
and a drug leukodx does not know, ordered for a patient with something at stake. engine/orders.py calls them."""
from __future__ import annotations

from typing import Any, Optional

from .assessment import Assessment
from .doses import taken_more_often_than
from .kb import KnowledgeBase
from .order_models import INTERMEDIATE, OrderCheck, OrderInput
from .vocabulary import oncologic_use

__all__ = ["clozapine_check", "label_check", "withhold_check", "interactions_check", "daily_instead_of_weekly",
           "not_known", "cuts_the_dose"]


def clozapine_check(kb: KnowledgeBase, order: OrderInput, drug: dict[str, Any], a: Optional[Assessment],
                    conditions_unhad: bool = False) -> OrderCheck:
    spec = kb.orders["clozapine"]
    numbers = {k: f"{kb.value(k):g}" for k in kb.thresholds}
    base = {"order": order.key, "drug": drug["id"], "drug_name": drug["name"], "topic": "clozapine_anc",
            "sources": list(spec["sources"])}
    alert = next((x for x in a.alerts if x.id == "clozapine_neutropenia"), None) if a else None
    # the ANC as reported: "<0.5" is not "0.5", which is not below 0.5 (the comparator had been dropped)
    anc = f"{a.risk_tier.anc_comparator or ''}{a.risk_tier.anc:g}" if a and a.risk_tier.anc is not None else None
    earlier = next((x for x in a.alerts if x.id == "agranulocytosis_hours_before"), None) if a else None
    if earlier is not None:      # an ANC below 0.5 a day before a current 1.6 had been "clozapine may proceed"
        entry = spec["hours_before"]
        return OrderCheck(**{**base, "sources": list(dict.fromkeys([*spec["sources"], *earlier.sources]))},
                          priority=entry["priority"], cancel="recommended", summary=entry["summary"].format(**numbers),
                          detail=f"{earlier.description} {kb.alerts['clozapine_neutropenia'].description}")
    if alert is not None:
        shown = anc if anc is not None else f"at most {a.risk_tier.anc_at_most:g}"
        ben = a.risk_tier.duffy_null_note is not None
        continues = a.risk_tier.anc is not None and a.risk_tier.anc >= kb.value(
            "clozapine_interrupt_anc_ben" if ben else "clozapine_interrupt_anc")
        entry = spec[("below_start_ben" if ben else "below_start") if continues else "below_threshold"]
        return OrderCheck(**base, priority=entry["priority"], cancel="recommended",
                          summary=entry["summary"].format(anc=shown, **numbers), detail=alert.description)
    no_anc = a is None or a.risk_tier.anc is None or not a.cbc.current
    again = next((x for x in a.alerts if x.id == "clozapine_rechallenge"), None) if a else None
    if again is not None:                  # an earlier count on clozapine was severe: whatever the current one
        entry = spec["after_severe"]
        detail = again.description + (" " + " ".join(spec["no_anc"]["detail"].format(**numbers).split()) if no_anc
                                      else "")
        return OrderCheck(**base, priority=entry["priority"], summary=entry["summary"].format(**numbers),
                          detail=detail)
    if no_anc:
        entry = spec["no_anc"]
        return OrderCheck(**base, priority=entry["priority"], summary=entry["summary"].format(**numbers),
                          detail=" ".join(entry["detail"].format(**numbers).split()))
    duffy_null = a.risk_tier.duffy_null_note is not None
    if a.risk_tier.anc < kb.value("clozapine_interrupt_anc_ben" if duffy_null else "clozapine_interrupt_anc"):
        # below the label's interrupt threshold though no alert said so (the clozapine not counted as taken: a
        # draft the assessment left out had been told "continue, ANC three times a week" at ANC 0.4)
        entry = spec["below_threshold"]
        return OrderCheck(**base, priority=entry["priority"], cancel="recommended",
                          summary=entry["summary"].format(anc=anc, **numbers),
                          detail=kb.alerts["clozapine_neutropenia"].description)
    entry = spec["mild" if a.risk_tier.anc < kb.value("clozapine_start_anc") and not duffy_null else "proceed"]
    if conditions_unhad:       # a past clozapine agranulocytosis could not be looked for: never an all-clear
        entry = {**entry, "priority": "warning" if entry["priority"] == "info" else entry["priority"],
                 "summary": spec["conditions_unhad"]["summary"], "detail": f"{spec['conditions_unhad']['detail']} "
                                                                            f"{entry['detail']}"}
    return OrderCheck(**base, priority=entry["priority"], summary=entry["summary"].format(anc=anc),
                      detail=" ".join(entry["detail"].format(**numbers).split()))


def not_known(order: OrderInput, tpmt: str, nudt15: str, a: Optional[Assessment]) -> Optional[OrderCheck]:
    """A drug none of leukodx's names, brands or RxNorm codes matches, ordered for a patient with something at stake
    (a neutropenia or leukopenia, a reduced TPMT or NUDT15 function): said, never passed in silence (Imurel, a
    European brand of azathioprine, had been signed for a TPMT poor metaboliser with no card); a warning for a poor
    metaboliser or a severe count. For others it is not said: most drugs ordered are none of leukodx's business."""
    stakes = [f"{gene} {phenotype.replace('_', ' ')} function" for gene, phenotype in (("TPMT", tpmt), ("NUDT15", nudt15))
              if phenotype in ("poor", *INTERMEDIATE)]
    tier = a.risk_tier if a is not None else None
    if tier is not None and (tier.tier in ("mild", "moderate", "severe", "profound") or tier.tier_at_least):
        stakes.append(f"a {tier.tier_at_least} or worse neutropenia" if tier.tier_at_least else f"a {tier.tier} neutropenia")
    elif a is not None and any(f.id == "leukopenia" for f in a.findings):     # a low WBC with no differential
        stakes.append("a leukopenia")
    if not stakes:
        return None
    # by what the order gives: an unknown code with no name had ended the call in a TypeError, every card lost
    name = (order.name or (f"RxNorm {order.rxnorm}" if order.rxnorm else f"ATC {order.atc}" if order.atc
                           else "an unnamed drug"))[:80]
    high = "poor" in (tpmt, nudt15) or (tier is not None and tier.tier in ("severe", "profound"))
    return OrderCheck(order=order.key, drug="", drug_name=name, topic="unknown_drug",
                      priority="warning" if high else "info",
                      summary=f"{name!r} is not a drug leukodx knows: not checked against {'; '.join(stakes)}",
                      detail=f"leukodx checks an ordered drug against its knowledge base (rules/drugs.yaml): a "
                             f"thiopurine against TPMT and NUDT15, clozapine against the ANC, the drugs whose labels "
                             f"set count limits, and the interactions that raise marrow toxicity. {name!r} matched none "
                             f"of its names, brands or RxNorm codes, so nothing was checked, although this patient has "
                             f"{'; '.join(stakes)}. Check the drug yourself (a brand of a thiopurine or of clozapine "
                             f"needs the checks above).",
                      sources=[])


def daily_instead_of_weekly(kb: KnowledgeBase, order: OrderInput, drug: dict[str, Any],
                             oncologic: bool) -> Optional[OrderCheck]:
    """A weekly drug (drugs.yaml ``weekly_when_non_oncologic``: the alert it raises) ordered daily with no
    oncologic indication: ISMP's hard stop, on the order's own card, with or without a blood count (the patient's
    card is about the drugs taken, not the order being signed)."""
    alert_id = drug.get("weekly_when_non_oncologic")
    if not alert_id or not taken_more_often_than(order.dose, kb.value("weekly_drug_max_takes_a_week")):
        return None
    alert = kb.alerts[alert_id]
    summary, priority = f"{alert.title}: verify the frequency before signing", alert.severity or "critical"
    if oncologic_use(kb, order.indication, oncologic):
        if order.indication and order.indication.strip():
            return None
        # no indication of its own, a cancer on record: a question, not silence (a daily methotrexate for a patient
        # with rheumatoid arthritis and a basal cell carcinoma had had no card)
        summary, priority = (f"{drug['name'].capitalize()} ordered daily with no indication beside a cancer on record: "
                             f"confirm it is the cancer's regimen, not a weekly dose"), "warning"
    return OrderCheck(order=order.key, drug=drug["id"], drug_name=drug["name"], topic="dosing_frequency",
                      priority=priority, cancel="possible", summary=summary, detail=alert.description,
                      sources=list(alert.sources))


def label_check(kb: KnowledgeBase, order: OrderInput, drug: dict[str, Any], a: Assessment) -> Optional[OrderCheck]:
    """The drug's own label asks not to use it at the patient's current counts (a rule of the family
    ``labels`` fired for it: valganciclovir with haemoglobin 7.2)."""
    fired = [rid for rid in dict.fromkeys(r for s in a.steps for r in s.rules)
             if rid.startswith(f"labels.{drug['id']}_")]
    if not fired:
        return None
    rules = [kb.rule(rid) for rid in fired]
    return OrderCheck(order=order.key, drug=drug["id"], drug_name=drug["name"], topic="drug_label", priority="critical",
                      cancel="recommended", summary=f"{drug['name'].capitalize()} ordered below its label's count "
                                                    f"threshold: do not start",
                      detail=" ".join(r.statement for r in rules),
                      sources=list(dict.fromkeys(src for r in rules for src in r.sources)))


def no_count_check(kb: KnowledgeBase, order: OrderInput, drug: dict[str, Any], a: Optional[Assessment]
                   ) -> Optional[OrderCheck]:
    """A drug whose label limits the counts it is given at, or a DMARD, ordered with no current blood count (none on
    file, or none that could be had) or none with an ANC: rules/orders.yaml ``no_count``, with the limits it could not
    check."""
    spec, dmard = kb.orders.get("no_count"), kb.orders.get("dmard")
    if not spec or (a is not None and a.cbc.current and a.risk_tier.anc is not None):
        return None
    what = "a current neutrophil count" if a is not None and a.cbc.current else "a current blood count"
    labels = [r for r in kb.rules if r.id.startswith(f"labels.{drug['id']}_")]
    classes = {*drug.get("classes", []), drug.get("non_oncologic_class")}
    cancer = a is not None and a.cancer_current
    protocol = dmard and (classes & set(dmard["classes"]) or drug["id"] in dmard["drugs"]) and not (
        drug.get("oncologic_class") and oncologic_use(kb, order.indication, cancer))   # not as chemotherapy
    rules = labels or ([kb.rule(dmard["rule"])] if protocol else [])
    if not rules:
        return None
    name = drug["name"]
    lead = spec["label"].format(drug=name) if labels else " ".join(spec["dmard"].split())
    return OrderCheck(order=order.key, drug=drug["id"], drug_name=name, topic="drug_label" if labels else
                      "dmard_monitoring", priority=spec["priority"], summary=spec["summary"].format(drug=name.capitalize(), what=what),
                      detail=" ".join([lead, *(" ".join(r.statement.split()) for r in rules)]),
                      sources=list(dict.fromkeys(src for r in rules for src in r.sources)))


def withhold_check(kb: KnowledgeBase, order: OrderInput, drug: dict[str, Any], a: Assessment) -> Optional[OrderCheck]:
    """A DMARD ordered at counts its monitoring withholds it at (rules/orders.yaml ``dmard``: its rule fired with the
    order counted as taken): methotrexate ordered at an ANC of 0.4 had had no order card."""
    spec = kb.orders.get("dmard")
    classes = {*drug.get("classes", []), drug.get("non_oncologic_class")}
    if not spec or not (classes & set(spec["classes"]) or drug["id"] in spec["drugs"]) or \
            not any(spec["rule"] in s.rules for s in a.steps):
        return None
    rule = kb.rule(spec["rule"])
    order_of = ("critical", "warning", "info")
    priority = min(spec["priority"], kb.tier_priority.get(a.risk_tier.tier, "info"), key=order_of.index)
    return OrderCheck(order=order.key, drug=drug["id"], drug_name=drug["name"], topic="dmard_monitoring",
                      priority=priority, cancel="recommended",
                      summary=spec["summary"].format(drug=drug["name"].capitalize()), detail=" ".join(rule.statement.split()),
                      sources=list(rule.sources))


def cuts_the_dose(spec: dict[str, Any], drug: dict[str, Any]) -> bool:
    """The interaction cuts this drug's dose (allopurinol with a thiopurine): the thiopurine's own check says it."""
    return bool(spec.get("dose_factor")) and drug["id"] in spec.get("sides", [{}])[0].get("drugs", [])


def interactions_check(kb: KnowledgeBase, order: OrderInput, drug: dict[str, Any], a: Assessment) -> Optional[OrderCheck]:
    """The interactions of rules/interactions.yaml the ordered drug takes part in (the assessment found
    them with the draft counted as taken): methotrexate ordered for a patient on co-trimoxazole."""
    by_id = {i["id"]: i for i in kb.interactions}
    mine = [found for found in a.interactions
            if any(drug["id"] in side.get("drugs", []) or set(drug.get("classes", [])) & set(side.get("classes", []))
                   for side in by_id.get(found.id, {}).get("sides", []))
            and not cuts_the_dose(by_id.get(found.id, {}), drug)]
    if not mine:
        return None
    others = [n for found in mine for side in found.drugs for n in side if n != drug["name"]]
    return OrderCheck(order=order.key, drug=drug["id"], drug_name=drug["name"], topic="interaction",
                      priority="warning", cancel="possible",
                      summary=f"{drug['name'].capitalize()} with {', '.join(dict.fromkeys(others)) or 'another drug'}: "
                              f"a combination that raises marrow toxicity",
                      detail="\n\n".join(f"**{f.title}.** {f.effect} {f.action}" for f in mine),
                      sources=list(dict.fromkeys(src for f in mine for src in f.sources)))
