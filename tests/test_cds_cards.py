"""Cards as EHR integrators check them (issue 16, item 5): numbers at the lab's resolution, the card's
source link to a primary guideline, label or study (never a secondary Q&A page), every suggestion saying
whether it is recommended."""
from __future__ import annotations

from test_cds_hooks import cards_of, client, obs, prefetch, request  # noqa: F401

SECONDARY = ("droracle", "praxis", "seed")


def test_numbers_are_at_the_labs_resolution_and_the_source_is_primary(client, kb):
    pre = prefetch([obs("6690-2", 3.78761, "10*9/L"), obs("770-8", 15.8, "%")])   # ANC 0.598442...
    cards = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre)))
    card = cards[0]
    assert "ANC 0.6 x10^9/L" in card["summary"] and "0.598" not in card["summary"] + card["detail"].split("\n")[1]
    url = card["source"].get("url")
    primary = {s.url for s in kb.sources.values() if s.kind in ("guideline", "label", "study") and s.url}
    primary |= {f"https://pubmed.ncbi.nlm.nih.gov/{s.pmid}/" for s in kb.sources.values()
                if s.kind in ("guideline", "label", "study") and s.pmid}
    assert url in primary and not any(w in url for w in SECONDARY)
    for c in cards:
        for s in c.get("suggestions") or []:
            assert isinstance(s["isRecommended"], bool)


def test_the_knowledge_bases_own_lines_are_made_safe_as_the_rest():
    """A card's sources and disclaimer are the knowledge base's text, made safe once per process (the rest of the
    detail on every call): a citation that held markup would still reach the card escaped."""
    from leukodx.api.cds.cards import assessment_cards
    from leukodx.engine import get_engine
    from pathlib import Path
    a = get_engine().assess(Path(__file__).parents[1] / "cases" / "thiopurine" /
                            "tpmt-poor-azathioprine-severe-neutropenia.yaml")
    [card] = assessment_cards(a, "h", "p1")
    cited = next(sid for sid in sorted(a.sources) if f"- [{sid}] " in card.detail)
    hostile = a.sources[cited].model_copy(update={"citation": "<img src=x onerror=alert(1)> [see](javascript:x)"})
    [card] = assessment_cards(a.model_copy(update={"sources": {**a.sources, cited: hostile}}), "h", "p1")
    assert f"- [{cited}] \\<img src=x onerror=alert(1)\\> [see]\\(javascript[:]x)" in card.detail


def test_a_grade_4_lymphopenia_is_a_warning_that_gives_the_count(client):
    """Lymphocytes 0.15 (CTCAE grade 4: life-threatening consequences, urgent intervention) beside a normal ANC had
    been an information card whose summary gave no count; grade 3 (0.35) stays information."""
    def card(lymphocytes):
        pre = prefetch([obs("6690-2", 5.0, "10*9/L"), obs("751-8", 4.6, "10*9/L"), obs("731-0", lymphocytes, "10*9/L")])
        [c] = cards_of(client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre)))
        return c["indicator"], c["summary"]
    indicator, summary = card(0.15)
    assert indicator == "warning" and summary.startswith("Lymphopenia (lymphocytes 0.15 x10^9/L, ")
    assert card(0.35)[0] == "info"
