"""Card text that is safe to render as markdown: text an EHR sent (a drug's name, a unit, a display, an id) reaches a
card's detail inside leukodx's own markdown, and must never become a link, an image, raw HTML or a script there
(red-team round 10: `[Click here](javascript:alert(1))` in a drug's name was a live link, `<img onerror>` raw HTML).
leukodx's own markdown uses bold, italics, lists and autolinks to its knowledge base's sources only, so the rest is
neutralised on the whole detail: inline links and images lose their bracket, `<` and `>` are escaped, `@` is
written `[@]` (GFM links an e-mail address even with its `@` escaped), and a URL (or a bare www.) that is not one of
the knowledge base's sources or a code system's (hl7.org, loinc.org ...) is written so that no renderer links it
(`https[:]//...`). The summary, plain text by the specification, gets the last two only (:func:`safe_text`). Line breaks
in EHR text are removed where it is read (api/fhir/datatypes.py ``as_str``)."""
from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["safe_markdown", "safe_text"]

_AUTOLINK = re.compile(r"<(https?://[^\s<>]+)>")
# what makes a link of text: a scheme (before a non-space) or GFM's bare www.; checked by str.find on the lowered
# text, which costs a small part of one regular expression over a card's few KB
_SCHEMES = ("https:", "http:", "ftp:", "file:", "javascript:", "vbscript:", "data:", "mailto:", "www.")
# the code systems a message names (a coding's system): their hosts are left as they are (followed by a path only:
# https://hl7.org@evil.example is another host)
_TERMINOLOGY = re.compile(r"(?i)https?://(?:[a-z0-9-]+\.)*(?:hl7\.org|loinc\.org|snomed\.info|unitsofmeasure\.org|"
                          r"nlm\.nih\.gov|whocc\.no)(?=[/\s]|$)")


@lru_cache(maxsize=1)
def _source_links() -> frozenset[str]:
    from leukodx.engine import get_engine
    return frozenset(link for s in get_engine().kb.sources.values() if (link := s.link()))


def _defang(text: str) -> str:
    """Every scheme a renderer would link (``javascript:``, ``https:`` ...; "Lab data: ..." is left) written as
    ``scheme[:]``, and a bare ``www.`` as ``www\\.``, except a code system's URL."""
    low, cuts = text.lower(), set()
    for token in _SCHEMES:
        at = low.find(token)
        while at >= 0:
            end = at + len(token)
            if (at == 0 or not low[at - 1].isalnum()) and (token == "www." or end < len(low) and not low[end].isspace()) \
                    and not _TERMINOLOGY.match(text, at):
                cuts.add((end - 1, "\\." if token == "www." else "[:]"))
            at = low.find(token, end)
    if not cuts:
        return text
    out, last = [], 0
    for pos, put in sorted(cuts):
        out += [text[last:pos], put]
        last = pos + 1
    return "".join(out) + text[last:]


def _neutral(text: str) -> str:
    return _defang(text.replace("\\", "\\\\").replace("<", "\\<").replace(">", "\\>").replace("@", "[@]")
                   .replace("](", "]\\(").replace("![", "!\\["))


def safe_text(text: str) -> str:
    """Plain text (a card's summary) with no scheme or e-mail address a renderer would link: ``https[:]//``,
    ``name[@]host``; nothing escaped with backslashes, which plain text would show."""
    return _defang(text.replace("@", "[@]"))


def safe_markdown(text: str) -> str:
    """``text`` with every link, image, HTML tag, e-mail address and URL neutralised except autolinks to the knowledge
    base's sources."""
    allowed, out, at = _source_links(), [], 0
    for m in _AUTOLINK.finditer(text):
        if m.group(1) in allowed:
            out += [_neutral(text[at:m.start()]), m.group(0)]
            at = m.end()
    out.append(_neutral(text[at:]))
    return "".join(out)
