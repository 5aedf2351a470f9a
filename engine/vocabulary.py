"""Free text to knowledge-base ids: drug names and RxNorm codes, conditions, transplant organs,
ancestry. Text is NFKC-normalised, zero-width and control characters removed, and case-folded
before matching, so look-alike spellings cannot slip a drug past the vocabulary."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional

from .kb import KnowledgeBase

__all__ = ["clean_text", "DrugIndex", "match_conditions", "match_organ", "duffy_prevalent"]

_INVISIBLE = re.compile(r"[\u0000-\u001f\u007f-\u009f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")


def clean_text(text: str, fold: bool = True) -> str:
    """NFKC, without invisible characters, case-folded (unless fold=False), with runs of spaces folded."""
    t = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))
    return " ".join((t.casefold() if fold else t).split())


def _key(text: str) -> str:
    """Matching key: cleaned, punctuation other than letters/digits turned into single spaces."""
    return " ".join(re.sub(r"[^\w]+", " ", clean_text(text)).split())


@dataclass(frozen=True)
class DrugMatch:
    drug: dict[str, Any]
    matched: str          # the vocabulary string that matched


class DrugIndex:
    """Looks a medication up by RxNorm code, exact name, or the longest known name inside it."""

    def __init__(self, kb: KnowledgeBase):
        self.kb = kb

    @cached_property
    def _by_code(self) -> dict[str, dict[str, Any]]:
        return {code: d for d in self.kb.drugs for code in d.get("rxnorm", []) or []}

    @cached_property
    def _by_name(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for d in self.kb.drugs:
            for name in [d["id"].replace("_", " "), d["name"], *d.get("brands", []), *d.get("synonyms", [])]:
                out.setdefault(_key(name), d)
        return out

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        names = sorted(self._by_name, key=len, reverse=True)
        return re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")

    def lookup(self, name: Optional[str], rxnorm: Optional[str]) -> Optional[DrugMatch]:
        if rxnorm and rxnorm in self._by_code:
            return DrugMatch(self._by_code[rxnorm], f"RxNorm {rxnorm}")
        if not name:
            return None
        key = _key(name)
        if key in self._by_name:
            return DrugMatch(self._by_name[key], key)
        m = self._pattern.search(key)          # longest name first: "mycophenolate sodium" before "mycophenolate"
        if m:
            return DrugMatch(self._by_name[m.group(1)], m.group(1))
        return None

    def names(self) -> list[str]:
        """Every name the vocabulary knows (for autocomplete)."""
        return sorted({n for d in self.kb.drugs for n in [d["name"], *d.get("brands", [])]}, key=str.casefold)


def match_conditions(kb: KnowledgeBase, text: str) -> list[str]:
    t = clean_text(text, fold=False)       # the patterns ignore case, except abbreviations
    return [cid for cid, pattern in kb.conditions.items() if pattern.search(t)]


def match_organ(kb: KnowledgeBase, text: str) -> str:
    t = clean_text(text, fold=False)
    for organ, pattern in kb.transplant_organs.items():
        if pattern.search(t):
            return organ
    return "other"


def duffy_prevalent(kb: KnowledgeBase, ancestry: Optional[str]) -> bool:
    if not ancestry:
        return False
    return bool(kb.duffy_ancestry.search(clean_text(ancestry, fold=False)))
