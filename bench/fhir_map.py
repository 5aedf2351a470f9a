"""FHIR mapping of a large patient Bundle: JSON parse, mapping to a case, assessment (median ms).

Two 3 MB Bundles built from the repository's Synthea fixture with the most labs:
  synthea-shaped  its Patient, labs, medications and conditions, plus Encounter and Claim resources
                  (what a whole Synthea record is mostly made of; the mapping skips them) up to the size
  all-labs        its lab Observations repeated with new ids, one day apart, up to the size (the worst
                  case: every resource is read, and the most recent 2,000 labs are kept)

    python bench/fhir_map.py [--megabytes 3] [--rounds 5] [--json]
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from leukodx.api.fhir import map_bundle
from leukodx.engine import get_engine

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA = ROOT / "tests" / "fixtures" / "fhir-examples" / "synthea"


def richest() -> dict[str, Any]:
    def labs(path: Path) -> int:
        text = path.read_text(encoding="utf-8")
        return text.count('"resourceType": "Observation"') + text.count('"resourceType":"Observation"')
    return json.loads(max(sorted(SYNTHEA.glob("*.json")), key=labs).read_text(encoding="utf-8"))


def _filler(i: int, patient_ref: str) -> list[dict[str, Any]]:
    start = (datetime(2015, 1, 1) + timedelta(days=i)).isoformat() + "Z"
    enc = {"resourceType": "Encounter", "id": f"enc-{i}", "status": "finished",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
           "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003",
                                 "display": "Encounter for check up (procedure)"}], "text": "Encounter for check up"}],
           "subject": {"reference": patient_ref}, "period": {"start": start, "end": start}}
    claim = {"resourceType": "Claim", "id": f"claim-{i}", "status": "active",
             "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
             "use": "claim", "patient": {"reference": patient_ref}, "created": start,
             "item": [{"sequence": n, "productOrService": {"coding": [{"system": "http://snomed.info/sct",
                                                                        "code": "185349003"}]},
                       "encounter": [{"reference": f"urn:uuid:enc-{i}"}]} for n in range(1, 6)]}
    return [{"fullUrl": f"urn:uuid:enc-{i}", "resource": enc}, {"fullUrl": f"urn:uuid:claim-{i}", "resource": claim}]


def bundles(megabytes: float) -> dict[str, dict[str, Any]]:
    base = richest()
    size = int(megabytes * 1024 * 1024)
    patient = next(e["resource"] for e in base["entry"] if e["resource"]["resourceType"] == "Patient")
    ref = f"urn:uuid:{patient['id']}"
    shaped = copy.deepcopy(base)
    i = 0
    while len(json.dumps(shaped)) < size:
        for _ in range(200):
            shaped["entry"] += _filler(i, ref)
            i += 1
    labs = [e for e in base["entry"] if e["resource"]["resourceType"] == "Observation"]
    all_labs = copy.deepcopy(base)
    n = 0
    while len(json.dumps(all_labs)) < size:
        for e in labs:
            n += 1
            r = copy.deepcopy(e["resource"])
            r["id"] = f"{r.get('id', 'obs')}-{n}"
            when = r.get("effectiveDateTime")
            if isinstance(when, str):
                shifted = datetime.fromisoformat(when.replace("Z", "+00:00")) - timedelta(days=n)
                r["effectiveDateTime"] = shifted.isoformat()
            all_labs["entry"].append({"fullUrl": f"urn:uuid:{r['id']}", "resource": r})
    return {"synthea-shaped": shaped, "all-labs": all_labs}


def measure(bundle: dict[str, Any], rounds: int) -> dict[str, Any]:
    eng = get_engine()
    raw = json.dumps(bundle).encode()
    parse, mapping, assess = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        data = json.loads(raw)
        t1 = time.perf_counter()
        mapped = map_bundle(data, kb=eng.kb)
        t2 = time.perf_counter()
        eng.assess(mapped.case, partial=True)
        t3 = time.perf_counter()
        parse.append(t1 - t0)
        mapping.append(t2 - t1)
        assess.append(t3 - t2)
    ms = lambda xs: round(statistics.median(xs) * 1000, 1)  # noqa: E731
    return {"megabytes": round(len(raw) / 1024 / 1024, 2), "resources": len(bundle["entry"]),
            "json_ms": ms(parse), "map_ms": ms(mapping), "assess_ms": ms(assess),
            "labs_in_case": len(mapped.case.get("labs", []))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megabytes", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    made = bundles(args.megabytes)
    get_engine()
    gc.collect()
    gc.freeze()     # as a server worker does once ready: long-lived objects (here the test Bundles) are not re-scanned
    result = {name: measure(b, args.rounds) for name, b in made.items()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for name, r in result.items():
        print(f"{name:>15}: {r['megabytes']} MB, {r['resources']} resources, {r['labs_in_case']} labs in the case; "
              f"JSON {r['json_ms']} ms, mapping {r['map_ms']} ms, assessment {r['assess_ms']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
