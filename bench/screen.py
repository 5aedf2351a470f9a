"""Population screening throughput and memory: a synthetic FHIR Bulk Data export made from the Synthea
bundles of the tests, screened by `leukodx screen` as a user runs it, with 1 and 2 local processes
and a Dask LocalCluster of 2 workers. Prints a table, or JSON with --json.

    python bench/screen.py [--patients 2000 10000] [--modes 1 2 dask2] [--gzip] [--json]

The generator (:func:`make_export`, also used by tests/test_screen.py) writes one NDJSON file per
resource type. Patient ``i`` is a copy of Synthea bundle ``i % 38`` with new ids (``s<seed>p<i>``),
every date shifted so that its latest CBC falls 0-45 days before ``as_of``, its WBC values scaled by
a random factor, an absolute neutrophil count added to each CBC (Synthea has no differential), and,
for about a third of the patients, an active order for a thiopurine, methotrexate, clozapine or
rituximab (with a lower count on average). Everything is drawn from ``random.Random(f"{seed}:{i}")``:
the same seed gives the same export, byte for byte, whatever the size.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA = ROOT / "tests" / "fixtures" / "fhir-examples" / "synthea"
TYPES = ("Patient", "Observation", "MedicationRequest", "Condition", "DiagnosticReport")
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
DRUGS = [("1256", "azathioprine 50 MG Oral Tablet"), ("103", "mercaptopurine 50 MG Oral Tablet"),
         ("6851", "methotrexate 2.5 MG Oral Tablet"), ("2626", "clozapine 100 MG Oral Tablet"),
         ("121191", "rituximab 10 MG/ML Injectable Solution")]
WBC, ANC = "6690-2", "751-8"
AS_OF = date(2025, 6, 30)


def _templates() -> list[tuple[str, date]]:
    """Each Synthea bundle as JSON text of its resources, references rewritten the Bulk Data way
    (``urn:uuid:<id>`` -> ``<Type>/<id>``), with the date of its latest WBC."""
    out = []
    for path in sorted(SYNTHEA.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        res = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] in TYPES]
        kinds = {r["id"]: r["resourceType"] for r in res}
        text = json.dumps(res)
        for rid, kind in kinds.items():
            text = text.replace(f'"urn:uuid:{rid}"', f'"{kind}/{rid}"')
        latest = max(r["effectiveDateTime"][:10] for r in res
                     if r["resourceType"] == "Observation" and _loinc(r) == WBC)
        out.append((text, date.fromisoformat(latest)))
    return out


def _loinc(r: dict[str, Any]) -> str | None:
    for c in r.get("code", {}).get("coding", []):
        if c.get("system") == LOINC:
            return c.get("code")
    return None


def _shift(value: Any, days: timedelta, ids: dict[str, str]) -> Any:
    """``value`` with every ISO date moved by ``days`` and every reference to a renamed resource renamed."""
    if isinstance(value, dict):
        return {k: (ids.get(v, v) if k == "reference" else _shift(v, days, ids)) for k, v in value.items()}
    if isinstance(value, list):
        return [_shift(v, days, ids) for v in value]
    if isinstance(value, str) and len(value) >= 10 and value[4] == "-" and value[7] == "-" and value[:4].isdigit():
        try:
            return (date.fromisoformat(value[:10]) + days).isoformat() + value[10:]
        except ValueError:
            return value
    return value


def patient_resources(templates: list[tuple[str, date]], seed: int, i: int, as_of: date) -> list[dict[str, Any]]:
    """The resources of synthetic patient ``i`` (see the module docstring)."""
    rng = random.Random(f"{seed}:{i}")
    text, latest = templates[i % len(templates)]
    res = json.loads(text)
    prefix = f"s{seed}p{i}"
    ids = {}
    for k, r in enumerate(res):
        new = prefix if r["resourceType"] == "Patient" else f"{prefix}-{k}"
        ids[f"{r['resourceType']}/{r['id']}"] = f"{r['resourceType']}/{new}"
        r["id"] = new
    days = timedelta(days=(as_of - timedelta(days=rng.randint(0, 45)) - latest).days)
    res = [_shift(r, days, ids) for r in res]
    exposed = rng.random() < 0.35
    factor = math.exp(rng.gauss(-0.45 if exposed else 0.0, 0.35))
    subject = {"reference": f"Patient/{prefix}"}
    extra = []
    for r in res:
        if r["resourceType"] == "Observation" and _loinc(r) == WBC and "valueQuantity" in r:
            wbc = round(r["valueQuantity"]["value"] * factor, 2)
            r["valueQuantity"]["value"] = wbc
            anc = round(wbc * min(0.85, max(0.05, rng.gauss(0.58, 0.1))), 2)
            extra.append({"resourceType": "Observation", "id": f"{r['id']}-anc", "status": "final",
                          "category": r.get("category", []),
                          "code": {"coding": [{"system": LOINC, "code": ANC, "display": "Neutrophils [#/volume] in "
                                               "Blood by Automated count"}]},
                          "subject": subject, "effectiveDateTime": r["effectiveDateTime"],
                          "valueQuantity": {"value": anc, "unit": "10*3/uL", "system": "http://unitsofmeasure.org",
                                            "code": "10*3/uL"}})
    if exposed:
        code, name = DRUGS[rng.randrange(len(DRUGS))]
        start = as_of - timedelta(days=rng.randint(20, 400))
        extra.append({"resourceType": "MedicationRequest", "id": f"{prefix}-rx", "status": "active", "intent": "order",
                      "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": name}],
                                                    "text": name},
                      "subject": subject, "authoredOn": f"{start.isoformat()}T09:00:00+00:00"})
    return res + extra


def make_export(dest: Path, patients: int, seed: int = 0, as_of: date = AS_OF, compress: bool = False) -> dict[str, int]:
    """Write a synthetic export of ``patients`` patients to ``dest`` (one file per resource type, gzip
    if ``compress``); returns the resources written by type. Streams: memory does not grow with size."""
    dest.mkdir(parents=True, exist_ok=True)
    templates = _templates()
    suffix = ".ndjson.gz" if compress else ".ndjson"
    handles = {t: (gzip.open(dest / f"{t}{suffix}", "wt", encoding="utf-8", compresslevel=1) if compress
                   else open(dest / f"{t}{suffix}", "w", encoding="utf-8")) for t in TYPES}
    counts = dict.fromkeys(TYPES, 0)
    try:
        for i in range(patients):
            for r in patient_resources(templates, seed, i, as_of):
                handles[r["resourceType"]].write(json.dumps(r, separators=(",", ":")) + "\n")
                counts[r["resourceType"]] += 1
    finally:
        for h in handles.values():
            h.close()
    return counts


def _run(export: Path, out: Path, mode: str, as_of: date, partitions: int | None = None) -> dict[str, Any]:
    leukodx = shutil.which("leukodx") or str(Path(sys.executable).with_name("leukodx"))
    how = ["--dask", "local", "--workers", mode[4:]] if mode.startswith("dask") else ["--jobs", mode]
    if partitions:
        how += ["--partitions", str(partitions)]
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    r = subprocess.run([leukodx, "screen", str(export), "--out", str(out), "--as-of", as_of.isoformat(), *how],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"leukodx screen failed ({r.returncode}): {r.stderr[-2000:]}")
    run = json.loads((out / "run.json").read_text())
    processes = int(mode[4:]) if mode.startswith("dask") else int(mode)
    screen_s = run["seconds_by_phase"]["screen"]
    return {"mode": run["mode"], "processes": processes, "patients": run["totals"]["screened"],
            "partitions": run["partitions"], "wall_seconds": round(wall, 2), "seconds": run["seconds"],
            "read_seconds": run["seconds_by_phase"]["read"], "screen_seconds": screen_s,
            "patients_per_second": run["patients_per_second"],
            "per_process": round(run["patients_per_second"] / processes, 1),
            "screen_phase_per_second": round(run["totals"]["screened"] / screen_s, 1) if screen_s else 0.0,
            "cpu_read_seconds": run["cpu_seconds"]["read"], "cpu_screen_seconds": run["cpu_seconds"]["screen"],
            "patients_per_cpu_second": round(run["totals"]["screened"] / max(run["cpu_seconds"]["screen"], 1e-9), 1),
            "needs_action": run["needs_action"], "errors": run["errors"],
            "rss_driver_mb": run["peak_rss_mb"]["driver"], "rss_worker_max_mb": run["peak_rss_mb"]["worker_max"],
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}   # others' work on the machine


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--modes", nargs="+", default=["1", "2", "dask2"], help="1, 2 (local processes), dask2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gzip", action="store_true", help="write the export gzip-compressed")
    ap.add_argument("--partition-mb", type=float, default=None,
                    help="partitions of about this many MB (default: leukodx screen's own choice), to compare memory "
                         "at equal partition size across export sizes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for n in args.patients:
        with tempfile.TemporaryDirectory() as tmp:
            export = Path(tmp) / "export"
            t = time.perf_counter()
            make_export(export, n, args.seed, compress=args.gzip)
            made = time.perf_counter() - t
            size = sum(p.stat().st_size for p in export.iterdir())
            parts = math.ceil(size / 2**20 / args.partition_mb) if args.partition_mb else None
            for mode in args.modes:
                row = _run(export, Path(tmp) / f"out-{mode}", mode, AS_OF, parts)
                rows.append(dict(row, export_patients=n, export_mb=round(size / 2**20, 1),
                                 generate_seconds=round(made, 1)))
                shutil.rmtree(Path(tmp) / f"out-{mode}")
    if args.json:
        print(json.dumps({"screen": rows}, indent=2))
        return 0
    head = ("export", "MB", "mode", "parts", "seconds", "read s", "patients/s", "per process", "per CPU s",
            "RSS driver", "RSS worker", "load")
    print("  ".join(f"{h:>11}" for h in head))
    for r in rows:
        print("  ".join(f"{v:>11}" for v in (r["export_patients"], r["export_mb"], r["mode"][:11], r["partitions"],
                                             r["seconds"], r["read_seconds"], r["patients_per_second"],
                                             r["per_process"], r["patients_per_cpu_second"], r["rss_driver_mb"],
                                             r["rss_worker_max_mb"],
                                             r["load_average"][0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
