"""The fact vocabulary: every fact a rule can read, from rules/facts.yaml.

One table (name or pattern, type, allowed values, producer, meaning) read by the rule compiler
(:meth:`FactVocabulary.type_of`), `leukodx rules check` (:meth:`FactVocabulary.check_value`) and the
reviewer's reference (:attr:`FactVocabulary.specs`). A pattern such as ``drug_{drug}_active`` stands
for one fact per id of its catalogue.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

__all__ = ["FactSpec", "FactVocabulary", "TYPES"]

TYPES: dict[str, type] = {"number": float, "yes/no": bool, "text": str}
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class FactSpec:
    name: str                           # a fact name, or a pattern with {catalogue} placeholders
    type: str                           # number, yes/no, text
    values: Optional[tuple[str, ...]]   # the values a text fact can take (None: any)
    producer: str
    meaning: str

    @property
    def python_type(self) -> type:
        return TYPES[self.type]


class FactVocabulary:
    """The facts of rules/facts.yaml, with each pattern expanded over the ids of its catalogue."""

    def __init__(self, raw: Any, catalogues: dict[str, Iterable[str]], problems: list[str]):
        self.specs: list[FactSpec] = []
        self._exact: dict[str, FactSpec] = {}
        for i, entry in enumerate((raw or {}).get("facts", [])):
            where = f"facts.yaml: facts[{i}]"
            try:
                spec = self._spec(entry, catalogues)
            except (KeyError, TypeError, ValueError) as e:
                problems.append(f"{where}: {e}")
                continue
            self.specs.append(spec)
            for name in self._expand(spec.name, catalogues, problems, where):
                if name in self._exact:
                    problems.append(f"{where}: fact {name!r} is declared twice")
                self._exact[name] = spec

    @staticmethod
    def _spec(entry: dict[str, Any], catalogues: dict[str, Iterable[str]]) -> FactSpec:
        if set(entry) - {"name", "type", "values", "values_from", "producer", "meaning"}:
            raise ValueError(f"unknown keys {sorted(set(entry) - {'name', 'type', 'values', 'values_from', 'producer', 'meaning'})}")
        if entry["type"] not in TYPES:
            raise ValueError(f"type must be one of {', '.join(TYPES)}, not {entry['type']!r}")
        values = entry.get("values")
        if "values_from" in entry:
            values = sorted(catalogues[entry["values_from"]])
        if values is not None and entry["type"] != "text":
            raise ValueError("only text facts take values")
        return FactSpec(name=entry["name"], type=entry["type"], values=tuple(values) if values is not None else None,
                        producer=entry["producer"], meaning=" ".join(str(entry["meaning"]).split()))

    @staticmethod
    def _expand(pattern: str, catalogues: dict[str, Iterable[str]], problems: list[str], where: str) -> list[str]:
        names = [pattern]
        for placeholder in _PLACEHOLDER.findall(pattern):
            if placeholder not in catalogues:
                problems.append(f"{where}: unknown placeholder {{{placeholder}}} in {pattern!r}")
                return []
            names = [n.replace(f"{{{placeholder}}}", str(i)) for n in names for i in catalogues[placeholder]]
        return names

    def __contains__(self, name: str) -> bool:
        return name in self._exact

    def __iter__(self):
        return iter(self._exact)

    def spec(self, name: str) -> Optional[FactSpec]:
        return self._exact.get(name)

    def type_of(self, name: str) -> Optional[type]:
        """float, bool or str; None for a fact no rule may read."""
        spec = self._exact.get(name)
        return spec.python_type if spec else None

    def check_value(self, name: str, value: Any) -> Optional[str]:
        """Why a condition may not compare the fact with this value (None when it may)."""
        spec = self._exact.get(name)
        if spec and spec.values is not None and isinstance(value, str) and value not in spec.values:
            return f"{name} is one of {', '.join(spec.values)}, not {value!r}"
        return None
