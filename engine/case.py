"""The case contract: what a clinician, an EHR adapter or a case file hands the engine.

Structure only. Meaning (units, codes, plausibility, dates against ``as_of``) is checked by
:mod:`normalize`, which reports every problem at once. Numbers must be JSON numbers (a string
such as ``"3.2"`` is refused rather than guessed at), finite, and booleans must be booleans.
"""
from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = ["Case", "Lab", "Medication", "Dose", "Patient", "History", "Transplant", "SMEAR_FINDINGS",
           "TEMPERATURE_SITES", "MAX_LABS", "MAX_MEDICATIONS", "MAX_CONDITIONS", "MAX_TEXT", "MAX_UNIT",
           "BODY_TEMPERATURE_C", "bare_temperature_scale", "ATC_CODE"]

BODY_TEMPERATURE_C = (25.0, 45.0)     # a body temperature in Celsius, hypothermia to hyperpyrexia (an input guard)

MAX_LABS = 2000
MAX_MEDICATIONS = 500
MAX_CONDITIONS = 200
MAX_TEXT = 500
MAX_UNIT = 60          # the longest unit spelling read (real ones are under 20 characters: UNIT_STRINGS.tsv)

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
When = Union[datetime, date]

# Where a body temperature was taken (rules/vitals.yaml says which sites a fever guideline relies on).
TEMPERATURE_SITES = ("oral", "core", "rectal", "axillary", "tympanic", "temporal", "other")
SMEAR_FINDINGS = ("blasts", "dysplasia", "hypersegmented_neutrophils", "large_granular_lymphocytes",
                  "leukocyte_agglutination", "platelet_clumping")
SmearFinding = Literal["blasts", "dysplasia", "hypersegmented_neutrophils", "large_granular_lymphocytes",
                       "leukocyte_agglutination", "platelet_clumping"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)


class Patient(_Model):
    age_years: Optional[Annotated[Number, Field(ge=0, le=130)]] = None
    sex: Literal["female", "male", "other", "unknown"] = "unknown"
    weight_kg: Optional[Annotated[Number, Field(gt=0, le=500)]] = None
    duffy_null: Optional[Annotated[bool, Field(strict=True)]] = Field(
        None, description="true when the Duffy-null phenotype Fy(a-b-) is known; null when unknown")
    ancestry: Optional[Text] = None


class Lab(_Model):
    test: Optional[Annotated[str, Field(min_length=1, max_length=40)]] = Field(
        None, description="wbc, anc, neutrophils_pct, bands_pct, lymphocytes, ... (see rules/labs.yaml)")
    loinc: Optional[Annotated[str, Field(min_length=3, max_length=12)]] = Field(
        None, description="LOINC code, instead of `test`")
    value: Number
    unit: Annotated[str, Field(min_length=1, max_length=MAX_UNIT)]
    time: Optional[When] = Field(None, description="when the sample was taken; several times make a series")
    comparator: Optional[Literal["<", "<=", ">", ">="]] = Field(
        None, description="the value is a bound, not a measurement: '<' 0.5 is a count below 0.5, judged as below it")
    lln: Optional[Number] = Field(None, description="the lab's lower limit of normal, in lln_unit (default: unit)")
    lln_unit: Optional[Annotated[str, Field(min_length=1, max_length=MAX_UNIT)]] = Field(
        None, description="the unit of lln when it is given in another unit than value")
    specimen: Optional[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        None, description="the specimen or report the value belongs to; values sharing it are one blood draw (one CBC)")
    ref: Optional[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        None, description="where the value came from (a FHIR reference such as Observation/123), echoed in the output")

    @field_validator("time", mode="before")
    @classmethod
    def _day_alone(cls, v: Any) -> Any:
        """A time written as a day alone ("2026-12-03") stays a date: its draw's hour is unknown (samples.py pairs it
        with the one timed draw of that day), not midnight (a JSON string had been read as a datetime)."""
        return day_alone(v)

    @model_validator(mode="after")
    def _test_or_loinc(self) -> "Lab":
        if not self.test and not self.loinc:
            raise ValueError("give `test` or `loinc`")
        return self


ATC_CODE = r"^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$"     # a WHO ATC 5th-level code (a substance: L04AX01)


class Dose(_Model):
    value: Annotated[Number, Field(ge=0)]
    unit: Annotated[str, Field(min_length=1, max_length=40)]


class Medication(_Model):
    name: Optional[Text] = None
    rxnorm: Optional[Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]] = None
    atc: Optional[Annotated[str, Field(pattern=ATC_CODE)]] = None   # WHO ATC, 5th level
    status: Literal["active", "stopped", "completed"] = "active"
    start: Optional[When] = None
    end: Optional[When] = None
    dose: Optional[Union[Dose, Text]] = None
    indication: Optional[Text] = None

    @model_validator(mode="after")
    def _name_or_code(self) -> "Medication":
        if not self.name and not self.rxnorm and not self.atc:
            raise ValueError("give `name`, `rxnorm` or `atc`")
        return self


class Transplant(_Model):
    organ: Text
    date: Optional[When] = None


class History(_Model):
    tpmt: Optional[Annotated[str, Field(min_length=1, max_length=40)]] = Field(
        None, description="normal|intermediate|possible_intermediate|poor|indeterminate|unknown, or a diplotype like *1/*3A")
    nudt15: Optional[Annotated[str, Field(min_length=1, max_length=40)]] = None
    tpmt_method: Optional[Literal["genotype", "activity"]] = None
    tpmt_test_date: Optional[When] = None
    last_transfusion: Optional[When] = None
    transplant: Optional[Transplant] = None
    conditions: Annotated[list[Text], Field(max_length=MAX_CONDITIONS)] = []
    temperature_c: Optional[Annotated[Number, Field(ge=BODY_TEMPERATURE_C[0], le=BODY_TEMPERATURE_C[1])]] = Field(
        None, description="highest recent body temperature in degrees Celsius")
    temperature_site: Optional[Literal[TEMPERATURE_SITES]] = Field(  # type: ignore[valid-type]
        None, description="where the temperature was taken: " + ", ".join(TEMPERATURE_SITES))
    fever_sustained_1h: Optional[Annotated[bool, Field(strict=True)]] = None
    splenomegaly: Optional[Annotated[bool, Field(strict=True)]] = None
    alcohol_use_disorder: Optional[Annotated[bool, Field(strict=True)]] = None
    smear_findings: Annotated[list[SmearFinding], Field(max_length=len(SMEAR_FINDINGS))] = []
    medications_unknown: Optional[Annotated[bool, Field(strict=True)]] = Field(
        None, description="true when the medication list could not be had (an EHR's medication search failed): no "
                          "drug is then taken as absent, and none is weighed as a cause that is not listed")

    @field_validator("temperature_c", mode="before")
    @classmethod
    def _not_fahrenheit(cls, value: Any) -> Any:
        """A temperature of 77-113 is a body temperature in Fahrenheit, not Celsius: say so, with the
        Celsius value (converted by pint), rather than only "at most 45"."""
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and bare_temperature_scale(value) == "[degF]":
            from .units import registry
            celsius = round(registry().Quantity(float(value), "degF").to("degC").magnitude, 1)
            raise ValueError(f"{value:g} is not a body temperature in Celsius (25-45); if it is {value:g} F, "
                             f"send {celsius:.1f}")
        return value


def bare_temperature_scale(value: float) -> Optional[str]:
    """The one scale a body temperature given without a unit can be on: ``Cel`` when it lies in the contract's
    Celsius range (:data:`BODY_TEMPERATURE_C`), ``[degF]`` when its Celsius value does (77-113); None when
    neither (the ranges do not overlap, so a value never fits both)."""
    low, high = BODY_TEMPERATURE_C
    if low <= value <= high:
        return "Cel"
    from .units import registry
    celsius = registry().Quantity(float(value), "degF").to("degC").magnitude
    return "[degF]" if low <= round(celsius, 1) <= high else None


def day_alone(v: Any) -> Any:
    """A day written alone ("2026-12-03") as a date, not a datetime at midnight; anything else as it is."""
    if isinstance(v, str) and len(v) == 10 and v[4] == "-" and v[7] == "-":
        try:
            return date.fromisoformat(v)
        except ValueError:
            return v
    return v


class Case(_Model):
    id: Annotated[str, Field(min_length=1, max_length=200)] = "case"
    title: Optional[Annotated[str, Field(max_length=MAX_TEXT)]] = None
    rationale: Optional[Annotated[str, Field(max_length=5000)]] = None
    as_of: Optional[When] = Field(None, description="date the case is judged at; default: the latest lab time")
    patient: Patient = Field(default_factory=Patient)   # a factory: a default instance is deep-copied per case
    labs: Annotated[list[Lab], Field(max_length=MAX_LABS, description=(
        "at least one lab value; none only with a body temperature (history.temperature_c) or a medication: a "
        "fever with no blood count is assessed for the count it needs, and a drug with no count for what it "
        "needs without one (a monitoring overdue, a TPMT or NUDT15 poor metabolizer, a daily methotrexate)"))] = []
    medications: Annotated[list[Medication], Field(max_length=MAX_MEDICATIONS)] = []
    history: History = Field(default_factory=History)
    expect: SkipJsonSchema[Optional[dict[str, Any]]] = Field(
        None, description="a case file's expected outcome, read by `leukodx replay` (cli/replay.py); ignored here")

    @field_validator("as_of", mode="before")
    @classmethod
    def _as_of_day(cls, v: Any) -> Any:
        """A day alone is a day, in JSON as in YAML: a draw is then dated by its own day (normalize.py)."""
        return day_alone(v)

    @model_validator(mode="after")
    def _something_to_assess(self) -> "Case":
        """A lab value, or at least a temperature or a medication: a febrile patient with no blood count at all is
        a patient whose febrile neutropenia cannot be ruled out (rule alerts.fever_without_current_count), and a
        patient on clozapine with no ANC on record is one whose monitoring is overdue (alerts.clozapine_anc_overdue)."""
        if not self.labs and self.history.temperature_c is None and not self.medications:
            raise ValidationError.from_exception_data("Case", [InitErrorDetails(
                type=PydanticCustomError("value_error", "no lab values: leukodx needs at least one lab value, such "
                                                        "as a WBC or an ANC (or, with no blood count, a body "
                                                        "temperature or a medication)"), loc=("labs",), input=self.labs)])
        return self


def schema() -> dict[str, Any]:
    """JSON Schema of a case (printed by `leukodx schema case`)."""
    return Case.model_json_schema()
