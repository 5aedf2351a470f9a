"""Parse: bytes, text, a mapping or a file into a :class:`Case`, or a :class:`CaseError`.

JSON and YAML are both accepted. Both refuse duplicated keys (a silently dropped value is worse
than an error); JSON refuses NaN and Infinity tokens, YAML refuses anchors and aliases (no
expansion bombs) and explicit tags (``!!binary``, ``!foo``). Structural errors come back as
problems with a JSON path (``labs[2].value``).

Limits are checked before a parser builds anything (:func:`scan_json`; :func:`build_yaml` while it builds): size,
nesting depth and number of values. The parsers are never trusted with hostile nesting:

* libyaml's composer (``yaml._yaml.CParser``) recurses in C once per nesting level without any
  depth check, so a YAML document nested about 25,000 levels deep (an 8 MiB thread stack)
  overflows the C stack and kills the process with SIGSEGV; and libyaml's scanner re-checks every
  open flow level for each token, so the time to scan ``[[[[...`` grows with the square of the
  depth (100,000 levels: about 18 s of C code holding the GIL). :func:`build_yaml` therefore builds
  the document from libyaml's *event* stream (an iterative state machine, no recursion) and stops at
  the first event deeper than the limit: a 100,000-deep document is refused after about 70 events.
* JSON is scanned byte-wise, without any parser: escape sequences are removed, what lies between
  quotes is set aside, and the brackets left are summed in chunks (C-speed ``bytes`` operations,
  each call short, so a scan running in a worker thread lets the event loop run).

Integers beyond the float range (``10**1000``) are read as infinity, so every numeric check
downstream refuses them as "not a finite number" (with the field's path) instead of overflowing.
Lone UTF-16 surrogates (``"\\ud800"``) are refused: they cannot be written back as UTF-8.
"""
from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import ValidationError

from .case import Case
from .errors import CaseError, Problem

__all__ = ["parse_case", "load_document", "load_json_document", "load_yaml_document", "scan_json", "build_yaml",
           "problems_from_validation", "MAX_DOCUMENT_BYTES", "MAX_DEPTH", "MAX_NODES", "MAX_YAML_BYTES"]

MAX_DOCUMENT_BYTES = 5 * 1024 * 1024
MAX_YAML_BYTES = 256 * 1024       # YAML is for people writing cases by hand
MAX_DEPTH = 64                    # a case is 4 levels deep, a FHIR Bundle of Bundles about 40
MAX_NODES = 1_000_000             # values in one document (a 2,000-lab case has about 25,000)

_SCAN_CHUNK = 1 << 20             # bytes per C call of the JSON scan (keeps each GIL hold short)
_BRACKETS_ONLY = bytes(range(256)).translate(None, b"[]{}")
_NOT_STRUCTURE = bytes(range(256)).translate(None, b'"[]{},')    # every byte but quotes, brackets, commas
_BRACKET_STEPS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")    # +1 / -1 as signed bytes
_LONG_DIGITS = b"\x01" * 300        # 300 digits in a row, once every digit is 1 and every other byte 0
_DIGIT_MAP = bytes(1 if 0x30 <= i <= 0x39 else 0 for i in range(256))   # (a regex took 10 us per KB)
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]")
# a \uD800-\uDFFF escape preceded by an even number of backslashes (so it is an escape, not text)
_SURROGATE_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*(\\u[dD]([89a-fA-F])[0-9a-fA-F]{2})")


def _problem(msg: str) -> CaseError:
    return CaseError([Problem("", msg)])


def _too_deep(name: str, max_depth: int) -> CaseError:
    return _problem(f"{name} is nested too deeply (more than {max_depth} levels)")


def _too_many(name: str, max_nodes: int) -> CaseError:
    return _problem(f"{name} has too many values (more than {max_nodes:,})")


def scan_json(data: bytes, name: str = "document", max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Refuse JSON nested deeper than ``max_depth`` or holding more than ``max_nodes`` values, and
    lone UTF-16 surrogate escapes, without parsing it. Raises :class:`CaseError`.

    Malformed JSON may pass (the parser refuses it afterwards); well-formed JSON is measured exactly.
    """
    # Escapes first: "\\" pairs, then the escaped quotes left. What remains between quotes is a string.
    flat = data.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in data else data   # (replace: 2 us per KB)
    depth = deepest = 0
    nodes = 1
    in_string = False
    for start in range(0, len(flat), _SCAN_CHUNK):
        # Only quotes, brackets and commas count. Two quotes in a row enclose nothing that counts (an
        # empty string, or the colon between a key and its value): dropping them leaves every other byte
        # inside or outside a string as it was, and the few strings left to split are those holding brackets
        # or commas (splitting at every quote made an object per string: 40% of the scan).
        parts = flat[start:start + _SCAN_CHUNK].translate(None, _NOT_STRUCTURE).replace(b'""', b"").split(b'"')
        outside = b"".join(parts[1::2] if in_string else parts[0::2])
        if (len(parts) - 1) % 2:
            in_string = not in_string
        brackets = outside.translate(None, _BRACKETS_ONLY)
        if brackets:
            steps = memoryview(brackets.translate(_BRACKET_STEPS)).cast("b")
            deepest = max(deepest, max(accumulate(steps, initial=depth)))
            depth += 2 * (brackets.count(b"[") + brackets.count(b"{")) - len(brackets)
            if deepest > max_depth:
                raise _too_deep(name, max_depth)
        nodes += outside.count(b",") + outside.count(b"[") + outside.count(b"{")
        if nodes > max_nodes:
            raise _too_many(name, max_nodes)
    if _SURROGATE_HINT.search(data):
        _check_surrogates(data, name)


def _check_surrogates(data: bytes, name: str) -> None:
    """Every \\uD800-\\uDBFF escape must be followed at once by a \\uDC00-\\uDFFF one, and every
    low surrogate escape must follow a high one."""
    expect_low_at = -1
    for m in _SURROGATE_ESCAPE.finditer(data):
        high = m.group(2) in b"89abAB"
        begins = m.start(1)
        if high:
            if expect_low_at >= 0:
                break                      # a high surrogate followed by another high one
            expect_low_at = m.end(1)
        elif begins == expect_low_at:
            expect_low_at = -1
        else:
            break                          # a low surrogate alone
        continue
    else:
        if expect_low_at < 0:
            return
    raise _problem(f"{name} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff): not valid Unicode text")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicated key {k!r}")
        out[k] = v
    return out


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not a number leukodx accepts")


def _int_or_infinity(token: str) -> Union[int, float]:
    """An integer; one beyond the float range (``10**1000``) as +-infinity, which every numeric check
    refuses as not finite (Python's int would overflow wherever it meets a float)."""
    digits = token.lstrip("+-").lstrip("0")
    if len(digits) > 309:
        return -math.inf if token.startswith("-") else math.inf
    value = int(token)
    try:
        float(value)
    except OverflowError:
        return -math.inf if value < 0 else math.inf
    return value


def _float_or_nan(token: str) -> float:
    """A float; one too small for it (``1e-400``), which reads as 0, as NaN, which every numeric check refuses as
    not finite: an ANC of 1e-400 had been read as 0 (profound neutropenia)."""
    value = float(token)
    if value == 0.0 and token.lstrip("-0.")[:1] not in ("", "e", "E"):    # a digit other than 0 before the exponent
        return math.nan
    return value


def _decode(data: Union[str, bytes], name: str, max_bytes: int) -> str:
    if isinstance(data, bytes):
        if len(data) > max_bytes:
            raise _problem(f"{name} is larger than {max_bytes} bytes")
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise _problem(f"{name} is not UTF-8 text") from None
    if len(data) > max_bytes:
        raise _problem(f"{name} is larger than {max_bytes} bytes")
    if not data.strip():
        raise _problem(f"{name} is empty")
    return data


def load_json_document(data: Union[bytes, str], name: str, max_bytes: int, max_depth: int = MAX_DEPTH,
                       max_nodes: int = MAX_NODES) -> Any:
    """JSON (never YAML) to Python data, limits checked before parsing. Raises :class:`CaseError`
    with the reason: too large, not UTF-8, empty, nested too deeply, too many values, a lone
    surrogate, or not valid JSON (duplicated keys, NaN/Infinity tokens included)."""
    text = _decode(data, name, max_bytes)
    raw = text.encode("utf-8") if isinstance(data, str) else data
    scan_json(raw, name, max_depth, max_nodes)
    long_ints = _LONG_DIGITS in raw.translate(_DIGIT_MAP)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants,
                          parse_float=_float_or_nan,   # a Python call per float: 0.15 us (a regex: 6 us a KB)
                          **({"parse_int": _int_or_infinity} if long_ints else {}))
    except RecursionError:   # unreachable after the scan; kept so no parser error can escape as a 500
        raise _too_deep(name, max_depth) from None
    except ValueError as e:
        raise _problem(f"{name} is not valid JSON: {_one_line(e)}") from None


_ALLOWED_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp"))
_STR_TAG = "tag:yaml.org,2002:str"
_CACHED_SCALAR = 64                 # scalars up to this length have their tag and value kept (see _scalar)
_RESOLVER = yaml.resolver.Resolver()
_SCALARS = yaml.constructor.SafeConstructor()      # PyYAML's own constructors for each scalar tag
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")   # a leading zero is YAML 1.1 octal: PyYAML constructs it
_EVENT_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml when available


def _scalar(event: Any) -> Any:
    """A scalar event's value as PyYAML's safe loader gives it: the tag resolved as its composer
    resolves it (a plain scalar by its text, quoted text as a str), then PyYAML's constructor for
    that tag. Decimal integers go through :func:`_int_or_infinity`. Both steps are kept per text (a
    case repeats its units, test names and dates, and PyYAML's resolver and constructors are Python:
    a third of reading a case); a value that cannot be made is made again with the event's place in
    the text, so that the error says where."""
    tag, value = event.tag, event.value
    short = len(value) <= _CACHED_SCALAR      # a long text is never held by a cache
    if tag is None or tag == "!":
        tag = (_resolved if short else _resolved.__wrapped__)(value, event.implicit)
    if tag == _STR_TAG:
        return value
    if tag not in _ALLOWED_TAGS:
        raise yaml.constructor.ConstructorError(None, None, f"the YAML tag {tag!r} is not accepted", event.start_mark)
    if not short:
        return _construct(tag, value, event)
    try:
        return _typed(tag, value)
    except Exception:
        return _construct(tag, value, event)


@lru_cache(maxsize=4096)
def _resolved(value: str, implicit: tuple[bool, bool]) -> str:
    return _RESOLVER.resolve(yaml.ScalarNode, value, implicit)


@lru_cache(maxsize=4096)
def _typed(tag: str, value: str) -> Any:
    """The value of a scalar of an accepted tag other than str: an int, float, bool, None, date or
    datetime, all immutable, so one made earlier can be given again."""
    return _construct(tag, value, None)


def _construct(tag: str, value: str, event: Any) -> Any:
    if tag == "tag:yaml.org,2002:int" and _DECIMAL.fullmatch(value.replace("_", "")):
        return _int_or_infinity(value.replace("_", ""))
    node = yaml.ScalarNode(tag, value, *((event.start_mark, event.end_mark, event.style) if event else ()))
    return _SCALARS.yaml_constructors[tag](_SCALARS, node)


def build_yaml(text: str, name: str = "document", max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Any:
    """YAML text to Python data in one pass over libyaml's event stream, which is produced by an
    iterative state machine (no recursion, so no nesting can overflow a stack). Stops at the first
    event beyond ``max_depth`` or ``max_nodes``, and refuses aliases, explicit tags, merge keys (``<<``,
    by their tag), duplicated keys, keys that are not plain values and more than one document. Scalars
    are typed by PyYAML's own resolver and constructors, so a document reads as ``yaml.safe_load``
    reads it. Raises :class:`CaseError` with the reason (and the line, for a syntax error)."""
    nodes = documents = 0
    root: list[Any] = []
    stack: list[Any] = []          # open containers: a list, or a _Mapping
    try:
        for event in yaml.parse(text, Loader=_EVENT_LOADER):
            kind = type(event)
            if kind is yaml.ScalarEvent or kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                nodes += 1
                if nodes > max_nodes:
                    raise _too_many(name, max_nodes)
                if event.tag is not None and not (any(event.implicit) if kind is yaml.ScalarEvent else event.implicit):
                    raise _problem(f"{name} uses the YAML tag {event.tag!r}: tags are not accepted, "
                                   "write plain values (quote text that looks like a number or a date)")
                if kind is yaml.ScalarEvent:
                    _add(stack, root, _scalar(event), event)
                else:
                    if len(stack) >= max_depth:
                        raise _too_deep(name, max_depth)
                    frame: Any = _Mapping() if kind is yaml.MappingStartEvent else []
                    _add(stack, root, frame.mapping if kind is yaml.MappingStartEvent else frame, event)
                    stack.append(frame)
            elif kind is yaml.SequenceEndEvent or kind is yaml.MappingEndEvent:
                stack.pop()
            elif kind is yaml.AliasEvent:
                raise _problem(f"{name} is not valid YAML: YAML aliases are not accepted")
            elif kind is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise _problem(f"{name} holds more than one YAML document")
    except (ValueError, yaml.YAMLError) as e:
        raise _problem(f"{name} is not valid YAML: {_one_line(e)}") from None
    return root[0] if root else None


_NO_KEY = object()


class _Mapping:
    """An open mapping: the dict, the raw text of its keys so far, and a key waiting for its value."""
    __slots__ = ("mapping", "seen", "key")

    def __init__(self) -> None:
        self.mapping: dict[Any, Any] = {}
        self.seen: set[str] = set()
        self.key: Any = _NO_KEY


def _add(stack: list[Any], root: list[Any], value: Any, event: Any) -> None:
    """Put a value where the event stream says: the document, a list, a mapping's key or its value."""
    if not stack:
        root.append(value)
        return
    top = stack[-1]
    if isinstance(top, list):
        top.append(value)
    elif top.key is not _NO_KEY:
        top.mapping[top.key] = value
        top.key = _NO_KEY
    elif type(event) is not yaml.ScalarEvent:
        raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value", event.start_mark)
    elif event.value in top.seen:
        raise yaml.constructor.ConstructorError(None, None, f"duplicated key {event.value!r}", event.start_mark)
    else:
        top.seen.add(event.value)
        top.key = value


def load_yaml_document(data: Union[bytes, str], name: str, max_bytes: int = MAX_YAML_BYTES,
                       max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Any:
    """YAML (a superset of JSON) to Python data, limits checked while it is read (:func:`build_yaml`).
    Raises CaseError."""
    return build_yaml(_decode(data, name, max_bytes), name, max_depth, max_nodes)


def load_document(text: Union[str, bytes], name: str = "case", max_bytes: int = MAX_DOCUMENT_BYTES,
                  max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Any:
    """JSON or YAML text to Python data (JSON when it starts with ``{`` or ``[``), for files and the
    command line. HTTP routes use :func:`load_json_document` or :func:`load_yaml_document` by media
    type. Raises CaseError with the reason."""
    decoded = _decode(text, name, max_bytes)
    if decoded.lstrip()[0] in "{[":
        return load_json_document(text, name, max_bytes, max_depth, max_nodes)
    return load_yaml_document(decoded, name, max_bytes, max_depth, max_nodes)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]
def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[_test_or_loinc()]", "function-after[_name_or_code()]"):
            continue
        elif isinstance(part, str) and ("[" in part or part.startswith(("function-", "union", "str", "float"))):
            continue  # pydantic's internal union/validator labels
        else:
            out += f".{part}" if out else str(part)
    return out


def problems_from_validation(err: ValidationError) -> list[Problem]:
    """pydantic errors as problems with JSON paths and plain reasons, de-duplicated."""
    out: list[Problem] = []
    for e in err.errors(include_url=False):
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling against `leukodx schema case`)"
        elif e["type"] == "float_type" and isinstance(e.get("input"), str):
            msg = f"must be a number, not the text {e['input'][:40]!r}"
        elif e["type"] == "finite_number":
            msg = "must be a finite number (NaN, infinity and numbers beyond 1.8e308 are not accepted)"
        p = Problem(_path(tuple(e["loc"])), msg)
        if p not in out:
            out.append(p)
    return out


def parse_case(raw: Any) -> Case:
    """A Case from a Case, a mapping, JSON/YAML text or bytes, or a path. Raises CaseError."""
    if isinstance(raw, Case):
        return raw
    if isinstance(raw, Path):
        try:
            raw = raw.read_bytes()
        except OSError as e:
            raise CaseError([Problem("", f"cannot read {raw}: {e.strerror}")]) from None
    if isinstance(raw, (str, bytes)):
        raw = load_document(raw)
    if raw is None or raw == {}:
        raise CaseError([Problem("", "the case is empty: give at least `labs`")])
    if not isinstance(raw, dict):
        raise CaseError([Problem("", f"a case is a JSON object, not {type(raw).__name__}")])
    try:
        return Case.model_validate(raw)
    except ValidationError as e:
        raise CaseError(problems_from_validation(e)) from None
    except RecursionError:
        raise CaseError([Problem("", "the case is nested too deeply")]) from None
