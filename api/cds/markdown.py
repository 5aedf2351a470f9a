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

__all__ = ["safe_markdown", "safe_text", "safe_kb_line"]

# The work is done on the text's UTF-8 bytes: a card's detail holds letters outside ASCII (a citation's "ü", a
# "≥"), which put str.lower and str.replace on their slow path. Every marker looked for is ASCII, and no byte of a
# letter outside ASCII is an ASCII byte, so none is found inside one; such a letter counts as neither a letter nor a
# space beside a scheme (a cut more, never fewer). An 8 KB detail: 857,000 -> 585,000 instructions.
_AUTOLINK = re.compile(rb"<(https?://[^\s<>]+)>")
# what makes a link of text: a scheme before a non-space, or GFM's bare www.; a scheme is looked for only before
# each colon (a few dozen in a card), where nine searches of the whole text, one per scheme, had been made
_SCHEMES = (b"https", b"http", b"ftp", b"file", b"javascript", b"vbscript", b"data", b"mailto")
_ENDING_IN = {last: tuple(n for n in _SCHEMES if n[-1] == last) for last in {n[-1] for n in _SCHEMES}}
_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789")     # of the lowered text
_SPACE = frozenset(b" \t\n\r\x0b\x0c")
# the code systems a message names (a coding's system): their hosts are left as they are (followed by a path only:
# https://hl7.org@evil.example is another host), matched in the lowered text
_TERMINOLOGY = re.compile(rb"https?://(?:[a-z0-9-]+\.)*(?:hl7\.org|loinc\.org|snomed\.info|unitsofmeasure\.org|"
                          rb"nlm\.nih\.gov|whocc\.no)(?=[/\s]|$)")


@lru_cache(maxsize=1)
def _source_links() -> frozenset[bytes]:
    from leukodx.engine import get_engine
    return frozenset(link.encode() for s in get_engine().kb.sources.values() if (link := s.link()))


def _defang(data: bytes) -> bytes:
    """Every scheme a renderer would link (``javascript:``, ``https:`` ...; "Lab data: ..." is left) written as
    ``scheme[:]``, and a bare ``www.`` as ``www\\.``, except a code system's URL."""
    low, cuts = data.lower(), []
    at = low.find(b":")
    while at >= 0:
        if at and at + 1 < len(low) and low[at + 1] not in _SPACE:
            for name in _ENDING_IN.get(low[at - 1], ()):
                start = at - len(name)
                if start >= 0 and low.startswith(name, start) and (start == 0 or low[start - 1] not in _ALNUM) \
                        and not _TERMINOLOGY.match(low, start):
                    cuts.append((at, b"[:]"))
                    break
        at = low.find(b":", at + 1)
    at = low.find(b"www.")
    while at >= 0:
        if at == 0 or low[at - 1] not in _ALNUM:
            cuts.append((at + 3, b"\\."))
        at = low.find(b"www.", at + 4)
    if not cuts:
        return data
    out, last = [], 0
    for pos, put in sorted(cuts):
        out += [data[last:pos], put]
        last = pos + 1
    return b"".join(out) + data[last:]


def _neutral(data: bytes) -> bytes:
    return _defang(data.replace(b"\\", b"\\\\").replace(b"<", b"\\<").replace(b">", b"\\>").replace(b"@", b"[@]")
                   .replace(b"](", b"]\\(").replace(b"![", b"!\\["))


def safe_text(text: str) -> str:
    """Plain text (a card's summary) with no scheme or e-mail address a renderer would link: ``https[:]//``,
    ``name[@]host``; nothing escaped with backslashes, which plain text would show."""
    return _defang(text.encode("utf-8", "surrogatepass").replace(b"@", b"[@]")).decode("utf-8", "surrogatepass")


def safe_markdown(text: str) -> str:
    """``text`` with every link, image, HTML tag, e-mail address and URL neutralised except autolinks to the knowledge
    base's sources."""
    data = text.encode("utf-8", "surrogatepass")
    allowed, out, at = _source_links(), [], 0
    for m in _AUTOLINK.finditer(data):
        if m.group(1) in allowed:
            out += [_neutral(data[at:m.start()]), m.group(0)]
            at = m.end()
    out.append(_neutral(data[at:]))
    return b"".join(out).decode("utf-8", "surrogatepass")


@lru_cache(maxsize=4096)
def safe_kb_line(text: str) -> str:
    """:func:`safe_markdown` of a line of the knowledge base's own text (a source's citation, the disclaimer: never
    a case's, so nothing of a patient is kept), made once per process."""
    return safe_markdown(text)
