"""A lab value's unit, as FHIR sends it: which spelling to give the engine (its UCUM code, else its unit text, else
a code with no system), never one of two that disagree. The engine converts (pint, engine/units.py); here its
factors are only compared."""
from __future__ import annotations

import math
import re
from typing import Any, Optional

from leukodx.engine.units import conversion_factor

from .datatypes import as_str, is_ucum

__all__ = ["UnitConflict", "factor_to_test_unit", "readable_unit", "value_unit"]

_UCUM_ANNOTATION = re.compile(r"\{[^{}]*\}")


def factor_to_test_unit(spelling: str, spec: dict[str, Any]) -> Optional[float]:
    """The engine's factor from ``spelling`` to the test's unit, or None when the engine cannot read it."""
    try:
        return conversion_factor(spelling, spec["dimension"], spec["unit"], spec.get("molar_mass")).factor
    except Exception:  # UnitProblem, or pint on odd spellings: the engine will say why
        return None


def _same_unit(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


def readable_unit(spelling: str, spec: dict[str, Any]) -> str:
    """A UCUM code with annotations (`10*3/uL{cells}`) the engine cannot read, without them."""
    if factor_to_test_unit(spelling, spec) is None:
        bare = _UCUM_ANNOTATION.sub("", spelling).strip()
        if bare and factor_to_test_unit(bare, spec) is not None:
            return bare
    return spelling


class UnitConflict(ValueError):
    """A value's unit text and UCUM code are two different units."""


def value_unit(q: dict[str, Any], spec: dict[str, Any], where: str, warnings: list[str]) -> Optional[str]:
    code, unit, system = as_str(q.get("code")), as_str(q.get("unit")), as_str(q.get("system"))
    if code and is_ucum(system):
        code = readable_unit(code, spec)
        if unit and unit != code:
            f_code, f_unit = factor_to_test_unit(code, spec), factor_to_test_unit(unit, spec)
            if f_code is not None and f_unit is not None and not _same_unit(f_code, f_unit):
                # the value is in one of them and nothing says which: an ANC of 300 "/uL" coded 10*3/uL had been
                # read as 300 x10^9/L, normal, with no card
                raise UnitConflict(f"valueQuantity.unit {unit!r} and its UCUM code {code!r} are different units "
                                   f"({max(f_code, f_unit) / min(f_code, f_unit):.4g}-fold apart): which one the "
                                   f"value is in cannot be told")
            if f_code is None and f_unit is not None:
                warnings.append(f"{where}: UCUM code {code!r} is not a unit leukodx reads; the unit text {unit!r} "
                                f"was used.")
                return unit
        return code
    if unit:
        return unit
    if code and not system:
        return readable_unit(code, spec)
    return None
