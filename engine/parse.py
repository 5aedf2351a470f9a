"""Parse: bytes, text, a mapping or a file into a :class:`Case`, or a :class:`CaseError`.

JSON and YAML are both accepted. Both refuse duplicated keys (a silently dropped value is worse
than an error); JSON refuses NaN and Infinity tokens, YAML refuses anchors and aliases (no
expansion bombs). Structural errors come back as problems with a JSON path (``labs[2].value``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import ValidationError

from .case import Case
from .errors import CaseError, Problem

__all__ = ["parse_case", "load_document", "problems_from_validation", "MAX_DOCUMENT_BYTES"]

MAX_DOCUMENT_BYTES = 5 * 1024 * 1024


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicated key {k!r}")
        out[k] = v
    return out


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not a number leukodx accepts")


class _StrictYamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML loading (libyaml when available) that refuses duplicated keys and aliases."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:  # type: ignore[override]
        if node in self.constructed_objects:   # a node met twice is an alias (*name)
            raise yaml.constructor.ConstructorError(None, None, "YAML aliases are not accepted", node.start_mark)
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


def load_document(text: Union[str, bytes], name: str = "case", max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """JSON or YAML text to Python data. Raises CaseError with the reason."""
    if isinstance(text, bytes):
        if len(text) > max_bytes:
            raise CaseError([Problem("", f"{name} is larger than {max_bytes} bytes")])
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise CaseError([Problem("", f"{name} is not UTF-8 text")]) from None
    if len(text) > max_bytes:
        raise CaseError([Problem("", f"{name} is larger than {max_bytes} bytes")])
    stripped = text.lstrip()
    if not stripped:
        raise CaseError([Problem("", f"{name} is empty")])
    try:
        if stripped[0] in "{[":
            return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
        return yaml.load(text, Loader=_StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise CaseError([Problem("", f"{name} is nested too deeply")]) from None
    except (ValueError, yaml.YAMLError) as e:
        kind = "JSON" if stripped[0] in "{[" else "YAML"
        raise CaseError([Problem("", f"{name} is not valid {kind}: {_one_line(e)}")]) from None


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
            msg = "must be a finite number (NaN and infinity are not accepted)"
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
