"""Read FHIR data types without ever raising on an unexpected shape: strings, numbers,
CodeableConcept, Reference, Quantity units, and the FHIR dates (date, dateTime, instant).

This is the one home of the mapping's date helpers. Partial dates (``2024``, ``2024-03``) are
not a date the case contract can hold and are reported as such; times are compared as naive
UTC through :mod:`leukodx.engine.timeutil` (``utc_naive``, ``utc_date``), as the engine compares them.
"""
from __future__ import annotations

import math
import re
import unicodedata
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Optional, Sequence

from leukodx.engine.timeutil import When, utc_date

__all__ = ["When", "as_dict", "as_list", "as_str", "is_number", "kind", "fmt", "codings", "codes", "concept_text",
           "reference", "not_a_result", "code_label", "quantity_unit", "parse_when", "first_when", "own_time", "after",
           "partial_first_day", "later_warning", "loinc_codes", "UCUM", "LOINC", "RESULT_STATUSES", "PARTIAL_DATE",
           "DECIMAL_TEXT"]

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
# LOINC's system as EHRs write it, once trimmed, lower-cased and stripped of a closing slash and a "|version": its
# URI (http or https), its OID, HL7 v2's name for it ("LN", as v2-to-FHIR conversions leave it), or its name
_LOINC_SYSTEMS = frozenset({"http://loinc.org", "https://loinc.org", "urn:oid:2.16.840.1.113883.6.1", "ln", "loinc"})
_DASHES = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2212\ufe63\uff0d", "-"))
RESULT_STATUSES = ("final", "amended", "corrected", "preliminary")   # Observation statuses that are results
WITHDRAWN_STATUSES = ("entered-in-error", "cancelled")   # a value the lab took back: no value was ever read
WITHDRAWN = "withdrawn by the lab"
PARTIAL_DATE = re.compile(r"^\d{4}(-\d{2})?$")
DECIMAL_TEXT = re.compile(r"^\s*-?\d+(?:\.\d+)?\s*$")     # a plain decimal written as text ("0.4", "38.9")
_FULL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# a leap second, which FHIR's dateTime allows (at any offset: 05:29:60+05:30) and Python does not
_LEAP_SECOND = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:)60(?=[.Z+-]|$)")
_CACHED_TEXT = 64                   # date text up to this length is parsed once and kept (see parse_when)


# ---------------------------------------------------------------------------------------------
# Primitives and structures


def as_dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")


def as_str(x: Any) -> Optional[str]:
    """A non-blank string, stripped, on one line (line breaks and other control characters as a space: an EHR's
    text is never a heading or a list item of its own on a card); else None."""
    if not isinstance(x, str):
        return None
    s = x.strip()
    return (_CONTROL.sub(" ", s) if not s.isprintable() else s) or None


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def kind(x: Any) -> str:
    """What a JSON value is, for a message (``a string``, ``a list`` ...)."""
    return {type(None): "null", bool: "a boolean", str: "a string", int: "a number", float: "a number",
            list: "a list"}.get(type(x), type(x).__name__)


def fmt(x: float) -> str:
    return f"{x:g}"


def codings(concept: Any) -> list[dict[str, Any]]:
    return [c for c in as_list(as_dict(concept).get("coding")) if isinstance(c, dict)]


def codes(concept: Any) -> list[str]:
    return [code for c in codings(concept) if (code := as_str(c.get("code")))]


def concept_text(concept: Any) -> Optional[str]:
    """CodeableConcept.text, else the first coding display."""
    text = as_str(as_dict(concept).get("text"))
    if text:
        return text
    return next((d for c in codings(concept) if (d := as_str(c.get("display")))), None)


def loinc_codes(concept: Any) -> list[str]:
    """LOINC codes of a CodeableConcept: codings of system http://loinc.org (also written with https, in capitals,
    with a closing slash or a version, as LOINC's OID or HL7 v2's "LN"), or of no system; a code typed with another
    dash or full-width digits ("751\u20118") as LOINC writes it, and without spaces or invisible characters (a
    zero-width space copied in with "751-8" had left an ANC of 0.3 unread and unnamed)."""
    return [code if code.isascii() and code.strip() == code else _plain_code(code)
            for c in codings(concept) if _is_loinc(c.get("system")) and (code := as_str(c.get("code")))]


def _is_loinc(system: Any) -> bool:
    return system is None or system == LOINC or (isinstance(system, str) and
                                                 system.strip().split("|")[0].rstrip("/").lower() in _LOINC_SYSTEMS)


def _plain_code(code: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKC", code).translate(_DASHES)
                   if not ch.isspace() and unicodedata.category(ch) != "Cf")


def code_label(concept: Any, loinc: Sequence[str]) -> str:
    """`LOINC 789-8`, else `system|code` of the first coding, else the concept's text; at most 100
    characters (it is quoted in a warning, and an EHR's text can be of any length)."""
    if loinc:
        return f"LOINC {loinc[0]}"[:100]
    for c in codings(concept):
        code = as_str(c.get("code"))
        if code:
            system = as_str(c.get("system"))
            return (f"{system}|{code}" if system else code)[:100]
    return repr(concept_text(concept) or "no code")[:100]


def not_a_result(status: Optional[str]) -> Optional[str]:
    """Why an Observation of this status is not a result (None when it is one)."""
    if status in RESULT_STATUSES:
        return None
    if status in WITHDRAWN_STATUSES:
        return f"status {status!r}: {WITHDRAWN}, not a result"
    shown = f"status {status!r}" if status else "no status"
    return f"{shown} is not a result (final, amended, corrected or preliminary)"


def reference(x: Any) -> Optional[str]:
    """Reference.reference."""
    return as_str(as_dict(x).get("reference"))


# UCUM as FHIR names it, and as feeds converted from CDA or written by hand name it: its OID (HL7's OID registry,
# 2.16.840.1.113883.6.8), https, a trailing slash (a count with only a UCUM code had been refused under these)
_UCUM_SYSTEMS = frozenset({UCUM, UCUM + "/", "https://unitsofmeasure.org", "https://unitsofmeasure.org/",
                           "urn:oid:2.16.840.1.113883.6.8", "http://www.unitsofmeasure.org",
                           "https://www.unitsofmeasure.org"})


def is_ucum(system: Optional[str]) -> bool:
    """The Quantity's system is UCUM, however a feed spells it."""
    return system is not None and system.strip().lower() in _UCUM_SYSTEMS


def quantity_unit(q: dict[str, Any]) -> Optional[str]:
    """The unit of a Quantity: its UCUM code, else its unit text, else a code without a system."""
    code, unit, system = as_str(q.get("code")), as_str(q.get("unit")), as_str(q.get("system"))
    if code and is_ucum(system):
        return code
    if unit:
        return unit
    if code and not system:
        return code
    return None


# ---------------------------------------------------------------------------------------------
# Dates


def parse_when(text: Any) -> tuple[Optional[When], Optional[str]]:
    """A FHIR date/dateTime/instant -> (value, None), or (None, why it cannot be used); (None, None)
    when there is no value."""
    s = as_str(text)
    if s is None:
        return None, None
    # kept for date-sized text only: the values of one blood draw share its time, and a long string (the
    # 32 MB a CDS body may hold) must never be held by a cache
    return _parse_when(s) if len(s) <= _CACHED_TEXT else _parse_when.__wrapped__(s)


@lru_cache(maxsize=4096)
def _parse_when(s: str) -> tuple[Optional[When], Optional[str]]:
    """:func:`parse_when` of a string (dates and datetimes are immutable, so a result can be given again)."""
    if PARTIAL_DATE.match(s):
        return None, f"{s!r} is a partial date"
    try:
        if _FULL_DATE.match(s):
            return date.fromisoformat(s), None
        return datetime.fromisoformat(_LEAP_SECOND.sub(r"\g<1>59", s.replace("z", "Z"))), None
    except ValueError:
        return None, f"{s!r} is not a FHIR date or dateTime"


def first_when(candidates: list[tuple[str, Any]], where: str, warnings: list[str]) -> Optional[When]:
    """The first usable date among (field name, value) pairs; unusable present values are warned about."""
    value, unusable = _first_when(candidates)
    warnings += [f"{where}: {u}; not used." for u in unusable]
    return value


def _first_when(candidates: list[tuple[str, Any]]) -> tuple[Optional[When], list[str]]:
    """(the first usable date, what was present before it and cannot be used: ``issued '2024' is a partial date``)."""
    unusable: list[str] = []
    for name, raw in candidates:
        value, why = parse_when(raw)
        if value is not None:
            return value, unusable
        if why:
            unusable.append(f"{name} {why}")
    return None, unusable


def _time_fields(res: dict[str, Any]) -> list[tuple[str, Any]]:
    """An Observation's (or DiagnosticReport's) time fields, in the order they are read."""
    return [("effectiveDateTime", res.get("effectiveDateTime")), ("effectiveInstant", res.get("effectiveInstant")),
            ("effectivePeriod.start", as_dict(res.get("effectivePeriod")).get("start")),
            ("effectivePeriod.end", as_dict(res.get("effectivePeriod")).get("end")),
            ("effectiveTiming.event", _first_event(res.get("effectiveTiming"))), ("issued", res.get("issued"))]


def _first_event(timing: Any) -> Any:
    """A Timing's first event date; a Timing with none is a time sent that cannot be read (an effectiveTiming of a
    2019 ANC, unread, had left it undated: today's critical card)."""
    if timing is None:
        return None
    events = as_list(as_dict(timing).get("event"))
    return events[0] if events and isinstance(events[0], str) else "a Timing with no event date"


def own_time(res: dict[str, Any]) -> tuple[Optional[When], list[str]]:
    """An Observation's (or DiagnosticReport's) own time: effective[x], else ``issued``; and what is present
    but cannot be used (see :func:`first_when`). :meth:`~.resources.Item.own_time` keeps it."""
    return _first_when(_time_fields(res))


def partial_day(text: Optional[str]) -> Optional[date]:
    """The first day of a partial date ("2023" -> 2023-01-01, "2023-05" -> 2023-05-01); None for any other text."""
    text = (text or "").strip()
    if not PARTIAL_DATE.match(text):
        return None
    year, _, month = text.partition("-")
    return date(int(year), int(month or 1), 1) if int(year) >= 1 and 1 <= int(month or 1) <= 12 else None


def partial_first_day(res: dict[str, Any], label: str, warnings: list[str]) -> Optional[date]:
    """The first day of an Observation's time when it has only a partial one ("2023-05"), with a warning; None
    otherwise. Never undated: an undated value is taken as current, and a 2023 ANC had made today's critical card."""
    for name, raw in _time_fields(res):
        text = as_str(raw) or ""
        day = partial_day(text)
        if day is not None:
            warnings.append(f"{label}: {name} {text!r}, a partial date, was dated by its first day ({day}): a value "
                            f"of that time is history, never the current count.")
            return day
    return None


def after(when: Optional[When], ref: Optional[date]) -> bool:
    """``when`` lies after the date ``ref`` the case is judged at."""
    return when is not None and ref is not None and utc_date(when) > ref


def later_warning(n: int, what: str, verb: str, ref: date, labels: list[str]) -> str:
    """The warning for ``n`` resources left out because they begin after ``ref``."""
    shown = ", ".join(labels[:3]) + (", ..." if n > 3 else "")
    return (f"{n} {what}{'s' if n != 1 else ''} {verb} after {ref.isoformat()}, the date the case is judged at, "
            f"and {'were' if n != 1 else 'was'} left out: {shown}.")
