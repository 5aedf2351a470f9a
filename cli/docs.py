"""`leukodx rules docs`: the knowledge base as browsable Markdown, for reviewers.

:func:`write_docs` writes, into one folder,

    index.md      kb_version, counts, links to the pages, the families
    rules.md      every rule by family: statement, condition in words, conclusions, sources, file,
                  and the cases that fire it
    causes.md, steps.md, alerts.md, findings.md
                  every catalogue entry with its sources, the rules concluding it and the cases expecting it
    sources.md    every source with its links, what it supports, how it was checked, and who cites it
    facts.md      every fact a rule can read (rules/facts.yaml): type, values, producer, meaning, and the
                  rules that read it

Which cases fire a rule comes from replaying the case files (:mod:`leukodx.cli.replay`, so with the
installed engine). Anchors are the ids themselves (``rules.md#drug_induced.chemotherapy``). The
output depends only on the knowledge base, the case files and the output folder (case links are
relative to it), so the same input gives byte-identical files.
"""
from __future__ import annotations

import argparse
import html
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from leukodx.engine.conditions import describe
from leukodx.engine.kb import CatalogueEntry, Conclusion, KnowledgeBase, Rule, Source, load
from leukodx.cli.replay import find_case_files, replay_file

__all__ = ["write_docs", "add_arguments", "main"]

# page, conclusion kind, key in CaseResult.expected_ids (None: cases do not expect it), heading
CATALOGUES: tuple[tuple[str, str, Optional[str], str], ...] = (
    ("causes", "cause", "causes", "Causes"),
    ("steps", "step", "steps", "Next steps"),
    ("alerts", "alert", "alerts", "Alerts"),
    ("findings", "finding", None, "Findings"),
)
_PAGE_OF_KIND = {"cause": "causes", "step": "steps", "block_step": "steps", "alert": "alerts", "finding": "findings"}
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


@dataclass(frozen=True)
class CaseLink:
    """A case file as the pages link it: its id and its path relative to the output folder."""
    name: str
    href: str


@dataclass(frozen=True)
class CaseUsage:
    """What the replayed cases did: the cases firing each rule and expecting each catalogue id."""
    replayed: bool
    count: int
    fired: dict[str, list[CaseLink]]                  # rule id -> cases
    expected: dict[tuple[str, str], list[CaseLink]]   # (expected_ids key, id) -> cases


# ---- Markdown ----------------------------------------------------------------------------------

def md(text: str) -> str:
    """Text as one Markdown line: whitespace collapsed, markup characters (and table pipes) escaped."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _code(name: str) -> str:
    return f"`{name}`"


def _anchor(name: str) -> str:
    return f'<a id="{html.escape(name, quote=True)}"></a>'


def _link(label: str, page: str, anchor: str) -> str:
    return f"[{label}]({page}#{quote(anchor, safe='')})"


def _id_link(page: str, name: str) -> str:
    return _link(_code(name), page, name)


def _autolink(url: str) -> str:
    return f"<{quote(url, safe=_URL_SAFE)}>"


def _joined(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8", newline="\n")
    return path


# ---- sources -----------------------------------------------------------------------------------

def _urls(s: Source) -> list[tuple[str, str]]:
    """The source's links, best first: its own URL, then PubMed, then DOI."""
    links = [("URL", s.url), ("PubMed", f"https://pubmed.ncbi.nlm.nih.gov/{s.pmid}/" if s.pmid else None),
             ("DOI", f"https://doi.org/{s.doi}" if s.doi else None)]
    return [(label, url) for label, url in links if url]


def _citation(s: Source) -> str:
    """The full citation with its best link."""
    urls = _urls(s)
    return f"{md(s.citation)} {_autolink(urls[0][1]) if urls else '(no link)'}"


def _source_items(kb: KnowledgeBase, ids: tuple[str, ...] | list[str]) -> list[str]:
    return [f"  - {_id_link('sources.md', sid)}: {_citation(kb.sources[sid])}" for sid in ids]


# ---- cases -------------------------------------------------------------------------------------

def _case_link(path: Path, case_id: str, out_dir: Path) -> CaseLink:
    href = Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
    return CaseLink(case_id, quote(href, safe="/"))


def _replay_cases(cases_dir: Optional[Path], out_dir: Path) -> CaseUsage:
    """Replay every case file under cases_dir; which rules each fired and which ids it expects."""
    if cases_dir is None:
        return CaseUsage(False, 0, {}, {})
    fired: dict[str, list[CaseLink]] = {}
    expected: dict[tuple[str, str], list[CaseLink]] = {}
    files = find_case_files([str(cases_dir)])
    for path in files:
        result = replay_file(path)
        link = _case_link(path, result.id, out_dir)
        for rule_id in dict.fromkeys(result.fired):
            fired.setdefault(rule_id, []).append(link)
        for key, ids in sorted(result.expected_ids.items()):
            for name in dict.fromkeys(ids):
                expected.setdefault((key, name), []).append(link)
    return CaseUsage(True, len(files), fired, expected)


def _cases_text(usage: CaseUsage, links: list[CaseLink]) -> str:
    if not usage.replayed:
        return "not checked (no cases replayed)"
    return _joined([f"[{md(c.name)}]({c.href})" for c in links])


# ---- index.md ----------------------------------------------------------------------------------

def _index(kb: KnowledgeBase, titles: dict[str, str], usage: CaseUsage) -> list[str]:
    counts = [("rules", len(kb.rules)), ("families", len(kb.families)), ("sources", len(kb.sources)),
              ("causes", len(kb.causes)), ("steps", len(kb.steps)), ("alerts", len(kb.alerts)),
              ("findings", len(kb.findings))]
    if usage.replayed:
        counts.append(("cases replayed", usage.count))
    lines = ["# leukodx knowledge base", "", f"kb_version: {_code(kb.version)}", "",
             "| what | count |", "|---|---:|", *(f"| {name} | {n} |" for name, n in counts), "",
             "## Pages", "", "- [Rules](rules.md): every rule by family, with its condition, conclusions, "
             "sources and the cases that fire it"]
    lines += [f"- [{heading}]({page}.md)" for page, _, _, heading in CATALOGUES]
    lines += ["- [Sources](sources.md): every source, what it supports and how it was checked",
              "- [Facts](facts.md): every fact a rule can read, its type, values and meaning", "",
              "## Families", "", "| family | stage | title | rules |", "|---|---:|---|---:|"]
    for family, rules in kb.families.items():
        stage = rules[0].stage if rules else ""
        lines.append(f"| {_id_link('rules.md', family)} | {stage} | {md(titles[family])} | {len(rules)} |")
    return lines


# ---- rules.md ----------------------------------------------------------------------------------

def _conclusion(kb: KnowledgeBase, c: Conclusion) -> str:
    """One conclusion in words, linked to its catalogue entry."""
    kind = c.kind
    value = getattr(c, kind)
    if kind in ("missing", "warning"):
        return f"{'missing data' if kind == 'missing' else 'warning'}: {md(value)}"
    page = _PAGE_OF_KIND[kind]
    entry: CatalogueEntry = getattr(kb, page)[value]
    text = f"{'blocks step' if kind == 'block_step' else kind} {_id_link(page + '.md', value)} ({md(entry.title)})"
    if c.weight is not None:
        text += f", weight {c.weight:g}"
    if c.urgency is not None:
        text += f", urgency {c.urgency}"
    return text


def _rule_section(kb: KnowledgeBase, rule: Rule, usage: CaseUsage) -> list[str]:
    lines = [f"### {_anchor(rule.id)}{_code(rule.id)}", "", md(rule.statement), ""]
    if rule.rationale:
        lines += [f"Rationale: {md(rule.rationale)}", ""]
    lines += [f"- **When:** {md(describe(rule.condition))}", "- **Then:**"]
    lines += [f"  - {_conclusion(kb, c)}" for c in rule.then]
    lines += ["- **Sources:**", *_source_items(kb, rule.sources)]
    lines += [f"- **File:** {_code('rules/' + rule.file)}",
              f"- **Cases that fire it:** {_cases_text(usage, usage.fired.get(rule.id, []))}", ""]
    return lines


def _rules(kb: KnowledgeBase, titles: dict[str, str], usage: CaseUsage) -> list[str]:
    lines = ["# Rules", "", f"{len(kb.rules)} rules in {len(kb.families)} families, in knowledge-base order "
             f"(stage, then family). kb_version {_code(kb.version)}. [Index](index.md)", ""]
    for family, rules in kb.families.items():
        stage = rules[0].stage if rules else ""
        lines += [f"## {_anchor(family)}Family {_code(family)} (stage {stage}): {md(titles[family])}", ""]
        for rule in rules:
            lines += _rule_section(kb, rule, usage)
    return lines


# ---- causes.md, steps.md, alerts.md, findings.md -----------------------------------------------

def _concluding(kb: KnowledgeBase, kinds: tuple[str, ...], entry_id: str) -> list[str]:
    """Links to the rules with a conclusion of one of these kinds about entry_id, with qualifiers."""
    out = []
    for rule in kb.rules:
        for c in rule.then:
            if c.kind in kinds and getattr(c, c.kind) == entry_id:
                extra = (f" (weight {c.weight:g})" if c.weight is not None
                         else f" ({c.urgency})" if c.urgency is not None else "")
                out.append(_id_link("rules.md", rule.id) + extra)
    return out


def _entry_section(kb: KnowledgeBase, kind: str, expect_key: Optional[str], entry: CatalogueEntry,
                   usage: CaseUsage) -> list[str]:
    lines = [f"## {_anchor(entry.id)}{md(entry.title)}", "", _code(entry.id), "", md(entry.description), ""]
    if entry.drug_classes:
        lines.append(f"- **Drug classes:** {', '.join(_code(d) for d in entry.drug_classes)}")
    lines += ["- **Sources:**", *_source_items(kb, entry.sources)]
    lines.append(f"- **Rules concluding it:** {_joined(_concluding(kb, (kind,), entry.id))}")
    if kind == "step":
        lines.append(f"- **Rules blocking it:** {_joined(_concluding(kb, ('block_step',), entry.id))}")
    if expect_key is not None:
        cases = usage.expected.get((expect_key, entry.id), [])
        lines.append(f"- **Cases that expect it:** {_cases_text(usage, cases)}")
    return lines + [""]


def _catalogue(kb: KnowledgeBase, page: str, kind: str, expect_key: Optional[str], heading: str,
               usage: CaseUsage) -> list[str]:
    entries: dict[str, CatalogueEntry] = getattr(kb, page)
    lines = [f"# {heading}", "", f"{len(entries)} entries, in the order of {_code(f'rules/{page}.yaml')}. "
             "[Index](index.md)", ""]
    for entry in entries.values():
        lines += _entry_section(kb, kind, expect_key, entry, usage)
    return lines


# ---- sources.md --------------------------------------------------------------------------------

def _citing_entries(kb: KnowledgeBase, source_id: str) -> list[str]:
    return [_id_link(f"{page}.md", e.id) for page, _, _, _ in CATALOGUES
            for e in getattr(kb, page).values() if source_id in e.sources]


def _source_section(kb: KnowledgeBase, s: Source) -> list[str]:
    links = [f"{label} {_autolink(url)}" for label, url in _urls(s)]
    rules = [_id_link("rules.md", r.id) for r in kb.rules if s.id in r.sources]
    return [f"## {_anchor(s.id)}{_code(s.id)}", "", md(s.citation), "",
            f"- **Kind:** {s.kind}", f"- **Year:** {s.year}", f"- **Links:** {_joined(links)}",
            f"- **Supports:** {md(s.supports)}", f"- **Checked:** {md(s.checked)}",
            f"- **Rules citing it:** {_joined(rules)}",
            f"- **Catalogue entries citing it:** {_joined(_citing_entries(kb, s.id))}", ""]


def _sources(kb: KnowledgeBase) -> list[str]:
    lines = ["# Sources", "", f"{len(kb.sources)} sources, in the order of {_code('rules/sources/*.yaml')}. "
             "[Index](index.md)", ""]
    for s in kb.sources.values():
        lines += _source_section(kb, s)
    return lines


# ---- entry points ------------------------------------------------------------------------------

# ---- facts.md ----------------------------------------------------------------------------------

def _facts(kb: KnowledgeBase) -> list[str]:
    lines = ["# Facts a rule can read", "", "From `rules/facts.yaml`: the one table the rule compiler, "
             "`leukodx rules check` and this page read. A `{...}` in a name stands for every id of that "
             "catalogue. [Index](index.md)", "", "| fact | type | values | producer | meaning | read by |",
             "|---|---|---|---|---|---|"]
    readers: dict[int, list[str]] = {}
    for r in kb.rules:
        for name in r.facts:
            spec = kb.facts.spec(name)
            if spec is not None:
                readers.setdefault(id(spec), []).append(r.id)
    for spec in kb.facts.specs:
        rules = sorted(set(readers.get(id(spec), [])))
        shown = ", ".join(_id_link("rules.md", r) for r in rules[:6]) + (f" and {len(rules) - 6} more"
                                                                          if len(rules) > 6 else "")
        values = ", ".join(_code(v) for v in spec.values) if spec.values else ""
        lines.append(f"| {_code(spec.name)} | {spec.type} | {values} | {spec.producer} | {md(spec.meaning)} | "
                     f"{shown or 'no rule yet'} |")
    return lines


def write_docs(out_dir: Path, cases_dir: Optional[Path] = None, kb: Optional[KnowledgeBase] = None) -> list[Path]:
    """Write the reference pages into out_dir (created if needed) and return their paths.

    With cases_dir, every case file under it is replayed to link rules to the cases that fire them
    and catalogue entries to the cases that expect them."""
    kb = kb or load()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    usage = _replay_cases(Path(cases_dir) if cases_dir is not None else None, out_dir)
    titles = kb.family_titles
    pages = {"index": _index(kb, titles, usage), "rules": _rules(kb, titles, usage)}
    for page, kind, expect_key, heading in CATALOGUES:
        pages[page] = _catalogue(kb, page, kind, expect_key, heading, usage)
    pages["sources"] = _sources(kb)
    pages["facts"] = _facts(kb)
    return [_write(out_dir / f"{name}.md", lines) for name, lines in pages.items()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the Markdown pages into")
    p.add_argument("--cases", metavar="DIR", default=None,
                   help="case files to replay for the 'cases that fire it' links "
                        "(default: ./cases if it exists, else none)")


def _default_cases() -> Optional[Path]:
    return Path("cases") if Path("cases").is_dir() else None


def main(args: argparse.Namespace) -> int:
    cases = Path(args.cases) if args.cases else _default_cases()
    if cases is not None and not cases.is_dir():
        print(f"leukodx rules docs: no such folder: {cases}", file=sys.stderr)
        return 2
    paths = write_docs(Path(args.out), cases)
    print(f"wrote {len(paths)} files to {args.out}")
    return 0
