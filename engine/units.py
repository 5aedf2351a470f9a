"""Lab units: one pint registry, lab spellings mapped onto it, factors cached per spelling.

pint does every conversion. What this module adds:

* ``engine/units.txt``: the scale words (``tenpow9``) and molar masses pint needs;
* :func:`to_pint_expression`: lab spellings (``10*3/uL``, ``x10E9/L``, ``×10⁹/L``, ``10*2/uL``, ``K/uL``,
  ``G/L``, ``B/L``, ``THOU/uL``, ``Tsd/µl``, ``/nL``, ``cells/mm3``, ``cells/cumm``, ``x10(3)/mcL`` ...)
  rewritten as pint expressions, so that ``K/uL`` is never read as kelvin nor ``B/L`` as bytes;
* :func:`conversion_factor`: parse, check the dimension, and ask pint for the factor to the
  test's normalised unit, once per (spelling, dimension) thanks to an LRU cache. The hot path
  multiplies.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterable, Optional

import pint

from .case import MAX_UNIT

__all__ = ["count_text", "UnitProblem", "registry", "to_pint_expression", "conversion_factor", "dose_rate", "DoseRate", "DIMENSIONS",
           "unreadable"]

#: pint dimensionality each kind of lab must have, and how to say it to a person.
DIMENSIONS: dict[str, tuple[str, str]] = {
    "count_per_volume": ("1/[length]**3", "a count per volume such as 10^9/L, 10^3/uL or /uL"),
    "fraction": ("[]", "a percentage (%)"),
    "mass_per_volume": ("[mass]/[length]**3", "a mass or substance concentration such as g/dL, g/L or mmol/L"),
    "volume": ("[length]**3", "a volume such as fL"),
}

# Pint expression for each normalised unit named in rules/labs.yaml.
_TARGETS = {"10^9/L": "tenpow9 / liter", "%": "percent", "g/dL": "gram / deciliter", "fL": "femtoliter",
            "pg/mL": "picogram / milliliter", "ng/mL": "nanogram / milliliter", "ug/dL": "microgram / deciliter"}


class UnitProblem(ValueError):
    """A unit spelling that cannot be used for a test; the message says why."""


@lru_cache(maxsize=1)
def registry() -> pint.UnitRegistry:
    """The one unit registry: pint's defaults plus engine/units.txt. pint caches its parsed definition files
    (keyed by their content) in the user's cache folder, or LEUKODX_CACHE_DIR; without a writable one it
    parses them each time."""
    folder = os.environ.get("LEUKODX_CACHE_DIR")
    for cache in (os.path.join(folder, "pint") if folder else ":auto:", None):
        try:
            ureg = pint.UnitRegistry(autoconvert_offset_to_baseunit=False, on_redefinition="raise", cache_folder=cache)
            with resources.as_file(resources.files(__package__).joinpath("units.txt")) as path:
                ureg.load_definitions(str(path))
            return ureg
        except OSError:        # no writable cache folder: parse without one
            continue
    raise RuntimeError("unreachable")


# "10^N" and its spellings, read as the multiplier tenpowN (engine/units.txt). N = 3, 6, 9, 12 with any separator
# or none ("10*3", "x10E9", "x10(3)", "10^12", "109": UNIT_STRINGS.tsv and the cases); any other N from 1 to 12
# only after UCUM's "*" or a "^" (Japanese labs: WBC in 10^2/uL, platelets in 10^4/uL), so "102/uL" is not
# guessed. A longer number after it ("10^99") is not read as one.
_POWER = re.compile(r"^\s*(?:x|\*|×)?\s*10\s*(?:(?:\*\*|\*|\^|e|E)?\s*\(?\s*(3|6|9|12)\s*\)?"
                    r"|(?:\*\*|\*|\^)\s*(1[0-2]|[1-9]))(?!\d)\s*", re.UNICODE)
_PREFIX_WORDS = {
    # spelling (case matters: G is giga, g is gram) -> pint expression for the multiplier; read only before a
    # volume of _VOLUME_WORDS, so that pint's own K (kelvin), B (byte), thou (length) never reach a count.
    # THOU, Tsd, GIGA, B and cumm below are lab conventions seen in feeds, not (yet) in UNIT_STRINGS.tsv.
    "K": "tenpow3", "k": "tenpow3",                          # K/uL, K/ul: UNIT_STRINGS.tsv (Synthea, HL7 R4)
    "Thousand": "tenpow3", "Thousands": "tenpow3",           # Thousands Per MicroLiter: UNIT_STRINGS.tsv (Swiss)
    "thousand": "tenpow3", "thousands": "tenpow3",           # the same, lower case
    "THOU": "tenpow3", "Thou": "tenpow3", "thou": "tenpow3",  # THOU/uL, THOU/MCL, thou/mm3: US lab reports
    "Tsd": "tenpow3",                                        # Tsd/µl: German lab reports (Tausend pro Mikroliter)
    "G": "tenpow9", "Gpt": "tenpow9",                        # G/L (French), Gpt/L (German Gigapartikel)
    "giga": "tenpow9", "Giga": "tenpow9", "GIGA": "tenpow9",  # giga/l, GIGA/L: French lab reports, spelled out
    "B": "tenpow9",                                          # B/L: billion (10^9) per litre, lab convention
    "T": "tenpow12", "Tpt": "tenpow12",                      # T/L, Tpt/L (RBC; German Terapartikel)
    "M": "tenpow6", "Mill": "tenpow6",                       # M/uL, Mill/uL (RBC): US and German lab reports
    "million": "tenpow6", "millions": "tenpow6",             # the same, spelled out
}
_VOLUME_WORDS = {
    # UCUM and SI volumes (any case): /uL, /nL, 10*3/mm3, cells/mm3 are in UNIT_STRINGS.tsv; cmm is cubic mm
    "l": "liter", "dl": "deciliter", "ml": "milliliter", "ul": "microliter", "nl": "nanoliter", "fl": "femtoliter",
    "mm3": "millimeter ** 3", "mm^3": "millimeter ** 3", "mm**3": "millimeter ** 3", "cmm": "millimeter ** 3",
    "microliter": "microliter", "microlitre": "microliter", "liter": "liter", "litre": "liter",
    "nanoliter": "nanoliter",
    # cells/cumm, /cu mm, K/cumm: cubic millimetre (= uL), on Indian and older US lab reports
    "cumm": "millimeter ** 3", "cu mm": "millimeter ** 3", "cu.mm": "millimeter ** 3", "cu. mm": "millimeter ** 3",
}
_MASS_WORDS = {"g": "gram", "mg": "milligram", "ug": "microgram", "ng": "nanogram", "pg": "picogram",
               "mol": "mole", "mmol": "millimole", "umol": "micromole", "nmol": "nanomole", "pmol": "picomole"}
# Superscript digits after "10" ("x10⁹/L", "×10³/mm³", "10³/µL": the typeset form on lab reports) are the
# exponent: "10⁹" becomes "10^9", never 109. Elsewhere only "³" is rewritten ("mm³" -> "mm3"), as before.
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_SUPERSCRIPT_POWER = re.compile(r"10\s*([⁰¹²³⁴⁵⁶⁷⁸⁹]+)")


def _clean(spelling: str) -> str:
    s = spelling.strip()
    s = _SUPERSCRIPT_POWER.sub(lambda m: "10^" + m.group(1).translate(_SUPERSCRIPTS), s)
    s = s.replace("µ", "u").replace("μ", "u").replace("×", "x").replace("³", "3")
    s = re.sub(r"(?i)\bmc(?=[lLgG])", "u", s)          # mcL, mcg -> uL, ug
    s = re.sub(r"(?i)\s+per\s+", "/", s)                 # "Thousands Per MicroLiter"
    s = re.sub(r"(?i)\bcells?\b\s*", "", s)              # cells/uL -> /uL (a cell is a count)
    s = re.sub(r"\{[^{}]*\}", "", s)                     # UCUM annotations are unity: /100{WBC} is /100 (percent)
    return re.sub(r"\s+", " ", s).strip()


def to_pint_expression(spelling: str) -> str:
    """Rewrite a lab unit spelling as a pint expression (``"10*3/uL"`` -> ``"tenpow3 / microliter"``).

    Raises :class:`UnitProblem` for an empty spelling. Spellings it does not recognise are passed
    through for pint to parse, and the dimension check decides.
    """
    s = _clean(spelling)
    if not s:
        raise UnitProblem("unit is empty")
    if s in ("%", "/100"):          # per hundred (UCUM's /100{WBC}: per hundred leukocytes) is a percentage
        return "percent"
    multiplier = ""
    m = _POWER.match(s)
    if m:
        multiplier, s = f"tenpow{m.group(1) or m.group(2)}", s[m.end():].strip()
    if "/" in s:
        num, _, den = s.partition("/")
        num, den = num.strip(), den.strip()
        key_den = den.lower()
        if not multiplier and num in _PREFIX_WORDS and key_den in _VOLUME_WORDS:
            multiplier, num = _PREFIX_WORDS[num], ""
        if key_den in _VOLUME_WORDS and (not num or num.lower() in _MASS_WORDS):
            numerator = " * ".join(p for p in (multiplier, _MASS_WORDS.get(num.lower(), "")) if p) or "1"
            return f"{numerator} / ({_VOLUME_WORDS[key_den]})"
        if multiplier:
            return f"{multiplier} * {num or '1'} / {den}" if num else f"{multiplier} / {den}"
        return f"{num or '1'} / {den}"
    if multiplier:
        return f"{multiplier} * {s}" if s else multiplier
    return _VOLUME_WORDS.get(s.lower(), s)


@dataclass(frozen=True)
class Conversion:
    factor: float          # normalised value = value * factor
    expression: str        # the pint expression the spelling was read as


# A number or a group raised to a power, or a power of three digits or more: pint evaluates these as
# arithmetic (a unit written "9**9**9", nine characters, computed 9^(9^9) and stalled a worker until its
# supervisor killed it). A unit's own power ("mm^3", "m**-1") is not one; "10^9" and its spellings are
# read as a multiplier before pint sees the text (to_pint_expression).
_NUMERIC_POWER = re.compile(r"[\d.)\]]\s*(?:\*\*|\^)|(?:\*\*|\^)\s*[(\s]*[-+]?\d{3}")


def unreadable(text: str, expression: Optional[str] = None) -> Optional[str]:
    """Why pint must not parse a unit ``text`` (or the pint ``expression`` written for it), or None.
    Longer than any unit (:data:`~.case.MAX_UNIT` characters): pint's parser takes time that grows with the
    square of the text (2,000 characters: 70 ms; a FHIR lab whose unit had 100,000 took the mapping a
    minute), and FHIR data reaches the unit readers before the case contract bounds it. A power of a
    number: pint would compute it (:data:`_NUMERIC_POWER`)."""
    if len(text) > MAX_UNIT:
        return f"a unit of {len(text)} characters is not a unit (at most {MAX_UNIT})"
    if _NUMERIC_POWER.search(text if expression is None else expression):
        return f"{text!r} raises a number to a power; that is not a unit"
    return None


def conversion_factor(spelling: str, dimension: str, target: str, molar_mass: str | None = None) -> Conversion:
    """Factor that takes a value in ``spelling`` to ``target`` (a unit named in rules/labs.yaml).

    ``dimension`` is a key of :data:`DIMENSIONS`. Mass and substance concentrations convert
    through pint's chemistry context with the test's molar mass. Raises :class:`UnitProblem`.
    """
    if len(spelling) > MAX_UNIT:      # before anything reads it (the power check needs the expression)
        raise UnitProblem(unreadable(spelling) or "")
    return _conversion_factor(spelling, dimension, target, molar_mass)


@lru_cache(maxsize=4096)
def _conversion_factor(spelling: str, dimension: str, target: str, molar_mass: str | None) -> Conversion:
    try:
        return _convert(spelling, dimension, target, molar_mass)
    except UnitProblem:
        raise
    except Exception:   # noqa: BLE001 - pint on a unit it parsed and cannot take to its root units: a power that
        # overflows ("/uL^(99*99)"), a logarithmic unit ("dB/uL"); had been a 500, a CDS call's every card lost
        raise UnitProblem(f"unit {spelling!r} cannot be converted; expected {DIMENSIONS[dimension][1]}") from None


def _convert(spelling: str, dimension: str, target: str, molar_mass: str | None) -> Conversion:
    ureg = registry()
    expr = to_pint_expression(spelling)
    why = unreadable(spelling, expr)
    if why:
        raise UnitProblem(why)
    want, wording = DIMENSIONS[dimension]
    try:
        unit = ureg.parse_units(expr)
    except Exception:  # pint raises several types for unparseable strings
        raise UnitProblem(f"unknown unit {spelling!r}; expected {wording}") from None
    quantity = ureg.Quantity(1.0, unit)
    if "bit" in dict(quantity.to_root_units().unit_items()):   # pint's B, kB, bit: dimensionless, never a lab unit
        raise UnitProblem(f"unknown unit {spelling!r}; expected {wording}")
    target_unit = ureg.parse_units(_TARGETS[target])
    if quantity.check(want):
        factor = quantity.to(target_unit).magnitude
    elif molar_mass and quantity.check("[substance]/[length]**3"):
        factor = quantity.to(target_unit, "chemistry", mw=ureg.Quantity(1.0, molar_mass)).magnitude
    else:
        hint = ""
        if dimension == "count_per_volume" and quantity.check("[]"):
            hint = " (a percentage belongs in the matching *_pct test)"
        elif dimension == "fraction" and quantity.check("1/[length]**3"):
            hint = " (an absolute count belongs in the matching count test, e.g. anc, lymphocytes)"
        raise UnitProblem(f"unit {spelling!r} is not {wording}{hint}")
    if not math.isfinite(factor) or factor <= 0:
        raise UnitProblem(f"unit {spelling!r} cannot be converted")
    return Conversion(factor=float(f"{factor:.12g}"), expression=expr)


@dataclass(frozen=True)
class DoseRate:
    spelling: str        # the spelling pint reads (UCUM's `mg/(kg.d)` becomes `mg/(kg*d)`)
    per_kg: bool         # mass per body mass per time (mg/kg/day), else mass per time (mg/day)
    factor: float        # to mg/kg/day (per_kg), mg/m2/day (per_m2) or mg/day
    period_days: float = 1.0   # the time the dose is given per: 1 for mg/day or mg/kg/day, 7 for mg/wk
    per_m2: bool = False       # mass per body surface area per time (mg/m2/day): neither of the above


def dose_rate(unit: str) -> Optional[DoseRate]:
    """A dose unit of mass per time, per body mass per time or per body surface area per time (mg/m2/day),
    through pint; None for any other (a dose per take, a unit pint cannot read, a text longer than any
    unit). The one reader of dose units (case and FHIR alike)."""
    return None if unreadable(unit) else _dose_rate(unit)


@lru_cache(maxsize=512)
def _dose_rate(unit: str) -> Optional[DoseRate]:
    ureg = registry()
    for spelling in dict.fromkeys((unit, unit.replace(".", "*"))):
        numerator = spelling.split("/", 1)[0].strip().strip("(")
        try:
            q = ureg.Quantity(1.0, ureg.parse_units(spelling))
            mass = ureg.Quantity(1.0, ureg.parse_units(numerator))
            if not mass.check("[mass]"):
                continue
            if q.check("1/[time]"):        # mg/kg/day: mass over mass over time
                return DoseRate(spelling, True, float(q.to("milligram / kilogram / day").magnitude),
                                float((mass / q).to("kilogram * day").magnitude))
            if q.check("[mass]/[time]"):
                return DoseRate(spelling, False, float(q.to("milligram / day").magnitude),
                                float((mass / q).to("day").magnitude))
            if q.check("[mass]/[length]**2/[time]"):
                return DoseRate(spelling, False, float(q.to("milligram / m2 / day").magnitude),
                                float((mass / q).to("m2 * day").magnitude), per_m2=True)
        except Exception:   # pint raises several types for spellings it cannot read  # noqa: BLE001
            continue
    return None


def count_text(x: float, cutoffs: Iterable[float] = ()) -> str:
    """A count as a lab reports it, two decimals at most (3.78761 -> 3.79), one below 0.01 to two significant digits
    (0.003, not 0), and never rounded up onto or past one of ``cutoffs`` it is below (with the ANC's tier cutoffs,
    1.499 -> 1.499: "mild (ANC 1.5)" had contradicted "a value on a cutoff falls in the milder tier")."""
    if 0 < abs(x) < 0.01:
        return f"{x:.2g}"
    shown = f"{round(x, 2):g}"
    for digits in range(4, 13):   # as many digits as keep it below the cutoff (0.99999 is not "1")
        if not any(x < c <= float(shown) for c in cutoffs):
            break
        shown = f"{x:.{digits}g}"
    return shown
