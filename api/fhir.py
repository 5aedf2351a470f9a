"""FHIR R4 -> leukodx case: the one mapping used by ``POST /v1/assess/fhir`` and the CDS Hooks service.

Input is what an EHR sends: a Bundle of any type (collection, searchset, transaction, document ...),
a single resource, or a list of resources and Bundles (a CDS Hooks ``prefetch`` gives one of each per
key). :func:`resources_from` flattens it: Bundle entries, Bundles nested in Bundles, and the
``contained`` resources of each resource. Nesting deeper than :data:`MAX_DEPTH`, more than
:data:`MAX_RESOURCES` resources, or an object that contains itself is refused with a
:class:`FhirMappingError`, as is anything that is not a JSON object where a resource belongs.

:func:`bundle_to_case` then builds a case in the contract of :mod:`leukodx.engine.case`, plus a
list of warnings saying what was left out and why. Nothing is guessed:

* **Patient** - the Patient resource (the one whose id is ``patient_id``, else the first).
  ``gender`` -> ``sex``; ``birthDate`` -> ``age_years`` in whole years at ``as_of`` (else at the
  date of the latest lab); the latest body weight (LOINC 29463-7 or 3141-9; kg, g, lb, through
  pint) -> ``weight_kg``; the text of the US Core race and ethnicity extensions -> ``ancestry``.
* **Labs** - Observations with status final, amended, corrected or preliminary whose code has a
  LOINC coding (system ``http://loinc.org`` or no system) that ``rules/labs.yaml`` knows. The unit
  is ``valueQuantity.code`` when its system is UCUM, else ``valueQuantity.unit`` (else a code
  with no system); when unit and code both exist and mean different units for the test, the code
  wins and a warning says so. A ``comparator`` (``<0.5``) keeps the bound as the value, with a
  warning. The time is ``effectiveDateTime``, ``effectiveInstant``, ``effectivePeriod.start`` or
  ``issued``, else the time of the DiagnosticReport (``result``) or panel Observation
  (``hasMember``) that lists the Observation. ``referenceRange[0].low`` -> ``lln`` (rescaled when
  it is given in another unit). A second value of one test at the same time is dropped (the first
  is kept). Observations of other codes are counted in one warning; a known test with an unusable
  status, no numeric value or no unit is skipped with a warning naming the Observation.
* **Medications** - MedicationRequest and MedicationStatement. Status active/on-hold -> active,
  completed -> completed, stopped/cancelled -> stopped, unknown -> active (warned);
  entered-in-error, intended and not-taken are skipped, ``draft`` too unless
  ``include_draft=True`` (the order being signed in a CDS Hooks call), when it counts as active.
  The drug is ``medicationCodeableConcept`` or the Medication that ``medicationReference`` points
  to (``#id`` in ``contained``, ``Medication/<id>`` or a ``fullUrl`` in the Bundle). ``name`` is
  its text or display, ``rxnorm`` its RxNorm code. ``start``: ``authoredOn``,
  ``effectivePeriod.start`` or ``effectiveDateTime``; ``end`` (stopped/completed only):
  ``effectivePeriod.end`` or ``dispenseRequest.validityPeriod.end``. ``dose``: the first dose
  quantity as ``{value, unit}`` when its unit is a mass per time (mg/d) or per body mass per time
  (mg/kg/d), else the dosage text. ``indication``: ``reasonCode[0]``, else the Condition that
  ``reasonReference[0]`` points to.
* **Conditions** - Condition resources that are not resolved/inactive nor refuted/entered-in-error
  -> ``history.conditions`` (``code.text``, else a coding display), each text once.
* **Patient filter** - with ``patient_id``, or when the data holds several patients, only
  resources whose ``subject`` is that patient (``Patient/<id>``, or the ``fullUrl`` of the Patient
  entry such as ``urn:uuid:...``) are used; a contained resource without a subject takes its
  container's.
* **Snapshot date** - a medication that starts, or a condition whose onset is, after the date the
  case is judged at (``as_of``, else the date of the latest lab, as the engine does) did not exist
  then; it is left out with a warning rather than sent to the engine, which would refuse it.

Partial FHIR dates (``2024``, ``2024-03``) are not a date the contract can hold: they are left
out with a warning (a partial ``birthDate`` gives an age that may be a year off, with a warning).
Anything else the contract or the engine would refuse (a value in a wrong unit, an implausible
count) is passed through unchanged, so that the engine reports it with its reason. The output
holds numbers as JSON numbers and dates as ISO 8601 strings, and only the keys of the contract;
the same input always gives the same case and the same warnings in the same order.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Optional, Union

from leukodx.engine.assessment import NotAssessed
from leukodx.engine.case import MAX_LABS
from leukodx.engine.errors import Problem
from leukodx.engine.timeutil import utc_naive
from leukodx.engine.kb import KnowledgeBase, default as default_kb
from leukodx.engine.units import conversion_factor, registry

__all__ = ["FhirMappingError", "Mapped", "resources_from", "bundle_to_case", "map_bundle", "MAX_DEPTH", "MAX_RESOURCES"]

MAX_DEPTH = 8               # Bundles within Bundles (and contained resources) deeper than this are refused
MAX_RESOURCES = 250_000     # resources in one request, contained ones included (years of labs)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
RACE_EXT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
ETHNICITY_EXT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
BODY_WEIGHT_LOINC = ("29463-7", "3141-9")

LAB_STATUSES = ("final", "amended", "corrected", "preliminary")
MED_STATUS = {"active": "active", "on-hold": "active", "unknown": "active", "completed": "completed",
              "stopped": "stopped", "cancelled": "stopped", "draft": "active"}
CONDITION_SKIP_CLINICAL = ("resolved", "inactive")
CONDITION_SKIP_VERIFICATION = ("refuted", "entered-in-error")
SEXES = ("female", "male", "other", "unknown")
COMPARATORS = ("<", "<=", ">", ">=")

_PARTIAL_DATE = re.compile(r"^\d{4}(-\d{2})?$")
_FULL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_UCUM_ANNOTATION = re.compile(r"\{[^{}]*\}")
_WEIGHT_UNITS = {"[lb_av]": "lb", "[oz_av]": "oz", "lbs": "lb", "kgs": "kg"}

When = Union[date, datetime]


class FhirMappingError(ValueError):
    """The FHIR data cannot be turned into a case. ``problems`` says where (``entry[3].resource``) and why."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        n = len(self.problems)
        head = f"FHIR data rejected: {n} problem{'s' if n != 1 else ''}"
        super().__init__(head + "".join(f"\n  - {p}" for p in self.problems))


# ---------------------------------------------------------------------------------------------
# Flattening


@dataclass(frozen=True)
class _Item:
    """One resource found in the input, with where it was found."""

    resource: dict[str, Any]
    loc: str                          # JSON path of the resource in the input ("" for the input itself)
    full_url: Optional[str]           # Bundle.entry.fullUrl
    container: Optional["_Item"]      # the resource whose `contained` holds this one

    @property
    def type(self) -> str:
        return self.resource["resourceType"]

    @property
    def label(self) -> str:
        rid = _str(self.resource.get("id"))
        what = f"{self.type}/{rid}" if rid else self.type
        return f"{self.loc or 'resource'} ({what})"


def _join(loc: str, part: str) -> str:
    if not loc:
        return part
    return loc + part if part.startswith("[") else f"{loc}.{part}"


class _Walker:
    """Depth-first walk over Bundles, lists and contained resources, in input order."""

    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.problems: list[Problem] = []
        self.count = 0
        self.on_path: set[int] = set()

    def top(self, data: Any) -> None:
        if isinstance(data, list):
            self._list(data, "", 0)
        elif isinstance(data, dict):
            self._resource(data, "", None, None, 0)
        else:
            raise FhirMappingError([Problem("", f"FHIR data must be a JSON object (a Bundle or a resource) or a "
                                                f"list of them, not {_kind(data)}")])

    def _enter(self, obj: Any, loc: str, depth: int) -> bool:
        if id(obj) in self.on_path:
            self.problems.append(Problem(loc, "reference cycle: this object contains itself; refused"))
            return False
        if depth > MAX_DEPTH:
            self.problems.append(Problem(loc, f"nested more than {MAX_DEPTH} levels deep (Bundles within Bundles "
                                              f"or contained resources); refused"))
            return False
        self.count += 1
        if self.count > MAX_RESOURCES:
            raise FhirMappingError([Problem(loc, f"more than {MAX_RESOURCES} resources; refused (send only the "
                                                 f"patient's recent labs, medications and conditions)")])
        return True

    def _list(self, data: list[Any], loc: str, depth: int) -> None:
        if not self._enter(data, loc or "[]", depth):
            return
        self.on_path.add(id(data))
        for i, x in enumerate(data):
            where = _join(loc, f"[{i}]")
            if x is None:
                continue                      # a CDS Hooks prefetch key the EHR could not fill
            if isinstance(x, dict):
                self._resource(x, where, None, None, depth + 1)
            elif isinstance(x, list):
                self._list(x, where, depth + 1)
            else:
                self.problems.append(Problem(where, f"must be a FHIR resource or Bundle (a JSON object), "
                                                    f"not {_kind(x)}"))
        self.on_path.discard(id(data))

    def _resource(self, res: dict[str, Any], loc: str, full_url: Optional[str], container: Optional[_Item],
                  depth: int) -> None:
        if not self._enter(res, loc or "resource", depth):
            return
        rtype = res.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            self.problems.append(Problem(loc, "not a FHIR resource: `resourceType` is missing"))
            return
        self.on_path.add(id(res))
        try:
            if rtype == "Bundle":
                self._bundle(res, loc, depth)
                return
            item = _Item(res, loc, full_url, container)
            self.items.append(item)
            contained = res.get("contained")
            if contained is None:
                return
            if not isinstance(contained, list):
                self.problems.append(Problem(_join(loc, "contained"), "must be a list of resources"))
                return
            for j, c in enumerate(contained):
                where = _join(loc, f"contained[{j}]")
                if isinstance(c, dict):
                    self._resource(c, where, None, item, depth + 1)
                else:
                    self.problems.append(Problem(where, f"must be a resource (a JSON object), not {_kind(c)}"))
        finally:
            self.on_path.discard(id(res))

    def _bundle(self, bundle: dict[str, Any], loc: str, depth: int) -> None:
        entries = bundle.get("entry")
        if entries is None:
            return
        if not isinstance(entries, list):
            self.problems.append(Problem(_join(loc, "entry"), "must be a list of entries"))
            return
        for i, entry in enumerate(entries):
            where = _join(loc, f"entry[{i}]")
            if not isinstance(entry, dict):
                self.problems.append(Problem(where, f"a Bundle entry must be a JSON object, not {_kind(entry)}"))
                continue
            res = entry.get("resource")
            if res is None:
                continue                      # search outcome links, transaction responses ...
            if not isinstance(res, dict):
                self.problems.append(Problem(_join(where, "resource"), f"must be a resource (a JSON object), "
                                                                      f"not {_kind(res)}"))
                continue
            self._resource(res, _join(where, "resource"), _str(entry.get("fullUrl")), None, depth + 1)


def _walk(data: Any) -> list[_Item]:
    walker = _Walker()
    walker.top(data)
    if walker.problems:
        raise FhirMappingError(walker.problems)
    return walker.items


def resources_from(bundle_or_resources: Any) -> list[dict]:
    """Every resource in a Bundle, a resource, or a list of them: entries of (nested) Bundles and
    contained resources included, Bundles themselves not, in input order. Entries without a
    resource and null items of a list (an unfilled CDS Hooks prefetch key) are passed over.

    Raises :class:`FhirMappingError` for input that is not a JSON object or list of them, a
    Bundle entry or contained resource that is not a resource, nesting deeper than
    :data:`MAX_DEPTH`, more than :data:`MAX_RESOURCES` resources, or an object containing itself.
    """
    return [item.resource for item in _walk(bundle_or_resources)]


# ---------------------------------------------------------------------------------------------
# Small readers that never raise on unexpected shapes


def _kind(x: Any) -> str:
    return {type(None): "null", bool: "a boolean", str: "a string", int: "a number", float: "a number",
            list: "a list"}.get(type(x), type(x).__name__)


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _str(x: Any) -> Optional[str]:
    return (x.strip() or None) if isinstance(x, str) else None


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _codings(concept: Any) -> list[dict[str, Any]]:
    return [c for c in _list(_dict(concept).get("coding")) if isinstance(c, dict)]


def _codes(concept: Any) -> list[str]:
    return [code for c in _codings(concept) if (code := _str(c.get("code")))]


def _concept_text(concept: Any) -> Optional[str]:
    """CodeableConcept.text, else the first coding display."""
    text = _str(_dict(concept).get("text"))
    if text:
        return text
    return next((d for c in _codings(concept) if (d := _str(c.get("display")))), None)


def _reference(x: Any) -> Optional[str]:
    return _str(_dict(x).get("reference"))


def _fmt(x: float) -> str:
    return f"{x:g}"


# ---------------------------------------------------------------------------------------------
# Dates


def _parse_when(text: Any) -> tuple[Optional[When], Optional[str]]:
    """A FHIR date/dateTime/instant -> (value, None), or (None, why it cannot be used)."""
    s = _str(text)
    if s is None:
        return None, None
    if _PARTIAL_DATE.match(s):
        return None, f"{s!r} is a partial date"
    try:
        if _FULL_DATE.match(s):
            return date.fromisoformat(s), None
        return datetime.fromisoformat(s.replace("z", "Z")), None
    except ValueError:
        return None, f"{s!r} is not a FHIR date or dateTime"


def _utc(v: When) -> datetime:
    """Comparable instant: UTC, naive (as the engine compares times)."""
    return utc_naive(v)


def _iso(v: When) -> str:
    return v.isoformat()


def _first_when(candidates: list[tuple[str, Any]], where: str, warnings: list[str]) -> Optional[When]:
    """The first usable date among (field name, value) pairs; unusable present values are warned about."""
    for name, raw in candidates:
        value, why = _parse_when(raw)
        if value is not None:
            return value
        if why:
            warnings.append(f"{where}: {name} {why}; not used.")
    return None


def _own_time(res: dict[str, Any], where: str, warnings: list[str]) -> Optional[When]:
    return _first_when([("effectiveDateTime", res.get("effectiveDateTime")),
                        ("effectiveInstant", res.get("effectiveInstant")),
                        ("effectivePeriod.start", _dict(res.get("effectivePeriod")).get("start")),
                        ("issued", res.get("issued"))], where, warnings)


# ---------------------------------------------------------------------------------------------
# References


class _Index:
    """Resolves references: `#id` within a container, `Type/id`, absolute URLs and fullUrls."""

    def __init__(self, items: list[_Item]):
        self.by_url: dict[str, _Item] = {}
        self.by_type_id: dict[tuple[str, str], _Item] = {}
        self.contained: dict[tuple[int, str], _Item] = {}
        for item in items:
            rid = _str(item.resource.get("id"))
            if item.container is not None:
                if rid:
                    self.contained.setdefault((id(item.container.resource), rid), item)
                continue
            if item.full_url:
                self.by_url.setdefault(item.full_url, item)
            if rid:
                self.by_type_id.setdefault((item.type, rid), item)

    def resolve(self, ref: Optional[str], source: _Item) -> Optional[_Item]:
        if not ref:
            return None
        if ref.startswith("#"):
            holder = source.container or source
            return self.contained.get((id(holder.resource), ref[1:]))
        if ref in self.by_url:
            return self.by_url[ref]
        m = _REFERENCE.search(ref)
        if m:
            return self.by_type_id.get((m.group(1), m.group(2)))
        return None


def _subject_ref(item: _Item) -> Optional[str]:
    """subject (or patient) reference, a contained resource's falling back to its container's."""
    while item is not None:
        ref = _reference(item.resource.get("subject")) or _reference(item.resource.get("patient"))
        if ref:
            return ref
        item = item.container  # type: ignore[assignment]
    return None


# ---------------------------------------------------------------------------------------------
# Units


def _quantity_unit(q: dict[str, Any]) -> Optional[str]:
    """The unit of a Quantity: its UCUM code, else its unit text, else a code without a system."""
    code, unit, system = _str(q.get("code")), _str(q.get("unit")), _str(q.get("system"))
    if code and system == UCUM:
        return code
    if unit:
        return unit
    if code and not system:
        return code
    return None


def _lab_factor(spelling: str, spec: dict[str, Any]) -> Optional[float]:
    """Factor to the test's normalised unit, or None when the engine cannot read the spelling."""
    try:
        return conversion_factor(spelling, spec["dimension"], spec["unit"], spec.get("molar_mass")).factor
    except Exception:  # UnitProblem, or pint on odd spellings: the engine will say why
        return None


def _same_factor(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


def _readable(spelling: str, spec: dict[str, Any]) -> str:
    """A UCUM code with annotations (`10*3/uL{cells}`) the engine cannot read, without them."""
    if _lab_factor(spelling, spec) is None:
        bare = _UCUM_ANNOTATION.sub("", spelling).strip()
        if bare and _lab_factor(bare, spec) is not None:
            return bare
    return spelling


def _lab_unit(q: dict[str, Any], spec: dict[str, Any], where: str, warnings: list[str]) -> Optional[str]:
    code, unit, system = _str(q.get("code")), _str(q.get("unit")), _str(q.get("system"))
    if code and system == UCUM:
        code = _readable(code, spec)
        if unit and unit != code:
            f_code, f_unit = _lab_factor(code, spec), _lab_factor(unit, spec)
            if f_code is not None and f_unit is not None and not _same_factor(f_code, f_unit):
                warnings.append(f"{where}: valueQuantity.unit {unit!r} and its UCUM code {code!r} are different "
                                f"units; the code {code!r} was used.")
            elif f_code is None and f_unit is not None:
                warnings.append(f"{where}: UCUM code {code!r} is not a unit leukodx reads; the unit text {unit!r} "
                                f"was used.")
                return unit
        return code
    if unit:
        return unit
    if code and not system:
        return _readable(code, spec)
    return None


# ---------------------------------------------------------------------------------------------
# Observations


@dataclass
class _Lab:
    item: _Item
    test: str
    loinc: str
    value: Any
    unit: str
    time: Optional[When]
    lln: Optional[float]
    specimen: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"test": self.test, "loinc": self.loinc, "value": self.value, "unit": self.unit}
        if self.time is not None:
            out["time"] = _iso(self.time)
        if self.lln is not None:
            out["lln"] = self.lln
        if self.specimen:
            out["specimen"] = self.specimen[:200]
        rid = _str(self.item.resource.get("id"))
        out["ref"] = (f"Observation/{rid}" if rid else self.item.loc or "Observation")[:200]
        return out


def _loinc_codes(res: dict[str, Any]) -> list[str]:
    """LOINC codes of Observation.code: codings of system http://loinc.org or of no system."""
    return [code for c in _codings(res.get("code"))
            if _str(c.get("system")) in (LOINC, None) and (code := _str(c.get("code")))]


def _lln(q: dict[str, Any], res: dict[str, Any], unit: str, spec: dict[str, Any], where: str,
         warnings: list[str]) -> Optional[float]:
    low = _dict(_dict(_list(res.get("referenceRange"))[0] if _list(res.get("referenceRange")) else {}).get("low"))
    value = low.get("value")
    if not _number(value):
        return None
    low_unit = _quantity_unit(low)
    if low_unit is None or low_unit == unit:
        return value
    f_low, f_val = _lab_factor(_readable(low_unit, spec), spec), _lab_factor(unit, spec)
    if f_low is None or f_val is None:
        if f_val is not None:
            warnings.append(f"{where}: referenceRange[0].low is in {low_unit!r}, which leukodx does not read; "
                            f"the lower limit of normal was left out.")
        return None
    return value if _same_factor(f_low, f_val) else float(f"{value * f_low / f_val:.12g}")


def _absent_value_reason(res: dict[str, Any]) -> str:
    for key in ("valueString", "valueCodeableConcept", "valueBoolean", "valueInteger", "valueRange", "valueRatio"):
        if key in res:
            shown = res[key] if key in ("valueString", "valueBoolean", "valueInteger") else _concept_text(res[key])
            return f"no valueQuantity.value (it has {key} {shown!r})" if shown is not None else \
                f"no valueQuantity.value (it has {key})"
    reason = _concept_text(res.get("dataAbsentReason"))
    return f"no valueQuantity.value (dataAbsentReason: {reason})" if reason else "no valueQuantity.value"


def _observation_lab(item: _Item, test: str, code: str, spec: dict[str, Any], time: Optional[When],
                     warnings: list[str], skipped: list[Problem]) -> Optional[_Lab]:
    res = item.resource
    name = f"{item.label}, LOINC {code} ({test})"

    def skip(why: str) -> None:
        warnings.append(f"{name}: {why}; skipped.")
        skipped.append(Problem(item.loc, f"{test} (LOINC {code}): {why}"))

    status = _str(res.get("status"))
    q = _dict(res.get("valueQuantity"))
    has_value = q.get("value") is not None
    if status not in LAB_STATUSES:
        shown = f"status {status!r}" if status else "no status"
        also = "" if has_value else f" and it has {_absent_value_reason(res)}"
        skip(f"{shown} is not a result (final, amended, corrected or preliminary){also}")
        return None
    if not has_value:
        skip(_absent_value_reason(res))
        return None
    unit = _lab_unit(q, spec, name, warnings)
    if unit is None:
        skip("valueQuantity has neither a unit nor a UCUM code")
        return None
    value = q["value"]
    comparator = _str(q.get("comparator"))
    if comparator:
        shown = _fmt(value) if _number(value) else repr(value)
        what = "a bound and not a measurement" if comparator in COMPARATORS else "with an unknown comparator"
        warnings.append(f"{name}: reported as {comparator}{shown} {unit}, {what}; {shown} was used as the value.")
    return _Lab(item, test, code, value, unit, time, _lln(q, res, unit, spec, name, warnings))


def _draws(items: list[_Item], index: _Index) -> dict[int, str]:
    """Observation -> the draw it belongs to: its ``specimen`` reference, else the DiagnosticReport whose
    ``result`` lists it (one report, one draw), else the panel Observation whose ``hasMember`` lists it."""
    out: dict[int, str] = {}
    for item in items:
        if item.type == "Observation":
            ref = _reference(item.resource.get("specimen"))
            if ref:
                out[id(item.resource)] = ref
    for kind, field in (("DiagnosticReport", "result"), ("Observation", "hasMember")):
        for parent in items:
            if parent.type != kind:
                continue
            key = parent.full_url or f"{kind}/{_str(parent.resource.get('id')) or parent.loc}"
            for ref in _list(parent.resource.get(field)):
                child = index.resolve(_reference(ref), parent)
                if child is not None and child.type == "Observation":
                    out.setdefault(id(child.resource), out.get(id(parent.resource), key))
    return out


def _inherited_times(items: list[_Item], index: _Index) -> dict[int, tuple[When, _Item]]:
    """Observations without a time of their own -> (time, parent) of the DiagnosticReport (`result`) or
    panel Observation (`hasMember`) listing them, through at most MAX_DEPTH levels of panels."""
    own: dict[int, Optional[When]] = {}
    scratch: list[str] = []
    for item in items:
        if item.type in ("Observation", "DiagnosticReport"):
            own[id(item.resource)] = _own_time(item.resource, item.loc, scratch)
    inherited: dict[int, tuple[When, _Item]] = {}
    for _ in range(MAX_DEPTH):
        changed = False
        for parent in items:
            if parent.type not in ("Observation", "DiagnosticReport"):
                continue
            t = own.get(id(parent.resource))
            if t is None and id(parent.resource) in inherited:
                t = inherited[id(parent.resource)][0]
            if t is None:
                continue
            refs = parent.resource.get("result" if parent.type == "DiagnosticReport" else "hasMember")
            for ref in _list(refs):
                child = index.resolve(_reference(ref), parent)
                if (child is None or child.type != "Observation" or own.get(id(child.resource)) is not None
                        or id(child.resource) in inherited):
                    continue
                inherited[id(child.resource)] = (t, parent)
                changed = True
        if not changed:
            break
    return inherited


# ---------------------------------------------------------------------------------------------
# Patient


@dataclass
class _PatientChoice:
    item: Optional[_Item]
    refs: set[str]              # references that point to the patient (Patient/<id>, fullUrl)
    filtering: bool


def _patient_refs(item: _Item) -> set[str]:
    refs: set[str] = set()
    rid = _str(item.resource.get("id"))
    if rid:
        refs.add(f"Patient/{rid}")
    if item.full_url:
        refs.add(item.full_url)
        m = _REFERENCE.search(item.full_url)
        if m and m.group(1) == "Patient":
            refs.add(f"Patient/{m.group(2)}")
    return refs


def _choose_patient(items: list[_Item], patient_id: Optional[str], warnings: list[str]) -> _PatientChoice:
    patients = [i for i in items if i.type == "Patient"]
    distinct: list[_Item] = []
    seen: set[frozenset[str]] = set()
    for p in patients:
        key = frozenset(_patient_refs(p)) or frozenset({p.loc})
        if key not in seen:
            seen.add(key)
            distinct.append(p)
    if patient_id:
        pid = patient_id.strip().removeprefix("Patient/")
        matches = [p for p in distinct if f"Patient/{pid}" in _patient_refs(p)
                   or p.full_url in (pid, f"urn:uuid:{pid}")]
        chosen = matches[0] if matches else None
        refs = {f"Patient/{pid}"} | {r for m in matches for r in _patient_refs(m)}   # all copies of this patient
        if chosen is None:
            warnings.append(f"No Patient resource with id {pid!r}: sex, age, weight and ancestry are unknown.")
        elif len(distinct) > len(matches):
            warnings.append(f"{len(distinct)} Patient resources; used {chosen.label} and only its data.")
        return _PatientChoice(chosen, refs, True)
    if not distinct:
        warnings.append("No Patient resource: sex, age, weight and ancestry are unknown.")
        return _PatientChoice(None, set(), False)
    chosen = distinct[0]
    if len(distinct) > 1:
        warnings.append(f"{len(distinct)} Patient resources; used the first, {chosen.label}, and only its data "
                        f"(pass patient_id to choose).")
        return _PatientChoice(chosen, _patient_refs(chosen), True)
    return _PatientChoice(chosen, _patient_refs(chosen), False)


def _belongs(item: _Item, choice: _PatientChoice) -> bool:
    if not choice.filtering:
        return True
    ref = _subject_ref(item)
    if ref is None:
        return False
    if ref in choice.refs:
        return True
    m = _REFERENCE.search(ref)
    return bool(m and f"{m.group(1)}/{m.group(2)}" in choice.refs)


def _age(birth: Any, at: Optional[date], where: str, warnings: list[str]) -> Optional[int]:
    s = _str(birth)
    if s is None:
        return None
    if at is None:
        warnings.append(f"{where}: no as_of and no dated lab, so age_years could not be computed.")
        return None
    partial = _PARTIAL_DATE.match(s)
    if partial:
        s = s + ("-01" if len(s) == 7 else "-01-01")
        warnings.append(f"{where}: birthDate {_str(birth)!r} is a partial date; the age may be a year off.")
    try:
        born = date.fromisoformat(s[:10])
    except ValueError:
        warnings.append(f"{where}: birthDate {s!r} is not a date; age left out.")
        return None
    return at.year - born.year - ((at.month, at.day) < (born.month, born.day))


def _ancestry(res: dict[str, Any]) -> Optional[str]:
    """Text of the US Core race and ethnicity extensions (their `text`, else their codings' displays)."""
    parts: list[str] = []
    for ext in _list(res.get("extension")):
        url = _str(_dict(ext).get("url")) or ""
        if url.split("|")[0] not in (RACE_EXT, ETHNICITY_EXT):
            continue
        subs = [s for s in _list(ext.get("extension")) if isinstance(s, dict)]
        text = next((t for s in subs if s.get("url") == "text" and (t := _str(s.get("valueString")))), None)
        if not text:
            displays = [d for s in subs if s.get("url") in ("ombCategory", "detailed")
                        and (d := _str(_dict(s.get("valueCoding")).get("display")))]
            text = ", ".join(dict.fromkeys(displays)) or None
        if text:
            parts.append(text)
    return "; ".join(parts)[:500] or None


def _weight_kg(item: _Item) -> tuple[Optional[float], Optional[str]]:
    q = _dict(item.resource.get("valueQuantity"))
    value, unit = q.get("value"), _quantity_unit(q)
    if not _number(value):
        return None, "no numeric valueQuantity.value"
    if unit is None:
        return None, "no unit"
    ureg = registry()
    try:
        quantity = ureg.Quantity(float(value), ureg.parse_units(_WEIGHT_UNITS.get(unit, unit)))
        if not quantity.check("[mass]"):
            return None, f"unit {unit!r} is not a mass"
        return float(f"{quantity.to('kilogram').magnitude:.6g}"), None
    except Exception:
        return None, f"unit {unit!r} is not a unit of mass leukodx reads"


# ---------------------------------------------------------------------------------------------
# Medications


def _med_concept(item: _Item, index: _Index, warnings: list[str]) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(CodeableConcept of the drug, fallback display name)."""
    res = item.resource
    if isinstance(res.get("medicationCodeableConcept"), dict):
        return res["medicationCodeableConcept"], None
    ref_obj = _dict(res.get("medicationReference"))
    ref, display = _reference(ref_obj), _str(ref_obj.get("display"))
    target = index.resolve(ref, item)
    if target is not None and target.type == "Medication":
        return _dict(target.resource.get("code")), display
    if ref or display:
        used = f"; its display {display!r} was used as the name" if display else ""
        warnings.append(f"{item.label}: medicationReference {ref!r} does not resolve to a Medication in the "
                        f"data{used}.")
    return None, display


def _rxnorm(concept: Optional[dict[str, Any]], known: set[str]) -> tuple[Optional[str], Optional[str]]:
    """(RxNorm code, RxNorm display): a code the knowledge base knows first, else the first RxNorm coding."""
    rx = [c for c in _codings(concept) if _str(c.get("system")) == RXNORM and _str(c.get("code"))]
    if not rx:
        return None, None
    best = next((c for c in rx if _str(c.get("code")) in known), rx[0])
    return _str(best.get("code")), _str(best.get("display"))


def _dose(dosage: dict[str, Any]) -> Union[dict[str, Any], str, None]:
    """{value, unit} for a mass per time or mass per body mass per time; else the dosage text."""
    text = _str(dosage.get("text"))
    rate = _dict(_list(dosage.get("doseAndRate"))[0] if _list(dosage.get("doseAndRate")) else {})
    q = _dict(rate.get("doseQuantity")) or _dict(dosage.get("doseQuantity"))  # STU3 kept it on dosage
    value, unit = q.get("value"), _quantity_unit(q)
    rate_unit = _dose_rate_unit(unit) if _number(value) and unit else None
    if rate_unit:
        return {"value": value, "unit": rate_unit}
    if text:
        return text
    if _number(value) and unit:
        return f"{_fmt(value)} {unit}"
    return None


def _dose_rate_unit(unit: str) -> Optional[str]:
    """The spelling pint reads (as the engine reads doses) when ``unit`` is a mass per time (mg/d) or a mass
    per body mass per time (mg/kg/d, UCUM mg/(kg.d)); else None."""
    ureg = registry()
    for spelling in dict.fromkeys((unit, unit.replace(".", "*"))):
        numerator = spelling.split("/", 1)[0].strip()
        try:
            whole = ureg.Quantity(1.0, ureg.parse_units(spelling))
            if not ureg.Quantity(1.0, ureg.parse_units(numerator)).check("[mass]"):
                continue
        except Exception:  # pint raises several types for spellings it cannot parse
            continue
        if whole.check("[mass]/[time]") or whole.check("1/[time]"):   # 1/[time]: mass over mass over time
            return spelling
    return None


def _indication(item: _Item, index: _Index) -> Optional[str]:
    res = item.resource
    reason = _concept_text(_list(res.get("reasonCode"))[0] if _list(res.get("reasonCode")) else None)
    if reason:
        return reason
    refs = _list(res.get("reasonReference"))
    if not refs:
        return None
    target = index.resolve(_reference(refs[0]), item)
    if target is not None and target.type == "Condition":
        text = _concept_text(target.resource.get("code"))
        if text:
            return text
    return _str(_dict(refs[0]).get("display"))


def _medication(item: _Item, index: _Index, known_rxnorm: set[str], include_draft: bool,
                warnings: list[str]) -> Optional[tuple[dict[str, Any], Optional[When]]]:
    res = item.resource
    fhir_status = _str(res.get("status"))
    if fhir_status == "draft" and not include_draft:
        warnings.append(f"{item.label}: a draft, not an order yet; skipped (include_draft=True keeps drafts).")
        return None
    status = MED_STATUS.get(fhir_status or "")
    if status is None:
        why = f"status {fhir_status!r} means it is not being taken" if fhir_status else "no status"
        warnings.append(f"{item.label}: {why}; skipped.")
        return None
    if fhir_status == "unknown":
        warnings.append(f"{item.label}: status 'unknown'; counted as active.")
    concept, display = _med_concept(item, index, warnings)
    rxnorm, rx_display = _rxnorm(concept, known_rxnorm)
    name = _str(_dict(concept).get("text")) or rx_display or _concept_text(concept) or display
    if not name and not rxnorm:
        warnings.append(f"{item.label}: the drug has neither a name nor an RxNorm code; skipped.")
        return None
    start = _first_when([("authoredOn", res.get("authoredOn")),
                         ("effectivePeriod.start", _dict(res.get("effectivePeriod")).get("start")),
                         ("effectiveDateTime", res.get("effectiveDateTime"))], item.label, warnings)
    end = None
    if status in ("stopped", "completed"):
        end = _first_when([("effectivePeriod.end", _dict(res.get("effectivePeriod")).get("end")),
                           ("dispenseRequest.validityPeriod.end",
                            _dict(_dict(res.get("dispenseRequest")).get("validityPeriod")).get("end"))],
                          item.label, warnings)
    dosages = _list(res.get("dosageInstruction")) or _list(res.get("dosage"))
    med: dict[str, Any] = {"name": name, "rxnorm": rxnorm, "status": status,
                           "start": _iso(start) if start else None, "end": _iso(end) if end else None,
                           "dose": _dose(_dict(dosages[0])) if dosages else None,
                           "indication": _indication(item, index)}
    return {k: v for k, v in med.items() if v is not None}, start


# ---------------------------------------------------------------------------------------------
# Conditions


def _condition(item: _Item, warnings: list[str]) -> Optional[tuple[str, Optional[When]]]:
    res = item.resource
    clinical = set(_codes(res.get("clinicalStatus")))
    verification = set(_codes(res.get("verificationStatus")))
    if clinical & set(CONDITION_SKIP_CLINICAL) or verification & set(CONDITION_SKIP_VERIFICATION):
        return None
    text = _concept_text(res.get("code"))
    if not text:
        warnings.append(f"{item.label}: a Condition without text or display; skipped.")
        return None
    onset, _ = _parse_when(res.get("onsetDateTime") or _dict(res.get("onsetPeriod")).get("start"))
    return text, onset


# ---------------------------------------------------------------------------------------------
# The case


def _ref_date(as_of: Optional[date]) -> Optional[date]:
    if as_of is None:
        return None
    return _utc(as_of).date() if isinstance(as_of, datetime) else as_of


def _code_label(concept: Any, loinc_codes: list[str]) -> str:
    """`LOINC 789-8`, else `system|code` of the first coding, else the concept's text."""
    if loinc_codes:
        return f"LOINC {loinc_codes[0]}"
    for c in _codings(concept):
        code = _str(c.get("code"))
        if code:
            system = _str(c.get("system"))
            return f"{system}|{code}" if system else code
    return repr(_concept_text(concept) or "no code")


def _ignored_summary(ignored: dict[str, int]) -> str:
    n = sum(ignored.values())
    shown = ", ".join(list(ignored)[:8]) + (", ..." if len(ignored) > 8 else "")
    return (f"{n} Observation{'s' if n != 1 else ''} of codes leukodx does not use {'were' if n != 1 else 'was'} "
            f"ignored ({shown}).")


@dataclass
class Mapped:
    """A case dict in the engine's contract, and what the mapping left out: ``warnings`` (text) and
    ``not_assessed`` (each resource or group of resources left out, with the reason)."""
    case: dict[str, Any]
    warnings: list[str]
    not_assessed: list[NotAssessed]


def bundle_to_case(data: Any, *, case_id: Optional[str] = None, patient_id: Optional[str] = None,
                   as_of: Optional[date] = None, include_draft: bool = False) -> tuple[dict, list[str]]:
    """``(case, warnings)``: see :func:`map_bundle`."""
    m = map_bundle(data, case_id=case_id, patient_id=patient_id, as_of=as_of, include_draft=include_draft)
    return m.case, m.warnings


def _subjects(items: list[_Item]) -> list[str]:
    return list(dict.fromkeys(ref for i in items if (ref := _subject_ref(i))))


def map_bundle(data: Any, *, case_id: Optional[str] = None, patient_id: Optional[str] = None,
               as_of: Optional[date] = None, include_draft: bool = False, max_labs: int = MAX_LABS) -> Mapped:
    """A case for :func:`leukodx.engine.assess` from FHIR R4 data, with what was left out.

    ``data``: a Bundle, a resource, or a list of them (see :func:`resources_from`). ``patient_id``
    selects the patient (and only its resources); ``as_of`` is the date the case is judged at (put in
    the case; default: the engine takes the latest lab time); ``include_draft`` keeps draft
    MedicationRequests (counted as active). Only the ``max_labs`` most recent lab values are kept (the
    current CBC and the trend need the recent ones); the older ones are counted in ``not_assessed``.
    Raises :class:`FhirMappingError` when the data is not FHIR resources, or when it holds no lab value
    leukodx can use for this patient (each skipped lab Observation is then a problem with its reason,
    and data of another patient is named).
    """
    kb: KnowledgeBase = default_kb()
    warnings: list[str] = []
    left_out: list[NotAssessed] = []
    items = _walk(data)
    index = _Index(items)
    choice = _choose_patient(items, patient_id, warnings)
    mine = [i for i in items if i.type != "Patient" and _belongs(i, choice)]
    theirs = [i for i in items if i.type in ("Observation", "MedicationRequest", "MedicationStatement",
                                             "Condition") and not _belongs(i, choice)]
    wanted = f"Patient/{patient_id.strip().removeprefix('Patient/')}" if patient_id else "the chosen patient"
    if theirs:
        subjects = _subjects(theirs)
        shown = ", ".join(subjects[:5]) + (", ..." if len(subjects) > 5 else "") if subjects else "no subject"
        warnings.append(f"{len(theirs)} Observation, medication or Condition resource{'s' if len(theirs) != 1 else ''} "
                        f"of another patient or with no subject {'were' if len(theirs) != 1 else 'was'} left out.")
        left_out.append(NotAssessed(field="subject", value=shown[:200],
                                    reason=f"{len(theirs)} resource{'s' if len(theirs) != 1 else ''} belong to "
                                           f"another patient than {wanted} (or name no subject) and were not used"))

    labs, weights, skipped = _map_observations(kb, items, mine, index, warnings)
    left_out += [NotAssessed(field=p.loc or "Observation", reason=p.msg) for p in skipped]
    if not labs:
        problems = list(skipped)
        theirs_labs = [i for i in theirs if i.type == "Observation"]
        if theirs_labs:
            subjects = _subjects(theirs_labs)
            problems.insert(0, Problem("subject", f"the lab Observations belong to {', '.join(subjects[:5]) or 'no patient'}, "
                                                  f"not to {wanted}; data of another patient is never used"))
        raise FhirMappingError([Problem("", "no lab value leukodx can use: it needs an Observation with a LOINC "
                                            "code of rules/labs.yaml (a WBC, ANC, differential ...), a usable "
                                            "status and a valueQuantity with a unit"), *problems])
    if len(labs) > max_labs:
        labs.sort(key=lambda lab: (lab.time is None, _utc(lab.time) if lab.time is not None else datetime.min),
                  reverse=True)
        dropped = labs[max_labs:]
        del labs[max_labs:]
        oldest = min((_utc(x.time) for x in dropped if x.time is not None), default=None)
        newest = max((_utc(x.time) for x in dropped if x.time is not None), default=None)
        span = f" ({oldest.date()} to {newest.date()})" if oldest and newest else ""
        left_out.append(NotAssessed(field="Observation", value=f"{len(dropped)} lab values{span}",
                                    reason=f"older than the {max_labs} most recent lab values, which hold the "
                                           f"current CBC and the trend"))
        warnings.append(f"{len(dropped)} older lab values{span} beyond the {max_labs} most recent were not used.")

    lab_times = [_utc(lab.time) for lab in labs if lab.time is not None]
    ref = _ref_date(as_of) or (max(lab_times).date() if lab_times else None)

    case: dict[str, Any] = {"id": case_id or _default_id(choice)}
    if as_of is not None:
        case["as_of"] = _iso(as_of)
    case["patient"] = _patient(choice, weights, ref, warnings)
    case["labs"] = [lab.as_dict() for lab in labs]
    meds = _map_medications(kb, mine, index, ref, include_draft, warnings)
    if meds:
        case["medications"] = meds
    conditions = _map_conditions(mine, ref, warnings)
    history: dict[str, Any] = _map_pgx(mine, warnings)
    temperature = _map_temperature(mine, ref, warnings)
    if temperature is not None:
        history["temperature_c"] = temperature
    if conditions:
        history["conditions"] = conditions
    if history:
        case["history"] = history
    return Mapped(case, warnings, left_out)


BODY_TEMPERATURE_LOINC = ("8310-5", "8331-1")
_TEMPERATURE_UNITS = {"Cel": "degC", "°C": "degC", "C": "degC", "[degF]": "degF", "°F": "degF", "F": "degF"}


def _map_temperature(mine: list[_Item], ref: Optional[date], warnings: list[str]) -> Optional[float]:
    """The latest body temperature (LOINC 8310-5 or 8331-1) not after the case date, in Celsius."""
    best: Optional[tuple[datetime, float]] = None
    for item in mine:
        res = item.resource
        if item.type != "Observation" or _str(res.get("status")) not in LAB_STATUSES:
            continue
        if not any(c in BODY_TEMPERATURE_LOINC for c in _loinc_codes(res)):
            continue
        q = _dict(res.get("valueQuantity"))
        unit = _quantity_unit(q)
        if not _number(q.get("value")) or unit is None:
            warnings.append(f"{item.label}: body temperature without a value and unit was not used.")
            continue
        try:
            ureg = registry()
            celsius = ureg.Quantity(float(q["value"]), _TEMPERATURE_UNITS.get(unit, unit)).to("degC").magnitude
        except Exception:
            warnings.append(f"{item.label}: body temperature unit {unit!r} was not understood.")
            continue
        when = _own_time(res, item.label, warnings)
        if when is None or _after(when, ref):
            continue
        if best is None or _utc(when) > best[0]:
            best = (_utc(when), round(float(celsius), 1))
    return best[1] if best else None


_PGX_GENE = re.compile(r"\b(TPMT|NUDT15)\b", re.IGNORECASE)
_PGX_DIPLOTYPE = re.compile(r"\*\w+\s*/\s*\*\w+")
_PGX_WORDS = (("possible intermediate", "possible_intermediate"), ("intermediate", "intermediate"),
              ("poor", "poor"), ("normal", "normal"), ("indeterminate", "indeterminate"))


def _map_pgx(mine: list[_Item], warnings: list[str]) -> dict[str, str]:
    """TPMT/NUDT15 results: Observations whose code names the gene and whose value is a diplotype
    (*1/*3A) or a metabolizer phenotype; the latest result of each gene wins."""
    found: dict[str, tuple[str, str]] = {}   # gene -> (time key, value)
    for item in mine:
        res = item.resource
        if item.type != "Observation":
            continue
        code_text = " ".join(filter(None, [_concept_text(res.get("code"))] +
                                    [_str(c.get("display")) for c in _codings(res.get("code"))]))
        gene = _PGX_GENE.search(code_text or "")
        if not gene:
            continue
        value = _str(res.get("valueString")) or _concept_text(res.get("valueCodeableConcept"))
        if not value:
            warnings.append(f"{item.label}: {gene.group(1).upper()} result without a phenotype or diplotype was not used.")
            continue
        m = _PGX_DIPLOTYPE.search(value)
        word = next((w for phrase, w in _PGX_WORDS if phrase in value.casefold()), None)
        mapped = m.group(0).replace(" ", "") if m else word
        if mapped is None:
            warnings.append(f"{item.label}: {gene.group(1).upper()} result {value!r} was not understood.")
            continue
        when = _str(res.get("effectiveDateTime")) or _str(res.get("issued")) or ""
        key = gene.group(1).lower()
        if key not in found or when > found[key][0]:
            found[key] = (when, mapped)
    return {gene: value for gene, (_, value) in sorted(found.items())}


def _default_id(choice: _PatientChoice) -> str:
    rid = _str(choice.item.resource.get("id")) if choice.item else None
    return rid[:200] if rid else "fhir"


def _map_observations(kb: KnowledgeBase, items: list[_Item], mine: list[_Item], index: _Index,
                      warnings: list[str]) -> tuple[list[_Lab], list[tuple[Optional[datetime], float]], list[Problem]]:
    inherited = _inherited_times(items, index)
    draws = _draws(items, index)
    labs: list[_Lab] = []
    weights: list[tuple[Optional[datetime], float]] = []
    skipped: list[Problem] = []
    ignored: dict[str, int] = {}
    first_at: dict[tuple[str, Optional[datetime]], _Lab] = {}
    borrowed: list[_Item] = []
    for item in mine:
        if item.type != "Observation":
            continue
        res = item.resource
        codes = _loinc_codes(res)
        code = next((c for c in codes if c in kb.loinc), None)
        if code is None:
            if any(c in BODY_WEIGHT_LOINC for c in codes):
                _weight(item, weights, warnings)
            else:
                key = _code_label(res.get("code"), codes)
                ignored[key] = ignored.get(key, 0) + 1
            continue
        test = kb.loinc[code]
        time = _own_time(res, item.label, warnings)
        if time is None and id(res) in inherited:
            time, parent = inherited[id(res)]
            borrowed.append(parent)
        lab = _observation_lab(item, test, code, kb.tests[test], time, warnings, skipped)
        if lab is None:
            continue
        lab.specimen = draws.get(id(res))
        key = (test, _utc(time) if time is not None else None)
        if key in first_at:
            when = f"at {_iso(time)}" if time is not None else "without a time"
            warnings.append(f"{item.label}: a second {test} value {when} (first: {first_at[key].item.label}); "
                            f"the first was kept.")
            continue
        first_at[key] = lab
        labs.append(lab)
    if borrowed:
        parents = ", ".join(dict.fromkeys(p.label for p in borrowed))
        warnings.append(f"{len(borrowed)} lab value{'s' if len(borrowed) != 1 else ''} had no time of "
                        f"{'their' if len(borrowed) != 1 else 'its'} own and took the time of the report or panel "
                        f"listing {'them' if len(borrowed) != 1 else 'it'}: {parents}.")
    if ignored:
        warnings.append(_ignored_summary(ignored))
    return labs, weights, skipped


def _weight(item: _Item, weights: list[tuple[Optional[datetime], float]], warnings: list[str]) -> None:
    if _str(item.resource.get("status")) not in LAB_STATUSES:
        return
    kg, why = _weight_kg(item)
    if kg is None:
        warnings.append(f"{item.label}: body weight not used: {why}.")
        return
    when = _own_time(item.resource, item.label, warnings)
    weights.append((_utc(when) if when is not None else None, kg))


def _patient(choice: _PatientChoice, weights: list[tuple[Optional[datetime], float]], ref: Optional[date],
             warnings: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    weight = _latest_weight(weights, ref)
    if choice.item is not None:
        res, where = choice.item.resource, choice.item.label
        gender = _str(res.get("gender"))
        if gender in SEXES:
            out["sex"] = gender
        elif gender:
            warnings.append(f"{where}: gender {gender!r} is not a FHIR gender; sex left unknown.")
        at = ref or (max(t for t, _ in weights if t).date() if any(t for t, _ in weights) else None)
        age = _age(res.get("birthDate"), at, where, warnings)
        if age is not None:
            out["age_years"] = age
    if weight is not None:
        out["weight_kg"] = weight
    if choice.item is not None:
        ancestry = _ancestry(choice.item.resource)
        if ancestry:
            out["ancestry"] = ancestry
    return out


def _latest_weight(weights: list[tuple[Optional[datetime], float]], ref: Optional[date]) -> Optional[float]:
    timed = [(t, kg) for t, kg in weights if t is not None and (ref is None or t.date() <= ref)]
    if timed:
        best = timed[0]
        for t, kg in timed[1:]:
            if t > best[0]:
                best = (t, kg)
        return best[1]
    untimed = [kg for t, kg in weights if t is None]
    return untimed[0] if untimed else None


def _after(when: Optional[When], ref: Optional[date]) -> bool:
    return when is not None and ref is not None and _utc(when).date() > ref


def _map_medications(kb: KnowledgeBase, mine: list[_Item], index: _Index, ref: Optional[date],
                     include_draft: bool, warnings: list[str]) -> list[dict[str, Any]]:
    known = {code for d in kb.drugs for code in (d.get("rxnorm") or [])}
    meds: list[dict[str, Any]] = []
    later: list[str] = []
    for item in mine:
        if item.type not in ("MedicationRequest", "MedicationStatement"):
            continue
        mapped = _medication(item, index, known, include_draft, warnings)
        if mapped is None:
            continue
        med, start = mapped
        if _after(start, ref):
            later.append(item.label)
            continue
        meds.append(med)
    if later:
        warnings.append(_later_warning(len(later), "medication", "started", ref, later))
    return meds


def _map_conditions(mine: list[_Item], ref: Optional[date], warnings: list[str]) -> list[str]:
    texts: dict[str, str] = {}
    later: list[str] = []
    for item in mine:
        if item.type != "Condition":
            continue
        mapped = _condition(item, warnings)
        if mapped is None:
            continue
        text, onset = mapped
        if _after(onset, ref):
            later.append(item.label)
            continue
        texts.setdefault(text.casefold(), text)
    if later:
        warnings.append(_later_warning(len(later), "condition", "began", ref, later))
    return list(texts.values())


def _later_warning(n: int, what: str, verb: str, ref: Optional[date], labels: list[str]) -> str:
    shown = ", ".join(labels[:3]) + (", ..." if n > 3 else "")
    assert ref is not None
    return (f"{n} {what}{'s' if n != 1 else ''} {verb} after {ref.isoformat()}, the date the case is judged at, "
            f"and {'were' if n != 1 else 'was'} left out: {shown}.")



def resources_of_type(data: Any, resource_type: str) -> list[dict[str, Any]]:
    """Every resource of one type in FHIR data (Bundles and contained resources flattened); [] when the
    data is not FHIR."""
    try:
        return [i.resource for i in _walk(data) if i.type == resource_type]
    except FhirMappingError:
        return []


def pgx_results(data: Any, patient_id: Optional[str] = None) -> dict[str, str]:
    """TPMT/NUDT15 results (diplotype or phenotype word) found in FHIR data, by gene (of ``patient_id``'s
    resources only, when given)."""
    items = _walk(data)
    choice = _choose_patient(items, patient_id, [])
    return _map_pgx([i for i in items if _belongs(i, choice)], [])


def medication_name_and_code(resource: dict[str, Any]) -> tuple[Optional[str], Optional[str]]:
    """(name, RxNorm code) of a MedicationRequest/MedicationStatement's own medicationCodeableConcept."""
    concept = resource.get("medicationCodeableConcept")
    code = next((_str(c.get("code")) for c in _codings(concept) if "rxnorm" in str(c.get("system", "")).lower()), None)
    return _concept_text(concept), code
