"""`leukodx screen`: every patient of a FHIR Bulk Data export, screened at one date.

    leukodx screen EXPORT_DIR --out RESULTS [--as-of DATE] [--only-alerts] [--drug-class CLASS]...
                   [--tier-at-most TIER] [--since DATE] [--jobs N | --dask tcp://host:port | --dask local]
                   [--partitions N] [--resume]

1. Read (cli/bulk.py): the export's NDJSON files are cut into stripes (byte ranges at line
   boundaries), read at once by the same workers as step 2, each splitting its resources into
   partition pieces under RESULTS/work by a hash of each resource's patient; bad lines are input
   problems (file, line), skipped. With ``--dask``, the workers read the export where the command
   sees it; when they cannot see it, this process reads it alone.
2. Screen (cli/screen_worker.py): each partition is one task, run by a local process pool (the
   default, ``--jobs`` processes, all cores), by a Dask distributed cluster (``--dask``: the same
   tasks on the same partition files, which the workers must see at the same path), or in this
   process (``--jobs 1``). Each worker builds its engine once. A partition done is written to
   RESULTS/parts with a marker; ``--resume`` skips those.
3. Report (cli/screen_report.py): results.parquet and results.ndjson, summary.html and .csv,
   needs-action.csv, problems.csv, and run.json (options, timings, peak memory).

Exit codes: 0 done (patients in error and input problems are in the results, not failures);
1 some partitions failed (run again with --resume); 2 usage error.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import time
from functools import partial
from datetime import date
from pathlib import Path
from typing import Any, Optional, TextIO

from .bulk import Partitioned, ReadError, expected_bytes, export_files, partition_export, remove_quietly, stripe_task
from .executors import Executor, ScreenError

__all__ = ["register", "add_arguments", "main", "run_screen", "ScreenError", "Progress", "PARTITION_BYTES", "TIERS"]

TIERS = ("normal", "mild", "moderate", "severe", "profound")      # mildest first

PARTITION_BYTES = 32 * 1024 * 1024     # NDJSON per partition: what one worker holds at a time
MAX_PARTITIONS = 2048                  # open files while reading; beyond 64 GiB partitions grow past the target
MAX_STRIPES = 256                      # read tasks; each writes one piece per partition it meets
STRIPE_MIN_BYTES = 8 * 1024 * 1024     # smaller exports are read in fewer stripes


class Progress:
    """One line on a terminal, rewritten in place: what is done, the rate and the time left. Silent
    when the stream is not a terminal (a log or a pipe gets only the final summary)."""

    def __init__(self, stream: TextIO, enabled: Optional[bool] = None, every: float = 0.25):
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.every = every
        self._last = 0.0
        self._start = time.monotonic()
        self._shown = False

    def restart(self) -> None:
        self._start = time.monotonic()

    def reading(self, done: int, total: int) -> None:
        self._show(f"reading the export: {min(done, total) / 2**20:,.0f} of ~{total / 2**20:,.0f} MB", done >= total)

    def screening(self, done: int, total: int) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else float("nan")
        eta = "--" if math.isnan(left) else _duration(left)
        self._show(f"screening: {done:,}/{total:,} patients ({100 * done / max(total, 1):.0f}%)  {rate:,.1f}/s  "
                   f"ETA {eta}", done >= total)

    def _show(self, text: str, force: bool) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        self.stream.write("\r" + text.ljust(78)[:120])
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def register(sub: Any) -> None:
    """Add ``leukodx screen`` to the command's sub-parsers (the engine and the mapping load only when it runs)."""
    p = sub.add_parser("screen", help="screen every patient of a FHIR Bulk Data export (NDJSON): Parquet, NDJSON "
                                      "and a summary")
    add_arguments(p)
    p.set_defaults(func=main)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export", metavar="EXPORT_DIR", help="a FHIR Bulk Data export: *.ndjson or *.ndjson.gz files "
                   "(Patient, Observation, MedicationRequest, MedicationStatement, Condition, ...)")
    p.add_argument("--out", required=True, metavar="RESULTS", help="folder for the results (created)")
    p.add_argument("--as-of", type=date.fromisoformat, default=None, metavar="DATE",
                   help="the date every patient is judged at (default: today)")
    p.add_argument("--only-alerts", action="store_true", help="write only patients with an alert")
    p.add_argument("--drug-class", action="append", default=[], metavar="CLASS",
                   help="write only patients taking a drug of this class (or this drug), e.g. thiopurine, "
                        "anti_cd20, clozapine; repeat for several")
    p.add_argument("--tier-at-most", choices=TIERS[1:], metavar="TIER",
                   help="write only patients whose ANC is in this tier or a worse one (moderate: moderate, "
                        "severe and profound; a tier the WBC bounds the ANC to counts)")
    p.add_argument("--since", type=date.fromisoformat, default=None, metavar="DATE",
                   help="screen only patients with a resource dated (or last updated) on or after DATE")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--jobs", type=int, default=None, metavar="N", help="local worker processes (default: all cores)")
    g.add_argument("--dask", metavar="ADDRESS", help="run the partitions on a Dask distributed cluster: its "
                   "scheduler (tcp://host:8786; RESULTS must be on a filesystem its workers share) or 'local'")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --dask local: its worker processes (default: all cores)")
    p.add_argument("--partitions", type=int, default=None, metavar="N",
                   help=f"partitions (default: about {PARTITION_BYTES // 2**20} MB of NDJSON each, at least 4 per "
                        f"worker)")
    p.add_argument("--resume", action="store_true", help="continue the run in RESULTS: partitions already written "
                   "are skipped")


def main(args: argparse.Namespace) -> int:
    progress = Progress(sys.stderr)
    try:
        run = run_screen(Path(args.export), Path(args.out), as_of=args.as_of or date.today(), since=args.since,
                         only_alerts=args.only_alerts, drug_classes=args.drug_class, tier_at_most=args.tier_at_most,
                         jobs=args.jobs, dask=args.dask, dask_workers=args.workers, partitions=args.partitions,
                         resume=args.resume, progress=progress)
    except ScreenError as e:
        progress.close()
        print(f"leukodx screen: {e}", file=sys.stderr)
        return 2
    progress.close()
    t = run["totals"]
    print(f"leukodx screen: {t['screened']:,} patients screened in {run['seconds']:.1f} s "
          f"({run['patients_per_second']:.1f}/s, {run['mode']}); {t['written']:,} rows written, "
          f"{run['needs_action']:,} need action, {run['errors']:,} in error, "
          f"{sum(run['problem_counts'].values()):,} input problems")
    if run["failed"]:
        for f in run["failed"]:
            print(f"leukodx screen: partition {f['index']} failed: {f['error']}", file=sys.stderr)
        print(f"leukodx screen: {len(run['failed'])} partitions failed; run again with --resume to finish",
              file=sys.stderr)
        return 1
    print(f"  {args.out}/summary.html, summary.csv, needs-action.csv, results.parquet, results.ndjson, problems.csv")
    return 0


def _check_drug_classes(values: list[str]) -> list[str]:
    if not values:
        return []
    from leukodx.engine.kb import default
    kb = default()
    known = set(kb.drug_classes) | {d["id"] for d in kb.drugs}
    for v in values:
        if v not in known:
            near = difflib.get_close_matches(v, sorted(known), n=3)
            raise ScreenError(f"--drug-class {v!r} is neither a drug class nor a drug of the knowledge base"
                              + (f" (did you mean {', '.join(near)}?)" if near else
                                 f"; classes: {', '.join(sorted(kb.drug_classes))}"))
    return sorted(set(values))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (0 where the platform does not say)."""
    try:
        import resource
    except ImportError:      # not on Windows
        return 0.0
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _raise_open_files(n: int) -> None:
    try:
        import resource
    except ImportError:      # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def run_screen(export: Path, out: Path, *, as_of: date, since: Optional[date] = None, only_alerts: bool = False,
               drug_classes: Optional[list[str]] = None, tier_at_most: Optional[str] = None,
               jobs: Optional[int] = None, dask: Optional[str] = None, dask_workers: Optional[int] = None,
               client: Any = None, partitions: Optional[int] = None, resume: bool = False,
               progress: Optional[Progress] = None) -> dict[str, Any]:
    """Screen every patient of ``export`` into ``out`` (see the module docstring); ``client``: a Dask
    Client to run on (the tests pass one on a LocalCluster). Returns what run.json holds."""
    started = time.perf_counter()
    progress = progress or Progress(sys.stderr, enabled=False)
    if not export.is_dir():
        raise ScreenError(f"{export} is not a folder")
    files = export_files(export)
    if not files:
        raise ScreenError(f"{export} holds no *.ndjson or *.ndjson.gz file")
    if jobs is not None and jobs < 1:
        raise ScreenError("--jobs must be at least 1")
    options = {"as_of": as_of.isoformat(), "since": since.isoformat() if since else None, "only_alerts": only_alerts,
               "drug_classes": _check_drug_classes(list(drug_classes or [])), "tier_at_most": tier_at_most}
    from leukodx.engine.kb import default
    default()     # loaded once here: the summary needs it, and forked workers inherit it instead of reading rules/
    with Executor(jobs, dask, dask_workers, client) as (mode, workers, submit, sees):
        before = out / "run.json"
        if resume and partitions is None and before.exists():   # the run's own count, whatever --jobs is now
            partitions = json.loads(before.read_text()).get("partitions")
        n = partitions or _default_partitions(files, workers)
        if n < 1:
            raise ScreenError("--partitions must be at least 1")
        work, parts_dir = out / "work", out / "parts"
        run = _start_run(out, export, options, n, resume)
        parts_dir.mkdir(parents=True, exist_ok=True)
        marker = work / "partitioned.json"
        timings, read_cpu = {"read": time.perf_counter()}, time.process_time()
        if not sees(str(out.resolve())):
            raise ScreenError(f"--dask: the workers do not see {out.resolve()}; put RESULTS on a filesystem every "
                              f"worker shares, at the same path")
        if resume and marker.exists():
            plan = Partitioned.from_dict(json.loads(marker.read_text()))
        else:
            _raise_open_files(n)
            # the workers read the export at once, in stripes, when they see it (Dask workers may not)
            parallel = workers > 1 and sees(str(export.resolve()))
            try:
                plan = partition_export(export.resolve(), work.resolve(), n,
                                        stripes=_stripes(files, workers) if parallel else 1,
                                        run=partial(submit, stripe_task) if parallel else None,
                                        progress=progress.reading)
            except ReadError as e:
                raise ScreenError(f"{e}; run the same command again") from None
            marker.write_text(json.dumps(plan.as_dict()))
        progress.close()
        timings["read"] = round(time.perf_counter() - timings["read"], 3)
        timings["read_cpu"] = round(time.process_time() - read_cpu, 3)
        timings["screen"] = time.perf_counter()
        results: dict[int, dict[str, Any]] = {}
        todo = []
        for i in range(n):
            done = parts_dir / f"part-{i:05d}.done.json"
            if resume and done.exists():
                results[i] = json.loads(done.read_text())
                for piece in plan.parts[i]:
                    remove_quietly(piece)
            else:
                todo.append({"index": i, "part": plan.parts[i], "medications": plan.medications,
                             "out_dir": str(parts_dir), "options": options})
        total = plan.patients
        already = sum(r["patients"] for r in results.values())
        failed: list[dict[str, Any]] = []
        progress.restart()
        screened_now = 0
        from .screen_worker import screen_partition
        for task, result, error in submit(screen_partition, todo):
            if error is not None:
                failed.append({"index": task["index"], "error": error})
                continue
            results[task["index"]] = result
            screened_now += result["patients"]
            progress.screening(already + screened_now, total)
        timings["screen"] = round(time.perf_counter() - timings["screen"], 3)
    progress.close()
    return _finish(out, export, run, plan, results, failed, mode, workers, n, started, screened_now, timings)


def _stripes(files: list[Path], workers: int) -> int:
    """Stripes to read the export in: a few per worker (so that one slow stripe does not hold the
    others up), each at least STRIPE_MIN_BYTES, at most MAX_STRIPES (each writes a piece per partition)."""
    size = sum(map(expected_bytes, files))
    return max(1, min(4 * workers, MAX_STRIPES, math.ceil(size / STRIPE_MIN_BYTES)))


def _default_partitions(files: list[Path], workers: int) -> int:
    size = sum(map(expected_bytes, files))
    return max(4 * workers, min(MAX_PARTITIONS, math.ceil(size / PARTITION_BYTES)))


def _start_run(out: Path, export: Path, options: dict[str, Any], n: int, resume: bool) -> dict[str, Any]:
    run_file = out / "run.json"
    run = {"export": str(export.resolve()), "options": options, "partitions": n}
    if run_file.exists():
        before = json.loads(run_file.read_text())
        if not resume:
            raise ScreenError(f"{out} already holds a run; continue it with --resume, or choose another --out")
        diff = [k for k in run if before.get(k) != run[k]]
        if diff:
            raise ScreenError(f"--resume: the run in {out} was started with other {', '.join(diff)} "
                              f"({', '.join(f'{k}={before.get(k)!r}' for k in diff)})")
        return before
    if resume and out.exists() and any(out.iterdir()):
        raise ScreenError(f"--resume: {out} holds no run.json")
    out.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(run, indent=1))
    return run


def _finish(out: Path, export: Path, run: dict[str, Any], plan: Partitioned, results: dict[int, dict[str, Any]],
            failed: list[dict[str, Any]], mode: str, workers: int, n: int, started: float,
            screened_now: int, timings: dict[str, float]) -> dict[str, Any]:
    from leukodx.engine.kb import default

    from .screen_report import merge_results, totals, write_summary
    seconds = time.perf_counter() - started
    tot = totals(results.values())
    problems = [p.as_dict() for p in plan.problems]
    problems += [dict(o, file=plan.files[o["file"]]) for o in tot["orphans"]]
    problem_counts = dict(plan.problem_counts)
    if tot["orphan_lines"]:
        problem_counts["patient_missing"] = tot["orphan_lines"]
    run = dict(run, mode=mode, workers=workers, seconds=round(seconds, 3),
               patients_per_second=round(screened_now / seconds, 2) if seconds else 0.0,
               totals={k: v for k, v in tot.items() if k not in ("actions", "errors", "orphans")},
               needs_action=len(tot["actions"]), errors=len(tot["errors"]), problem_counts=problem_counts,
               skipped_types=plan.skipped_types, resources=plan.resources, failed=failed,
               cpu_seconds={"read": timings.pop("read_cpu", 0.0),    # this run's CPU time, whatever else runs
                            "screen": round(sum(r.get("cpu_seconds", 0.0) for r in results.values()), 3)},
               engine_builds={r["worker"]: r["engine_builds"] for r in results.values()},
               peak_rss_mb={"driver": peak_rss_mb(),
                            "worker_max": max((r["peak_rss_mb"] for r in results.values()), default=0.0)})
    if not failed:
        t = time.perf_counter()
        merge_results(out / "parts", n, out)
        write_summary(out, dict(run, export=str(export)), tot, problems, problem_counts, default())
        timings["report"] = round(time.perf_counter() - t, 3)
    run["seconds_by_phase"] = timings
    (out / "run.json").write_text(json.dumps(run, indent=1))
    return run
