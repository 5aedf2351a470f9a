"""Render an Assessment: canonical JSON (byte-identical for the same case) or a text report
for a clinician.

The text report reads top-down in the order a clinician acts on it: what was not recognised or not
read, the alerts, the tier with the ANC and its date, the values used (a table: the value the rules
read, the value as reported where the unit was converted, and the date), the ranked causes, the next
steps grouped by urgency, then pharmacogenomics, missing data and warnings. Every statement cites its
sources by number ([1], [2, 3]), numbered in the order they first appear; the full citations follow
at the end, one numbered entry each. Lines are wrapped at 100 characters, never inside a word or at a
hyphen, so a URL is always whole on one line and can be clicked or copied."""
from __future__ import annotations

import hashlib
import re
import textwrap
from datetime import date, datetime
from typing import Iterable, Optional, Union

from pydantic import BaseModel
from pydantic_core import to_json as to_json_value

from .assessment import Assessment, SourceOut

__all__ = ["to_json", "to_json_bytes", "to_json_pieces", "SharedJson", "to_text"]

WIDTH = 100


def to_json(a: Assessment, indent: int | None = 2) -> str:
    """Canonical JSON (pydantic's serializer): field order fixed by the model, so the same case gives
    byte-identical output."""
    return a.model_dump_json(indent=indent) + "\n"


def to_json_bytes(a: Assessment) -> bytes:
    """:func:`to_json` without indentation, as the UTF-8 bytes pydantic's serializer writes: no text made
    of them only to be encoded again (a 13 KB assessment with one non-ASCII letter in a citation costs
    the encoder about 12 instructions a character). The same bytes as the serializer's for the whole (a
    test compares them on every case file)."""
    return b"".join(to_json_pieces(a))


def to_json_pieces(a: Assessment) -> list[bytes]:
    """The bytes of :func:`to_json_bytes` in pieces, each shared entry's a :class:`SharedJson` of its own.

    The steps and the sources, over half of a typical assessment's bytes, are entries the engine builds
    once per knowledge base and shares, frozen (engine/explain.py): each one's JSON is made once too and
    put in its place in the rest, serialized with those three fields empty. A store that keeps many
    assessments (the report links, api/feedback.py) keeps each shared piece once, by its digest."""
    ser = a.__pydantic_serializer__
    hollow = ser.to_json(a.model_copy(update={"steps": [], "steps_not_advised": [], "sources": {}}))
    head, steps_at, rest = hollow.partition(_STEPS_AT)
    middle, sources_at, tail = rest.partition(_SOURCES_AT)
    if not steps_at or not sources_at:                      # not the layout expected: the plain way
        return [ser.to_json(a) + b"\n"]
    out = [head, b',"steps":[']
    _joined(out, map(_shared_json, a.steps))
    out.append(b'],"steps_not_advised":[')
    _joined(out, map(_shared_json, a.steps_not_advised))
    out += (b"],", middle, b',"sources":{')
    _joined(out, (_shared_json(s, key) for key, s in a.sources.items()))
    out += (b'},"trace":', tail, b"\n")
    return out


class SharedJson(bytes):
    """The JSON of an entry the engine shares (a step, a source with its key), made once per entry, and
    ``digest``: the first 32 hex digits of its SHA-256, which name it wherever it is kept."""
    digest: str


_STEPS_AT = b',"steps":[],"steps_not_advised":[],'   # a JSON string cannot hold an unescaped quote, so only
_SOURCES_AT = b',"sources":{},"trace":'               # the Assessment's own fields can match these
_SHARED: dict[tuple[int, Optional[str]], tuple[object, SharedJson]] = {}
_SHARED_MAX = 4096        # entries; the knowledge base has a few hundred steps and sources


def _joined(out: list[bytes], pieces: Iterable[bytes]) -> None:
    """``pieces`` appended to ``out`` with a comma between each two."""
    for i, piece in enumerate(pieces):
        if i:
            out.append(b",")
        out.append(piece)


def _shared_json(entry: BaseModel, key: Optional[str] = None) -> SharedJson:
    """The JSON of a shared, frozen entry (with its key in a mapping: ``"key":{...}``), made once."""
    hit = _SHARED.get((id(entry), key))
    if hit is not None and hit[0] is entry:
        return hit[1]
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    out = SharedJson(to_json_value({key: entry})[1:-1] if key is not None
                     else entry.__pydantic_serializer__.to_json(entry))
    out.digest = hashlib.sha256(out).hexdigest()[:32]
    _SHARED[(id(entry), key)] = (entry, out)
    return out


def _wrap(text: str, indent: str = "    ", first: Optional[str] = None) -> str:
    """Wrapped at WIDTH; a word (a URL, a range such as 20-50%) is never split, even when longer than a line."""
    return textwrap.fill(text, width=WIDTH, initial_indent=indent if first is None else first,
                         subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


class _Citations:
    """Numbers sources in the order the report first cites them; `mark` gives the short in-text form."""

    def __init__(self, a: Assessment):
        self.known = a.sources
        self.order: list[str] = []

    def mark(self, ids: Iterable[str]) -> str:
        nums: list[int] = []
        for sid in ids:
            if sid not in self.known:
                continue
            if sid not in self.order:
                self.order.append(sid)
            n = self.order.index(sid) + 1
            if n not in nums:
                nums.append(n)
        return f" [{','.join(map(str, sorted(nums)))}]" if nums else ""      # no space: never wrapped apart


# "Surname AB, Surname CD, ..." (two or more authors) at the start of a citation: the first surname, et al.
_AUTHORS = re.compile(r"^(?P<first>[^,.\[]+?) [A-Z]{1,3}(?: Jr)?, (?:[^,.]+? [A-Z]{1,3}(?: Jr)?, )*"
                      r"(?:[^,.]+? [A-Z]{1,3}(?: Jr)?|et al)\.\s")


def _reference(n: int, s: SourceOut) -> list[str]:
    """One source in one line, or two when its link is long: the citation with its author list cut to
    the first author, et al., then cut at a word to fit the line (its year kept), then the link, whole.
    The full citation is in the JSON output (`sources`) and on the clinician's page."""
    link = s.link() or ""
    head = f"  [{n}] "
    text = _AUTHORS.sub(lambda m: f"{m.group('first')} et al. ", s.citation, count=1)
    same_line = bool(link) and len(link) <= 55
    room = WIDTH - len(head) - (len(link) + 1 if same_line else 0)
    if len(text) > room:
        year = f" {s.year}." if str(s.year) not in text[:room] else ""
        text = text[:room - len(year) - 4].rsplit(" ", 1)[0].rstrip(",;:") + " ..." + year
    if same_line:
        return [f"{head}{text} {link}"]
    return [f"{head}{text}"] + ([" " * len(head) + link] if link else [])


def _when(t: Optional[Union[datetime, date]]) -> str:
    if t is None:
        return "undated"
    if isinstance(t, datetime):
        return t.strftime("%Y-%m-%d %H:%M")
    return t.isoformat()


def _num(v: float) -> str:
    return f"{v:g}"


SHORT_NAMES = {"wbc": "WBC", "anc": "ANC", "lymphocytes": "Lymphocytes", "monocytes": "Monocytes",
               "eosinophils": "Eosinophils", "basophils": "Basophils", "platelets": "Platelets",
               "segmented_neutrophils": "Segmented neutrophils", "bands": "Bands",
               "neutrophils_pct": "Neutrophils %", "bands_pct": "Bands %", "lymphocytes_pct": "Lymphocytes %",
               "monocytes_pct": "Monocytes %", "eosinophils_pct": "Eosinophils %", "basophils_pct": "Basophils %",
               "blasts_pct": "Blasts %", "hemoglobin": "Haemoglobin", "mcv": "MCV", "vitamin_b12": "Vitamin B12",
               "folate": "Folate", "copper": "Copper"}


def _values_table(a: Assessment) -> list[str]:
    """The values the rules read as a flowsheet: one row per test, one column per blood draw (oldest first,
    the current count marked), the unit and the lower limit of normal (LLN) judged against; under a test whose values
    were converted, a row with the values as reported. Columns that do not fit are continued below."""
    limits = {lim.test: _num(lim.lln) for lim in a.reference_limits}
    times = sorted({lab.time for lab in a.labs if lab.time is not None}, key=lambda t: t.isoformat())
    keys: list[Optional[Union[datetime, date]]] = list(times) + ([None] if any(x.time is None for x in a.labs) else [])
    days = [_when(t)[:10] for t in times]
    heads = [("undated" if t is None else _when(t) if days.count(_when(t)[:10]) > 1 else _when(t)[:10])
             + (" current" if any(x.current and x.time == t for x in a.labs) else "") for t in keys]
    order = list(SHORT_NAMES)
    tests = sorted({x.test for x in a.labs}, key=lambda t: (order.index(t) if t in order else len(order), t))
    rows: list[tuple[str, str, str, list[str]]] = []
    notes: list[str] = []
    for test in tests:
        labs = [x for x in a.labs if x.test == test]
        cell = {k: "/".join(_num(x.value) + (" d" if x.derived else "") for x in labs if x.time == k) for k in keys}
        llns = [x.lln for x in labs if x.lln is not None]
        rows.append((SHORT_NAMES.get(test, labs[0].name), labs[0].unit,
                     _num(llns[-1]) if llns else limits.get(test, ""), [cell[k] for k in keys]))
        changed = [x for x in labs if x.original and (x.original.value != x.value or x.original.unit != x.unit)]
        if changed:
            units = {x.original.unit for x in changed if x.original}
            one = len(units) == 1
            reported = {k: "/".join(_num(x.original.value) + ("" if one else f" {x.original.unit}")
                                    for x in changed if x.time == k and x.original) for k in keys}
            rows.append(("  as reported", units.pop() if one else "", "", [reported[k] for k in keys]))
        notes += [f"{SHORT_NAMES.get(test, test)} {_num(x.value)} (d) = {x.derivation}" for x in labs
                  if x.derived and x.derivation]
    header = ("VALUES USED", "unit", "LLN")
    w0, w1, w2 = (max(len(r[i]) for r in [(*header, [])] + rows) for i in range(3))
    fixed = 2 + w0 + 2 + w1 + 2 + w2
    widths = [max(len(heads[i]), *(len(r[3][i]) for r in rows)) for i in range(len(keys))]
    out: list[str] = []
    start = 0
    while start < len(keys):
        end, used = start, fixed
        while end < len(keys) and (end == start or used + 2 + widths[end] <= WIDTH):
            used += 2 + widths[end]
            end += 1
        span = range(start, end)
        line = f"{header[0]:<{w0 + 2}}  {header[1]:<{w1}}  {header[2]:<{w2}}" + "".join(
            f"  {heads[i]:>{widths[i]}}" for i in span)
        out.append(line.rstrip())
        for name, unit, lln, cells in rows:
            if not any(cells[i] for i in span):         # a test with no value in these columns
                continue
            out.append((f"  {name:<{w0}}  {unit:<{w1}}  {lln:<{w2}}" + "".join(
                f"  {cells[i]:>{widths[i]}}" for i in span)).rstrip())
        start = end
    out += [_wrap(n, "      ", "  ") for n in notes[:3]]
    if len(notes) > 3:
        out.append(f"  ... and {len(notes) - 3} more derived values (in the JSON output, `labs`)")
    return out


def _listed(title: str, items: list[str]) -> list[str]:
    """A titled list; a single item on the title's line."""
    if len(items) == 1:
        return [_wrap(f"{title}: {items[0]}", "  ", "")]
    return ([title] + [_wrap(f"- {x}", "    ", "  ") for x in items]) if items else []


def to_text(a: Assessment) -> str:
    out: list[str] = []
    w = out.append
    c = _Citations(a)
    cite = c.mark
    w(_wrap(f"leukodx assessment - case {a.case_id}, as of {a.as_of or 'unknown'}", "  ", ""))
    w(_wrap(("COUNT: " if a.cbc.current else "NO CURRENT COUNT: ") + a.cbc.note, "  ", ""))
    if a.unrecognised:
        w(f"NOT RECOGNISED ({len(a.unrecognised)}): not assessed; check the spelling")
        for u in a.unrecognised:
            hint = f" - did you mean {' or '.join(u.suggestions)}?" if u.suggestions else " - no close match known"
            w(_wrap(f"- {u.field} {u.text!r} ({u.kind}){hint}", "    ", "  "))
    if a.not_assessed:
        w(f"NOT ASSESSED ({len(a.not_assessed)}): left out because they could not be read")
        for n in a.not_assessed:
            w(_wrap(f"- {n.field}" + (f" ({n.value})" if n.value else "") + f": {n.reason}", "    ", "  "))
    if a.alerts:
        w(f"ALERTS ({len(a.alerts)})")
        for al in a.alerts:
            w(_wrap(f"!! {al.severity.upper()}: {al.title} - {al.description}{cite(al.sources)}", "     ", "  "))
    w("")
    r = a.risk_tier
    anc = ""
    if r.anc is not None:
        how = " as reported" if r.anc_source == "reported" else ""
        anc = f" (ANC {r.anc_comparator or ''}{r.anc:g} x10^9/L{how}" + (f", {_when(r.anc_time)[:10]}" if r.anc_time
                                                                          else "") + ")"
    at_least = (f" - {r.tier_at_least.upper()} OR WORSE" + (f" (ANC at most {r.anc_at_most:g}, the WBC)"
                                                            if r.anc_at_most is not None else "")) if r.tier_at_least else ""
    w(f"RISK TIER: {r.tier.upper()}{anc}{at_least}{cite(r.sources)}")
    # a reported ANC's basis only restates the line above and the count's date: not repeated
    restates = r.anc_source == "reported" and r.anc is not None and r.basis.startswith(
        f"ANC {r.anc:g} x10^9/L as reported (blood drawn")       # (a bound's basis says how it was judged: kept)
    basis = ("" if restates else r.basis) + (f" {r.duffy_null_note}" if r.duffy_null_note else "")
    if basis.strip():
        w(_wrap(basis.strip()))
    grades = [f"{name.upper()} grade {g.grade} ({g.criterion})" for name, g in
              (("wbc", a.ctcae.wbc), ("anc", a.ctcae.anc), ("lymphocytes", a.ctcae.lymphocytes)) if g]
    if grades:
        w(_wrap(f"CTCAE v{a.ctcae.version}: " + "; ".join(grades) + cite(a.ctcae.sources[:1])))
    if a.findings:
        w(_wrap("FINDINGS: " + "; ".join(f"{f.title}{cite(f.sources)}" for f in a.findings), "    ", ""))
    for i in a.interactions:
        drugs = " + ".join(", ".join(side) for side in i.drugs)
        w(_wrap(f"INTERACTION: {i.title} ({drugs}) - {i.effect} {i.action}{cite(i.sources)}", "    ", ""))
    w("")
    if a.labs:
        out.extend(_values_table(a))
    w("CAUSES (ranked)")
    if not a.causes:
        w("  none supported by the data given" + (" (an unrecognised drug or condition above was not assessed)"
                                                   if a.unrecognised else ""))
    for cause in a.causes:
        agents = f" - agents: {', '.join(cause.agents)}" if cause.agents else ""
        likelihood = cause.likelihood.replace("_", " ").upper()
        w(_wrap(f"{cause.rank}. {cause.title} [{likelihood}, score {cause.score:g}]{agents}", "       ", "  "))
        for e in cause.evidence:
            sign = {"for": "+", "against": "-", "neutral": "="}[e.direction]
            w(_wrap(f"{sign} {e.statement}{cite(e.sources)}", "       ", "     "))
    if not a.steps:
        w("NEXT STEPS: none raised by the data given")
    for urgency in ("immediate", "urgent", "routine"):
        steps = [s for s in a.steps if s.urgency == urgency]
        if steps:
            w(f"NEXT STEPS - {urgency.upper()}")
        for s in steps:             # why a routine step is done is on the page and in the JSON (`reasons`)
            # an urgent step's own reasons, as on the CDS card: the drug and the value its label names ("continue
            # clozapine with a haematology consultation and three-times-weekly ANC" had been in the JSON only)
            why = " ".join(s.reasons[:2]) or s.rationale
            w(_wrap(f"- {s.title}{cite(s.sources)}" + (f": {why}" if urgency != "routine" else ""), "    ", "  "))
    if a.steps_not_advised:
        w("NOT ADVISED")
    for b in a.steps_not_advised:
        w(_wrap(f"- {b.title}{cite(b.sources)}: {b.reason}", "    ", "  "))
    p = a.pharmacogenomics
    if p.recommendations or p.note or p.tpmt.phenotype != "unknown":
        w(f"PHARMACOGENOMICS: TPMT {p.tpmt.phenotype} / NUDT15 {p.nudt15.phenotype}")
        for rec in p.recommendations:
            w(f"  CPIC, {rec.drug} ({rec.classification}){cite(rec.sources)}:")
            if rec.update_2024:            # the 2024 update first; the 2020 text it supersedes after it
                w(_wrap(rec.update_2024, "       "))
                w(_wrap(f"Superseded 2020 text: {rec.recommendation}", "       "))
            else:
                w(_wrap(rec.recommendation, "       "))
        if p.note:
            w(_wrap(p.note, "  "))
    out.extend(_listed("MISSING DATA", [m.item for m in a.missing_data]))
    out.extend(_listed("WARNINGS", a.warnings))
    w("SOURCES (numbered as cited above; abbreviated here, in full in the JSON output and on the page)")
    for n, sid in enumerate(c.order, 1):
        out.extend(_reference(n, a.sources[sid]))
    w(_wrap(f"{a.disclaimer} (knowledge base {a.kb_version}, leukodx {a.engine_version})", "", ""))
    return "\n".join(out) + "\n"
