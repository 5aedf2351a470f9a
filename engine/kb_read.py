"""Reading rules/: YAML (safe, libyaml when available), catalogue entries validated one by one,
vocabulary patterns, the PharmCAT diplotype tables, and the knowledge base's version hash. Every
problem is appended to ``problems`` rather than raised, so that `leukodx rules check` lists them all."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from .kb_models import CatalogueEntry

__all__ = ["read_yaml", "version_of", "patterns", "entries", "catalogue", "diplotypes", "DocumentCache", "use_cache"]


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml when available: 10x faster


class DocumentCache:
    """The parsed YAML documents of one knowledge-base version, kept as JSON in the cache folder
    (LEUKODX_CACHE_DIR, else the user's cache) so that a new process skips YAML parsing. The version is
    the hash of every file's bytes, so an edited file never reads a stale document. JSON, not pickle: a
    cache file can never run code. Without a writable folder, nothing is cached. ``key`` names the file:
    the version, and whatever else decides whether the cached load is still valid (kb.load)."""

    def __init__(self, root: Path, key: str):
        base = os.environ.get("LEUKODX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "leukodx")
        self.root, self.path = root, Path(base) / f"kb-{key}.json"
        self.docs: dict[str, Any] = {}
        self.loaded = False
        try:
            self.docs = json.loads(self.path.read_text(encoding="utf-8"))
            self.loaded = True
        except (OSError, ValueError):
            pass

    def get(self, path: Path) -> Any:
        key = path.relative_to(self.root).as_posix()
        return self.docs[key] if key in self.docs else _MISSING

    def put(self, path: Path, doc: Any) -> None:
        self.docs[path.relative_to(self.root).as_posix()] = doc

    def save(self) -> None:
        if self.loaded:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.docs), encoding="utf-8")
            os.replace(tmp, self.path)
        except (OSError, TypeError, ValueError):   # read-only folder, or a value JSON cannot hold
            pass


_MISSING = object()
_CACHE: Optional[DocumentCache] = None


def use_cache(cache: Optional[DocumentCache]) -> None:
    global _CACHE
    _CACHE = cache


def read_yaml(path: Path, problems: list[str]) -> Any:
    if _CACHE is not None:
        doc = _CACHE.get(path)
        if doc is not _MISSING:
            return doc
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError) as e:
        problems.append(f"{path.name}: cannot read: {e}")
        return None
    if _CACHE is not None:
        _CACHE.put(path, doc)
    return doc


def version_of(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".yaml", ".json") :
            h.update(p.relative_to(root).as_posix().encode())
            h.update(b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def patterns(items: list[str], where: str, problems: list[str]) -> re.Pattern[str]:
    """One case-insensitive pattern matching any of the vocabulary's patterns, each anchored at a
    word start (patterns that begin with \\b or a group anchor themselves)."""
    parts = []
    for p in items:
        part = p if p.startswith(("\\b", "(?")) else rf"(?<![\w]){p}"
        try:
            re.compile(part)
        except re.error as e:
            problems.append(f"{where}: bad pattern {p!r}: {e}")
            continue
        parts.append(f"(?:{part})")
    return re.compile("|".join(parts) or r"(?!)", re.IGNORECASE)


def entries(model: type[Any], items: Any, where: str, problems: list[str], into: Optional[dict[str, Any]] = None
             ) -> dict[str, Any]:
    """Validate a list of catalogue entries (each with an `id`), reporting bad entries and duplicates."""
    out: dict[str, Any] = {} if into is None else into
    for i, raw in enumerate(items or []):
        try:
            e = model.model_validate(raw)
        except ValidationError as err:
            problems.append(f"{where}[{i}]: {err.errors()[0]['msg']} at {err.errors()[0]['loc']}")
            continue
        if e.id in out:
            problems.append(f"{where}: duplicate id {e.id!r}")
        out[e.id] = e
    return out


def catalogue(data: Any, key: str, name: str, problems: list[str]) -> dict[str, CatalogueEntry]:
    return entries(CatalogueEntry, (data or {}).get(key, []), name, problems)


def diplotypes(root: Path, problems: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    words = {"Normal Metabolizer": "normal", "Intermediate Metabolizer": "intermediate",
             "Possible Intermediate Metabolizer": "possible_intermediate", "Poor Metabolizer": "poor",
             "Indeterminate": "indeterminate"}
    for gene in ("TPMT", "NUDT15"):
        try:
            data = json.loads((root / "pgx" / f"{gene}_phenotype.json").read_text())
        except (OSError, ValueError) as e:
            problems.append(f"pgx/{gene}_phenotype.json: {e}")
            continue
        table: dict[str, str] = {}
        for d in data["diplotypes"]:
            a, b = d["diplotype"].split("/")
            table[f"{a}/{b}"] = table[f"{b}/{a}"] = words[d["phenotype"]]
        out[gene.lower()] = table
    return out
