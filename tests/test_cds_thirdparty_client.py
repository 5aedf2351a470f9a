"""The patient-view service driven by a third-party CDS Hooks client over the 38 Synthea patients.

The client is HealthChain's ``SandboxClient`` (PyPI ``healthchain`` 0.16.x, Apache-2.0,
github.com/dotimplement/HealthChain), a maintained CDS Hooks test client. The requests are built by
the client (``load_from_path``, ``load_from_registry``, its ``CdsRequestConstructor``) and POSTed by
``SandboxClient.send_requests()`` to ``leukodx serve`` on a loopback port (CDS auth off); every answer
is also parsed with the client's own ``CDSResponse`` model.

What SandboxClient 0.16.1 does by default (read in healthchain/sandbox/*.py and seen here):

* ``context`` is the hook's context model built with no values: ``PatientViewContext`` fills
  ``patientId`` with 7 random digits and ``userId`` with a random ``Practitioner/``,
  ``PractitionerRole/``, ``Patient/`` or ``RelatedPerson/`` id. ``load_from_path``,
  ``load_from_registry`` and ``load_synthetic`` offer no way to set the context, so **every request
  it builds names a patient other than the one whose data is in the prefetch**. Only the lower-level
  ``CdsRequestConstructor.construct_request(prefetch, workflow, context={...})`` takes a context.
* ``load_from_path(file.json)`` sends the file's JSON object as the ``prefetch`` unchanged.
* ``load_from_registry("synthea-patient", data_dir=..., patient_file=...)`` keys the prefetch by
  lower-cased resource type (``patient``, ``observation``, ``condition``, ``medicationrequest``,
  ``diagnosticreport``), each a ``collection`` Bundle (fhir.resources R4B) - not the keys of the
  service's discovery document (``observations``, ``medicationRequests`` ...), which it never reads.
* it sends no ``fhirServer`` / ``fhirAuthorization``, so a service cannot fetch what is missing.
* ``send_requests()`` turns any 4xx/5xx, timeout or connection error into ``{}`` (logged at ERROR),
  and when ``CDSResponse`` refuses an answer it silently returns the raw JSON instead. This test
  therefore keeps each raw HTTP answer (an httpx event hook on the client's own ``httpx.Client``)
  and parses the cards with ``CDSResponse`` itself.
* its ``Card``/``Suggestion``/``Link`` models (healthchain/models/responses/cdsresponse.py) declare
  ``Suggestion.isRecommended`` and ``Link.autoLaunchable`` as ``Optional[bool]`` without a default,
  which pydantic v2 makes *required*: a card with a suggestion lacking ``isRecommended`` (optional
  in CDS Hooks 2.0.1) is refused; ``summary`` is limited to 140 characters.

The data: tests/fixtures/fhir-examples/synthea (trimmed, see tests/fixtures/README.md). Each
patient is sent three ways through the client, plus the client's own Synthea loader:

1. *as recorded*, with ``context.patientId`` set to the patient (through ``CdsRequestConstructor``)
   and the prefetch answered as an EHR would answer the discovery templates. All 38 latest CBCs are
   years old (1967-2021), so the answer is at most one ``info`` card that says how old the CBC is.
2. *current*: the same record cut at the latest CBC (nothing dated after it is kept) and moved
   forward by whole days so that the CBC was taken 2 days ago; every card states the date of the
   count in its detail.
3. *the client's default*: the current prefetch from a file through ``load_from_path``, with the
   random ``patientId`` the client picks: the data belong to another patient than the context.
4. *the client's Synthea loader* with its own prefetch keys and random ``patientId``.

In 3 and 4 the other patient's data must never be used and the answer must say so: a 4xx whose
body names the mismatch, or cards that all name it. No answer is ever a bare ``{"cards": []}``.

Install without its pinned dependencies (it pins fastapi<0.138 and httpx<0.28, which conflict
with requirements.lock; SandboxClient's import path needs only these four):
``pip install --no-deps healthchain==0.16.1 fhir.resources==8.1.0 fhir-core==1.1.12 colorama==0.4.6``
"""
from __future__ import annotations

import copy
import json
import logging
import re
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Optional
from urllib.parse import parse_qsl

import httpx
import pytest
import yaml

from conftest import FIXTURES, ROOT, free_port, start_server, stop_server

INSTALL = ("pip install --no-deps healthchain==0.16.1 fhir.resources==8.1.0 fhir-core==1.1.12 "
           "colorama==0.4.6")
pytest.importorskip("healthchain", reason=f"HealthChain (third-party CDS Hooks client) is not installed: {INSTALL}")

import colorama  # noqa: E402  (healthchain's logger calls colorama.init(), which wraps sys.stdout)
from healthchain.models import CDSResponse  # noqa: E402
from healthchain.sandbox import SandboxClient  # noqa: E402
from healthchain.sandbox import sandboxclient as sandboxclient_module  # noqa: E402
from healthchain.sandbox.requestconstructors import CdsRequestConstructor  # noqa: E402
from healthchain.sandbox.workflows import Workflow  # noqa: E402

colorama.deinit()
logging.getLogger("healthchain").setLevel(logging.WARNING)

SYNTHEA = FIXTURES / "fhir-examples" / "synthea"
PATIENT_FILES = sorted(p.name for p in SYNTHEA.glob("*.json"))
SERVICE = "leukodx-patient-view"
EHR_BASE = "https://ehr.example.org/fhir"
STALE_AFTER_DAYS = 30            # "older than 30 days before today": no current CBC
CURRENT_AGE_DAYS = 2             # the re-dated CBC of scenario 2 was taken this many days ago
_LABS = yaml.safe_load((ROOT / "rules" / "labs.yaml").read_text(encoding="utf-8"))["tests"]
CBC_LOINC = {code for test, spec in _LABS.items() if test not in ("vitamin_b12", "folate", "copper")
             for code in spec["loinc"]}
MISMATCH = re.compile(r"mismatch|does not match|do not match|doesn't match|don't match|not the patient|"
                      r"another patient|other patient|different patient|not to Patient/|belongs? to Patient/", re.I)
DATE_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})(T[\d:.]+(Z|[+-]\d{2}:\d{2})?)?$")
START_FIELDS = ("effectiveDateTime", "effectiveInstant", "issued", "authoredOn", "onsetDateTime", "recordedDate",
                "dateAsserted")
LATER_FACTS = ("deceasedDateTime", "abatementDateTime")   # not yet known on the day after the CBC


# ---- the server and the client ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def service_url(tmp_path_factory):
    port = free_port()
    proc = start_server(port, f"sqlite:///{tmp_path_factory.mktemp('db')}/fb.db", LEUKODX_CDS_AUTH="off")
    yield f"http://127.0.0.1:{port}/cds-services/{SERVICE}"
    stop_server(proc)


@pytest.fixture(scope="module")
def templates(service_url) -> dict[str, str]:
    """The prefetch templates of the patient-view service, from its discovery document."""
    services = httpx.get(service_url.rsplit("/", 1)[0], timeout=30).json()["services"]
    return next(s for s in services if s["id"] == SERVICE)["prefetch"]


class _KeepResponses:
    """``httpx`` as the client module sees it, each response it receives kept with its body."""

    def __init__(self) -> None:
        self.responses: list[httpx.Response] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(httpx, name)

    def Client(self, **kwargs: Any) -> httpx.Client:   # noqa: N802 (httpx's name)
        kwargs.setdefault("event_hooks", {}).setdefault("response", []).append(self._keep)
        return httpx.Client(**kwargs)

    def _keep(self, response: httpx.Response) -> None:
        response.read()
        self.responses.append(response)


def send(client: SandboxClient, monkeypatch) -> tuple[httpx.Response, Any]:
    """POST the client's one queued request with its own send_requests(): (raw answer, what it returned)."""
    keep = _KeepResponses()
    with monkeypatch.context() as m:
        m.setattr(sandboxclient_module, "httpx", keep)
        returned = client.send_requests()
    assert len(keep.responses) == len(returned) == 1
    return keep.responses[0], returned[0]


# ---- the EHR side: the Synthea record as a FHIR server would hold and answer it --------------------

@lru_cache(maxsize=None)
def ehr_record(name: str) -> tuple[str, tuple[dict, ...]]:
    """(Patient.id, resources) as stored by a FHIR server after the Synthea transaction: every
    ``urn:uuid:`` reference rewritten to ``Type/id``, as transaction processing does."""
    bundle = json.loads((SYNTHEA / name).read_text(encoding="utf-8"))
    local = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
             for e in bundle["entry"] if e.get("fullUrl")}

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (local.get(v, v) if k == "reference" and isinstance(v, str) else resolve(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(x) for x in node]
        return node

    resources = tuple(resolve(e["resource"]) for e in bundle["entry"])
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    return patient["id"], resources


def instant(value: Optional[str]) -> Optional[datetime]:
    if not isinstance(value, str) or not DATE_TIME.match(value):
        return None
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def start_of(resource: dict) -> Optional[datetime]:
    for key in START_FIELDS:
        if resource.get(key):
            return instant(resource[key])
    return instant((resource.get("effectivePeriod") or {}).get("start"))


def loinc(resource: dict) -> set[str]:
    return {c.get("code") for c in (resource.get("code") or {}).get("coding") or []
            if c.get("system") in (None, "http://loinc.org")}


def latest_cbc(resources: tuple[dict, ...] | list[dict]) -> Optional[datetime]:
    times = [start_of(r) for r in resources if r["resourceType"] == "Observation" and loinc(r) & CBC_LOINC]
    return max((t for t in times if t), default=None)


def moved(node: Any, days: int) -> Any:
    """Every full FHIR date / dateTime moved by whole days (time of day and offset kept)."""
    if isinstance(node, dict):
        return {k: moved(v, days) for k, v in node.items()}
    if isinstance(node, list):
        return [moved(x, days) for x in node]
    if isinstance(node, str) and DATE_TIME.match(node):
        return (date.fromisoformat(node[:10]) + timedelta(days=days)).isoformat() + node[10:]
    return node


@lru_cache(maxsize=None)
def current_record(name: str) -> tuple[str, tuple[dict, ...]]:
    """The record as it stood just after its latest CBC, moved so that the CBC was taken
    CURRENT_AGE_DAYS ago (birth date too, so the patient's age at the count is unchanged)."""
    pid, resources = ehr_record(name)
    cbc = latest_cbc(resources)
    kept = []
    for r in copy.deepcopy(resources):
        when = start_of(r)
        if when is not None and when > cbc:
            continue
        for key in LATER_FACTS:
            if (instant(r.get(key)) or cbc) > cbc:
                del r[key]
        kept.append(r)
    days = (datetime.now(timezone.utc).date() - timedelta(days=CURRENT_AGE_DAYS) - cbc.date()).days
    return pid, tuple(moved(kept, days))


def search(template: str, pid: str, resources: tuple[dict, ...]) -> Any:
    """A FHIR server's answer to one prefetch template (read, or search with the parameters the
    templates use: patient, code, clinical-status, _sort=-date, _count)."""
    query = template.replace("{{context.patientId}}", pid)
    path, _, params = query.partition("?")
    kind, _, rid = path.partition("/")
    if rid:
        return next((r for r in resources if r["resourceType"] == kind and r.get("id") == rid), None)
    hits = [r for r in resources if r["resourceType"] == kind]
    for key, value in parse_qsl(params):
        if key == "patient":
            hits = [r for r in hits if (r.get("subject") or {}).get("reference") == f"Patient/{value}"]
        elif key == "code":
            codes = {v.split("|")[-1] for v in value.split(",")}
            hits = [r for r in hits if loinc(r) & codes]
        elif key == "clinical-status":
            hits = [r for r in hits if value in json.dumps(r.get("clinicalStatus") or {})]
        elif key == "_sort" and value == "-date":
            hits.sort(key=lambda r: start_of(r) or datetime.min.replace(tzinfo=timezone.utc), reverse=True)
    count = dict(parse_qsl(params)).get("_count")
    hits = hits[:int(count)] if count else hits
    return {"resourceType": "Bundle", "type": "searchset", "total": len(hits),
            "entry": [{"fullUrl": f"{EHR_BASE}/{r['resourceType']}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in hits]}


def prefetch(templates: dict[str, str], pid: str, resources: tuple[dict, ...]) -> dict[str, Any]:
    return {key: search(template, pid, resources) for key, template in templates.items()}


def client_for(url: str) -> SandboxClient:
    return SandboxClient(url=url, workflow="patient-view", timeout=60)


def matched_request(url: str, pre: dict, pid: str) -> SandboxClient:
    """The client with one request whose context names the patient of the prefetch."""
    client = client_for(url)
    client.requests.append(CdsRequestConstructor().construct_request(   # (its validate_workflow decorator
        pre, workflow=Workflow.patient_view,                             # finds `workflow` only as a keyword
        context={"userId": "Practitioner/example", "patientId": pid}))  # once any keyword is given)
    return client


# ---- what the answers must say -----------------------------------------------------------------------

def cards_of(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, (response.status_code, response.text[:500])
    body = response.json()
    assert body != {"cards": []}, "an empty card list says nothing: never silent"
    CDSResponse.model_validate(body)         # the third-party client's own response model
    return body["cards"]


def text(card: dict) -> str:
    return f"{card.get('summary', '')}\n{card.get('detail') or ''}"


def date_forms(day: date) -> list[str]:
    month, mon = day.strftime("%B"), day.strftime("%b")
    return [day.isoformat()] + [f.format(d=day.day, dd=f"{day.day:02d}", m=m, y=day.year)
                                for m in (month, mon) for f in ("{d} {m} {y}", "{dd} {m} {y}", "{m} {d}, {y}",
                                                                "{m} {dd}, {y}")]


def states_date(detail: str, day: date) -> bool:
    return any(form.lower() in detail.lower() for form in date_forms(day))


def states_age(words: str, age_days: int) -> bool:
    """'N years/months/weeks/days' (old, ago ...) with N within one unit of the real age."""
    per_unit = {"year": 365.25, "yr": 365.25, "month": 30.44, "week": 7, "day": 1}
    for n, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(year|yr|month|week|day)s?\b", words, re.I):
        if abs(float(n) - age_days / per_unit[unit.lower()]) <= 1:
            return True
    return False


def says_mismatch(response: httpx.Response) -> None:
    """Another patient's data: a 4xx naming the mismatch, or cards that all name it (none built on it)."""
    assert response.status_code != 200 or response.json() != {"cards": []}, \
        "another patient's prefetch answered with an empty card list"
    if 400 <= response.status_code < 500:
        assert MISMATCH.search(response.text), (response.status_code, response.text[:500])
        return
    cards = cards_of(response)
    unnamed = [c["summary"] for c in cards if not MISMATCH.search(text(c))]
    assert not unnamed, f"cards that do not name the patient mismatch (the data would have been used): {unnamed}"


def assess_today(resources: list[dict], pid: str) -> Any:
    """leukodx's own reading of the same data, judged today as the service judges it."""
    from leukodx.api import fhir
    from leukodx.engine import assess
    from leukodx.engine import get_engine
    mapped = fhir.map_bundle(list(resources), kb=get_engine().kb, patient_id=pid, as_of=datetime.now(timezone.utc).date())
    return assess(mapped.case, partial=True)


# ---- the tests -------------------------------------------------------------------------------------

def test_every_synthea_patient_is_here():
    assert len(PATIENT_FILES) == 38


@pytest.mark.parametrize("name", PATIENT_FILES, ids=lambda n: n[:24])
def test_as_recorded_the_old_cbc_gives_at_most_an_info_card_saying_its_age(name, service_url, templates, monkeypatch):
    pid, resources = ehr_record(name)
    cbc = latest_cbc(resources)
    age_days = (datetime.now(timezone.utc).date() - cbc.date()).days
    assert age_days > STALE_AFTER_DAYS                      # every Synthea CBC here is years old
    response, _ = send(matched_request(service_url, prefetch(templates, pid, resources), pid), monkeypatch)
    cards = cards_of(response)
    assert len(cards) == 1 and cards[0]["indicator"] == "info", [(c["indicator"], c["summary"]) for c in cards]
    assert states_age(text(cards[0]), age_days), (f"latest CBC {cbc.date()} is {age_days} days old", text(cards[0]))


@pytest.mark.parametrize("name", PATIENT_FILES, ids=lambda n: n[:24])
def test_a_current_cbc_gives_cards_that_state_the_date_of_the_count(name, service_url, templates, monkeypatch):
    pid, resources = current_record(name)
    cbc = latest_cbc(resources)
    assert (datetime.now(timezone.utc).date() - cbc.date()).days == CURRENT_AGE_DAYS
    response, _ = send(matched_request(service_url, prefetch(templates, pid, resources), pid), monkeypatch)
    if response.status_code == 200 and response.json() == {"cards": []}:
        # no card is the answer for counts with nothing to flag, and only then
        a = assess_today(resources, pid)
        assert a.cbc.current and a.not_assessed == [] and a.alerts == [] and a.causes == []
        assert a.risk_tier.tier in ("normal", "unknown") and a.risk_tier.tier_at_least is None
        assert not {f.id for f in a.findings} & {"leukopenia", "neutropenia", "lymphopenia"}
        return
    cards = cards_of(response)
    undated = [c["summary"] for c in cards if not states_date(c.get("detail") or "", cbc.date())]
    assert not undated, f"cards whose detail does not state the date of the count ({cbc.date()}): {undated}"


@pytest.mark.parametrize("name", PATIENT_FILES, ids=lambda n: n[:24])
def test_the_clients_default_context_names_another_patient_whose_data_is_never_used(
        name, service_url, templates, monkeypatch, tmp_path):
    pid, resources = current_record(name)
    path = tmp_path / "prefetch.json"
    path.write_text(json.dumps(prefetch(templates, pid, resources)), encoding="utf-8")
    client = client_for(service_url).load_from_path(path)
    assert client.requests[0].context.patientId != pid     # the client's default: a random patient id
    response, _ = send(client, monkeypatch)
    says_mismatch(response)


@pytest.mark.parametrize("name", PATIENT_FILES, ids=lambda n: n[:24])
def test_the_clients_own_synthea_loader(name, service_url, monkeypatch):
    client = client_for(service_url).load_from_registry("synthea-patient", data_dir=str(SYNTHEA), patient_file=name)
    sent = client.requests[0].model_dump(exclude_none=True, mode="json")
    pid, _ = ehr_record(name)
    assert sent["context"]["patientId"] != pid
    assert {"patient", "observation"} <= set(sent["prefetch"])   # its keys, not the discovery document's
    response, _ = send(client, monkeypatch)
    says_mismatch(response)
