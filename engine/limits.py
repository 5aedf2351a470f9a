"""The lower limits of normal that judge a WBC and a haemoglobin: the lab's when it gave one, else
rules/reference_intervals.yaml by age, sex and pregnancy."""
from __future__ import annotations

from typing import Any

from .assessment import ReferenceLimit
from .kb import KnowledgeBase
from .normalize import NormCase

__all__ = ["reference_limits"]


def reference_limits(kb: KnowledgeBase, nc: NormCase, llns: dict[str, float], facts: dict[str, Any]
                      ) -> list[ReferenceLimit]:
    """The lower limit of WBC and haemoglobin: the lab's when given, else rules/reference_intervals.yaml by
    age, sex and pregnancy. Sets `<test>_lln` and says which was used."""
    p = nc.case.patient
    pregnant = "pregnancy" in nc.conditions
    out: list[ReferenceLimit] = []
    for test, table in kb.reference_intervals.items():
        unit = kb.tests[test]["unit"]
        if test in llns:
            out.append(ReferenceLimit(test=test, lln=llns[test], unit=unit, basis="the lab's lower limit"))
            continue
        for row in table.get("rows", []):
            if (row.get("pregnant") and not pregnant) or ("condition" in row and row["condition"] not in nc.conditions):
                continue
            if row.get("age_unknown"):
                if p.age_years is not None:
                    continue
            elif p.age_years is None or not (row.get("min_age", 0) <= p.age_years < row.get("max_age", 200)):
                continue
            if "sex" in row and p.sex not in row["sex"]:
                continue
            facts[f"{test}_lln"] = float(row["lln"])
            out.append(ReferenceLimit(test=test, lln=float(row["lln"]), unit=unit, basis=row["basis"],
                                      sources=list(table.get("sources", []))))
            break
    return out
