"""Render (engine/render.py): the Assessment as canonical JSON or as a clinician's text report.

The text report over the whole case library: URLs whole on one line, numbered citations that resolve
to the list at the end, a table of the values used (as reported and converted, with dates), and under
60 lines for the library's median case."""
from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest
import yaml

from leukodx.engine import CaseError
from leukodx.engine.render import WIDTH, to_text

from conftest import CASES, base_case


@pytest.fixture(scope="module")
def reports(engine) -> dict[str, tuple[object, str]]:
    """Every case in cases/ that the engine assesses (the bad_input ones are refused): (assessment, report)."""
    out = {}
    for path in sorted(CASES.rglob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if not isinstance(doc, dict) or "labs" not in doc:
            continue
        try:
            a = engine.assess(doc)
        except CaseError:
            continue
        out[str(path.relative_to(CASES))] = (a, to_text(a))
    assert len(out) >= 150
    return out


def test_the_output_says_it_supports_clinical_judgement(engine):
    a = engine.assess(base_case())
    assert "does not replace clinical judgement" in a.disclaimer
    assert "does not replace clinical judgement" in to_text(a)


def test_the_median_case_of_the_library_reports_in_under_60_lines(reports):
    lines = [report.count("\n") for _, report in reports.values()]
    median = statistics.median(lines)
    assert median < 60, f"median {median} lines over {len(lines)} cases"


def test_urls_are_never_broken_across_lines(reports):
    for name, (a, report) in reports.items():
        lines = report.splitlines()
        for sid, s in a.sources.items():
            link = s.link()
            if link and f"{link}" in report.replace("\n", " "):
                assert any(link in line for line in lines), (name, link)
        for line in lines:                               # a line runs past the width only for one unbreakable word
            assert len(line) <= WIDTH or " " not in line.strip(), (name, line)


def test_citations_are_numbered_in_order_and_each_resolves_to_the_list_at_the_end(reports):
    for name, (a, report) in reports.items():
        body, _, tail = report.partition("\nSOURCES (")
        listed = [int(n) for n in re.findall(r"^  \[(\d+)\] ", tail, flags=re.M)]
        assert listed == list(range(1, len(listed) + 1)), name
        cited: list[int] = []
        for group in re.findall(r" \[(\d+(?:,\d+)*)\]", body):
            for n in map(int, group.split(",")):
                if n not in cited:
                    cited.append(n)
        assert sorted(cited) == listed, name              # every number cited is listed, every listed is cited
        assert cited == listed, name                      # numbered in the order first cited
    _, report = reports["drugs/bactrim-agranulocytosis-day-24.yaml"]
    assert re.search(r"^  \[\d+\] Andersohn et al\. .*https://pubmed\.ncbi\.nlm\.nih\.gov/17470834/$", report, flags=re.M)


def test_the_values_used_are_a_table_with_the_original_and_converted_values_and_dates(reports):
    _, report = reports["units/units-absolute-per-ul-and-mm3.yaml"]
    table = report[report.index("VALUES USED"):report.index("CAUSES")]
    head = table.splitlines()[0]
    assert re.search(r"unit +LLN +2025-02-26 current", head)
    wbc, reported = table.splitlines()[1:3]
    assert re.fullmatch(r"  WBC +10\^9/L +4 +3\.4", wbc)
    assert re.fullmatch(r"    as reported +/uL +3400", reported)
    # a series: one column per draw, oldest first; the ones that do not fit continue below
    _, report = reports["series/falling-counts-azathioprine-weekly.yaml"]
    table = report[report.index("VALUES USED"):report.index("CAUSES")]
    assert "2025-01-06" in table and "2025-02-10 current" in table
    assert table.index("2025-01-06") < table.index("2025-02-10 current")
    anc = [v for line in table.splitlines() if line.startswith("  ANC") for v in line.split()[2:]]
    assert anc == ["4.5", "3.9", "3", "2.2", "1.4"]


def test_steps_are_grouped_by_urgency_and_alerts_come_before_the_tier(reports):
    _, report = reports["drugs/bactrim-agranulocytosis-day-24.yaml"]
    assert report.index("ALERTS (1)") < report.index("RISK TIER: SEVERE (ANC 0.35 x10^9/L as reported, 2025-02-25)")
    assert report.index("NEXT STEPS - URGENT") < report.index("NEXT STEPS - ROUTINE")
    urgent = report[report.index("NEXT STEPS - URGENT"):report.index("NEXT STEPS - ROUTINE")]
    assert "- Hold or reduce the suspect drug [" in urgent


def test_a_long_word_is_never_split(engine):
    a = engine.assess(base_case(history={"conditions": ["x" * 150]}))
    report = to_text(a)
    assert "x" * 150 in report


def test_the_report_lengths_are_known(reports):
    """Not a limit: the spread, for the record (pytest -rP prints it)."""
    lines = sorted(report.count("\n") for _, report in reports.values())
    print(f"text report lines over {len(lines)} cases: median {statistics.median(lines)}, "
          f"min {lines[0]}, 90th percentile {lines[int(0.9 * len(lines))]}, max {lines[-1]}")
    assert lines[-1] < 150


def test_the_report_bytes_are_the_serializers_own_for_every_case(reports):
    """to_json_bytes puts each shared step's and source's JSON, made once, into the rest of the assessment
    serialized apart: the bytes must be those of pydantic's serializer for the whole, on every case of the
    library (some with steps not advised, sources with non-ASCII letters), the first time and again from
    the cache, and for an assessment read back from JSON, whose entries are nobody's shared ones."""
    from leukodx.engine.assessment import Assessment
    from leukodx.engine.render import to_json_bytes
    blocked = 0
    for name, (a, _) in reports.items():
        whole = a.__pydantic_serializer__.to_json(a) + b"\n"
        assert to_json_bytes(a) == whole, name
        assert to_json_bytes(a) == whole, name
        blocked += bool(a.steps_not_advised)
    assert blocked >= 3                       # the blocked steps' place is spliced on real cases too
    a = next(a for a, _ in reports.values() if a.steps_not_advised)
    again = Assessment.model_validate_json(to_json_bytes(a))
    assert again.steps[0] is not a.steps[0]
    assert to_json_bytes(again) == to_json_bytes(a)
