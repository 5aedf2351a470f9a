"""Exceptions raised by the engine.

    LeukodxError
    ├── CaseError            the case cannot be judged; carries every problem found
    ├── KnowledgeBaseError   rules/ is inconsistent (`leukodx rules check` lists why)
    └── ReasoningError       the rules engine failed on one case (the worker should be recycled)
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Problem", "LeukodxError", "CaseError", "KnowledgeBaseError", "ReasoningError"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where (a JSON path such as ``labs[2].unit``) and why."""

    loc: str
    msg: str
    items: tuple[str, ...] = ()   # the input items the problem concerns, when loc names their list ("labs")

    def __str__(self) -> str:
        return f"{self.loc}: {self.msg}" if self.loc else self.msg

    def as_dict(self) -> dict[str, str]:
        return {"loc": self.loc, "msg": self.msg}


class LeukodxError(Exception):
    """Base of every error leukodx raises on purpose."""


@dataclass
class CaseError(LeukodxError):
    """The case was rejected. ``problems`` lists every problem found, not just the first."""

    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"case rejected: {n} problem{'s' if n != 1 else ''}"
        return head + "".join(f"\n  - {p}" for p in self.problems)


class KnowledgeBaseError(LeukodxError):
    """The knowledge base in rules/ is invalid."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("knowledge base invalid:\n  - " + "\n  - ".join(problems))


class ReasoningError(LeukodxError):
    """durable-rules failed while evaluating one case."""
