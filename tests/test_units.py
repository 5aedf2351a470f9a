"""Units: every claimed spelling, conversions through pint, dimension checks, property tests."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leukodx.engine.units import UnitProblem, conversion_factor

COUNT_SPELLINGS_1E9 = ["10^9/L", "10*9/L", "x10E9/L", "G/L", "Gpt/L", "/nL", "/nl", "10^3/uL", "10*3/uL",
                       "x10(3)/mcL", "K/uL", "K/ul", "10*3/mm3", "x10*9/L", "Thousands Per MicroLiter", "10^3/µL",
                       "x10e3/uL", "10e9/L",
                       # field spellings (tests/test_units_field.py): cumm, THOU, GIGA, Tsd, superscripts, B = billion
                       "K/cumm", "THOU/uL", "THOU/MCL", "thou/mm3", "GIGA/L", "Tsd/µl", "10⁹/L", "×10⁹/L",
                       "x 10⁹/l", "×10³/mm³", "B/L"]
COUNT_SPELLINGS_PER_UL = ["/uL", "cells/uL", "cells/mm3", "/mm3", "/µL", "/mcL", "cells/cumm", "/cumm", "/cu mm"]


def factor(spelling, dimension="count_per_volume", target="10^9/L", mw=None):
    return conversion_factor(spelling, dimension, target, mw).factor


@pytest.mark.parametrize("spelling", COUNT_SPELLINGS_1E9)
def test_spellings_equal_to_10e9_per_litre(spelling):
    assert factor(spelling) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("spelling", COUNT_SPELLINGS_PER_UL)
def test_per_microlitre_spellings_are_a_thousandth(spelling):
    assert factor(spelling) == pytest.approx(1e-3, rel=1e-12)


def test_spellings_from_the_unit_survey():
    """Every count spelling of the unit survey (UNIT_STRINGS.tsv of the research copies; not read here)
    that is a count unit."""
    assert factor("10*12/L") == pytest.approx(1000)       # RBC spelling, still a count per volume
    assert factor("10*6/mm3") == pytest.approx(1000)
    assert factor("x10*12/L") == pytest.approx(1000)


def test_kelvin_is_never_read_into_k_per_ul():
    assert factor("K/uL") == pytest.approx(1.0)
    with pytest.raises(UnitProblem):
        conversion_factor("K", "count_per_volume", "10^9/L")


@pytest.mark.parametrize("spelling,expected", [("g/dL", 1.0), ("g/dl", 1.0), ("g/L", 0.1), ("mmol/L", 1.61145),
                                               ("mmol/l", 1.61145)])
def test_hemoglobin_units(spelling, expected):
    assert factor(spelling, "mass_per_volume", "g/dL", "hemoglobin_monomer_molar_mass") == pytest.approx(expected)


def test_hemoglobin_6_2_mmol_is_10_g_dl():
    """CTCAE v5.0 anaemia text: 10.0 g/dL = 6.2 mmol/L."""
    f = factor("mmol/L", "mass_per_volume", "g/dL", "hemoglobin_monomer_molar_mass")
    assert 6.2 * f == pytest.approx(10.0, abs=0.02)


@pytest.mark.parametrize("spelling,dimension,target,mw,expected", [
    ("pmol/L", "mass_per_volume", "pg/mL", "cobalamin_molar_mass", 1.3554),    # 148 pmol/L ~ 200 pg/mL
    ("nmol/L", "mass_per_volume", "ng/mL", "folate_molar_mass", 0.4414),       # 6.8 nmol/L ~ 3 ng/mL
    ("umol/L", "mass_per_volume", "ug/dL", "copper_molar_mass", 6.3546),       # 11 umol/L ~ 70 ug/dL
    ("mcg/dL", "mass_per_volume", "ug/dL", "copper_molar_mass", 1.0),
    ("fL", "volume", "fL", None, 1.0),
    ("%", "fraction", "%", None, 1.0),
    ("/100{WBC}", "fraction", "%", None, 1.0),         # UCUM: per hundred leukocytes (a differential's percentage)
    ("/100{leukocytes}", "fraction", "%", None, 1.0),
    ("{cells}/uL", "count_per_volume", "10^9/L", None, 0.001),   # a UCUM annotation is unity
])
def test_other_lab_units(spelling, dimension, target, mw, expected):
    assert factor(spelling, dimension, target, mw) == pytest.approx(expected, rel=1e-4)


def test_published_equivalences():
    assert 148 * factor("pmol/L", "mass_per_volume", "pg/mL", "cobalamin_molar_mass") == pytest.approx(200, rel=0.01)
    assert 6.8 * factor("nmol/L", "mass_per_volume", "ng/mL", "folate_molar_mass") == pytest.approx(3.0, rel=0.01)


@pytest.mark.parametrize("spelling,dimension,message", [
    ("blorps/uL", "count_per_volume", "unknown unit"),
    ("furlongs", "count_per_volume", "not a count per volume"),
    ("%", "count_per_volume", "percentage"),
    ("10^9/L", "fraction", "absolute count"),
    ("g/dL", "count_per_volume", "count per volume"),
    ("mg", "mass_per_volume", "concentration"),
    ("", "count_per_volume", "empty"),
])
def test_incompatible_or_unknown_units_are_refused(spelling, dimension, message):
    target = {"count_per_volume": "10^9/L", "fraction": "%", "mass_per_volume": "g/dL"}[dimension]
    with pytest.raises(UnitProblem, match=message):
        conversion_factor(spelling, dimension, target, None)


values = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False)


@given(values, st.sampled_from(COUNT_SPELLINGS_1E9 + COUNT_SPELLINGS_PER_UL),
       st.sampled_from(COUNT_SPELLINGS_1E9 + COUNT_SPELLINGS_PER_UL))
@settings(max_examples=300, deadline=None)
def test_round_trip_between_any_two_count_spellings(v, a, b):
    in_a_to_b = v * factor(a) / factor(b)
    back = in_a_to_b * factor(b) / factor(a)
    assert math.isclose(back, v, rel_tol=1e-9)


@given(values)
@settings(max_examples=200, deadline=None)
def test_per_ul_equals_thousand_times_k_per_ul(v):
    assert math.isclose(v * 1000 * factor("/uL"), v * factor("K/uL"), rel_tol=1e-9)


@given(values, st.sampled_from(["g/dL", "g/L", "mmol/L"]))
@settings(max_examples=200, deadline=None)
def test_hemoglobin_round_trip(v, unit):
    f = factor(unit, "mass_per_volume", "g/dL", "hemoglobin_monomer_molar_mass")
    assert math.isclose(v * f / f, v, rel_tol=1e-12)
    assert f > 0


def test_a_text_longer_than_any_unit_is_never_parsed():
    # pint's parser takes time that grows with the square of the text (100,000 characters: a minute);
    # FHIR data reaches the unit readers before the case contract bounds it
    from leukodx.engine.case import MAX_UNIT
    from leukodx.engine.units import dose_rate, unreadable
    long = "10*9/L" + "x" * 100_000
    with pytest.raises(UnitProblem, match=f"a unit of {len(long)} characters is not a unit \\(at most {MAX_UNIT}\\)"):
        conversion_factor(long, "count_per_volume", "10^9/L")
    assert dose_rate("mg/day" + " " * 100_000) is None and dose_rate("mg/day") is not None
    assert unreadable("x" * (MAX_UNIT + 1)) and not unreadable("x" * MAX_UNIT)


@pytest.mark.parametrize("unit", ["9**9**9", "2^2^2^2^2", "m**9**9**9", "(10)**999", "uL**1000", "9.9**9**9"])
def test_a_power_of_a_number_is_never_given_to_pint(unit):
    """'9**9**9' (nine characters, under every length limit) made pint compute 9^(9^9) on the event loop
    until the supervisor killed the worker (the HTTP red-team: four requests took both workers down).
    Each form is refused at once, by every reader of unit text."""
    from leukodx.engine.units import dose_rate, unreadable
    with pytest.raises(UnitProblem, match="raises a number to a power"):
        conversion_factor(unit, "count_per_volume", "10^9/L")
    assert unreadable(unit) and dose_rate(unit) is None


@pytest.mark.parametrize("unit", ["10^9/L", "10**9/L", "10*9/L", "x10^3/uL", "10^3/mm^3", "cells/mm**3", "/mm3"])
def test_a_unit_s_own_power_and_the_ten_power_spellings_are_still_read(unit):
    assert conversion_factor(unit, "count_per_volume", "10^9/L").factor > 0


@pytest.mark.parametrize("value,text", [(3.78761, "3.79"), (1.2345, "1.23"), (2.0, "2"), (210, "210"), (0, "0"),
                                        (0.598442, "0.6"),                                          # not a cutoff
                                        (1.499, "1.499"), (0.0996, "0.0996"), (0.996, "0.996"),   # not onto 1.5, 0.1, 1
                                        (0.99999, "0.99999"), (1.49996, "1.49996"),                # WBC x % (round 28)
                                        (0.003, "0.003"), (0.0024, "0.0024")])
def test_a_count_is_shown_as_a_lab_reports_it_never_rounded_onto_a_cutoff(value, text):
    """Clinical red-team round 25: "MILD (ANC 1.5)" over an ANC of 1.499 contradicted the rule that a value on a
    cutoff falls in the milder tier; FHIR round 26: an ANC of 0.003 was shown as 0."""
    from leukodx.engine.units import count_text
    assert count_text(value, (1.5, 1.0, 0.5, 0.1)) == text


@pytest.mark.parametrize("unit", ["dB/uL", "/uL^(99*99)", "km**1e308", "Np/L"])
def test_a_unit_pint_parses_and_cannot_convert_is_a_unit_problem_not_a_crash(unit):
    """Security red-team round 27: a logarithmic unit or a power that overflows raised pint's or Python's own error
    past the UnitProblem handlers: a 500 on every route, a CDS call's critical card lost."""
    from leukodx.engine.units import UnitProblem, conversion_factor
    with pytest.raises(UnitProblem, match="cannot be converted"):
        conversion_factor(unit, "count_per_volume", "10^9/L")
