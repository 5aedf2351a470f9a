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
