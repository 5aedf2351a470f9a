"""Free text to knowledge-base ids: drug names and RxNorm codes, conditions, transplant organs,
ancestry. Text is NFKC-normalised, zero-width and control characters removed, and case-folded
before matching, so look-alike spellings cannot slip a drug past the vocabulary.

RxNorm codes are ingredient codes (drugs.yaml ``rxnorm``) or product codes (SCD, SBD, GPCK, BPCK) that
rules/rxnorm_products.json maps to an ingredient's drug id. A misspelled name is never matched
silently: :meth:`DrugIndex.suggest` offers the close names, and the caller says so."""
from __future__ import annotations

import difflib
import json
import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional

from .kb import KnowledgeBase, rules_dir

__all__ = ["clean_text", "DrugIndex", "DrugMatch", "Product", "load_products", "product_problems",
           "SUGGEST_MIN_RATIO", "SUGGEST_MAX_NAMES", "match_conditions", "read_conditions", "current_cancer", "match_organ",
           "duffy_prevalent"]

PRODUCTS_FILE = "rxnorm_products.json"
PRODUCT_TTYS = ("SCD", "SBD", "GPCK", "BPCK")

# suggest(): a vocabulary name is offered only when difflib's similarity ratio (2 x matching characters /
# total characters, case-folded) with the text, or with a run of 1-3 of its words, is at least this.
# 0.8 takes one or two slips in a word of eight letters or more ("azathiprine" 0.96, "Imuren" 0.83)
# and nothing for text that merely shares a few letters with a drug name ("xyzzy").
SUGGEST_MIN_RATIO = 0.8
# ... and only when it is a slip of the pen away: at most one letter added, dropped, changed or two swapped
# (two in a name of SUGGEST_TWO_SLIPS_FROM letters or more). A ratio alone offered another real drug for a drug
# leukodx does not know: "gemcitabine" for emtricitabine, "valganciclovir" for valaciclovir (a pair confused in
# practice: Kaestli 2012, Swiss Med Wkly 142:w13639), "ganciclovir" for aciclovir, "Toradol" for tramadol, and
# two slips "dexamethasone" for betamethasone (13 letters); names of those lengths two slips away are as likely to
# be another drug as a slip.
SUGGEST_TWO_SLIPS_FROM = 14
_SUGGEST_MIN_LETTERS = 4          # words shorter than this (mg, po, 50) are not compared on their own
# Bounds on the comparison work one case can ask for (difflib over the vocabulary costs about 2 ms a word
# run; 500 names of 30 words each held a worker's event loop for 37 s): the first words of a name (a drug's
# name and strength fit in them), and the unknown names of one case that get suggestions at all.
SUGGEST_MAX_WORDS = 6
SUGGEST_MAX_NAMES = 20


class Product(NamedTuple):
    drug: str       # drug id in drugs.yaml
    tty: str        # SCD, SBD, GPCK or BPCK
    name: str       # the RxNorm name as the source gave it


@lru_cache(maxsize=8)
def load_products(path: Optional[Path] = None) -> dict[str, Product]:
    """RxNorm product code -> Product, from rules/rxnorm_products.json (or ``path``)."""
    doc = json.loads((path or rules_dir() / PRODUCTS_FILE).read_text(encoding="utf-8"))
    return {str(code): Product(*row) for code, row in doc.get("products", {}).items()}


def rxnorm_codes(kb: KnowledgeBase) -> frozenset[str]:
    """Every RxNorm code leukodx reads: the ingredient codes of rules/drugs.yaml and the product codes of
    rules/rxnorm_products.json (worked out once per knowledge base)."""
    found = kb.derived.get("rxnorm_codes")
    if found is None:
        found = kb.derived["rxnorm_codes"] = frozenset(
            [code for d in kb.drugs for code in (d.get("rxnorm") or [])] + list(load_products()))
    return found


def product_problems(kb: KnowledgeBase, products: Optional[Mapping[str, Product]] = None) -> list[str]:
    """What is wrong with the product-code map against ``kb``: a drug id drugs.yaml does not have, a
    code that is not an RxCUI, a term type other than SCD/SBD/GPCK/BPCK, or a product code that is
    also a drug's ingredient code."""
    products = load_products() if products is None else products
    ids = {d["id"] for d in kb.drugs}
    ingredient_codes = {c: d["id"] for d in kb.drugs for c in d.get("rxnorm", []) or []}
    problems = []
    for code, p in products.items():
        where = f"{PRODUCTS_FILE}: {code}"
        if not code.isdigit():
            problems.append(f"{where}: not an RxCUI")
        if p.drug not in ids:
            problems.append(f"{where}: unknown drug id {p.drug!r}")
        if p.tty not in PRODUCT_TTYS:
            problems.append(f"{where}: term type {p.tty!r} is not one of {', '.join(PRODUCT_TTYS)}")
        if code in ingredient_codes:
            problems.append(f"{where}: also the ingredient code of {ingredient_codes[code]!r} in drugs.yaml")
    return problems


_INVISIBLE = re.compile(r"[\u0000-\u001f\u007f-\u009f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")


def clean_text(text: str, fold: bool = True) -> str:
    """NFKC, without invisible characters, case-folded (unless fold=False), with runs of spaces folded."""
    t = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))
    return " ".join((t.casefold() if fold else t).split())


def _key(text: str) -> str:
    """Matching key: cleaned, punctuation other than letters/digits turned into single spaces."""
    return " ".join(re.sub(r"[^\w]+", " ", clean_text(text)).split())


# A strength as RxNorm writes it in a clinical drug's name ("10 MG", "0.09 MG/ACTUAT", "100 MG/ML",
# "5000 UNT"): RxNorm's names of clinical and branded drugs (term types SCD and SBD) read "ingredient
# strength [/ ingredient strength ...] dose form [brand]", e.g. "Hydrochlorothiazide 50 MG / Metoprolol
# Tartrate 100 MG Oral Tablet", "atorvastatin 40 MG Oral Tablet [Lipitor]" (RxNorm term types, NLM).
_STRENGTH = re.compile(r"\b\d+(?:[.,]\d+)?\s*(?:mg|mcg|ug|µg|g|ml|unt|units?|meq|mmol|iu|%)(?:\s*/\s*(?:ml|actuat|"
                       r"hr|h|g|mg|kg|l))?(?=\W|$)", re.IGNORECASE)
# Salts and hydrates in drug names (the part RxNorm's precise ingredients add to an ingredient).
_SALTS = frozenset("""hydrochloride hcl dihydrochloride hydrobromide sodium disodium potassium calcium magnesium
    maleate sulfate sulphate succinate tartrate bitartrate acetate citrate besylate mesylate fumarate phosphate
    hyclate monohydrate dihydrate trihydrate hemihydrate anhydrous bromide chloride nitrate lactate gluconate
    malate oxalate propionate dipropionate valerate pamoate decanoate enanthate xinafoate furoate""".split())
_BRACKETED = re.compile(r"\[([^\[\]]+)\]")


def _drug_name_part(text: str) -> str:
    """The ingredient and brand parts of a name written as RxNorm writes a clinical or branded drug (what
    comes before each strength, and the brand in brackets after the dose form); the text itself when it
    holds no strength, or nothing before one."""
    parts = _STRENGTH.split(text)
    if len(parts) == 1:
        return text
    named = " ".join(p for p in parts[:-1] + _BRACKETED.findall(parts[-1]) if p.strip(" /,+-"))
    return named if named.strip() else text


@dataclass(frozen=True)
class DrugMatch:
    drug: dict[str, Any]
    matched: str          # the vocabulary string that matched


class DrugIndex:
    """Looks a medication up by RxNorm code (ingredient, else product), WHO ATC code, exact name, or the
    longest known name inside it; suggests close names for a name it does not know."""

    def __init__(self, kb: KnowledgeBase, products: Optional[Mapping[str, Product]] = None):
        self.kb = kb
        self._products_given = products

    @cached_property
    def _by_code(self) -> dict[str, dict[str, Any]]:
        return {code: d for d in self.kb.drugs for code in d.get("rxnorm", []) or []}

    @cached_property
    def _by_product(self) -> dict[str, tuple[dict[str, Any], Product]]:
        """Product code -> (drug, product), for products whose drug the knowledge base has."""
        products = load_products() if self._products_given is None else self._products_given
        drugs = {d["id"]: d for d in self.kb.drugs}
        return {code: (drugs[p.drug], p) for code, p in products.items() if p.drug in drugs}

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

    @cached_property
    def _by_atc(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for d in self.kb.drugs:          # a code two drugs share (mycophenolate's L04AA06) gives the first
            for code in d.get("atc", []) or []:
                out.setdefault(code, d)
        return out

    def lookup(self, name: Optional[str], rxnorm: Optional[str], atc: Optional[str] = None) -> Optional[DrugMatch]:
        code = clean_text(str(rxnorm)) if rxnorm else ""
        if code in self._by_code:
            return DrugMatch(self._by_code[code], f"RxNorm {code}")
        if code in self._by_product:
            drug, product = self._by_product[code]
            return DrugMatch(drug, f"RxNorm {code} ({product.tty} {product.name})")
        if atc and atc in self._by_atc:
            return DrugMatch(self._by_atc[atc], f"ATC {atc}")
        if not name:
            return None
        key = _key(name)
        if key in self._by_name:
            return DrugMatch(self._by_name[key], key)
        if self.kb.other_product is not None and self.kb.other_product.match(key):   # "folinic acid (methotrexate
            return None                                                             # rescue)" is folinic acid
        def search() -> Optional[str]:        # longest name first: "mycophenolate sodium" before "mycophenolate"
            m = self._pattern.search(key)
            return m.group(1) if m else None
        found = _remembered(self._searched, key, search)
        return DrugMatch(self._by_name[found], found) if found else None

    @cached_property
    def _searched(self) -> dict[str, Optional[str]]:
        """Text -> the drug name found in it (or None), remembered: records repeat their product names."""
        return {}

    def names(self) -> list[str]:
        """Every name the vocabulary knows (for autocomplete)."""
        return sorted({n for d in self.kb.drugs for n in [d["name"], *d.get("brands", [])]}, key=str.casefold)

    @cached_property
    def _suggestable(self) -> dict[str, str]:
        """Matching key -> the vocabulary's own spelling, for generic names, brands and synonyms."""
        out: dict[str, str] = {}
        for d in self.kb.drugs:
            for n in [d["name"], *d.get("brands", []), *d.get("synonyms", [])]:
                out.setdefault(_key(n), n)
        return out

    @cached_property
    def _by_length(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for cand in self._suggestable:
            out.setdefault(len(cand), []).append(cand)
        return out

    def suggest(self, text: str, n: int = 3) -> list[str]:
        """See :meth:`_suggest`; answers are remembered (names that are not drugs recur: a hospital's statin,
        vitamin D, paracetamol), at most 4,096 of them."""
        key = (text, n)
        cached = self._suggested.get(key)
        if cached is None:
            if len(self._suggested) >= 4096:
                self._suggested.clear()
            cached = self._suggested[key] = tuple(self._suggest(text, n))
        return list(cached)

    @cached_property
    def _suggested(self) -> dict[tuple[str, int], tuple[str, ...]]:
        return {}

    def _suggest(self, text: str, n: int = 3) -> list[str]:
        """Up to ``n`` vocabulary names (generic, brand or synonym) close to ``text``, closest first.

        Case-insensitive; the text as a whole and each run of 1-3 of its words (words of at least
        4 letters) are compared with every name, and a name is offered only when its similarity
        ratio reaches SUGGEST_MIN_RATIO. Nothing close gives [], never a guess. This never changes
        what :meth:`lookup` matches: the caller decides what to tell the user. A name written as
        RxNorm writes a clinical or branded drug is compared by its ingredient and brand parts only
        (:func:`_drug_name_part`: "lisinopril 10 MG Oral Tablet" offered "Neoral" for its "Oral")."""
        key = _key(_drug_name_part(text or ""))
        if not key or n <= 0:
            return []
        # a salt is never what tells two drugs apart: "memantine hydrochloride" offered "gemcitabine
        # hydrochloride" and "chlorpheniramine maleate" "prochlorperazine maleate" for their salt alone
        key = " ".join(w for w in key.split() if w not in _SALTS) or key
        key = " ".join(key.split()[:SUGGEST_MAX_WORDS])
        words = key.split()
        units = {key}
        for size in (1, 2, 3):
            for i in range(len(words) - size + 1):
                run = words[i:i + size]
                if sum(c.isalpha() for c in run[0]) >= _SUGGEST_MIN_LETTERS or size > 1:
                    units.add(" ".join(run))
        units = {u for u in units if sum(c.isalpha() for c in u) >= _SUGGEST_MIN_LETTERS}
        best: dict[str, tuple[float, bool]] = {}      # name -> (best ratio, reached by the whole text)
        by_length = self._by_length
        for unit in units:
            matcher = difflib.SequenceMatcher(None, "", unit, autojunk=False)
            # ratio = 2M/(a+b) <= 2*min(a,b)/(a+b): only names of a length that could reach the threshold
            low = int(len(unit) * SUGGEST_MIN_RATIO / (2 - SUGGEST_MIN_RATIO))
            high = int(len(unit) * (2 - SUGGEST_MIN_RATIO) / SUGGEST_MIN_RATIO) + 1
            for cand in (c for length in range(low, high + 1) for c in by_length.get(length, ())):
                matcher.set_seq1(cand)
                if (matcher.real_quick_ratio() >= SUGGEST_MIN_RATIO and matcher.quick_ratio() >= SUGGEST_MIN_RATIO
                        and (r := matcher.ratio()) >= SUGGEST_MIN_RATIO
                        and _slips(unit, cand, 2 if len(unit) >= SUGGEST_TWO_SLIPS_FROM else 1)):
                    best[cand] = max(best.get(cand, (0.0, False)), (r, unit == key))
        ranked = sorted(best, key=lambda c: (-best[c][0], not best[c][1], len(c), c))
        out: list[str] = []
        for cand in ranked:
            name = self._suggestable[cand]
            if name not in out:
                out.append(name)
            if len(out) == n:
                break
        return out


def _slips(a: str, b: str, most: int) -> bool:
    """Whether ``a`` becomes ``b`` in at most ``most`` edits, each a letter added, dropped or changed, or two
    neighbours swapped (the optimal string alignment distance)."""
    if abs(len(a) - len(b)) > most:
        return False
    before: list[int] = []
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        new = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            new[j] = min(row[j] + 1, new[j - 1] + 1, row[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                new[j] = min(new[j], before[j - 2] + 1)
        if min(new) > most:
            return False
        before, row = row, new
    return row[-1] <= most


def oncologic_use(kb: KnowledgeBase, indication: Optional[str], cancer_among_conditions: bool) -> bool:
    """Whether a drug is used to treat cancer: its own indication decides when one is given (methotrexate for
    rheumatoid arthritis, or for psoriasis, which the vocabulary does not name, beside a past skin cancer is not
    chemotherapy: a daily methotrexate for psoriasis had been silent), a cancer it names as past not counting
    (:func:`current_cancer`); else any current cancer among the conditions (``cancer_among_conditions``)."""
    if indication and indication.strip():
        return current_cancer(kb, indication)
    return cancer_among_conditions


def current_cancer(kb: KnowledgeBase, text: str) -> bool:
    """Whether a text names a cancer as current: not when every cancer it names comes right after a past cue
    ("history of", "h/o", "prior", "previous") and nothing says it is treated now ("now", "maintenance", "relapsed";
    conditions.yaml ``cancer_as_past``):
    a daily methotrexate for "psoriasis (history of breast cancer)" had been read as chemotherapy, its daily-dosing
    alert silent. A cue further off is no past ("previously untreated DLBCL", "maintenance after prior induction for
    ALL", "conditioning prior to HSCT for AML" are cancers treated now)."""
    def read() -> bool:
        cancers = set(match_conditions(kb, text)) & kb.oncologic_conditions
        full, cue = clean_text(text, fold=False), kb.cancer_as_past
        if not cancers:
            return bool(cue["chemotherapy_reason"].search(full))      # "Encounter for antineoplastic chemotherapy"
        if any(not cue["not_now_before"].search(full[:m.start()]) for m in cue["treated_now"].finditer(full)):
            return True
        mentions: list[list[int]] = []    # overlapping or touching matches as one ("Hodgkin lymphoma", "breast cancer")
        for a, b in sorted((m.start(), m.end()) for cid in cancers for m in kb.conditions[cid].finditer(full)):
            if mentions and a <= mentions[-1][1] + 1:
                mentions[-1][1] = max(mentions[-1][1], b)
            else:
                mentions.append([a, b])
        return any(not cue["past_right_before"].search(full[:a]) and not cue["past_right_after"].match(full[b:])
                   for a, b in mentions)
    return _remembered(kb.derived.setdefault("current_cancer", {}), text, read)   # problem lists repeat their texts


def match_conditions(kb: KnowledgeBase, text: str) -> list[str]:
    """The knowledge base's conditions a text gives the patient (one pattern each), leaving out those it
    says are absent, uncertain, someone else's, over or being prevented (:func:`read_conditions`)."""
    return list(read_conditions(kb, text)[0])


_CLAUSE = re.compile(r"[,;.:]|\bbut\b", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s,;:\-\u2013()]*")     # between a condition's words and a cue after them


def read_conditions(kb: KnowledgeBase, text: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The conditions a text gives the patient, and those it names but sets aside, each with the cue that
    does ("SLE ruled out": sle, "ruled out"). conditions.yaml ``not_a_diagnosis`` (NegEx's scheme, Chapman
    2001): a cue counts before the condition's words in the same clause, or right after them (past
    separators, a year and test words). An absence sets the condition aside; a suspicion too, unless a
    suspicion is enough for it (``suspicion_counts``: "suspected sepsis" is sepsis for the emergency gate); a
    past mention, for an acute condition ("history of sepsis", "sepsis 2019, resolved"). Pseudo-cues ("no
    longer", "gram-negative") are masked first, and suspicion phrases before absences are looked for
    ("cannot rule out sepsis" is a suspicion). Remembered per text, at most 4,096 of them."""
    def search() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        cue = kb.negation
        full = _masked(cue["pseudo"], clean_text(text, fold=False))   # the patterns ignore case, except abbreviations
        starts = [0] + [b.end() for b in _CLAUSE.finditer(full)]
        found, aside = [], []
        for cid, pattern in kb.conditions.items():
            reasons = []
            for m in pattern.finditer(full):
                before = full[max(b for b in starts if b <= m.start()):m.start()]
                after = _SEPARATORS.match(full, m.end()).end()
                doubt_after = cue["uncertain_after"].match(full, after)
                doubt = cue["uncertain_before"].search(before) or doubt_after
                absent = (cue["absent_before"].search(_masked(cue["uncertain_before"], before))
                          or (None if doubt_after else cue["absent_after"].match(full, after)))
                now = list(cue["current_before"].finditer(before))     # "previous C-section, current pregnancy"
                past = ((cue["past_before"].search(before[now[-1].end():] if now else before)
                         or cue["past_after"].match(full, after)) if cid in kb.acute_conditions else None)
                reason = absent or past or (doubt if cid not in kb.suspicion_counts else None)
                if reason is None:
                    found.append(cid)
                    break
                reasons.append(reason.group(0).strip(" ,;:-\u2013()"))
            else:
                if reasons:
                    aside.append((cid, reasons[0]))
        return tuple(found), tuple(aside)
    return _remembered(kb.derived.setdefault("condition_matches", {}), text, search)


def _masked(pattern: re.Pattern[str], text: str) -> str:
    """``text`` with what ``pattern`` matches blanked (positions kept)."""
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


_MISSING = object()


def _remembered(cache: dict[str, Any], key: str, compute: Callable[[], Any], limit: int = 4096) -> Any:
    """``compute()``, remembered under ``key`` in ``cache`` (emptied when it reaches ``limit`` entries):
    records repeat the same few drug and problem-list texts."""
    found = cache.get(key, _MISSING)
    if found is _MISSING:
        if len(cache) >= limit:
            cache.clear()
        found = cache[key] = compute()
    return found


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
