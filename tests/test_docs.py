"""The reviewer's reference (`leukodx.cli.docs`): every rule, catalogue entry and source is documented,
links resolve, cases that fire a rule are linked, and the output is deterministic."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from leukodx.cli import docs
from leukodx.engine.kb import KnowledgeBase, load
from leukodx.cli.replay import find_case_files, replay_file

CASES = Path(__file__).parents[1] / "cases"
PAGES = ("index", "rules", "causes", "steps", "alerts", "findings", "sources", "facts")


def _plain(text: str) -> str:
    """Markdown text with backslash escapes removed, as a reader sees it."""
    return re.sub(r"\\(.)", r"\1", text)


def _words(text: str) -> str:
    return " ".join(text.split())


def _section(page: str, anchor: str) -> str:
    """From the heading carrying the anchor to the next heading."""
    start = page.index(f'<a id="{anchor}"></a>')
    ends = [i for i in (page.find("\n## ", start), page.find("\n### ", start)) if i != -1]
    return page[start:min(ends, default=len(page))]


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return load()


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("docs") / "a"
    paths = docs.write_docs(out_dir, cases_dir=CASES)
    assert [p.name for p in paths] == [f"{name}.md" for name in PAGES]
    return out_dir


@pytest.fixture(scope="module")
def pages(out: Path) -> dict[str, str]:
    return {name: (out / f"{name}.md").read_text(encoding="utf-8") for name in PAGES}


def test_index_has_version_counts_and_families(kb: KnowledgeBase, pages: dict[str, str]) -> None:
    index = pages["index"]
    assert kb.version in index
    assert f"| rules | {len(kb.rules)} |" in index
    assert f"| cases replayed | {len(find_case_files([str(CASES)]))} |" in index
    for family, rules in kb.families.items():
        assert re.search(rf"^\| \[`{family}`\]\(rules\.md#{family}\) \| {rules[0].stage} \| .+ \| {len(rules)} \|$",
                         index, re.MULTILINE), family
    for name in PAGES[1:]:
        assert f"({name}.md)" in index


def test_every_rule_has_a_heading_with_its_anchor(kb: KnowledgeBase, pages: dict[str, str]) -> None:
    for rule in kb.rules:
        assert f'### <a id="{rule.id}"></a>`{rule.id}`' in pages["rules"], rule.id


def test_rules_appear_in_knowledge_base_order(kb: KnowledgeBase, pages: dict[str, str]) -> None:
    positions = [pages["rules"].index(f'<a id="{rule.id}"></a>') for rule in kb.rules]
    assert positions == sorted(positions)


def test_every_catalogue_entry_is_on_its_page(kb: KnowledgeBase, pages: dict[str, str]) -> None:
    for page in ("causes", "steps", "alerts", "findings"):
        for entry_id in getattr(kb, page):
            assert f'<a id="{entry_id}"></a>' in pages[page], (page, entry_id)


def test_every_source_citation_is_on_the_sources_page(kb: KnowledgeBase, pages: dict[str, str]) -> None:
    text = _plain(pages["sources"])
    for source in kb.sources.values():
        assert f'<a id="{source.id}"></a>' in pages["sources"]
        assert _words(source.citation) in text, source.id


def test_a_rule_section_cites_its_sources_in_full(kb: KnowledgeBase, pages: dict[str, str]) -> None:
    for rule in kb.rules:
        section = _plain(_section(pages["rules"], rule.id))
        assert rule.file in section
        for sid in rule.sources:
            source = kb.sources[sid]
            assert _words(source.citation) in section, (rule.id, sid)
            link = source.url or (f"https://pubmed.ncbi.nlm.nih.gov/{source.pmid}/" if source.pmid else None) \
                or (f"https://doi.org/{source.doi}" if source.doi else None)
            if link:
                assert link in unquote(section), (rule.id, sid)


def test_cases_that_fire_a_rule_are_linked_and_exist(out: Path, pages: dict[str, str]) -> None:
    lines = [line for line in pages["rules"].splitlines() if line.startswith("- **Cases that fire it:**")]
    hrefs = [unquote(h) for line in lines for h in re.findall(r"\]\(([^)]+)\)", line)]
    assert hrefs, "no rule lists a case that fires it"
    for href in hrefs:
        assert (out / href).resolve().is_file(), href


def test_a_replayed_case_is_linked_from_every_rule_it_fires(out: Path, pages: dict[str, str]) -> None:
    path = CASES / "drugs" / "chemo-febrile-neutropenia-38-3-single.yaml"
    result = replay_file(path)
    assert result.fired
    for rule_id in result.fired:
        section = unquote(_section(pages["rules"], rule_id))
        assert "cases/drugs/chemo-febrile-neutropenia-38-3-single.yaml" in section, rule_id


def test_cases_that_expect_an_entry_are_listed(pages: dict[str, str]) -> None:
    section = unquote(_section(pages["causes"], "autoimmune_neutropenia"))
    assert "cases/benign/autoimmune-neutropenia-sle.yaml" in section


def test_every_internal_link_resolves_to_an_anchor(pages: dict[str, str]) -> None:
    anchors = {name: set(re.findall(r'<a id="([^"]+)"></a>', text)) for name, text in pages.items()}
    links = [(page, unquote(a)) for text in pages.values()
             for page, a in re.findall(r"\]\((\w+)\.md#([^)]+)\)", text)]
    assert links
    for page, anchor in links:
        assert anchor in anchors[page], (page, anchor)


def test_output_is_deterministic(out: Path, pages: dict[str, str]) -> None:
    again = out.parent / "b"
    docs.write_docs(again, cases_dir=CASES)
    for name in PAGES:
        assert (again / f"{name}.md").read_bytes() == (out / f"{name}.md").read_bytes(), name


def test_without_cases_nothing_is_replayed(tmp_path: Path, kb: KnowledgeBase) -> None:
    docs.write_docs(tmp_path, kb=kb)
    rules = (tmp_path / "rules.md").read_text(encoding="utf-8")
    assert "cases replayed" not in (tmp_path / "index.md").read_text(encoding="utf-8")
    assert rules.count("- **Cases that fire it:** not checked (no cases replayed)") == len(kb.rules)


def test_markdown_escaping_keeps_table_cells_whole() -> None:
    assert docs.md("a | b\n  c_d") == r"a \| b c\_d"


def test_cli_writes_the_pages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    docs.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "out"), "--cases", str(CASES / "units")])
    assert docs.main(args) == 0
    assert capsys.readouterr().out.strip() == f"wrote {len(PAGES)} files to {tmp_path / 'out'}"
    assert "cases/units/" in (tmp_path / "out" / "rules.md").read_text(encoding="utf-8")


def test_the_readme_lists_every_setting():
    from leukodx.api.config import Settings
    readme = (CASES.parent / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`LEUKODX_{name.upper()}`" not in readme]
    assert missing == []
