"""What an Observation leukodx cannot read says about itself.

* :func:`named_count`: a count named but coded otherwise. A neutrophil count coded with a local code only, with
  text alone ("ANC"), or with LOINC's system written another way had been ignored with the codes leukodx does not
  use, and the card had said "no differential": a count that was sent and could not be read is not one that was
  never taken. Such an Observation is named as not assessed, by the test its name says, so that the card says the
  count is unknown (a warning), not absent.
* :func:`absent_value_reason`: why a lab Observation has no value leukodx reads, with at most 60 characters of
  what it has instead (an 800 KB valueString had filled the card).
"""
from __future__ import annotations

import re
from typing import Any, Optional

from leukodx.engine.errors import Problem

from .datatypes import codings, concept_text, as_str

__all__ = ["named_count", "named_count_left_out", "absent_value_reason", "has_value", "not_the_anc", "UNNAMED_COUNT"]

# said of a value in a blood-cell-count unit whose code and name leukodx cannot read: it may be the ANC
UNNAMED_COUNT = "which count it is cannot be told"

# in English and as European laboratories name them (Neutrofily, Neutrophile, neutrófilos, polynucléaires neutrophiles,
# Leukozyten, leucocitos, leukocyty ...)
_NAMES = (("anc", re.compile(r"\b(anc|absolute neutrophils?|(segmented |band )?neutr[oó](phil|fil|fíl)\w*|polynucl\w*|segs|"
                             r"polys?\b|pmns?\b|granulo[cz]\w*|neut(?:#|\b)|abs\.? ?neut\w*|gran(?:#|\b)|agc\b|ne ?#)",
                             re.I)),
          ("wbc", re.compile(r"\b(wbc|white (blood )?cells?|leu[ck]o[ckz]\w*|leucocit\w*)", re.I)))
# not a blood count: antibodies, enzymes, markers, and counts in other fluids
_NOT_A_COUNT = re.compile(r"antibod|\bab\b|\bigg|anca|phosphatase|elastase|gelatinase|esterase|\bcd\d|urin|"
                          r"\bcsf\b|fluid|stool|f(a)?eces|synovial|pleural|periton|ascit|dialys|sputum|bronch|"
                          r"lavage|semen", re.I)


# other blood cells (platelets, red cells, lymphocytes ...): a count named so, coded otherwise, is not the ANC
_OTHER_CELLS = re.compile(r"\b(plt|platelet|thrombo|rbc|red (blood )?cell|erythro|retic|lymph|mono|eos|baso|nrbc|"
                          r"blast|cd\d|sperm|copies|viral load|rna|dna)", re.I)


def not_the_anc(text: str) -> bool:
    """A test's name that says it is not the blood's neutrophil count (urine leukocytes, platelets, a CD4 count)."""
    return bool(_NOT_A_COUNT.search(text) or _OTHER_CELLS.search(text))


def named_count(res: dict[str, Any]) -> Optional[str]:
    """The test (``anc`` or ``wbc``) an Observation's code text or display names, when it names a blood count."""
    concept = res.get("code")
    texts = [t for t in (concept_text(concept), *(as_str(c.get("display")) for c in codings(concept))) if t]
    if any(_NOT_A_COUNT.search(t) for t in texts):
        return None
    return next((test for test, pattern in _NAMES if any(pattern.search(t) for t in texts)), None)


def named_count_left_out(loc: str, res: dict[str, Any], coded: str) -> Optional[Problem]:
    """The Observation (or component) at ``loc``, coded ``coded``, left out by name when it names a blood count and
    has a value or says why it has none; None otherwise."""
    named = named_count(res)
    if named is None or not has_value(res):
        return None
    return Problem(loc, f"{named}: named {concept_text(res.get('code'))!r}, but coded {coded}, not a LOINC code leukodx "
                        f"reads; not used")


def has_value(res: dict[str, Any]) -> bool:
    """The Observation (or component) has a value of its own (value[x] or a dataAbsentReason), not only in
    components."""
    return "dataAbsentReason" in res or any(k.startswith("value") for k in res)


def absent_value_reason(res: dict[str, Any]) -> str:
    """Why there is no value: what the Observation has instead, or its dataAbsentReason."""
    for key in ("valueString", "valueCodeableConcept", "valueBoolean", "valueInteger", "valueRange", "valueRatio"):
        if key in res:
            shown = res[key] if key in ("valueString", "valueBoolean", "valueInteger") else concept_text(res[key])
            shown = shown[:60] + "..." if isinstance(shown, str) and len(shown) > 60 else shown
            return f"no valueQuantity.value (it has {key} {shown!r})" if shown is not None else \
                f"no valueQuantity.value (it has {key})"
    reason = concept_text(res.get("dataAbsentReason"))
    return f"no valueQuantity.value (dataAbsentReason: {reason[:60]})" if reason else "no valueQuantity.value"
