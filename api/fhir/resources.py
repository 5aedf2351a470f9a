"""Find the resources in FHIR input and resolve references between them.

Input is what an EHR sends: a Bundle of any type (collection, searchset, transaction, document ...),
a single resource, or a list of resources and Bundles (a CDS Hooks ``prefetch`` gives one of each
per key). :func:`resources_from` flattens it: Bundle entries, Bundles nested in Bundles, and the
``contained`` resources of each resource. Nesting deeper than :data:`MAX_DEPTH`, more than
:data:`MAX_RESOURCES` resources, or an object that contains itself is refused with a
:class:`FhirMappingError`, as is anything that is not a JSON object where a resource belongs.
:class:`Index` resolves references (``#id``, ``Type/id``, absolute URLs, ``fullUrl``).
"""
from __future__ import annotations

import re
from typing import Any, Optional

from leukodx.engine.errors import Problem

from .datatypes import When, as_dict, as_list, as_str, kind, loinc_codes, own_time, reference

__all__ = ["FhirMappingError", "resources_from", "resources_of_type", "MAX_DEPTH", "MAX_RESOURCES"]

MAX_DEPTH = 8               # Bundles within Bundles (and contained resources) deeper than this are refused
MAX_RESOURCES = 250_000     # resources in one request, contained ones included (years of labs)

REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


class FhirMappingError(ValueError):
    """The FHIR data cannot be turned into a case. ``problems`` says where (``entry[3].resource``) and why."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        n = len(self.problems)
        head = f"FHIR data rejected: {n} problem{'s' if n != 1 else ''}"
        super().__init__(head + "".join(f"\n  - {p}" for p in self.problems))


def resources_from(bundle_or_resources: Any) -> list[dict]:
    """Every resource in a Bundle, a resource, or a list of them: entries of (nested) Bundles and
    contained resources included, Bundles themselves not, in input order. Entries without a
    resource and null items of a list (an unfilled CDS Hooks prefetch key) are passed over.

    Raises :class:`FhirMappingError` for input that is not a JSON object or list of them, a
    Bundle entry or contained resource that is not a resource, nesting deeper than
    :data:`MAX_DEPTH`, more than :data:`MAX_RESOURCES` resources, or an object containing itself.
    """
    return [item.resource for item in walk(bundle_or_resources)]


def resources_of_type(data: Any, resource_type: str) -> list[dict[str, Any]]:
    """Every resource of one type in FHIR data (Bundles and contained resources flattened); [] when the
    data is not FHIR."""
    try:
        return [i.resource for i in walk(data) if i.type == resource_type]
    except FhirMappingError:
        return []


class Item:
    """One resource found in the input, with where it was found. What the mappings read of every
    Observation (its LOINC codes, its own time) is read once and kept: the lab, pharmacogenomics,
    vital-sign and report-time mappings each look at every Observation."""

    __slots__ = ("resource", "loc", "full_url", "container", "type", "_loinc", "_time")

    def __init__(self, resource: dict[str, Any], loc: str, full_url: Optional[str], container: Optional["Item"]):
        self.resource = resource
        self.loc = loc                    # JSON path of the resource in the input ("" for the input itself)
        self.full_url = full_url          # Bundle.entry.fullUrl
        self.container = container        # the resource whose `contained` holds this one
        self.type: str = resource["resourceType"]
        self._loinc: Optional[tuple[str, ...]] = None
        self._time: Optional[tuple[Optional[When], list[str]]] = None

    @property
    def loinc(self) -> tuple[str, ...]:
        """The LOINC codes of the resource's ``code``."""
        if self._loinc is None:
            self._loinc = tuple(loinc_codes(self.resource.get("code")))
        return self._loinc

    def own_time(self, warnings: Optional[list[str]] = None) -> Optional[When]:
        """An Observation's (or DiagnosticReport's) own time (:func:`~.datatypes.own_time`); what is
        present but cannot be used is added to ``warnings``, when given."""
        if self._time is None:
            self._time = own_time(self.resource)
        when, unusable = self._time
        if warnings is not None and unusable:
            warnings += [f"{self.label}: {u}; not used." for u in unusable]
        return when

    @property
    def label(self) -> str:
        rid = as_str(self.resource.get("id"))
        what = f"{self.type}/{rid}" if rid else self.type
        return f"{self.loc or 'resource'} ({what})"


def walk(data: Any) -> list[Item]:
    """Every resource in ``data`` with where it was found (see :func:`resources_from`)."""
    items, problems = walk_parts(data)
    if problems:
        raise FhirMappingError(problems)
    return items


def walk_parts(data: Any) -> tuple[list[Item], list[Problem]]:
    """:func:`walk`, passing over each part that is not a resource (no ``resourceType``, a string where a
    resource belongs, a cycle, too deep) with the problem naming it: one broken contained Medication must not
    cost the patient's blood counts. Data that is not a resource or a list of them at all is still refused."""
    walker = _Walker()
    walker.top(data)
    return walker.items, walker.problems


def walk_readable(data: Any) -> list[Item]:
    """Every resource of the parts of ``data`` (the items of a list, e.g. one per CDS Hooks prefetch key)
    that can be read, the others passed over: for what must go on when the mapping has refused the
    data and said why (a draft order is still checked when a prefetch key holds a string)."""
    if not isinstance(data, list):
        try:
            return walk(data)
        except FhirMappingError:
            return []
    items: list[Item] = []
    for i, x in enumerate(data):
        part = _Walker()
        try:
            if isinstance(x, dict):
                part._resource(x, f"[{i}]", None, None, 1)
            elif isinstance(x, list):
                part._list(x, f"[{i}]", 1)
        except FhirMappingError:
            continue
        if not part.problems:
            items += part.items
    return items


class Index:
    """Resolves references: `#id` within a container, `Type/id`, absolute URLs and fullUrls."""

    def __init__(self, items: list[Item]):
        self.by_url: dict[str, Item] = {}
        self.by_type_id: dict[tuple[str, str], Item] = {}
        self.contained: dict[tuple[int, str], Item] = {}
        for item in items:
            rid = as_str(item.resource.get("id"))
            if item.container is not None:
                if rid:
                    self.contained.setdefault((id(item.container.resource), rid), item)
                continue
            if item.full_url:
                self.by_url.setdefault(item.full_url, item)
            if rid:
                self.by_type_id.setdefault((item.type, rid), item)

    def resolve(self, ref: Optional[str], source: Item) -> Optional[Item]:
        if not ref:
            return None
        if ref.startswith("#"):
            holder = source.container or source
            return self.contained.get((id(holder.resource), ref[1:]))
        if ref in self.by_url:
            return self.by_url[ref]
        m = REFERENCE.search(ref)
        if m:
            return self.by_type_id.get((m.group(1), m.group(2)))
        return None


def unreadable_time(item: Item) -> Optional[str]:
    """Why an Observation with no usable time is not undated: a time was sent and cannot be read. An undated value
    is taken as current, and a 2016 ANC dated with a leap second had made today's critical card."""
    unusable = own_time(item.resource)[1]
    return (f"its time cannot be read ({'; '.join(unusable)}): a value whose date is unknown is never taken as "
            f"current") if unusable else None


def other_focus(item: Item) -> Optional[str]:
    """Why an Observation is about someone other than its subject: a ``focus`` that is not the subject (a fetus, a
    newborn, a donor: FHIR R4 Observation.focus). A newborn's ANC of 0.2 had set the mother's tier."""
    if "focus" not in item.resource:
        return None
    subject = _type_and_id(subject_ref(item))
    focus = [f for f in as_list(item.resource["focus"]) if subject is None or _type_and_id(reference(f)) != subject]
    if not focus:
        return None
    named = reference(focus[0]) or as_str(as_dict(focus[0]).get("display")) or "someone else"
    return f"its focus is {named}, not the patient: a value about someone else is never the patient's"


def _type_and_id(ref: Optional[str]) -> Optional[tuple[str, str]]:
    """("Patient", "p1") of "Patient/p1", of its absolute URL and of a version of it; the text itself otherwise."""
    m = REFERENCE.search(ref or "")
    return (m.group(1), m.group(2)) if m else ((ref, "") if ref else None)


def subject_ref(item: Optional[Item]) -> Optional[str]:
    """subject (or patient) reference, a contained resource's falling back to its container's."""
    while item is not None:
        ref = reference(item.resource.get("subject")) or reference(item.resource.get("patient"))
        if ref:
            return ref
        item = item.container
    return None


def _join(loc: str, part: str) -> str:
    if not loc:
        return part
    return loc + part if part.startswith("[") else f"{loc}.{part}"


class _Walker:
    """Depth-first walk over Bundles, lists and contained resources, in input order."""

    def __init__(self) -> None:
        self.items: list[Item] = []
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
                                                f"list of them, not {kind(data)}")])

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
                                                    f"not {kind(x)}"))
        self.on_path.discard(id(data))

    def _resource(self, res: dict[str, Any], loc: str, full_url: Optional[str], container: Optional[Item],
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
            item = Item(res, loc, full_url, container)
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
                    self.problems.append(Problem(where, f"must be a resource (a JSON object), not {kind(c)}"))
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
                self.problems.append(Problem(where, f"a Bundle entry must be a JSON object, not {kind(entry)}"))
                continue
            res = entry.get("resource")
            if res is None:                   # a transaction's request, a batch's answer with nothing in it ...
                response = as_dict(entry.get("response"))
                status = as_str(response.get("status")) or ""
                if response and not status.startswith("2"):   # a search the EHR could not answer: never silent
                    self.problems.append(Problem(where, f"the EHR answered this entry with status {status!r}: "
                                                        f"its data was not sent"))
                elif not (response or entry.get("request") or as_dict(entry.get("search")).get("mode") == "outcome"):
                    self.problems.append(Problem(where, "an entry with no resource (a fullUrl alone): nothing in "
                                                        "it could be read"))
                continue
            if not isinstance(res, dict):
                self.problems.append(Problem(_join(where, "resource"), f"must be a resource (a JSON object), "
                                                                      f"not {kind(res)}"))
                continue
            self._resource(res, _join(where, "resource"), as_str(entry.get("fullUrl")), None, depth + 1)
