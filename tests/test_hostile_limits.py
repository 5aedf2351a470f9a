"""Issue 12, findings 1, 2 and 6: hostile bodies are refused before any parser sees them, parsing
runs off the event loop, YAML only where a person sends YAML, and unusual but valid input gets an
answer, never a 500. Each test failed on the main branch before the fix."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import date, datetime, timedelta, timezone
from unittest.mock import patch

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from leukodx.api.app import create_app
from leukodx.api.config import Settings
from leukodx.api.offload import INLINE_MAX_BYTES
from leukodx.engine import CaseError, get_engine
from leukodx.engine import parse as parse_module
from leukodx.engine.parse import load_document, load_json_document, load_yaml_document, scan_json
from leukodx.engine.reason import MAX_FACTS_PER_ASSERT, DurableReasoner

from conftest import base_case, lab
from test_cds_hooks import CBC_SEVERE, draft_bundle, prefetch, request, searchset, thiopurine_order

JSON = {"content-type": "application/json"}
YAML = {"content-type": "application/yaml"}
FHIR = {"content-type": "application/fhir+json"}
DEEP = 100_000


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(cds_auth="off", feedback_db_url=f"sqlite:///{tmp_path_factory.mktemp('db')}/fb.db")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def not_5xx(r):
    assert r.status_code < 500, r.text[:300]
    assert "Traceback" not in r.text
    return r


# -- finding 1: YAML nested 100,000 deep killed the process -----------------------------------------

def test_yaml_nested_100000_deep_is_refused_and_the_process_lives():
    """On main, libyaml's composer recursed once per level in C and overflowed the stack (SIGSEGV)
    from about 25,000 levels; run in a child process so a regression fails here, not the test run."""
    code = ("from leukodx.engine.parse import load_document\nfrom leukodx.engine import CaseError\n"
            f"doc = b'labs: ' + b'[' * {DEEP} + b']' * {DEEP}\n"
            "try:\n    load_document(doc)\nexcept CaseError as e:\n    print(e.problems[0].msg)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-500:])
    assert "nested too deeply" in out.stdout


@pytest.mark.parametrize("body", [b"labs: " + b"[" * DEEP + b"]" * DEEP,
                                  b"".join(b"  " * i + b"a:\n" for i in range(200)),
                                  b"a: " + b"{b: " * 100 + b"1" + b"}" * 100])
def test_yaml_depth_is_checked_before_composing(monkeypatch, body):
    monkeypatch.setattr(parse_module.yaml, "load", lambda *a, **k: pytest.fail("YAML composed"))
    with pytest.raises(CaseError, match="nested too deeply"):
        load_yaml_document(body, "case")


@pytest.mark.parametrize("body", [b'{"labs": ' + b"[" * DEEP + b"]" * DEEP + b"}",
                                  b'["\\\\", ' + b"[" * 100 + b"]" * 100 + b"]",
                                  b'{"a": "\\"", "b": ' + b"{" * 65 + b"}" * 65 + b"}"])
def test_json_depth_is_checked_before_parsing(monkeypatch, body):
    monkeypatch.setattr(parse_module.json, "loads", lambda *a, **k: pytest.fail("JSON parsed"))
    with pytest.raises(CaseError, match="nested too deeply"):
        load_json_document(body, "case", 10 ** 7)


def test_brackets_inside_strings_are_not_nesting():
    doc = load_json_document(b'{"id": "' + b"[" * 5000 + b'\\"]]]", "labs": []}', "case", 10 ** 6)
    assert doc["id"].startswith("[[[")
    scan_json(b'["' + b"]" * 100 + b'", ' + b"[" * 60 + b"]" * 60 + b"]")


@pytest.mark.parametrize("loader,body", [(load_json_document, b"[" + b"0," * 3000 + b"0]"),
                                         (load_yaml_document, b"[" + b"0, " * 3000 + b"0]")])
def test_the_number_of_values_is_bounded(loader, body):
    with pytest.raises(CaseError, match="too many values"):
        loader(body, "case", 10 ** 6, 64, 1000)


def test_deep_bodies_on_every_route_are_answered(client):
    deep = b'{"a": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    assert "nested too deeply" in not_5xx(client.post("/v1/assess", content=deep, headers=JSON)).text
    assert "nested too deeply" in not_5xx(client.post("/v1/assess/fhir", content=deep, headers=FHIR)).text
    not_5xx(client.post("/cds-services/leukodx-patient-view", content=deep, headers=JSON))


# -- finding 2: YAML on the event loop, and on FHIR routes ------------------------------------------

def test_the_fhir_route_never_parses_yaml(client, monkeypatch):
    monkeypatch.setattr(parse_module.yaml, "load", lambda *a, **k: pytest.fail("YAML parsed on a FHIR route"))
    body = b"resourceType: Bundle\ntype: collection\nentry: []\n"
    r = not_5xx(client.post("/v1/assess/fhir", content=body, headers=FHIR))
    assert r.status_code == 422 and "not valid JSON" in r.text


def test_a_case_sent_as_json_is_parsed_as_json_only(client):
    r = client.post("/v1/assess", content=b"labs: [{test: wbc, value: 3, unit: 10^9/L}]\n", headers=JSON)
    assert r.status_code == 422 and "not valid JSON" in r.text


def test_yaml_above_its_own_size_limit_is_413(tmp_path):
    settings = Settings(cds_auth="off", max_yaml_bytes=2048, feedback_db_url=f"sqlite:///{tmp_path}/fb.db")
    with TestClient(create_app(settings)) as c:
        body = b"id: x\nrationale: '" + b"a" * 3000 + b"'\nlabs: []\n"
        assert c.post("/v1/assess", content=body, headers=YAML).status_code == 413
        assert c.post("/v1/assess", content=json.dumps({"id": "x", "rationale": "a" * 3000}),
                      headers=JSON).status_code == 422     # the same size as JSON is read


_PAD = b"\n" + b" " * INLINE_MAX_BYTES   # bodies above the size that is parsed on the loop itself


@pytest.mark.parametrize("path,headers,body,tier", [
    ("/v1/assess", JSON, json.dumps(base_case()).encode() + _PAD, "normal"),
    ("/v1/assess", YAML, b"labs: [{test: wbc, value: 3, unit: 10^9/L}]\n# " + _PAD, "unknown"),
    ("/v1/assess/fhir", FHIR, json.dumps(searchset(*CBC_SEVERE)).encode() + _PAD, "severe"),
])
def test_parsing_runs_off_the_event_loop(client, monkeypatch, path, headers, body, tier):
    """The parser is held inside its call; /healthz must still answer (it is served by the event loop).
    Bodies of at most INLINE_MAX_BYTES are parsed on the loop: a millisecond, less than a thread hop."""
    release, entered = threading.Event(), threading.Event()
    released: list[bool] = []
    for name in ("load_json_document", "load_yaml_document"):
        real = getattr(parse_module, name)

        def held(*args, _real=real, **kwargs):
            entered.set()
            released.append(release.wait(20))   # False if /healthz could only answer after this gave up
            return _real(*args, **kwargs)
        monkeypatch.setattr(f"leukodx.api.rest.{name}", held)
    answers = {}
    worker = threading.Thread(target=lambda: answers.setdefault("post", client.post(path, content=body,
                                                                                    headers=headers)))
    worker.start()
    try:
        assert entered.wait(20)
        health = client.get("/healthz")
        assert health.status_code == 200 and not release.is_set()
    finally:
        release.set()
        worker.join(30)
    assert released == [True] and answers["post"].status_code == 200      # each body is a valid case
    assert answers["post"].json()["risk_tier"]["tier"] == tier


# -- finding 6: unusual but valid input -------------------------------------------------------------

def test_a_case_with_every_known_drug_is_assessed(client):
    """durable-rules error 302: an asserted fact holds at most 253 properties; each ruleset now gets
    only the facts its rules read."""
    drugs = [d["id"] for d in get_engine().kb.drugs]
    assert len(drugs) > 71
    meds = [{"name": d, "start": "2025-01-01"} for d in drugs]
    r = client.post("/v1/assess", json=base_case(labs=[lab("wbc", 2.0), lab("anc", 0.4)], medications=meds))
    assert r.status_code == 200, r.text[:300]


def test_every_ruleset_fits_in_one_durable_rules_fact():
    reasoner = get_engine().reasoner
    assert isinstance(reasoner, DurableReasoner)
    assert max(len(reads) for reads in reasoner._reads.values()) <= MAX_FACTS_PER_ASSERT


@pytest.mark.parametrize("patient,loc", [({"weight_kg": 10 ** 1000}, "patient.weight_kg"),
                                         ({"age_years": -10 ** 400}, "patient.age_years")])
def test_integers_beyond_floats_are_refused_naming_the_field(client, patient, loc):
    r = client.post("/v1/assess", content=json.dumps(base_case(patient=patient)), headers=JSON)
    assert r.status_code == 422
    assert any(e["loc"] == loc and "finite" in e["detail"] for e in r.json()["errors"]), r.text


def test_huge_integers_in_fhir_and_cds_bodies_are_answered(client):
    obs = dict(CBC_SEVERE[1])
    obs["valueQuantity"] = {**obs["valueQuantity"], "value": 12345}
    body = json.dumps(searchset(CBC_SEVERE[0], obs)).replace("12345", str(10 ** 1000))
    not_5xx(client.post("/v1/assess/fhir", content=body, headers=FHIR))
    hook = json.dumps(request("order-sign", prefetch(CBC_SEVERE), draftOrders=draft_bundle(thiopurine_order(mg=12345))))
    not_5xx(client.post("/cds-services/leukodx-order-sign", content=hook.replace("12345", str(10 ** 400)),
                        headers=JSON))


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_dates_with_extreme_offsets_are_answered(client, when):
    not_5xx(client.post("/v1/assess", json=base_case(labs=[lab("wbc", 3.0, time=when)])))
    not_5xx(client.post("/v1/assess", json=base_case(as_of=when)))


def test_utc_naive_never_overflows():
    from leukodx.engine.timeutil import utc_naive, utc_overflows
    late = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(-timedelta(hours=14)))
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))
    assert utc_naive(late) == datetime.max and utc_naive(early) == datetime.min
    assert utc_overflows(late) and utc_overflows(early)
    assert utc_naive(datetime(2025, 3, 10, 8, tzinfo=timezone(timedelta(hours=1)))) == datetime(2025, 3, 10, 7)
    for v in (datetime(2025, 3, 10, 8, 30, 1, 5), datetime(2025, 3, 10, 8, 30, 1, 5, tzinfo=timezone.utc)):
        out = utc_naive(v)          # naive and UTC: the same wall time, without a tzinfo
        assert out == datetime(2025, 3, 10, 8, 30, 1, 5) and out.tzinfo is None and not utc_overflows(v)
    assert utc_naive(date(2025, 3, 10)) == datetime(2025, 3, 10) and not utc_overflows(date(2025, 3, 10))


@pytest.mark.parametrize("body", [b'{"id": "\\ud800", "labs": []}', b'{"id": "x\\udc00y", "labs": []}',
                                  b'{"id": "\\ud83d", "labs": [{"test": "wbc", "value": 3, "unit": "10^9/L"}]}'])
def test_a_lone_surrogate_is_refused(client, body):
    r = client.post("/v1/assess", content=body, headers=JSON)
    assert r.status_code == 422 and "surrogate" in r.text
    ok = client.post("/v1/assess", content=b'{"id": "\\ud83d\\ude00", "labs": [{"test": "wbc", "value": 3, '
                                           b'"unit": "10^9/L"}]}', headers=JSON)
    assert ok.status_code == 200 and ok.json()["case_id"] == "\U0001F600"


@pytest.mark.parametrize("doc", [b"id: !!binary aGVsbG8=\nlabs: []\n", b"id: !!python/name:os.system x\n",
                                 b"labs: !!set {a: null}\n", b"id: !custom x\n"])
def test_yaml_tags_are_refused(client, doc):
    r = client.post("/v1/assess", content=doc, headers=YAML)
    assert r.status_code == 422 and "tag" in r.text


@pytest.mark.parametrize("context,pre,words", [
    ({"draftOrders": {"resourceType": "Bundle", "entry": 5}}, None, "draftOrders.entry"),
    ({"draftOrders": 5}, None, "draftOrders"),
    ({"draftOrders": draft_bundle(thiopurine_order()), "selections": [{}]}, None, "selections"),
    ({}, {"link": 5}, "link"),
    ({}, {"entry": 5}, "entry"),
])
def test_cds_bodies_with_wrong_types_are_400(client, context, pre, words):
    hook = "order-select" if "selections" in context else ("order-sign" if context else "patient-view")
    observations = {**searchset(*CBC_SEVERE), **(pre or {})}
    body = request(hook, prefetch(CBC_SEVERE, observations=observations), **context)
    r = client.post(f"/cds-services/leukodx-{hook}", json=body)
    assert r.status_code == 400 and words in r.text, r.text[:300]


def test_load_document_still_sniffs_for_files_and_the_cli():
    assert load_document(b'{"a": 1}') == {"a": 1}
    assert load_document(b"a: 1\n") == {"a": 1}
    with pytest.raises(CaseError, match="empty"):
        load_document(b"   ")



def _measured(text: str) -> tuple[int, int]:
    """(deepest nesting, values) of JSON text, one character at a time: what scan_json must find."""
    depth = deepest = 0
    values = 1
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            values += 1
        elif ch in "]}":
            depth -= 1
        elif ch == ",":
            values += 1
    return deepest, values


_TEXT = st.text(alphabet=st.sampled_from(list('[]{},:"\\ab \u00e9\u2028\U0001F600')), max_size=12)
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | _TEXT,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
                     max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(_JSON, st.booleans(), st.sampled_from([None, 1, 2]), st.integers(1, 40))
def test_scan_measures_what_a_character_by_character_reading_measures(value, ascii_only, indent, chunk):
    # strings full of brackets, commas, quotes and backslashes, empty strings, keys next to values; chunks
    # of a few bytes so that strings, escapes and runs of quotes cross the chunk boundaries
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    data = text.encode()
    deepest, values = _measured(text)
    with patch.object(parse_module, "_SCAN_CHUNK", chunk):
        scan_json(data, "doc", deepest, values)
        with pytest.raises(CaseError, match="nested too deeply" if deepest else "too many values"):
            scan_json(data, "doc", deepest - 1 if deepest else 64, values if deepest else values - 1)
        if deepest:
            with pytest.raises(CaseError, match="too many values"):
                scan_json(data, "doc", deepest, values - 1)


def test_a_long_text_in_any_string_of_real_fhir_data_gets_an_answer():
    """Every string of the FHIR fixtures (one kind of path at a time) replaced by 100,000 characters:
    a case and an assessment, or a mapping or case error naming the problem; never another exception.
    (Two such texts used to take a minute and seconds: a unit, and a genotype report.)"""
    import copy
    from conftest import FIXTURES
    from leukodx.api.fhir import FhirMappingError, map_bundle

    def strings(x, path=()):
        if isinstance(x, dict):
            for k, v in x.items():
                yield from strings(v, path + (k,))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                yield from strings(v, path + (i,))
        elif isinstance(x, str):
            yield path

    eng, seen, tried = get_engine(), set(), 0
    for f in sorted((FIXTURES / "fhir-examples").rglob("*.json")):
        if f.stat().st_size > 200_000:
            continue
        data = json.loads(f.read_text(encoding="utf-8"))
        for path in strings(data):
            kind = (data.get("resourceType"), tuple(p for p in path if not isinstance(p, int))[-4:])
            if kind in seen:
                continue
            seen.add(kind)
            changed = copy.deepcopy(data)
            target = changed
            for p in path[:-1]:
                target = target[p]
            target[path[-1]] = "T" * 100_000
            try:
                eng.assess(map_bundle(changed, kb=eng.kb).case, partial=True)
            except (FhirMappingError, CaseError):
                pass
            tried += 1
    assert tried > 300


# ---- bodies are read by the route, not ahead of it (security red-team) ---------------------------------

def _asgi_call(app, path, chunks, complete=True):
    """One POST through the ASGI app; ``chunks`` are handed out by receive as the route asks (then, when not
    ``complete``, the client goes away). Returns the status and how many chunks the app read."""
    import asyncio
    sent, read = [], [0]

    async def receive():
        if read[0] < len(chunks):
            read[0] += 1
            return {"type": "http.request", "body": chunks[read[0] - 1],
                    "more_body": read[0] < len(chunks) or not complete}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "state": {},
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]}

    async def run():
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)
    asyncio.run(run())
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), read[0]


def test_an_unauthorised_cds_call_is_refused_before_its_body_is_read(tmp_path):
    """The body limit had buffered up to 32 MiB per request before the route checked the JWT: 60 held
    connections took a worker from 230 MiB to 2.1 GiB without any credential."""
    from leukodx.api.app import create_app
    from leukodx.api.config import Settings
    app = create_app(Settings(feedback_db_url=f"sqlite:///{tmp_path}/fb.db", cds_public_base_url="http://x"))
    status, read = _asgi_call(app, "/cds-services/leukodx-patient-view", [b"{" + b" " * 65536] * 100)
    assert (status, read) == (401, 0)


def test_a_streamed_body_over_the_limit_is_413_and_a_client_gone_mid_body_is_499(tmp_path):
    from leukodx.api.app import create_app
    from leukodx.api.config import Settings
    app = create_app(Settings(feedback_db_url=f"sqlite:///{tmp_path}/fb.db", max_body_bytes=100_000))
    status, read = _asgi_call(app, "/v1/assess", [b" " * 40_000] * 5)         # no Content-Length: chunked
    assert status == 413 and read == 3                                      # refused at the chunk that passed it
    status, read = _asgi_call(app, "/v1/assess", [b"{"], complete=False)
    assert (status, read) == (499, 1)


@pytest.mark.parametrize("link", [5, True, "x"])
def test_a_resource_whose_link_is_not_a_list_is_no_bundle_page_and_no_crash(client, link):
    """A Patient (or any single resource) whose `link` is a number or true had been read as a Bundle's paging
    links: a 500, and the patient's ANC of 0.3 went without a card. Only a Bundle's links page."""
    body = request("patient-view", prefetch(CBC_SEVERE))
    body["prefetch"]["patient"]["link"] = link
    r = client.post("/cds-services/leukodx-patient-view", json=body)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["cards"][0]["indicator"] == "critical"
