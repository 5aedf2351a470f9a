"""One partition of `leukodx screen`, in whichever process runs it (a local pool worker, a Dask worker,
or the command's own process): group its lines by patient, map each patient's resources with the
FHIR mapping of the REST API and assess them with the engine in partial mode, at the run's ``as_of``,
and write one row per patient to ``part-NNNNN.parquet`` and ``.ndjson``, then a ``.done.json`` marker
holding the partition's counts (what ``--resume`` reads).

Each process builds its engine once (``engine_builds`` in the result says so) and reuses it for every
patient of every partition it is given; a lock serialises its use where one process runs several
worker threads (Dask with ``processes=False``). Whatever goes wrong for one patient is written on
that patient's row (``status`` error, ``error`` the reason) and the partition goes on.

A row's ``status``: ``assessed``; ``no_usable_lab`` (the patient has no lab value leukodx can use: no
CBC, so nothing to screen; the mapping's reason is in ``error``); ``error``.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from datetime import date, datetime
from typing import Any, Optional

from leukodx.api.fhir import FhirMappingError, map_bundle
from leukodx.engine import CaseError, Engine

from .bulk import PROBLEMS_KEPT_PER_KIND, read_partition, remove_quietly
from .screen import TIERS, peak_rss_mb

__all__ = ["screen_partition", "row_schema", "TIERS", "engine_builds", "matches"]

URGENT = ("immediate", "urgent")
TOP_CAUSES = 3

_STATE: dict[str, Any] = {"engine": None, "builds": 0, "meds": {}}
_LOCK = threading.Lock()


def engine_builds() -> int:
    return int(_STATE["builds"])


def _engine() -> Engine:
    """This process's engine, built on first use (and rebuilt only when the rules engine broke)."""
    eng = _STATE["engine"]
    if eng is None or not eng.healthy:
        eng = _STATE["engine"] = Engine()
        _STATE["builds"] += 1
    return eng


def row_schema() -> Any:
    """The Parquet schema of a result row (pyarrow, imported only where rows are written)."""
    import pyarrow as pa
    s, f, strs = pa.string(), pa.float64(), pa.list_(pa.string())
    return pa.schema([
        ("patient", s), ("status", s), ("as_of", pa.date32()), ("tier", s), ("tier_at_least", s), ("priority", s),
        ("anc", f), ("anc_source", s), ("anc_date", pa.date32()), ("anc_age_days", pa.int32()),
        ("alerts", strs), ("causes", pa.list_(pa.struct([("id", s), ("likelihood", s), ("score", f)]))),
        ("urgent_steps", strs), ("drugs", strs), ("drug_classes", strs), ("tpmt", s), ("nudt15", s),
        ("not_assessed", strs), ("unrecognised", strs), ("needs_action", pa.bool_()), ("error", s)])


def _medications(paths: list[str]) -> dict[str, dict[str, Any]]:
    """The export's Medication resources by ``Medication/<id>``, read once per process and run."""
    key = tuple(paths)
    meds = _STATE["meds"].get(key)
    if meds is None:
        meds = {}
        for path in paths:
            if os.path.exists(path):
                with open(path, "rb") as f:
                    for line in f:
                        res = json.loads(line)
                        if isinstance(res.get("id"), str):
                            meds[f"Medication/{res['id']}"] = res
        _STATE["meds"] = {key: meds}
    return meds


def _day(v: Any) -> Optional[date]:
    return v.date() if isinstance(v, datetime) else v


def _since_ok(resources: list[dict[str, Any]], since: str) -> bool:
    """Some resource of the patient's is dated (clinically, or by meta.lastUpdated) on or after ``since``."""
    for r in resources:
        meta = r.get("meta")
        stamps = [r.get(k) for k in ("effectiveDateTime", "issued", "authoredOn", "dateAsserted", "onsetDateTime",
                                      "recordedDate")]
        stamps.append(meta.get("lastUpdated") if isinstance(meta, dict) else None)
        period = r.get("effectivePeriod")
        if isinstance(period, dict):
            stamps.append(period.get("start"))
        if any(isinstance(s, str) and s[:10] >= since for s in stamps):
            return True
    return False


def _drugs(eng: Engine, case: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The drugs of the vocabulary the patient takes (active medications) and their classes, looked up
    the way the engine looks them up."""
    drugs: set[str] = set()
    classes: set[str] = set()
    for med in case.get("medications", []):
        if med.get("status", "active") != "active":
            continue
        m = eng.drugs.lookup(med.get("name"), med.get("rxnorm"))
        if m is not None:
            drugs.add(m.drug["id"])
            classes.update(m.drug.get("classes", []))
    return sorted(drugs), sorted(classes)


def _blank(key: str, as_of: date, status: str, error: str) -> dict[str, Any]:
    return {"patient": key, "status": status, "as_of": as_of, "tier": None, "tier_at_least": None, "priority": None,
            "anc": None, "anc_source": None, "anc_date": None, "anc_age_days": None, "alerts": [], "causes": [],
            "urgent_steps": [], "drugs": [], "drug_classes": [], "tpmt": None, "nudt15": None, "not_assessed": [],
            "unrecognised": [], "needs_action": False, "error": error[:2000]}


def screen_patient(key: str, resources: list[dict[str, Any]], as_of: date, meds: dict[str, dict[str, Any]],
                   eng: Optional[Engine] = None) -> dict[str, Any]:
    """The result row of one patient (``key`` ``Patient/<id>``), never an exception."""
    try:
        extra = []
        for r in resources:
            ref = r.get("medicationReference")
            target = meds.get(ref.get("reference", "")) if isinstance(ref, dict) and meds else None
            if target is not None:
                extra.append(target)
        with _LOCK:
            eng = eng or _engine()
            mapped = map_bundle(resources + extra, kb=eng.kb, patient_id=key.split("/", 1)[1], as_of=as_of)
            a = eng.assess(mapped.case, partial=True)
            drugs, classes = _drugs(eng, mapped.case)
    except FhirMappingError as e:
        no_lab = bool(e.problems) and e.problems[0].msg.startswith("no lab value")
        return _blank(key, as_of, "no_usable_lab" if no_lab else "error",
                      "; ".join(str(p) for p in e.problems))
    except CaseError as e:
        return _blank(key, as_of, "error", "; ".join(str(p) for p in e.problems) or str(e))
    except Exception as e:     # noqa: BLE001 - one patient's failure is written on its row, never stops the run
        return _blank(key, as_of, "error", f"internal error: {type(e).__name__}: {e}")
    rt = a.risk_tier
    urgent = [s.id for s in a.steps if s.urgency in URGENT]
    left_out = mapped.not_assessed + a.not_assessed
    return {"patient": key, "status": "assessed", "as_of": as_of, "tier": rt.tier, "tier_at_least": rt.tier_at_least,
            "priority": a.priority, "anc": rt.anc, "anc_source": rt.anc_source, "anc_date": _day(rt.anc_time),
            "anc_age_days": rt.anc_age_days, "alerts": [x.id for x in a.alerts],
            "causes": [{"id": c.id, "likelihood": c.likelihood, "score": c.score} for c in a.causes[:TOP_CAUSES]],
            "urgent_steps": urgent, "drugs": drugs, "drug_classes": classes,
            "tpmt": a.pharmacogenomics.tpmt.phenotype, "nudt15": a.pharmacogenomics.nudt15.phenotype,
            "not_assessed": [f"{n.field}: {n.reason}"[:300] for n in left_out],
            "unrecognised": [f"{u.kind}: {u.text}"[:200] for u in a.unrecognised],
            "needs_action": a.priority in ("critical", "warning") or bool(urgent), "error": None}


def matches(row: dict[str, Any], options: dict[str, Any]) -> bool:
    """The row passes the run's filters. A row in error always does (never dropped silently); a
    patient without a usable lab passes only when no filter is set."""
    if row["status"] == "error":
        return True
    filtered = options.get("only_alerts") or options.get("drug_classes") or options.get("tier_at_most")
    if row["status"] != "assessed":
        return not filtered
    if options.get("only_alerts") and not row["alerts"]:
        return False
    wanted = set(options.get("drug_classes") or ())
    if wanted and not wanted & (set(row["drugs"]) | set(row["drug_classes"])):
        return False
    worst = options.get("tier_at_most")
    if worst:
        tier = row["tier"] if row["tier"] in TIERS else row["tier_at_least"]
        if tier not in TIERS or TIERS.index(tier) < TIERS.index(worst):
            return False
    return True


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in row.items()}


def screen_partition(task: dict[str, Any]) -> dict[str, Any]:
    """Screen one partition (``task``: index, part, medications, out_dir, options) and write its rows;
    returns (and writes to the marker) its counts, the rows needing action, the rows in error, and
    the patients whose Patient resource the export lacks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started, cpu = time.perf_counter(), time.thread_time()
    opts = task["options"]
    as_of = date.fromisoformat(opts["as_of"])
    since = opts.get("since")
    groups: dict[str, list[tuple[int, int, bytes]]] = {}
    for key, fi, lineno, text in read_partition(task["part"]):
        groups.setdefault(key, []).append((fi, lineno, text))
    meds = _medications(task["medications"])
    with _LOCK:
        _engine()
    rows: list[dict[str, Any]] = []
    counts: dict[str, Counter[str]] = {k: Counter() for k in ("status", "tier", "alert", "cause", "drug_class")}
    orphans: list[dict[str, Any]] = []
    skipped_since = orphan_patients = orphan_lines = 0
    for key, lines in groups.items():
        resources = [json.loads(text) for _, _, text in lines]
        if not any(r.get("resourceType") == "Patient" for r in resources):
            orphan_patients += 1
            orphan_lines += len(lines)
            for (fi, lineno, _), r in list(zip(lines, resources))[:max(0, PROBLEMS_KEPT_PER_KIND - len(orphans))]:
                orphans.append({"file": fi, "line": lineno, "kind": "patient_missing",
                                "message": f"{r.get('resourceType')}/{r.get('id', '?')}: its patient {key} is not "
                                           f"among the export's Patient resources; not screened"})
            continue
        if since and not _since_ok(resources, since):
            skipped_since += 1
            continue
        row = screen_patient(key, resources, as_of, meds)
        counts["status"][row["status"]] += 1
        if not matches(row, opts):
            continue
        rows.append(row)
        if row["status"] == "assessed":
            counts["tier"][row["tier"]] += 1
            counts["alert"].update(row["alerts"])
            counts["cause"].update(c["id"] for c in row["causes"])
            counts["drug_class"].update(row["drug_classes"])
    base = os.path.join(task["out_dir"], f"part-{task['index']:05d}")
    table = pa.Table.from_pylist(rows, schema=row_schema())
    pq.write_table(table, base + ".parquet.tmp")
    os.replace(base + ".parquet.tmp", base + ".parquet")
    with open(base + ".ndjson.tmp", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(_jsonable(row), ensure_ascii=False) + "\n")
    os.replace(base + ".ndjson.tmp", base + ".ndjson")
    keep = ("patient", "tier", "anc", "anc_date", "alerts", "urgent_steps", "causes", "drug_classes", "priority")
    result = {
        "index": task["index"], "patients": len(groups) - orphan_patients,
        "screened": sum(counts["status"].values()), "written": len(rows), "skipped_since": skipped_since,
        "counts": {k: dict(v) for k, v in counts.items()},
        "actions": [_jsonable({k: r[k] for k in keep}) for r in rows if r["needs_action"]],
        "errors": [{"patient": r["patient"], "error": r["error"]} for r in rows if r["status"] == "error"],
        "orphans": orphans, "orphan_lines": orphan_lines, "orphan_patients": orphan_patients, "worker": f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}",
        "engine_builds": engine_builds(), "seconds": round(time.perf_counter() - started, 3),
        "cpu_seconds": round(time.thread_time() - cpu, 3),
        "peak_rss_mb": peak_rss_mb()}
    with open(base + ".done.json.tmp", "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(base + ".done.json.tmp", base + ".done.json")
    for piece in task["part"]:
        remove_quietly(piece)
    return result
