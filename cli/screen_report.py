"""What `leukodx screen` leaves in RESULTS once every partition is done:

    results.parquet, results.ndjson   every row, partition by partition (the same order whatever ran them)
    summary.html                      counts by tier (a bar chart), alert, cause and drug class; the
                                      patients needing action; the rows in error; the input problems
    summary.csv                       the same counts: section,id,title,count
    needs-action.csv                  every patient needing action
    problems.csv                      every input problem listed: file,line,kind,message

The per-partition files (parts/) stay, so that ``--resume`` finds them; the merge streams one
partition at a time.
"""
from __future__ import annotations

import csv
import html
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional

__all__ = ["merge_results", "write_summary", "totals", "HTML_ROWS"]

HTML_ROWS = 500      # rows of a list shown in the HTML; the CSV files hold all
TIER_COLOURS = {"normal": "#4e9a06", "mild": "#c4a000", "moderate": "#ce5c00", "severe": "#cc0000",
                "profound": "#5c0000", "unknown": "#888a85"}
TIER_ORDER = ("normal", "mild", "moderate", "severe", "profound", "unknown")


def merge_results(parts_dir: Path, n: int, out_dir: Path) -> None:
    """Concatenate the partitions' Parquet and NDJSON files into results.parquet and results.ndjson."""
    import pyarrow.parquet as pq

    from .screen_worker import row_schema
    schema = row_schema()
    with pq.ParquetWriter(out_dir / "results.parquet.tmp", schema) as writer, \
            open(out_dir / "results.ndjson.tmp", "wb") as nd:
        for i in range(n):
            base = parts_dir / f"part-{i:05d}"
            table = pq.read_table(base.with_suffix(".parquet"), schema=schema)
            if table.num_rows:
                writer.write_table(table)
            with open(base.with_suffix(".ndjson"), "rb") as f:
                shutil.copyfileobj(f, nd)
    (out_dir / "results.parquet.tmp").replace(out_dir / "results.parquet")
    (out_dir / "results.ndjson.tmp").replace(out_dir / "results.ndjson")


def totals(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The counts of all partitions added up."""
    out: dict[str, Any] = {"patients": 0, "screened": 0, "written": 0, "skipped_since": 0, "orphan_lines": 0,
                           "orphan_patients": 0, "counts": {}, "actions": [], "errors": [], "orphans": []}
    counts: dict[str, Counter[str]] = {}
    for r in sorted(results, key=lambda r: r["index"]):
        for k in ("patients", "screened", "written", "skipped_since", "orphan_lines", "orphan_patients"):
            out[k] += r.get(k, 0)
        for section, c in r["counts"].items():
            counts.setdefault(section, Counter()).update(c)
        out["actions"] += r["actions"]
        out["errors"] += r["errors"]
        out["orphans"] += r["orphans"]
    out["counts"] = {k: dict(v.most_common()) for k, v in counts.items()}
    return out


def _titles(kb: Any, section: str) -> dict[str, str]:
    catalogue = {"alert": kb.alerts, "cause": kb.causes}.get(section)
    return {k: v.title for k, v in catalogue.items()} if catalogue else {}


def _chart(tiers: dict[str, int]) -> str:
    """An inline SVG bar chart of the patients by tier."""
    bars = [(t, tiers.get(t, 0)) for t in TIER_ORDER]
    top = max([v for _, v in bars] + [1])
    width, bar_h, gap, label_w = 560, 22, 6, 90
    height = len(bars) * (bar_h + gap) + gap
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="patients by risk tier">']
    for i, (tier, v) in enumerate(bars):
        y = gap + i * (bar_h + gap)
        w = 0 if not v else max(2, round((width - label_w - 80) * v / top))
        out.append(f'<text x="0" y="{y + 16}" font-size="13">{tier}</text>'
                   f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" fill="{TIER_COLOURS[tier]}"/>'
                   f'<text x="{label_w + w + 6}" y="{y + 16}" font-size="13">{v:,}</text>')
    out.append("</svg>")
    return "".join(out)


def _table(head: list[str], rows: Iterable[list[Any]], limit: Optional[int] = None, total: int = 0,
           more: str = "") -> str:
    e = html.escape
    body = []
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            break
        body.append("<tr>" + "".join(f"<td>{e('' if c is None else str(c))}</td>" for c in row) + "</tr>")
    note = f"<p>{len(body):,} of {total:,} shown; all in {e(more)}.</p>" if limit is not None and total > len(body) \
        else ""
    return ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(body) + "</table>"
            + note)


def _cause(row: dict[str, Any]) -> str:
    return ", ".join(f"{c['id']} ({c['likelihood']})" for c in row.get("causes", []))


def write_summary(out_dir: Path, run: dict[str, Any], tot: dict[str, Any], problems: list[dict[str, Any]],
                  problem_counts: dict[str, int], kb: Any) -> None:
    """summary.html, summary.csv, needs-action.csv and problems.csv (see the module docstring)."""
    counts = tot["counts"]
    sections = [("tier", "Risk tier counts"), ("alert", "Alerts"),
                ("cause", "Causes (among each patient's top three)"), ("drug_class", "Drug classes taken (active)"),
                ("status", "Patients by outcome")]
    with open(out_dir / "summary.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["section", "id", "title", "count"])
        for key in ("patients", "screened", "written", "skipped_since", "orphan_patients"):
            w.writerow(["total", key, "", tot[key]])
        for section, _ in sections:
            titles = _titles(kb, section)
            for k, v in counts.get(section, {}).items():
                w.writerow([section, k, titles.get(k, ""), v])
        for kind, v in sorted(problem_counts.items()):
            w.writerow(["input_problem", kind, "", v])
    action_head = ["patient", "tier", "anc", "anc_date", "alerts", "urgent_steps", "top_causes", "drug_classes"]

    def action_rows() -> Iterable[list[Any]]:
        for r in tot["actions"]:
            yield [r["patient"], r["tier"], r["anc"], r["anc_date"], " ".join(r["alerts"]), " ".join(r["urgent_steps"]),
                   _cause(r), " ".join(r["drug_classes"])]

    with open(out_dir / "needs-action.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(action_head)
        w.writerows(action_rows())
    with open(out_dir / "problems.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "line", "kind", "message"])
        w.writerows([p["file"], p["line"], p["kind"], p["message"]] for p in problems)

    e = html.escape
    opts = run["options"]
    filters = ", ".join(f"{k} {v}" for k, v in (("--only-alerts", "" if opts.get("only_alerts") else None),
                                                 ("--drug-class", " ".join(opts.get("drug_classes") or []) or None),
                                                 ("--tier-at-most", opts.get("tier_at_most")),
                                                 ("--since", opts.get("since"))) if v is not None) or "none"
    parts = [f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>leukodx screen</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:75em}}table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left;font-size:.9em}}th{{background:#eee}}</style></head><body>
<h1>leukodx population screening</h1>
<p>Export <code>{e(run['export'])}</code>, judged at <b>{e(opts['as_of'])}</b>; filters: {e(filters)}.
{tot['patients']:,} patients in the export, {tot['screened']:,} screened, {tot['written']:,} rows written,
{len(tot['actions']):,} needing action, {len(tot['errors']):,} in error; {run['seconds']:.1f} s
({run['patients_per_second']:.1f} patients/s, {e(run['mode'])}).</p>
<p>leukodx supports and does not replace clinical judgement. Each row's full assessment is one
<code>leukodx assess</code> (or <code>POST /v1/assess/fhir</code>) of that patient away.</p>
<p>The counts below are of the rows written (the filters above); "Patients by outcome" is of every patient
screened.</p>
<h2>Patients by risk tier</h2>{_chart(counts.get('tier', {}))}"""]
    for section, title in sections:
        titles = _titles(kb, section)
        parts.append(f"<h2>{e(title)}</h2>" + _table([section, "title", "patients"] if titles else [section, "patients"],
                     ([k, titles.get(k, ""), f"{v:,}"] if titles else [k, f"{v:,}"]
                      for k, v in counts.get(section, {}).items())))
    parts.append("<h2>Patients needing action</h2><p>A critical or warning alert, or an immediate or urgent step.</p>"
                 + _table(action_head, action_rows(), HTML_ROWS, len(tot["actions"]), "needs-action.csv"))
    parts.append("<h2>Patients in error</h2>" + _table(["patient", "error"], ([r["patient"], r["error"]]
                 for r in tot["errors"]), HTML_ROWS, len(tot["errors"]), "results.ndjson (status error)"))
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(problem_counts.items())) or "none"
    parts.append(f"<h2>Input problems</h2><p>{e(kinds)}. Each bad line was skipped; the rest of the export was "
                 f"screened.</p>" + _table(["file", "line", "kind", "message"],
                                           ([p["file"], p["line"], p["kind"], p["message"]] for p in problems),
                                           HTML_ROWS, len(problems), "problems.csv"))
    parts.append("</body></html>\n")
    (out_dir / "summary.html").write_text("\n".join(parts), encoding="utf-8")
    (out_dir / "totals.json").write_text(json.dumps({k: v for k, v in tot.items()
                                                     if k not in ("actions", "errors", "orphans")}, indent=1))
