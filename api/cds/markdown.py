"""Card text that is safe to render as markdown: text an EHR sent (a drug's name, a unit, a display, an id) reaches a
card's detail inside leukodx's own markdown, and must never become a link, an image, raw HTML or a script there
(red-team round 10: `[Click here](javascript:alert(1))` in a drug's name was a live link, `<img onerror>` raw HTML).
leukodx's own markdown uses bold, italics, lists and autolinks to its knowledge base's sources only, so the rest is
neutralised on the whole detail: inline links and images lose their bracket, `<` and `>` are escaped, and a URL that
is not one of the knowledge base's sources or a code system's (hl7.org, loinc.org ...) is written so that no
renderer links it (`https[:]//...`). Line breaks
in EHR text are removed where it is read (api/fhir/datatypes.py ``as_str``)."""
from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["safe_markdown"]

_AUTOLINK = re.compile(r"<(https?://[^\s<>]+)>")
_SCHEME = re.compile(r"(?i)\b(https?|ftp|file|javascript|vbscript|data)(:)(//)?")
# the code systems a message names (a coding's system): their hosts are left as they are
_TERMINOLOGY = re.compile(r"(?i)https?://(?:[a-z0-9-]+\.)*(?:hl7\.org|loinc\.org|snomed\.info|unitsofmeasure\.org|"
                          r"nlm\.nih\.gov|whocc\.no)(?![\w.-])")


@lru_cache(maxsize=1)
def _source_links() -> frozenset[str]:
    from leukodx.engine import get_engine
    return frozenset(link for s in get_engine().kb.sources.values() if (link := s.link()))


def _neutral(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("<", "\\<").replace(">", "\\>").replace("](", "]\\(").replace("![", "!\\[")
    return _SCHEME.sub(lambda m: m.group(0) if _TERMINOLOGY.match(text, m.start())
                       else f"{m.group(1)}[:]{m.group(3) or ''}", text)


def safe_markdown(text: str) -> str:
    """``text`` with every link, image, HTML tag and URL neutralised except autolinks to the knowledge base's sources."""
    allowed, out, at = _source_links(), [], 0
    for m in _AUTOLINK.finditer(text):
        if m.group(1) in allowed:
            out += [_neutral(text[at:m.start()]), m.group(0)]
            at = m.end()
    out.append(_neutral(text[at:]))
    return "".join(out)
