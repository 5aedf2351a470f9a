"""The `leukodx` command: a thin adapter over the engine.

    leukodx assess FILE [--format json|text] [--ctcae 5.0|6.0] [--partial] [--patient ID]   (a case or a FHIR Bundle)
    leukodx schema case
    leukodx rules check | list | show ID | docs --out DIR [--cases DIR] [--rules DIR]
    leukodx replay PATH... (see `leukodx replay --help`)
    leukodx serve [--host 127.0.0.1] [--port 8000] [--workers N]
    leukodx feedback export [--db URL] [--out FILE]

Exit codes: 0 done; 1 the case was rejected, or a replay expectation failed; 2 usage or
knowledge-base error. Errors are one line per problem, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from leukodx.engine import CaseError, KnowledgeBaseError
from leukodx.engine import conditions as C

__all__ = ["main"]


def _assess(args: argparse.Namespace) -> int:
    from leukodx.engine import get_engine
    from leukodx.engine.render import to_json, to_text

    from leukodx.engine.parse import load_document
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    doc = load_document(data, name=args.file)
    engine = get_engine()
    if isinstance(doc, dict) and isinstance(doc.get("resourceType"), str):
        # a FHIR R4 Bundle or resource (an EHR export): mapped, and assessed as EHR data is (partially)
        from leukodx.api.fhir import map_bundle
        mapped = map_bundle(doc, kb=engine.kb, patient_id=args.patient)
        assessment = mapped.noted_in(engine.assess(mapped.case, ctcae_version=args.ctcae, partial=True))
    else:
        assessment = engine.assess(doc, ctcae_version=args.ctcae, partial=args.partial)
    sys.stdout.write(to_json(assessment) if args.format == "json" else to_text(assessment))
    return 0


def _schema(args: argparse.Namespace) -> int:
    from leukodx.engine.case import schema
    print(json.dumps(schema(), indent=2))
    return 0


def _rules(args: argparse.Namespace) -> int:
    from leukodx.engine.kb import load
    kb = load(Path(args.rules) if args.rules else None)
    if args.action == "docs":
        from leukodx.cli.docs import main as docs_main
        if not args.out:
            raise SystemExit("leukodx rules docs: give --out DIR")
        return docs_main(args)
    if args.action == "check":
        print(f"ok: {len(kb.rules)} rules in {len(kb.families)} families, {len(kb.sources)} sources, "
              f"{len(kb.drugs)} drugs, {len(kb.causes)} causes, {len(kb.steps)} steps; kb_version {kb.version}")
    elif args.action == "list":
        for r in kb.rules:
            print(f"{r.id:48} stage {r.stage}  {r.statement[:70]}")
    else:
        if not args.id:
            raise SystemExit("leukodx rules show: give a rule id (see `leukodx rules list`)")
        try:
            r = kb.rule(args.id)
        except KeyError:
            print(f"leukodx: unknown rule {args.id!r}", file=sys.stderr)
            return 2
        print(f"{r.id}  ({r.file}, family {r.family}, stage {r.stage})")
        print(f"statement: {r.statement}")
        if r.rationale:
            print(f"rationale: {r.rationale}")
        print(f"when:      {C.describe(r.condition)}")
        for c in r.then:
            kind = c.kind
            extra = f" (weight {c.weight:g})" if c.weight is not None else f" ({c.urgency})" if c.urgency else ""
            print(f"then:      {kind} {getattr(c, kind)}{extra}")
        for s in r.sources:
            print(f"source:    [{s}] {kb.sources[s].citation}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from leukodx.api.config import DeploymentError, check_deployment, get_settings
    from leukodx.api.serving import serve
    settings = get_settings()
    try:
        check_deployment(settings)      # refuse unsafe settings before any worker starts
    except DeploymentError as e:
        print(f"leukodx serve: {e}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("leukodx serve: --workers must be at least 1", file=sys.stderr)
        return 2
    from leukodx.api.feedback import store_for
    try:
        store_for(settings.feedback_db_url)    # migrate the database now: fail before any worker starts
    except Exception as e:  # noqa: BLE001 - a driver, a schema or a connection problem: one line, no traceback
        print(f"leukodx serve: the feedback database cannot be used: {e}", file=sys.stderr)
        return 2
    serve(settings, args.host, args.port, args.workers)   # supervised workers, even one; see api/serving.py
    return 0


def _feedback(args: argparse.Namespace) -> int:
    from leukodx.api.config import get_settings
    from leukodx.api.feedback import store_for
    url = args.db or get_settings().feedback_db_url
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for row in store_for(url).export():
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    except Exception as e:  # noqa: BLE001 - one line, no traceback
        print(f"leukodx feedback export: the feedback database cannot be read: {e}", file=sys.stderr)
        return 2
    finally:
        if args.out:
            out.close()
    return 0


def _replay(args: argparse.Namespace) -> int:
    from leukodx.cli.replay import main as replay_main
    return replay_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="leukodx", description="Leukopenia decision support: causes, risk tier, next steps.")
    from leukodx import __version__
    p.add_argument("--version", action="version", version=f"leukodx {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("assess", help="assess one case file or FHIR R4 Bundle (JSON or YAML; - for standard input)")
    a.add_argument("file")
    a.add_argument("--format", choices=["json", "text"], default="json")
    a.add_argument("--ctcae", choices=["5.0", "6.0"], default=None, help="CTCAE version (default 5.0)")
    a.add_argument("--partial", action="store_true",
                   help="leave out what cannot be read (listed under NOT ASSESSED) and assess the rest")
    a.add_argument("--patient", help="for a FHIR Bundle holding several patients: the Patient id to assess")
    a.set_defaults(func=_assess)
    s = sub.add_parser("schema", help="print a JSON Schema")
    s.add_argument("what", choices=["case"])
    s.set_defaults(func=_schema)
    r = sub.add_parser("rules", help="check, list or show the knowledge base")
    r.add_argument("action", choices=["check", "list", "show", "docs"])
    r.add_argument("id", nargs="?", help="rule id, for show")
    r.add_argument("--out", help="folder for the reviewer's reference, for docs")
    r.add_argument("--cases", help="case folder linked from the reference (default: ./cases if present)")
    r.add_argument("--rules", metavar="DIR", help="the knowledge base to read (default: the installed rules/), "
                                                 "e.g. a copy being edited")
    r.set_defaults(func=_rules)
    sv = sub.add_parser("serve", help="run the REST and CDS Hooks API (uvicorn)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--workers", type=int, default=1, help="worker processes (each builds its own engine); a "
                    "supervisor replaces any that dies. Limits and timeouts: LEUKODX_* settings (docs/security.md)")
    sv.set_defaults(func=_serve)
    fb = sub.add_parser("feedback", help="CDS Hooks feedback store")
    fb.add_argument("action", choices=["export"])
    fb.add_argument("--db", help="SQLAlchemy URL (default: LEUKODX_FEEDBACK_DB_URL or sqlite:///leukodx-feedback.db)")
    fb.add_argument("--out", help="write JSON lines here instead of standard output")
    fb.set_defaults(func=_feedback)
    rp = sub.add_parser("replay", help="replay case files against their expectations")
    rp.add_argument("paths", nargs="+", help="case files or folders (searched for .yaml/.yml/.json)")
    rp.add_argument("--format", choices=["text", "json", "junit"], default="text")
    rp.add_argument("--out", help="write the report here instead of standard output")
    rp.add_argument("--jobs", type=int, default=1, help="parallel processes (default 1)")
    rp.add_argument("--coverage", action="store_true", help="report rules no case fired and ids no case expected")
    rp.set_defaults(func=_replay)
    __import__("leukodx.cli.screen", fromlist=["register"]).register(sub)   # leukodx screen: cli/screen.py
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CaseError as e:
        print(f"leukodx: {e}", file=sys.stderr)
        return 1
    except KnowledgeBaseError as e:
        print(f"leukodx: {e}", file=sys.stderr)
        return 2
    except ValueError as e:      # a FHIR Bundle that cannot be mapped (FhirMappingError) names its problems
        if type(e).__name__ != "FhirMappingError":
            raise
        print(f"leukodx: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"leukodx: cannot read {getattr(e, 'filename', '') or 'the input'}: {e.strerror}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
