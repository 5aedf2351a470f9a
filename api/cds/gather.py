"""A CDS call's data: each prefetch key's resources, fetched from the EHR's FHIR server with the bearer token it gave
when the key is missing (CDS Hooks 2.0.1 "Prefetch template"), and where each resource came from, to name it."""
from __future__ import annotations

import contextvars
import re
from typing import Any

from .. import metrics
from ..config import Settings
from ..fhir import FetchError, fetch_queries, fill_template
from .models import HookRequest

__all__ = ["gather", "named", "medications_unknown", "REQUIRED_KEYS", "QUIET_KEYS", "MEDICATION_KEYS", "ORDER_DATA"]

# Without the lab Observations a patient's view has nothing to assess (412); an order is still checked (its drug, the
# patient's genotype and other drugs: a TPMT poor metabolizer's azathioprine order had been met by a 412, no card),
# the missing counts named on its card. Any other key that cannot be had is named on the cards and the rest assessed.
REQUIRED_KEYS = ("observations",)
ORDER_HOOKS = ("order-select", "order-sign")
# Keys whose absence the assessment itself reports (no temperature or weight: its missing data says what they
# would add), so a client that cannot fill them gets no extra note on every card.
QUIET_KEYS = ("vitals",)
# What the order check is told it could not have, by the prefetch key that brings it (engine check_orders ``unhad``).
ORDER_DATA = {"pgx": "genotypes", "conditions": "conditions"}
# The keys of the patient's drugs (medications_unknown says when the list is unknown).
MEDICATION_KEYS = ("medicationRequests", "medicationStatements")
# the prefetch key each resource of this call came from, by its position (named)
_KEYS: contextvars.ContextVar[list[str]] = contextvars.ContextVar("prefetch_keys", default=[])
_POSITION = re.compile(r"^\[(\d+)\](.*)$")


async def gather(hook: HookRequest, settings: Settings,
                 templates: dict[str, str]) -> tuple[list[Any], list[str], list[str], bool, set[str], set[str]]:
    """Resources for each prefetch key, fetching what is missing. Returns (resources, missing keys,
    notes, whether anything was fetched from the FHIR server, the keys of which only a first page was had, the other
    keys that could not be had at all)."""
    prefetch = hook.prefetch or {}
    resources: list[Any] = []
    keys: list[str] = []            # the prefetch key each resource came from, to name it in messages
    missing: list[str] = []
    notes: list[str] = []
    paged_values: dict[str, Any] = {}
    to_fetch: dict[str, str] = {}
    first_page_only: set[str] = set()
    unhad: set[str] = set()
    required = () if hook.hook in ORDER_HOOKS else REQUIRED_KEYS

    def cannot(key: str, why: str) -> None:
        if key in paged_values:
            resources.append(paged_values[key])
            keys.append(key)
            first_page_only.add(key)
            notes.append(f"prefetch '{key}' holds only its first page ({why})")
        elif key in required:
            missing.append(f"{key}: {why}")
        elif key in QUIET_KEYS:
            pass
        else:
            unhad.add(key)
            notes.append(f"'{key}' could not be had ({why})")

    for key, template in templates.items():
        value = prefetch.get(key, ...)
        if value is None:              # the EHR has no such data
            continue
        searched = template.split("?")[0] if "?" in template else None      # a search's resource type
        kind = value.get("resourceType") if isinstance(value, dict) else None
        if searched and kind not in (None, "Bundle", "OperationOutcome", searched):
            # a search answered by something else ("bundle", Parameters): named, not read as no data (it had been
            # dropped in silence, an ANC of 0.3 inside with it)
            cannot(key, f"it is {str(kind)[:40]!r}, not a Bundle of {searched}")
            continue
        if searched and value is not ... and kind is None:
            unhad.add(key)      # text, a number, a list, {}: the mapping names it; what it holds was not had (a
            #                     clozapine order beside conditions sent as text had been "may proceed")
        needs_fetch = value is ... or kind == "OperationOutcome"
        links = value.get("link") if isinstance(value, dict) and value.get("resourceType") == "Bundle" else None
        paged = isinstance(links, list) and any(l.get("relation") == "next" for l in links if isinstance(l, dict))
        if not needs_fetch and not paged:
            resources.append(value)
            keys.append(key)
            if failed := _search_error(value):   # a search that says it failed (partly): what came is used, and named
                unhad.add(key)
                notes.append(f"'{key}' is incomplete: the EHR's search reported an error ({failed})")
            elif short := _short_of_total(value):     # fewer matches than its total and no next page: named
                unhad.add(key)
                notes.append(f"'{key}' is incomplete: {short}")
            continue
        if paged:
            paged_values[key] = value
        try:
            if not hook.fhirServer:
                raise FetchError("no fhirServer was given")
            if hook.fhirAuthorization is None:   # every FHIR call carries the EHR's access token
                raise FetchError("no fhirAuthorization access token was given for the fhirServer" if hook._auth_problem
                                 is None else f"the fhirAuthorization sent could not be used ({hook._auth_problem})")
            scoped = hook.fhirAuthorization.patient
            if scoped and scoped.strip().removeprefix("Patient/") != str(hook.context.get("patientId", "")).strip():
                raise FetchError("the fhirAuthorization token is for another patient than context.patientId; it "
                                 "was not used")     # an EHR's mix-up: another patient's data must never be fetched
            to_fetch[key] = fill_template(template, hook.context, None)
        except FetchError as e:
            # an OperationOutcome sent in its place: the EHR's own reason first (it had read "no fhirServer was given"
            # alone, as if nothing had been said)
            said = _outcome_error(value) if value is not ... else ""
            cannot(key, f"the EHR reported: {said}; {e}" if said else str(e))
    if to_fetch:
        assert hook.fhirServer and hook.fhirAuthorization
        outcomes = await metrics.observed_fetch(   # timed, in a span, each query's outcome counted
            fetch_queries, hook.fhirServer, hook.fhirAuthorization.access_token, to_fetch,
            deadline_seconds=settings.fhir_deadline_seconds, max_pages=settings.fhir_max_pages,
            allow_private=settings.fhir_allow_private, allow_loopback=settings.fhir_allow_loopback)
        for key, out in outcomes.items():
            if out.resources is None:
                cannot(key, out.note or "the FHIR server could not be used")
                continue
            resources.append(out.resources)
            keys.append(key)
            if out.note:
                notes.append(f"'{key}' is partial ({out.note})")
    _KEYS.set(keys)
    return resources, missing, notes, bool(to_fetch), first_page_only, unhad


def _search_error(value: Any) -> str:
    """The first error a search Bundle's OperationOutcome entry reports (FHIR search.mode "outcome"), as text; "" when
    it reports none. A MedicationRequest search whose only entry was such an error had been read as an empty
    medication list."""
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle" or not isinstance(value.get("entry"), list):
        return ""
    return next((said for entry in value["entry"] if isinstance(entry, dict)
                 and (said := _outcome_error(entry.get("resource")))), "")


def _short_of_total(value: Any) -> str:
    """What a search Bundle lacks when it holds fewer matches than its ``total`` says and links no next page, as text
    ("" otherwise): a truncated search had been read as the patient's whole record (FHIR red-team round 26)."""
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        return ""
    total, entries = value.get("total"), value.get("entry") if isinstance(value.get("entry"), list) else []
    matches = sum(1 for e in entries if isinstance(e, dict)
                  and (e["search"].get("mode", "match") if isinstance(e.get("search"), dict) else "match") == "match")
    if isinstance(total, float) and total.is_integer():      # 250.0 is 250 (a total of 3.0 had passed)
        total = int(total)
    if not isinstance(total, int) or isinstance(total, bool) or total <= matches:
        return ""
    return f"it holds {matches} of the {total} results its search found, and no link to the rest"


def _outcome_error(res: Any) -> str:
    """The first issue of severity error or fatal an OperationOutcome reports, as text ("" for anything else)."""
    if not isinstance(res, dict) or res.get("resourceType") != "OperationOutcome":
        return ""
    for issue in res.get("issue") if isinstance(res.get("issue"), list) else []:
        if isinstance(issue, dict) and issue.get("severity") in ("error", "fatal"):
            return str(issue.get("diagnostics") or issue.get("code") or "no detail")[:120]
    return ""


def medications_unknown(hook: HookRequest, unhad: set[str]) -> bool:
    """Whether the patient's medication list could not be had, so that no drug is taken as absent (an ANC of 0.3 had
    been given a marrow examination "with no drug to explain it"): the MedicationRequests could not be had and no
    MedicationStatement holds a drug instead. US Core keeps the list in MedicationRequest and profiles no
    MedicationStatement, whose key such a server leaves out (CDS Hooks 2.0.1): statements missing beside the requests
    had withheld every such EHR's marrow step; an empty or null statements key beside failed requests says nothing."""
    if "medicationRequests" not in unhad:
        return False
    statements = (hook.prefetch or {}).get("medicationStatements")
    entries = statements.get("entry") if isinstance(statements, dict) and "medicationStatements" not in unhad else None
    return not any(isinstance(e, dict) and isinstance(e.get("resource"), dict) and
                   e["resource"].get("resourceType") == "MedicationStatement" for e in entries or [])


def named(loc: str) -> str:
    """`[1].entry[3].resource` (a position in the resources gathered) -> `prefetch 'observations'.entry[3].resource`."""
    m = _POSITION.match(loc)
    keys = _KEYS.get()
    if not m:
        return loc
    i = int(m.group(1))
    where = f"prefetch '{keys[i]}'" if i < len(keys) else "draftOrders"
    return where + m.group(2)
