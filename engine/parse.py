"""Parse: bytes, text, a mapping or a file into a :class:`Case`, or a :class:`CaseError`.

JSON and YAML are both accepted. Both refuse duplicated keys (a silently dropped value is worse
than an error); JSON refuses NaN and Infinity tokens, YAML refuses anchors and aliases (no
expansion bombs) and explicit tags (``!!binary``, ``!foo``). Structural errors come back as
problems with a JSON path (``labs[2].value``).

Limits are checked before a parser builds anything (:func:`scan_json`, :func:`scan_yaml`): size,
nesting depth and number of values. The parsers are never trusted with hostile nesting:

* libyaml's composer (``yaml._yaml.CParser``) recurses in C once per nesting level without any
  depth check, so a YAML document nested about 25,000 levels deep (an 8 MiB thread stack)
  overflows the C stack and kills the process with SIGSEGV; and libyaml's scanner re-checks every
  open flow level for each token, so the time to scan ``[[[[...`` grows with the square of the
  depth (100,000 levels: about 18 s of C code holding the GIL). :func:`scan_yaml` therefore walks
  libyaml's *event* stream (an iterative state machine, no recursion) and stops at the first
  event deeper than the limit: a 100,000-deep document is refused after about 70 events.
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
from itertools import accumulate
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import ValidationError

from .case import Case
from .errors import CaseError, Problem

__all__ = ["parse_case", "load_document", "load_json_document", "load_yaml_document", "scan_json", "scan_yaml",
           "problems_from_validation", "MAX_DOCUMENT_BYTES", "MAX_DEPTH", "MAX_NODES", "MAX_YAML_BYTES"]

MAX_DOCUMENT_BYTES = 5 * 1024 * 1024
MAX_YAML_BYTES = 256 * 1024       # YAML is for people writing cases by hand
MAX_DEPTH = 64                    # a case is 4 levels deep, a FHIR Bundle of Bundles about 40
MAX_NODES = 1_000_000             # values in one document (a 2,000-lab case has about 25,000)

_SCAN_CHUNK = 1 << 20             # bytes per C call of the JSON scan (keeps each GIL hold short)
_BRACKETS_ONLY = bytes(range(256)).translate(None, b"[]{}")
_BRACKET_STEPS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")    # +1 / -1 as signed bytes
_LONG_DIGITS = re.compile(rb"[0-9]{300}")
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
    flat = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    depth = deepest = 0
    nodes = 1
    in_string = False
    for start in range(0, len(flat), _SCAN_CHUNK):
        parts = flat[start:start + _SCAN_CHUNK].split(b'"')
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
    long_ints = _LONG_DIGITS.search(raw) is not None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants,
                          **({"parse_int": _int_or_infinity} if long_ints else {}))
    except RecursionError:   # unreachable after the scan; kept so no parser error can escape as a 500
        raise _too_deep(name, max_depth) from None
    except ValueError as e:
        raise _problem(f"{name} is not valid JSON: {_one_line(e)}") from None


_ALLOWED_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map",
                                                              "timestamp"))


class _StrictYamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML loading (libyaml when available) that refuses duplicated keys, aliases and any tag
    but the plain ones the resolver gives (str, int, float, bool, null, timestamp, seq, map)."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:  # type: ignore[override]
        if node in self.constructed_objects:   # a node met twice is an alias (*name)
            raise yaml.constructor.ConstructorError(None, None, "YAML aliases are not accepted", node.start_mark)
        if node.tag not in _ALLOWED_TAGS:
            raise yaml.constructor.ConstructorError(None, None, f"the YAML tag {node.tag!r} is not accepted",
                                                    node.start_mark)
        return super().construct_object(node, deep=deep)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:  # type: ignore[override]
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicated key {key_node.value!r}",
                                                            key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> Union[int, float]:  # type: ignore[override]
        text = str(self.construct_scalar(node)).replace("_", "")
        if re.fullmatch(r"[-+]?[0-9]+", text):
            return _int_or_infinity(text)
        return super().construct_yaml_int(node)


_StrictYamlLoader.add_constructor("tag:yaml.org,2002:int", _StrictYamlLoader.construct_yaml_int)

_OPEN_EVENTS = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSE_EVENTS = (yaml.SequenceEndEvent, yaml.MappingEndEvent)
_NODE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)


def scan_yaml(text: str, name: str = "document", max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Refuse YAML nested deeper than ``max_depth``, holding more than ``max_nodes`` values, with an
    alias or an explicit tag, or with more than one document, before anything is composed.

    Walks libyaml's event stream, which is produced by an iterative state machine (no recursion),
    and stops at the first offending event. Raises :class:`CaseError`; a syntax error is left
    for :func:`load_yaml_document` to report."""
    depth = nodes = documents = 0
    events = yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    try:
        for event in events:
            if isinstance(event, _NODE_EVENTS):
                nodes += 1
                if nodes > max_nodes:
                    raise _too_many(name, max_nodes)
                if event.tag is not None and not (event.implicit if isinstance(event, _OPEN_EVENTS)
                                                   else any(event.implicit)):
                    raise _problem(f"{name} uses the YAML tag {event.tag!r}: tags are not accepted, "
                                   "write plain values (quote text that looks like a number or a date)")
                if isinstance(event, _OPEN_EVENTS):
                    depth += 1
                    if depth > max_depth:
                        raise _too_deep(name, max_depth)
            elif isinstance(event, _CLOSE_EVENTS):
                depth -= 1
            elif isinstance(event, yaml.AliasEvent):
                raise _problem(f"{name} is not valid YAML: YAML aliases are not accepted")
            elif isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise _problem(f"{name} holds more than one YAML document")
    except yaml.YAMLError:
        return   # the loader reports the syntax error with its position


def load_yaml_document(data: Union[bytes, str], name: str, max_bytes: int = MAX_YAML_BYTES,
                       max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Any:
    """YAML (a superset of JSON) to Python data, limits checked before composing. Raises CaseError."""
    text = _decode(data, name, max_bytes)
    scan_yaml(text, name, max_depth, max_nodes)
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise _too_deep(name, max_depth) from None
    except (ValueError, yaml.YAMLError) as e:
        raise _problem(f"{name} is not valid YAML: {_one_line(e)}") from None


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
