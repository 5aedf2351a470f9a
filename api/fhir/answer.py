"""An Assessment as FHIR R4: a ``collection`` Bundle, and errors as an ``OperationOutcome``.

(Longer than leukodx's other modules on purpose: one resource builder per section of the Assessment,
read together against the FHIR R4 resource definitions they follow.)

``POST /v1/assess/fhir`` (and ``/v1/assess``) answer this when the client sends
``Accept: application/fhir+json``. The Bundle holds, each with a ``urn:uuid`` fullUrl:

* a ``RiskAssessment`` for the neutrophil tier: subject the patient (when the input names one),
  ``occurrenceDateTime`` the date judged at (``as_of``), ``basis`` the current CBC values (a
  reference to the input's Observation when it had an id, with the value and the date it was
  drawn), one ``prediction`` for the tier (``outcome`` coded in ``urn:leukodx:neutropenia-tier``,
  ``rationale`` the basis and the cutoffs) and one per CTCAE grade (WBC, ANC, lymphocytes), and
  ``method`` naming leukodx and its version;
* a ``RiskAssessment`` of the ranked causes (one prediction per cause, its likelihood as
  ``qualitativeRisk``), when causes are ranked;
* a ``DetectedIssue`` per alert (``severity`` high for critical, moderate for warning, low for info)
  and per drug interaction (moderate; coded ``DRG`` in v3 ActCode), ``evidence`` the tier's
  RiskAssessment, ``reference`` the primary source;
* a ``ServiceRequest`` per next step (``status`` draft, ``intent`` proposal; ``priority`` stat,
  urgent or routine for an immediate, urgent or routine step), ``reasonReference`` the tier's
  RiskAssessment; a step advised against is a ServiceRequest with ``doNotPerform`` true;
* an ``OperationOutcome`` (warnings and information) naming what was not assessed: input left out,
  unrecognised drug or condition names, missing data and the mapping's warnings, when there is any;
* a ``Provenance`` whose ``target`` is every other entry: agent the Device ``leukodx <version>``,
  the knowledge-base version in ``policy`` (``urn:leukodx:kb:<version>``) and as a source ``entity``.

Each resource cites its sources as ``RelatedArtifact`` (type ``citation``, the catalogue's citation
and link) in the ``http://hl7.org/fhir/StructureDefinition/workflow-relatedArtifact`` extension
(R4 has no ``relatedArtifact`` element on these resources).

Built as plain JSON here (no FHIR library at run time); the tests validate every resource with
fhir.resources' R4B models. Codes leukodx defines are ``urn:leukodx:...`` systems.
"""
from __future__ import annotations

import uuid
from datetime import date, datetime, timezone
from typing import Any, Iterable, Optional, Sequence

from leukodx.engine.assessment import Assessment, SourceOut
from leukodx.engine.errors import Problem

from .patient import choose_patient
from .resources import walk

__all__ = ["FHIR_JSON", "FHIR_MEDIA_TYPE", "negotiate", "assessment_bundle", "operation_outcome",
           "patient_reference", "RELATED_ARTIFACT", "TIER_SYSTEM", "KB_POLICY"]

FHIR_JSON = "application/fhir+json"
FHIR_MEDIA_TYPE = f"{FHIR_JSON}; fhirVersion=4.0"
RELATED_ARTIFACT = "http://hl7.org/fhir/StructureDefinition/workflow-relatedArtifact"
TIER_SYSTEM = "urn:leukodx:neutropenia-tier"
CTCAE_GRADE_SYSTEM = "urn:leukodx:ctcae-grade"
ALERT_SYSTEM = "urn:leukodx:alert"
INTERACTION_SYSTEM = "urn:leukodx:interaction"
STEP_SYSTEM = "urn:leukodx:step"
CAUSE_SYSTEM = "urn:leukodx:cause"
LIKELIHOOD_SYSTEM = "urn:leukodx:likelihood"
METHOD_SYSTEM = "urn:leukodx:method"
KB_SYSTEM = "urn:leukodx:kb"
KB_POLICY = "urn:leukodx:kb:"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"

SEVERITY = {"critical": "high", "warning": "moderate", "info": "low"}
PRIORITY = {"immediate": "stat", "urgent": "urgent", "routine": "routine"}
TIER_DISPLAY = {"normal": "No neutropenia", "mild": "Mild neutropenia", "moderate": "Moderate neutropenia",
                "severe": "Severe neutropenia", "profound": "Profound neutropenia",
                "unknown": "Neutropenia tier unknown"}
LIKELIHOOD_DISPLAY = {"likely": "Likely", "possible": "Possible", "less_likely": "Less likely"}
NO_PATIENT = {"display": "patient not identified in the input"}
# the values the tier and the CTCAE grades rest on (a derived ANC or lymphocyte count comes from these)
BASIS_TESTS = ("anc", "wbc", "segmented_neutrophils", "bands", "neutrophils_pct", "bands_pct", "lymphocytes",
               "lymphocytes_pct")


# ---------------------------------------------------------------------------------------------
# Content negotiation


def _media_ranges(header: str) -> list[tuple[str, float, dict[str, str]]]:
    out = []
    for part in header.split(","):
        media, *params = part.split(";")
        media = media.strip().lower()
        if not media:
            continue
        q, attrs = 1.0, {}
        for p in params:
            key, _, value = p.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
            else:
                attrs[key] = value
        out.append((media, q, attrs))
    return out


def negotiate(accept: str) -> Optional[str]:
    """What an ``Accept`` header asks of an assess route: ``"fhir"`` when it names
    ``application/fhir+json`` (R4: no ``fhirVersion``, or 4.0) with a q at least that of
    ``application/json``; ``"json"`` otherwise; None when it names FHIR only in other versions and
    accepts neither JSON nor a wildcard (406). A pure function of the header, so middleware that
    answers before the route (a 413) can make the same choice."""
    if "fhir" not in accept.lower():
        return "json"
    ranges = _media_ranges(accept)
    fhir = [(q, a) for m, q, a in ranges if m == FHIR_JSON]
    r4 = [q for q, a in fhir if a.get("fhirversion", "4.0").startswith("4.0")]
    fhir_q = max(r4, default=0.0)
    json_q = max((q for m, q, _ in ranges if m == "application/json"), default=0.0)
    if fhir and not r4 and json_q == 0 and not any(m in ("*/*", "application/*") and q > 0 for m, q, _ in ranges):
        return None
    return "fhir" if fhir_q > 0 and fhir_q >= json_q else "json"


# ---------------------------------------------------------------------------------------------
# The patient


def patient_reference(data: Any, patient_id: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The Reference of the patient the mapping chose in FHIR ``data`` (see :func:`.map_bundle`):
    ``Patient/<id>``, else the Patient entry's fullUrl; None when the data names no patient."""
    if patient_id and patient_id.strip():
        return {"reference": f"Patient/{patient_id.strip().removeprefix('Patient/')}"}
    choice = choose_patient(walk(data), None, [])
    if choice.item is None:
        return None
    rid = choice.item.resource.get("id")
    if isinstance(rid, str) and rid.strip():
        return {"reference": f"Patient/{rid.strip()}"}
    return {"reference": choice.item.full_url} if choice.item.full_url else None


# ---------------------------------------------------------------------------------------------
# Small FHIR structures


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _concept(system: str, code: str, display: str, text: Optional[str] = None) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": text or display}


def _when(x: Any) -> Optional[str]:
    """A FHIR date or dateTime (a time always with its offset; a naive time is UTC)."""
    if x is None:
        return None
    if isinstance(x, datetime):
        t = x if x.tzinfo is not None else x.replace(tzinfo=timezone.utc)
        return t.isoformat().replace("+00:00", "Z")
    if isinstance(x, date):
        return x.isoformat()
    return str(x)


def _num(x: float) -> str:
    return f"{x:g}"


def _artifact(source: SourceOut) -> dict[str, Any]:
    art: dict[str, Any] = {"type": "citation", "label": source.id, "citation": source.citation}
    link = source.link()
    if link:
        art["url"] = link
    return art


class _Builder:
    def __init__(self, a: Assessment, subject: Optional[dict[str, Any]], root: Any = None):
        self.a, self.root = a, root
        self.subject = subject or dict(NO_PATIENT)
        self.device = {"type": "Device", "display": f"leukodx {a.engine_version}"}
        self.entries: list[dict[str, Any]] = []

    def add(self, resource: dict[str, Any], sources: Iterable[str] = ()) -> str:
        cited = list(dict.fromkeys(s for s in sources if s in self.a.sources))
        if cited:
            resource["extension"] = [{"url": RELATED_ARTIFACT, "valueRelatedArtifact": _artifact(self.a.sources[s])}
                                     for s in cited]
        url = _urn()
        self.entries.append({"fullUrl": url, "resource": resource})
        return url

    def primary_link(self, sources: Sequence[str]) -> Optional[str]:
        for s in sources:
            if s in self.a.sources and self.a.sources[s].link():
                return self.a.sources[s].link()
        return None

    # ---- the tier -------------------------------------------------------------------------------

    def basis(self) -> list[dict[str, Any]]:
        out = []
        for lab in self.a.labs:
            if not lab.current or lab.test not in BASIS_TESTS:
                continue
            shown = f"{lab.name} {_num(lab.value)} {lab.unit}"
            if lab.time is not None:
                shown += f", drawn {_when(lab.time)}"
            if lab.derived:
                shown += f" (derived{': ' + lab.derivation if lab.derivation else ''})"
            ref: dict[str, Any] = {"display": shown}
            if lab.ref and not lab.derived and lab.ref.startswith("Observation/"):
                ref = {"reference": lab.ref, "type": "Observation", "display": shown}
            out.append(ref)
        return out

    def tier(self) -> str:
        a, rt = self.a, self.a.risk_tier
        rationale = [rt.basis]
        if rt.anc_time is not None:
            rationale.append(f"Neutrophil count drawn {_when(rt.anc_time)}"
                             + (f", {rt.anc_age_days} day{'' if rt.anc_age_days == 1 else 's'} before {a.as_of}."
                                if rt.anc_age_days is not None and a.as_of else "."))
        if rt.anc_at_most is not None:
            rationale.append(f"ANC at most {_num(rt.anc_at_most)} x10^9/L.")
        if rt.tier_at_least:
            rationale.append(f"Tier at least {rt.tier_at_least}.")
        rationale.append(f"Cutoffs: {rt.cutoffs}.")
        if rt.duffy_null_note:
            rationale.append(rt.duffy_null_note)
        text = TIER_DISPLAY[rt.tier] + (f" (ANC {_num(rt.anc)} x10^9/L)" if rt.anc is not None else "")
        predictions: list[dict[str, Any]] = [{"outcome": _concept(TIER_SYSTEM, rt.tier, TIER_DISPLAY[rt.tier], text),
                                              "rationale": " ".join(rationale)}]
        ct = a.ctcae
        for grade in (ct.wbc, ct.anc, ct.lymphocytes):
            if grade is None:
                continue
            predictions.append({
                "outcome": {"text": grade.term},
                "qualitativeRisk": _concept(CTCAE_GRADE_SYSTEM, str(grade.grade), f"Grade {grade.grade}",
                                            f"CTCAE v{ct.version} grade {grade.grade}"),
                "rationale": f"{grade.term}: {_num(grade.value)} x10^9/L, grade {grade.grade} ({grade.criterion}) "
                             f"in CTCAE v{ct.version}."})
        notes = [a.cbc.note, *ct.notes, a.disclaimer]
        res: dict[str, Any] = {
            "resourceType": "RiskAssessment", "status": "preliminary",
            "code": {"text": "Neutropenia tier from the absolute neutrophil count, with CTCAE grades"},
            "subject": self.subject,
            "method": _concept(METHOD_SYSTEM, "anc-tier", f"leukodx {a.engine_version} neutrophil tier",
                               f"leukodx {a.engine_version} neutrophil tier and CTCAE v{ct.version} grading "
                               f"(knowledge base {a.kb_version})"),
            "performer": self.device,
        }
        if a.as_of is not None:
            res["occurrenceDateTime"] = _when(a.as_of)
        basis = self.basis()
        if basis:
            res["basis"] = basis
        res["prediction"] = predictions
        res["note"] = [{"text": n} for n in notes if n]
        return self.add(res, [*rt.sources, *ct.sources])

    def causes(self, tier_url: str) -> None:
        a = self.a
        if not a.causes:
            return
        predictions = []
        for c in a.causes:
            why = c.description
            if c.agents:
                why += f" Agents: {', '.join(c.agents)}."
            predictions.append({
                "outcome": _concept(CAUSE_SYSTEM, c.id, c.title),
                "qualitativeRisk": _concept(LIKELIHOOD_SYSTEM, c.likelihood, LIKELIHOOD_DISPLAY[c.likelihood]),
                "rationale": f"Rank {c.rank} (score {_num(c.score)}). {why}"})
        res: dict[str, Any] = {
            "resourceType": "RiskAssessment", "status": "preliminary",
            "code": {"text": "Causes of the leukopenia, ranked"},
            "subject": self.subject,
            "method": _concept(METHOD_SYSTEM, "cause-ranking", f"leukodx {a.engine_version} cause ranking",
                               f"leukodx {a.engine_version} cause ranking (knowledge base {a.kb_version})"),
            "performer": self.device,
            "parent": {"reference": tier_url, "type": "RiskAssessment"},
        }
        if a.as_of is not None:
            res["occurrenceDateTime"] = _when(a.as_of)
        res["prediction"] = predictions
        res["note"] = [{"text": a.disclaimer}]
        self.add(res, [s for c in a.causes for s in c.sources])

    # ---- issues and steps -----------------------------------------------------------------------

    def issue(self, code: dict[str, Any], severity: str, detail: str, sources: Sequence[str],
              tier_url: str) -> None:
        res: dict[str, Any] = {"resourceType": "DetectedIssue", "status": "preliminary", "code": code,
                               "severity": severity}
        if "reference" in self.subject or "identifier" in self.subject:     # a patient the input named
            res["patient"] = self.subject
        if self.a.as_of is not None:
            res["identifiedDateTime"] = _when(self.a.as_of)
        res["author"] = self.device
        res["evidence"] = [{"detail": [{"reference": tier_url, "type": "RiskAssessment"}]}]
        res["detail"] = detail
        link = self.primary_link(sources)
        if link:
            res["reference"] = link
        self.add(res, sources)

    def issues(self, tier_url: str) -> None:
        for al in self.a.alerts:
            self.issue(_concept(ALERT_SYSTEM, al.id, al.title), SEVERITY[al.severity], al.description, al.sources,
                       tier_url)
        for ix in self.a.interactions:
            drugs = " with ".join(" or ".join(side) for side in ix.drugs)
            code = {"coding": [{"system": ACT_CODE, "code": "DRG", "display": "Drug Interaction Alert"},
                               {"system": INTERACTION_SYSTEM, "code": ix.id, "display": ix.title}],
                    "text": ix.title}
            self.issue(code, "moderate", f"{ix.effect} Taken: {drugs}. Advice: {ix.action}", ix.sources, tier_url)

    def steps(self, tier_url: str) -> None:
        for st in self.a.steps:
            notes = [st.rationale, *st.reasons]
            self.add(self.request(st.id, st.title, notes, tier_url, priority=PRIORITY[st.urgency]), st.sources)
        for bl in self.a.steps_not_advised:
            self.add(self.request(bl.id, bl.title, [bl.reason], tier_url, do_not_perform=True), bl.sources)

    def request(self, sid: str, title: str, notes: list[str], tier_url: str, priority: Optional[str] = None,
                do_not_perform: bool = False) -> dict[str, Any]:
        res: dict[str, Any] = {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal"}
        if priority:
            res["priority"] = priority
        if do_not_perform:
            res["doNotPerform"] = True
        res["code"] = _concept(STEP_SYSTEM, sid, title)
        res["subject"] = self.subject
        res["requester"] = self.device
        res["reasonReference"] = [{"reference": tier_url, "type": "RiskAssessment"}]
        res["note"] = [{"text": n} for n in notes if n]
        return res

    # ---- what was not assessed, and provenance --------------------------------------------------

    def outcome(self) -> None:
        a = self.a
        issues: list[dict[str, Any]] = []
        for u in a.unrecognised:
            hint = f" (did you mean {', '.join(u.suggestions)}?)" if u.suggestions else ""
            issues.append(_issue("warning", "not-supported",
                                 f"The {u.kind} {u.text!r} is not known to leukodx and was not assessed{hint}.",
                                 _expression(u.field, self.root)))
        for n in a.not_assessed:
            shown = f" ({n.value})" if n.value else ""
            issues.append(_issue("warning", "incomplete", f"Not assessed{shown}: {n.reason}",
                                 _expression(n.field, self.root)))
        for m in a.missing_data:
            issues.append(_issue("information", "incomplete", f"Missing: {m.item}"))
        for w in a.warnings:
            issues.append(_issue("information", "informational", w))
        if issues:
            self.add({"resourceType": "OperationOutcome", "issue": issues})

    def provenance(self, recorded: datetime) -> None:
        a = self.a
        targets = [{"reference": e["fullUrl"], "type": e["resource"]["resourceType"]} for e in self.entries]
        self.entries.append({"fullUrl": _urn(), "resource": {
            "resourceType": "Provenance",
            "target": targets,
            "recorded": _when(recorded),
            "policy": [f"{KB_POLICY}{a.kb_version}"],
            "activity": {"coding": [{"system": DATA_OPERATION, "code": "CREATE", "display": "create"}]},
            "agent": [{"type": _concept(PARTICIPANT_TYPE, "author", "Author"),
                       "who": {**self.device, "identifier": {"system": "urn:leukodx:engine",
                                                             "value": a.engine_version}}}],
            "entity": [{"role": "source", "what": {
                "identifier": {"system": KB_SYSTEM, "value": a.kb_version},
                "display": f"leukodx knowledge base {a.kb_version}"}}],
        }})


def _issue(severity: str, code: str, text: str, where: Optional[str] = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": text}
    if where:
        issue["expression"] = [where]
    return issue


def assessment_bundle(a: Assessment, subject: Optional[dict[str, Any]] = None, *, root: Any = None,
                      now: Optional[datetime] = None) -> dict[str, Any]:
    """The Assessment ``a`` as a FHIR R4 ``collection`` Bundle (see the module docstring). ``subject``: a
    Reference to the patient (from :func:`patient_reference`), else the resources name no patient;
    ``root``: the FHIR input, so that what was not assessed is located by FHIRPath (``Bundle.entry[3]...``)."""
    recorded = now or datetime.now(timezone.utc)
    b = _Builder(a, subject, root)
    tier_url = b.tier()
    b.causes(tier_url)
    b.issues(tier_url)
    b.steps(tier_url)
    b.outcome()
    b.provenance(recorded)
    return {"resourceType": "Bundle", "identifier": {"system": "urn:ietf:rfc:3986", "value": _urn()},
            "type": "collection", "timestamp": _when(recorded), "entry": b.entries}


# ---------------------------------------------------------------------------------------------
# Errors


def _expression(loc: str, root: Any) -> str:
    """``entry[3].resource`` -> ``Bundle.entry[3].resource`` when the input is a FHIR resource and the
    location a path into it; any other location as it is."""
    if isinstance(root, dict) and isinstance(root.get("resourceType"), str) and root["resourceType"]:
        head = loc.split(".", 1)[0].split("[", 1)[0]
        if head and head in root and not loc.startswith(root["resourceType"] + "."):
            return f"{root['resourceType']}.{loc}"
    return loc


ISSUE_CODE = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
              406: "not-supported", 413: "too-long", 415: "not-supported", 422: "invalid", 500: "exception"}


def operation_outcome(status: int, title: str, detail: str = "", problems: Sequence[Problem] = (),
                      root: Any = None) -> dict[str, Any]:
    """An error as an OperationOutcome: one ``error`` issue per problem, ``expression`` its location
    (a FHIRPath into the input when it is a FHIR resource, see :func:`_expression`), else one issue
    with the title and detail. ``root``: the parsed input, when there is one."""
    code = ISSUE_CODE.get(status, "processing" if status < 500 else "exception")
    issues = []
    for p in problems:
        issue = _issue("error", code, p.msg, _expression(p.loc, root) if p.loc else None)
        issue["details"] = {"text": title}
        issues.append(issue)
    if not issues:
        issues.append({"severity": "error" if status < 500 else "fatal", "code": code,
                       "diagnostics": f"{title}: {detail}" if detail else title})
    return {"resourceType": "OperationOutcome", "issue": issues}
