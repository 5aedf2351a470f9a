"""Count units as real lab feeds spell them (engine/units.py): cubic millimetres (``cells/cumm``), ``THOU``,
``GIGA``, German ``Tsd``, typeset superscripts (``×10⁹/L``), Japanese ``10^2/uL`` and ``10^4/uL``, and ``B/L``
(billion, never bytes). Each spelling: a value as the lab sends it, and the same count in 10^9/L. Ambiguous and
unknown spellings are still refused."""
from __future__ import annotations

import pytest

from leukodx.engine.units import UnitProblem, conversion_factor, to_pint_expression

from conftest import base_case, lab


def in_10e9_per_l(value, spelling):
    return value * conversion_factor(spelling, "count_per_volume", "10^9/L").factor


@pytest.mark.parametrize("spelling,value,expected", [
    # cumm, cu mm = cubic millimetre = uL (Indian and older US lab reports)
    ("K/cumm", 4.2, 4.2),
    ("cells/cumm", 4200, 4.2),
    ("/cumm", 1500, 1.5),
    ("cells/cu mm", 4200, 4.2),
    ("/cu mm", 1500, 1.5),
    ("K/cu mm", 4.2, 4.2),
    ("/cu.mm", 1500, 1.5),
    ("cells / cu. mm", 1500, 1.5),
    # THOU = thousand (US lab reports); MCL = mcL = uL
    ("THOU/uL", 4.2, 4.2),
    ("THOU/MCL", 4.2, 4.2),
    ("thou/mm3", 4.2, 4.2),
    # GIGA = 10^9 (French lab reports)
    ("GIGA/L", 4.2, 4.2),
    ("giga/l", 4.2, 4.2),
    # Tsd = Tausend = 10^3 (German lab reports)
    ("Tsd/µl", 4.2, 4.2),
    ("Tsd/ul", 4.2, 4.2),
    # typeset superscript exponents
    ("10⁹/L", 4.2, 4.2),
    ("x10⁹/L", 4.2, 4.2),
    ("×10⁹/L", 4.2, 4.2),
    ("x 10⁹/l", 4.2, 4.2),
    ("10³/µL", 4.2, 4.2),
    ("×10³/mm³", 4.2, 4.2),
    ("×10¹²/L", 4.5, 4500),
    ("x10⁴/µL", 23.5, 235),
    # Japanese labs: WBC in 10^2/uL, platelets in 10^4/uL
    ("10*2/uL", 45, 4.5),
    ("x10^4/uL", 23.5, 235),
    ("10^2/µL", 15, 1.5),
    ("10*4/uL", 23.5, 235),
    ("x10**2/uL", 45, 4.5),
    # B = billion (10^9), never pint's byte
    ("B/L", 4.2, 4.2),
    ("B/l", 4.2, 4.2),
])
def test_field_count_spellings_in_10e9_per_litre(spelling, value, expected):
    assert in_10e9_per_l(value, spelling) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n", range(1, 13))
@pytest.mark.parametrize("form", ["10*{n}/uL", "10^{n}/uL", "x10^{n}/uL", "x10*{n}/uL", "10**{n}/uL", "×10^{n}/µL"])
def test_every_power_of_ten_from_1_to_12(form, n):
    # 1 x 10^N per uL = 10^(N+6) per L = 10^(N-3) x 10^9/L
    assert in_10e9_per_l(1, form.format(n=n)) == pytest.approx(10.0 ** (n - 3), rel=1e-12)


@pytest.mark.parametrize("n", range(1, 13))
def test_every_superscript_power_of_ten(n):
    superscript = str(n).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
    assert in_10e9_per_l(1, f"×10{superscript}/L") == pytest.approx(10.0 ** (n - 9), rel=1e-12)


def test_b_per_litre_is_a_billion_not_bytes():
    """Before, pint read ``B/L`` as bytes per litre (one byte = 8 bits, dimensionless): 4.2 B/L became
    3.4e-8 x10^9/L, silently."""
    conv = conversion_factor("B/L", "count_per_volume", "10^9/L")
    assert conv.factor == 1.0 and conv.expression == "tenpow9 / (liter)"


@pytest.mark.parametrize("spelling", ["kB/uL", "bit/L", "MB/L", "B/dm^3"])
def test_information_units_are_never_counts(spelling):
    with pytest.raises(UnitProblem, match="unknown unit"):
        conversion_factor(spelling, "count_per_volume", "10^9/L")


def test_superscripts_become_the_exponent_not_more_digits():
    assert to_pint_expression("10⁹/L") == "tenpow9 / (liter)"       # never 109/L
    assert to_pint_expression("x10⁴/µL") == "tenpow4 / (microliter)"


@pytest.mark.parametrize("spelling,message", [
    ("102/uL", "unknown unit"),             # 10^2 or a hundred and two? only 3, 6, 9, 12 may drop the '*' or '^'
    ("104/uL", "unknown unit"),
    ("x10e4/uL", "unknown unit"),           # 10e4 is 10^5 in number notation: not guessed
    ("10*13/L", "unknown unit"),            # beyond 10^12
    ("10*0/uL", "unknown unit"),
    ("10^99/L", "raises a number to a power"),
    ("10¹³/L", "raises a number to a power"),
    ("10⁻³/L", "unknown unit"),
    ("Lakhs/cumm", "unknown unit"),
    ("b/L", "not a count per volume"),      # barn per litre
    ("THOU", "unknown unit"),
    ("cu mm", "not a count per volume"),
    ("K", "not a count per volume"),
])
def test_ambiguous_or_unknown_spellings_are_still_refused(spelling, message):
    with pytest.raises(UnitProblem, match=message):
        conversion_factor(spelling, "count_per_volume", "10^9/L")


@pytest.mark.parametrize("spelling,expected", [
    # read before these spellings were added, and read the same now
    ("10^9/L", 1.0), ("x10E9/L", 1.0), ("10*3/uL", 1.0), ("K/uL", 1.0), ("/uL", 1e-3), ("cells/mm3", 1e-3),
    ("/cmm", 1e-3), ("10*6/mm3", 1000), ("10^12/L", 1000), ("x10(3)/mcL", 1.0), ("/nL", 1.0), ("G/L", 1.0),
    ("/mm³", 1e-3), ("10*3/mm³", 1.0), ("103/uL", 1.0), ("109/L", 1.0), ("1012/L", 1000), ("x10e3/uL", 1.0),
    ("T/L", 1000), ("M/uL", 1000), ("giga/l", 1.0), ("Thousands Per MicroLiter", 1.0),
])
def test_spellings_read_before_keep_their_meaning(spelling, expected):
    assert conversion_factor(spelling, "count_per_volume", "10^9/L").factor == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("spelling", ["THOU/uL", "B/L", "cells/cumm", "10*4/uL", "×10⁹/L"])
def test_a_field_count_unit_on_a_percentage_is_still_refused(spelling):
    with pytest.raises(UnitProblem, match="absolute count"):
        conversion_factor(spelling, "fraction", "%")


def test_a_case_in_field_spellings_is_assessed_like_one_in_10e9_per_litre(engine):
    field = engine.assess(base_case(labs=[lab("wbc", 2800, "cells/cumm"), lab("anc", 0.9, "THOU/uL"),
                                          lab("lymphocytes", 12, "x10^2/uL"), lab("platelets", 23.5, "x10⁴/µL"),
                                          lab("hemoglobin", 13.5, "g/dL")]))
    si = engine.assess(base_case(labs=[lab("wbc", 2.8), lab("anc", 0.9), lab("lymphocytes", 1.2),
                                       lab("platelets", 235), lab("hemoglobin", 13.5, "g/dL")]))
    assert {x.test: x.value for x in field.labs} == pytest.approx({x.test: x.value for x in si.labs})
    assert field.risk_tier.tier == si.risk_tier.tier and field.risk_tier.anc == pytest.approx(0.9)
