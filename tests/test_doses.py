"""Dose texts as prescriptions write them (engine/doses.py): how many takes a day a sig says, the dose per day
it gives, and whether a dose is taken daily (the methotrexate daily-dosing alert reads it)."""
from __future__ import annotations

import pytest

from leukodx.engine.case import Dose
from leukodx.engine.doses import dose_mg_kg_day, dose_mg_m2_day, dosed_daily, taken_more_often_than, takes_per_day


@pytest.mark.parametrize("text,takes", [
    ("75mg OD", 1), ("10 mg daily", 1), ("5 mg at night", 1), ("20 mg once a day", 1), ("1 g q.d.", 1),
    ("150 mg twice daily", 2), ("150 mg BID", 2), ("1 g q12h", 2), ("500 mg tid", 3), ("100 mg q8h", 3),
    ("1 g four times a day", 4), ("2 g every 4 hours", 6),
    ("50 mg every other day", 0.5), ("15 mg once weekly", 1 / 7), ("20 mg once a week", 1 / 7),
    ("2.5 mg twice weekly", 2 / 7), ("7.5 mg every 2 weeks", 1 / 14), ("40 mg q2wk", 1 / 14),
    # a week named first decides: the sig warns against daily use
    ("15 mg once weekly on Mondays, do not take daily", 1 / 7),
    # a duration is how long, not how often
    ("500 mg tid for 2 weeks", 3), ("10 mg daily for 3 weeks", 1), ("1 g qd x 10 days", 1),
    ("150 mg", None), ("as directed", None), ("500 mg for 7 days", None),
    # the frequency written first decides: a monitoring note after the dose is not its frequency
    ("300 mg daily, FBC every 2 weeks", 1), ("2 g q4h for 6 weeks", 6),
    # British, Australian and German sigs
    ("10 mg BD", 2), ("500 mg TDS", 3), ("1 g QDS", 4), ("10 mg mane", 1), ("10 mg nocte", 1), ("10 mg OM", 1),
    ("10 mg in the morning", 1), ("1-0-0", 1), ("10 mg 1x täglich", 1), ("300 mg 3x daily", 3),
    ("2 g 4-hourly", 6), ("2 g 6 hourly", 4), ("2 g q.8.h.", 3), ("2 g every four hours", 6),
    # weekly, by the week or by its days
    ("every 7 days", 1 / 7), ("q7d", 1 / 7), ("QW", 1 / 7), ("fortnightly", 1 / 14), ("every other week", 1 / 14),
    ("three times weekly", 3 / 7), ("Mon/Wed/Fri", 3 / 7), ("15 mg on Fridays at night", 1 / 7),
    ("7.5 mg Monday morning; folic acid 5 mg daily other days", 1 / 7), ("15 mg on Sundays", 1 / 7),
    ("Wednesday", 1 / 7), ("avoid sun; take 10 mg daily", 1),
])
def test_takes_per_day(text, takes):
    assert takes_per_day(text) == (pytest.approx(takes) if takes is not None else None)


@pytest.mark.parametrize("dose,per_day", [
    ("75mg OD", 75), ("150 mg twice daily", 300), ("2 g every 4 hours", 12000), ("10 mg/day", 10),
    ("15 mg once weekly", 15 / 7), (Dose(value=15, unit="mg/wk"), 15 / 7), (Dose(value=100, unit="mg/d"), 100),
    ("2,5 mg/kg/d", 125), ("1,000 mg daily", 1000),         # a decimal comma; a thousands separator
])
def test_a_mass_per_take_and_how_often_is_a_dose_per_day(dose, per_day):
    per_kg, mg_day, why = dose_mg_kg_day(dose, 50)
    assert (mg_day, per_kg, why) == (pytest.approx(per_day), pytest.approx(per_day / 50), None)


@pytest.mark.parametrize("dose,per_day", [
    # the mass is one tablet's, and the text says how many tablets a take is
    ("50 mg tablets, take 6 daily", 300), ("take 6 tablets (50 mg) daily", 300), ("6 x 50 mg daily", 300),
    ("6x50mg daily", 300), ("6 tablets of 50 mg daily", 300), ("6 tablets daily (50 mg each)", 300),
    ("two 50 mg tablets daily", 100), ("2 x 25 mg tablets twice daily", 100),
    ("azathioprine 50mg tabs: 3 tabs od", 150),
    ("2.5 mg x 6 weekly", 15 / 7), ("2.5 mg tablets x 6 once weekly", 15 / 7),
    # the first mass is the take, the count in brackets agrees with it
    ("150 mg (3 x 50 mg) daily", 150), ("7.5 mg (3 x 2.5 mg tablets) weekly", 7.5 / 7), ("1 tablet (50 mg) daily", 50),
    # a count of days is a duration, not of tablets; a count of takes is a frequency
    ("1 g qd x 10 days", 1000), ("300 mg 3x daily", 900), ("take 150 mg daily", 150),
])
def test_a_tablet_count_multiplies_the_strength_of_one_tablet(dose, per_day):
    assert dose_mg_kg_day(dose, 50)[1] == pytest.approx(per_day)


@pytest.mark.parametrize("dose,reason", [
    ("150 mg", "not a mass per day"), ("2 tabs bid", "no number and unit"), ("as directed", "no number and unit"),
    ("1-2 tablets daily", "range of tablets"), ("take 1-2 tablets (50 mg) daily", "range of tablets"),
    ("150 mg (2 x 50 mg) daily", "disagree"),
    # whether the mass is one tablet or the whole take cannot be told: never guessed
    ("100 mg daily (2 tabs)", "cannot be told"), ("50 mg, 3 tablets daily", "cannot be told"),
])
def test_a_dose_that_cannot_be_read_says_why(dose, reason):
    per_kg, mg_day, why = dose_mg_kg_day(dose, 50)
    assert per_kg is None and mg_day is None and repr(dose) in why and reason in why


@pytest.mark.parametrize("dose,per_m2", [
    (Dose(value=75, unit="mg/m2/day"), 75), (Dose(value=60, unit="mg/(m2.d)"), 60), (Dose(value=1, unit="g/m2/d"), 1000),
    ("50 mg/m2 once daily", 50), ("375 mg/m2 weekly", 375 / 7), (Dose(value=50, unit="mg/m²/d"), 50),
])
def test_a_dose_per_body_surface_area_is_read_per_m2_and_never_as_mg_per_day(dose, per_m2):
    """Mercaptopurine 75 mg/m2/day (CPIC's normal starting dose in leukaemia): read per m2 for the order check; never
    as 75 mg/day (there is no height to convert it to mg/kg/day), and the dose rules say so."""
    assert dose_mg_m2_day(dose) == pytest.approx(per_m2)
    per_kg, mg_day, why = dose_mg_kg_day(dose, 20)
    assert per_kg is None and mg_day is None and "per m2 of body surface area" in why


def test_a_dose_not_per_body_surface_area_has_no_dose_per_m2():
    assert [dose_mg_m2_day(d) for d in (Dose(value=75, unit="mg/day"), "75 mg daily", "as directed", None)] == [None] * 4


@pytest.mark.parametrize("dose,daily", [
    ("10 mg daily", True), ("2.5 mg bid", True), ("15 mg once weekly, not daily", False), ("15 mg", False),
    (Dose(value=10, unit="mg/day"), True), (Dose(value=15, unit="mg/wk"), False), (Dose(value=1, unit="mg/h"), True),
    (None, False),
])
def test_dosed_daily(dose, daily):
    assert dosed_daily(dose) is daily


@pytest.mark.parametrize("dose,often", [
    ("10 mg every other day", True), ("10 mg 5 times a week", True), ("10 mg QOD", True), ("10 mg daily", True),
    ("10 mg 5 days a week", True), ("10 mg every 2 days", True), ("10 mg Mon-Fri", True), ("10 mg 4x/week", True),
    ("10 mg Monday to Friday", True), ("10 mg every second day", True), ("10 mg Q2D", True), ("10 mg q48h", True),
    ("2.5 mg three times a week", False), ("15 mg once weekly", False), ("15 mg twice a week", False), ("15 mg", False),
    ("2.5 mg every 12 hours for 3 doses once a week", False), ("2.5 mg q12h x3 weekly", False),   # a divided weekly dose
    ("10 mg Mon/Wed/Fri", False), ("10 mg every 3 days", False),
    (Dose(value=10, unit="mg/day"), True), (Dose(value=35, unit="mg/wk"), False), (None, False),
])
def test_taken_more_than_three_times_a_week(dose, often):
    """A weekly drug's frequency error is not only daily: every other day and five days a week are more than three
    takes a week (a dose per week says nothing of how often, and is not judged)."""
    assert taken_more_often_than(dose, 3) is often
