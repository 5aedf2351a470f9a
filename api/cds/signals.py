"""What an assessment, and what the data left out, say about the cards a call owes: an urgent step that raises the
priority, cytopenias or a percentage with no white count, a neutrophil value sent and left unread. The routes decide
which card to give with them (routes.py), the cards how to word it (cards.py)."""
from __future__ import annotations

import re
from typing import Iterable, Mapping

from leukodx.engine import Assessment, NotAssessed

from ..fhir import UNNAMED_COUNT, WITHDRAWN

__all__ = ["urgent_steps", "cytopenia_without_white_count", "percentage_without_white_count", "neutrophil_value_unread",
           "NEUTROPHIL_TESTS"]

NEUTROPHIL_TESTS = ("anc", "wbc", "segmented_neutrophils", "bands", "neutrophils_pct", "bands_pct")


def urgent_steps(a: Assessment) -> bool:
    """An immediate or urgent step that raises the assessment's priority (rules/alerts.yaml step_priority): a
    label's threshold for haemoglobin or platelets (valganciclovir with haemoglobin 7.2 had given no card; with no
    current WBC or ANC beside it, no card either)."""
    return a.priority != "info" and any(s.urgency in ("immediate", "urgent") for s in a.steps)


def cytopenia_without_white_count(a: Assessment) -> bool:
    """Anaemia and thrombocytopenia drawn with no WBC or ANC at all (Hb 6.5 and platelets 8 had given no card):
    two lineages low, the card names them and asks for the count with a differential (one alone, an anaemia
    just below its limit, is not a leukopenia service's to raise)."""
    return not a.cbc.tests and {"anemia", "thrombocytopenia"} <= {f.id for f in a.findings}


def percentage_without_white_count(a: Assessment) -> bool:
    """A current neutrophil (or band) percentage with no WBC or ANC: the ANC cannot be derived (neutrophils 5 %
    with no WBC had given no card at all, as if nothing had been drawn)."""
    return not a.cbc.tests and any(lab.test in ("neutrophils_pct", "bands_pct") and (
        lab.age_days is None or lab.age_days <= a.cbc.max_age_days) for lab in a.labs)   # undated: taken as current


def neutrophil_value_unread(not_assessed: Iterable[NotAssessed], loinc: Mapping[str, str]) -> bool:
    """Whether a value that gives the ANC (an ANC, a WBC, neutrophil counts or percentages) was sent and left unread:
    named by its test or LOINC code (``loinc``: code -> test) first in its value ("751-8 3.0 10*3/uL") or reason
    ("anc (LOINC 751-8): ...", "ANC 3 ... is above the WBC", "value: anc is negative"). The engine's refusals (LOINC
    code first) had been missed: an ANC above its WBC, negative or written "0,2" left an information card."""
    for n in not_assessed:
        if any(said in n.reason for said in ("conflicts with", "its focus is", WITHDRAWN)):
            continue        # the lower of two was used; someone else's; one the lab took back (a mild CBC had been
                            # made a warning "check the neutrophil count" by an ANC entered in error)
        if UNNAMED_COUNT in n.reason:      # a count coded only in a system leukodx does not read: it may be the ANC
            return True
        words = (n.value or "").split(" ", 1)[:1] + re.split(r"[ :(]", n.reason.lower().removeprefix("value: "), 1)[:1]
        if {loinc.get(w, w) for w in words} & set(NEUTROPHIL_TESTS):
            return True
    return False
