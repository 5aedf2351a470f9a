"""`leukodx replay`: run case files against the engine and check their `expect` blocks.

Each case file is one case (JSON or YAML) in the case contract with an optional `expect`.
A file that cannot be read, breaks the contract, or whose expectations name an unknown id is a
failed case with the reason; replay goes on with the rest and never crashes.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Optional
from xml.sax.saxutils import escape, quoteattr

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from leukodx.engine import CaseError, Engine, get_engine
from leukodx.engine.assessment import Assessment
from leukodx.engine.parse import load_document, problems_from_validation

__all__ = ["CaseResult", "Failure", "find_case_files", "replay_file", "check", "main"]

CASE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class Failure:
    expectation: str
    expected: Any
    actual: Any


@dataclass
class CaseResult:
    id: str
    file: str
    passed: bool
    failures: list[Failure] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    expected_ids: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0


class Expect(BaseModel):
    """Expected outcome of a case file (its `expect` block), checked by `leukodx replay`. Unknown keys are
    an error. Part of the case-file format, not of the engine's case contract."""
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    risk_tier: Optional[Literal["normal", "mild", "moderate", "severe", "profound", "unknown"]] = None
    top_cause: Optional[str] = None
    top3_include: list[str] = []
    causes_include: list[str] = []
    causes_exclude: list[str] = []
    steps_include: list[str] = []
    steps_exclude: list[str] = []
    alerts_include: list[str] = []
    alerts_exclude: list[str] = []
    findings_include: list[str] = []
    findings_exclude: list[str] = []
    ctcae: Optional[dict[Literal["wbc", "anc", "lymphocytes"], Annotated[int, Field(ge=0, le=4)]]] = None
    error: Optional[str] = None
    mode: Literal["strict", "partial"] = Field(
        "strict", description="assess strictly (a person's case) or partially (EHR data: unreadable items left out)")
    tier_at_least: Optional[Literal["mild", "moderate", "severe", "profound", "none"]] = Field(
        None, description="the tier the WBC bounds the ANC to; 'none' when it must not bound it")
    anc: Optional[Annotated[float, Field(ge=0)]] = None
    anc_source: Optional[Literal["reported", "derived", "lower_of_reported_and_derived", "bounded_by_wbc"]] = None
    cbc_current: Optional[bool] = None
    not_assessed_include: list[str] = Field([], description="fields (or their prefixes) listed as not assessed")



def find_case_files(paths: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix in CASE_SUFFIXES and f.name.lower() != "readme.md"))
        else:
            out.append(p)
    return out


def _unknown_ids(exp: Expect, kb: Any) -> list[Failure]:
    out = []
    for key, catalogue in (("top_cause", kb.causes), ("top3_include", kb.causes), ("causes_include", kb.causes),
                           ("causes_exclude", kb.causes), ("steps_include", kb.steps), ("steps_exclude", kb.steps),
                           ("alerts_include", kb.alerts), ("alerts_exclude", kb.alerts),
                           ("findings_include", kb.findings), ("findings_exclude", kb.findings)):
        value = getattr(exp, key)
        for v in [value] if isinstance(value, str) else value or []:
            if v not in catalogue:
                out.append(Failure(f"expect.{key}", "a known id", f"unknown id {v!r}"))
    return out


def check(exp: Expect, a: Assessment) -> list[Failure]:
    """Every unmet expectation, with what was expected and what came out."""
    f: list[Failure] = []
    causes = [c.id for c in a.causes]
    got = {"causes": set(causes), "steps": {s.id for s in a.steps}, "alerts": {x.id for x in a.alerts},
           "findings": {x.id for x in a.findings}}
    if exp.risk_tier and exp.risk_tier != a.risk_tier.tier:
        f.append(Failure("risk_tier", exp.risk_tier, a.risk_tier.tier))
    if exp.top_cause and (not causes or causes[0] != exp.top_cause):
        f.append(Failure("top_cause", exp.top_cause, causes[:3]))
    for cid in exp.top3_include:
        if cid not in causes[:3]:
            f.append(Failure("top3_include", cid, causes[:3]))
    for kind in ("causes", "steps", "alerts", "findings"):
        for item in getattr(exp, f"{kind}_include"):
            if item not in got[kind]:
                f.append(Failure(f"{kind}_include", item, sorted(got[kind])))
        for item in getattr(exp, f"{kind}_exclude"):
            if item in got[kind]:
                f.append(Failure(f"{kind}_exclude", item, sorted(got[kind])))
    for test, grade in (exp.ctcae or {}).items():
        g = getattr(a.ctcae, test)
        actual = g.grade if g else None
        if actual != grade:
            f.append(Failure(f"ctcae.{test}", grade, actual))
    rt = a.risk_tier
    for key, actual in (("tier_at_least", rt.tier_at_least or "none"), ("anc_source", rt.anc_source),
                        ("cbc_current", a.cbc.current)):
        expected = getattr(exp, key)
        if expected is not None and expected != actual:
            f.append(Failure(key, expected, actual))
    if exp.anc is not None and (rt.anc is None or abs(rt.anc - exp.anc) > 1e-6):
        f.append(Failure("anc", exp.anc, rt.anc))
    left_out = [n.field for n in a.not_assessed]
    for prefix in exp.not_assessed_include:
        if not any(field.startswith(prefix) for field in left_out):
            f.append(Failure("not_assessed_include", prefix, left_out))
    if exp.error:
        f.append(Failure("error", exp.error, "the case was accepted"))
    return f


def replay_file(path: Path, engine: Optional[Engine] = None) -> CaseResult:
    """Replay one case file with the given engine (default: the process's engine)."""
    engine = engine or get_engine()
    start = time.perf_counter()
    name = path.stem
    try:
        raw = load_document(path.read_bytes(), name=str(path))
        if not isinstance(raw, dict):
            raise CaseError([])
        name = str(raw.get("id", name))
        exp = Expect.model_validate(raw.get("expect") or {})
    except CaseError as e:
        return CaseResult(name, str(path), False, [Failure("file", "a readable case", str(e))])
    except ValidationError as e:
        reasons = "; ".join(str(p) for p in problems_from_validation(e))
        return CaseResult(name, str(path), False, [Failure("expect", "a valid expect block", reasons)])
    except OSError as e:
        return CaseResult(name, str(path), False, [Failure("file", "a readable file", str(e))])
    failures = _unknown_ids(exp, engine.kb)
    expected_ids = {"causes": [*exp.causes_include, *exp.top3_include, *([exp.top_cause] if exp.top_cause else [])],
                    "steps": list(exp.steps_include), "alerts": list(exp.alerts_include)}
    fired: list[str] = []
    try:
        a = engine.assess(raw, partial=exp.mode == "partial")
        failures += check(exp, a)
        fired = [t.rule for t in a.trace]
    except CaseError as e:
        message = str(e)
        if not exp.error:
            failures.append(Failure("accepted", "an assessment", message))
        elif exp.error.casefold() not in message.casefold():
            failures.append(Failure("error", exp.error, message))
    except Exception as e:  # replay never crashes on one case; the failure names it
        failures.append(Failure("engine", "an assessment", f"{type(e).__name__}: {e}"))
    return CaseResult(name, str(path), not failures, failures, fired, expected_ids, time.perf_counter() - start)


def _run_all(files: list[Path], jobs: int) -> list[CaseResult]:
    if jobs <= 1 or len(files) < 2:
        return [replay_file(f) for f in files]
    ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    chunk = max(1, len(files) // (jobs * 8))
    with ctx.Pool(jobs) as pool:          # each worker builds its own engine after the fork
        return pool.map(replay_file, files, chunksize=chunk)


def coverage(results: list[CaseResult]) -> dict[str, list[str]]:
    kb = get_engine().kb
    fired = {r for res in results for r in res.fired}
    expected = {k: {i for res in results for i in res.expected_ids.get(k, [])} for k in ("causes", "steps", "alerts")}
    return {
        "rules_not_fired": [r.id for r in kb.rules if r.id not in fired],
        "causes_not_expected": [c for c in kb.causes if c not in expected["causes"]],
        "steps_not_expected": [s for s in kb.steps if s not in expected["steps"]],
        "alerts_not_expected": [a for a in kb.alerts if a not in expected["alerts"]],
    }


def _text(results: list[CaseResult], cov: Optional[dict[str, list[str]]]) -> str:
    lines = []
    for r in results:
        lines.append(f"{'PASS' if r.passed else 'FAIL'}  {r.id}  ({r.file})")
        for f in r.failures:
            lines.append(f"      {f.expectation}: expected {f.expected!r}, got {f.actual!r}")
    passed = sum(r.passed for r in results)
    if cov is not None:
        for k, v in cov.items():
            lines.append(f"coverage: {k}: {len(v)}" + (f" - {', '.join(v)}" if v else ""))
    lines.append(f"replay: {passed} passed, {len(results) - passed} failed")
    return "\n".join(lines) + "\n"


def _json(results: list[CaseResult], cov: Optional[dict[str, list[str]]]) -> str:
    doc: dict[str, Any] = {
        "total": len(results), "passed": sum(r.passed for r in results),
        "failed": sum(not r.passed for r in results),
        "cases": [{"id": r.id, "file": r.file, "passed": r.passed, "failures": [asdict(f) for f in r.failures]}
                  for r in results]}
    if cov is not None:
        doc["coverage"] = cov
    return json.dumps(doc, indent=2, default=str) + "\n"


def _junit(results: list[CaseResult]) -> str:
    failed = sum(not r.passed for r in results)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuite name="leukodx-replay" tests="{len(results)}" failures="{failed}" errors="0">']
    for r in results:
        out.append(f'  <testcase classname="leukodx.cases" name={quoteattr(r.id)} file={quoteattr(r.file)} '
                   f'time="{r.seconds:.4f}">')
        for f in r.failures:
            msg = f"{f.expectation}: expected {f.expected!r}, got {f.actual!r}"
            out.append(f"    <failure message={quoteattr(msg[:500])}>{escape(msg)}</failure>")
        out.append("  </testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"


def main(args: argparse.Namespace) -> int:
    files = find_case_files(args.paths)
    if not files:
        print("leukodx replay: no case files found", file=sys.stderr)
        return 2
    jobs = max(1, min(args.jobs, os.cpu_count() or 1, len(files)))
    results = _run_all(files, jobs)
    cov = coverage(results) if args.coverage else None
    report = {"text": lambda: _text(results, cov), "json": lambda: _json(results, cov),
              "junit": lambda: _junit(results)}[args.format]()
    if args.out:
        Path(args.out).write_text(report, encoding="utf-8")
        if args.format != "text":
            print(_text(results, cov).splitlines()[-1])
    else:
        sys.stdout.write(report)
    return 0 if all(r.passed for r in results) else 1
