"""Rule conditions: the small language of `when:` in rules/logic/*.yaml, and its two compilers.

A condition is a mapping. Its keys are ANDed:

    anc: {lt: $severe_anc}              compare a fact with a number, a `$threshold` or {fact: other}
    sex: male                           equality (a number, a string or true/false)
    risk_tier: {in: [mild, moderate]}   one of several values
    exists: mcv / missing: mcv          the fact is present / absent (absent = not measured, not known)
    all: [cond, ...] / any: [cond, ...] nesting

A fact that is absent makes every comparison on it false (``ne`` included), exactly as
durable-rules evaluates it. The same parsed condition compiles to

* a durable-rules JSON condition (:func:`to_durable`), which the engine runs, and
* a plain-Python predicate (:func:`evaluate`), used by the differential test and to explain why a
  rule did not fire (:func:`explain`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

__all__ = ["Node", "Cmp", "Exists", "All", "Any_", "ConditionError", "parse", "to_durable", "evaluate",
           "compile_python", "explain", "facts_used", "describe"]

OPS = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_DURABLE_OP = {"ne": "$neq", "lt": "$lt", "le": "$lte", "gt": "$gt", "ge": "$gte"}
_PY_OP: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
}


class ConditionError(ValueError):
    """A condition that does not compile; the message names the offending part."""


@dataclass(frozen=True)
class Ref:
    """Another fact of the same case, used as the right-hand side of a comparison."""
    fact: str


@dataclass(frozen=True)
class Cmp:
    op: str
    fact: str
    value: Union[float, str, bool, Ref]


@dataclass(frozen=True)
class Exists:
    fact: str
    present: bool


@dataclass(frozen=True)
class All:
    items: tuple["Node", ...]


@dataclass(frozen=True)
class Any_:
    items: tuple["Node", ...]


Node = Union[Cmp, Exists, All, Any_]


def parse(raw: Any, thresholds: dict[str, float], fact_type: Callable[[str], type | None],
          check_value: Callable[[str, Any], Optional[str]] = lambda name, value: None) -> Node:
    """Parse a YAML condition. ``fact_type(name)`` gives a fact's type (float, bool, str) or None
    when the fact is unknown; ``check_value(name, value)`` says why a text value is not one the fact
    can take (None when it is); ``$name`` values are looked up in ``thresholds``."""

    def operand(fact: str, value: Any, where: str) -> Union[float, str, bool, Ref]:
        want = fact_type(fact)
        if isinstance(value, dict):
            if set(value) != {"fact"}:
                raise ConditionError(f"{where}: a mapping operand must be {{fact: name}}, got {value!r}")
            other = value["fact"]
            if fact_type(other) is None:
                raise ConditionError(f"{where}: unknown fact {other!r}")
            if fact_type(other) is not want:
                raise ConditionError(f"{where}: {fact} and {other} have different types")
            return Ref(other)
        if isinstance(value, str) and value.startswith("$"):
            if value[1:] not in thresholds:
                raise ConditionError(f"{where}: unknown threshold {value!r}")
            value = thresholds[value[1:]]
        if want is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConditionError(f"{where}: {fact} is a number, got {value!r}")
            return float(value)
        if want is bool:
            if not isinstance(value, bool):
                raise ConditionError(f"{where}: {fact} is true/false, got {value!r}")
            return value
        if not isinstance(value, str):
            raise ConditionError(f"{where}: {fact} is text, got {value!r}")
        why = check_value(fact, value)
        if why:
            raise ConditionError(f"{where}: {why}")
        return value

    def node(raw: Any, where: str) -> Node:
        if not isinstance(raw, dict) or not raw:
            raise ConditionError(f"{where}: a condition is a non-empty mapping, got {raw!r}")
        parts: list[Node] = []
        for key, value in raw.items():
            here = f"{where}.{key}"
            if key in ("all", "any"):
                if not isinstance(value, list) or not value:
                    raise ConditionError(f"{here}: needs a non-empty list")
                items = tuple(node(v, f"{here}[{i}]") for i, v in enumerate(value))
                parts.append(All(items) if key == "all" else Any_(items))
            elif key in ("exists", "missing"):
                for name in value if isinstance(value, list) else [value]:
                    if fact_type(name) is None:
                        raise ConditionError(f"{here}: unknown fact {name!r}")
                    parts.append(Exists(name, key == "exists"))
            else:
                if fact_type(key) is None:
                    raise ConditionError(f"{here}: unknown fact {key!r}")
                if isinstance(value, dict) and not set(value) <= {"fact"}:
                    for op, arg in value.items():
                        if op == "in":
                            if not isinstance(arg, list) or not arg:
                                raise ConditionError(f"{here}.in: needs a non-empty list")
                            alts = tuple(Cmp("eq", key, operand(key, a, f"{here}.in")) for a in arg)
                            parts.append(alts[0] if len(alts) == 1 else Any_(alts))
                        elif op in OPS:
                            if fact_type(key) is not float and op not in ("eq", "ne"):
                                raise ConditionError(f"{here}.{op}: {key} is not a number")
                            parts.append(Cmp(op, key, operand(key, arg, f"{here}.{op}")))
                        else:
                            raise ConditionError(f"{here}: unknown operator {op!r} (use {', '.join(OPS)}, in)")
                else:
                    parts.append(Cmp("eq", key, operand(key, value, here)))
        return parts[0] if len(parts) == 1 else All(tuple(parts))

    return node(raw, "when")


def to_durable(n: Node) -> dict[str, Any]:
    """The durable-rules JSON form of a condition."""
    if isinstance(n, All):
        return {"$and": [to_durable(i) for i in n.items]}
    if isinstance(n, Any_):
        return {"$or": [to_durable(i) for i in n.items]}
    if isinstance(n, Exists):
        return {("$ex" if n.present else "$nex"): {n.fact: 1}}
    if isinstance(n.value, Ref):
        # durable-rules compares with an absent right-hand fact as if it were present (measured):
        # require both facts explicitly so that absent facts compare false, as everywhere else.
        ref = {"$m": n.value.fact}
        cmp = ({"$and": [{"$gte": {n.fact: ref}}, {"$lte": {n.fact: ref}}]} if n.op == "eq"
               else {_DURABLE_OP[n.op]: {n.fact: ref}})
        return {"$and": [{"$ex": {n.fact: 1}}, {"$ex": {n.value.fact: 1}}, cmp]}
    if n.op == "eq":
        return {n.fact: n.value}
    return {_DURABLE_OP[n.op]: {n.fact: n.value}}


def _rhs(n: Cmp, facts: dict[str, Any]) -> Any:
    return facts.get(n.value.fact) if isinstance(n.value, Ref) else n.value


def evaluate(n: Node, facts: dict[str, Any]) -> bool:
    """Plain-Python evaluation with durable-rules' semantics (absent facts compare false)."""
    if isinstance(n, All):
        return all(evaluate(i, facts) for i in n.items)
    if isinstance(n, Any_):
        return any(evaluate(i, facts) for i in n.items)
    if isinstance(n, Exists):
        return (n.fact in facts) == n.present
    left, right = facts.get(n.fact), _rhs(n, facts)
    if left is None or right is None:
        return False
    return _PY_OP[n.op](left, right)


Predicate = Callable[[dict[str, Any]], bool]


def compile_python(n: Node) -> Predicate:
    """The condition as a closure over a facts dict: same semantics as :func:`evaluate`, faster."""
    if isinstance(n, (All, Any_)):
        parts = tuple(compile_python(i) for i in n.items)
        combine = all if isinstance(n, All) else any
        return lambda f: combine(p(f) for p in parts)
    if isinstance(n, Exists):
        fact, present = n.fact, n.present
        return (lambda f: fact in f) if present else (lambda f: fact not in f)
    op, fact = _PY_OP[n.op], n.fact
    if isinstance(n.value, Ref):
        other = n.value.fact

        def ref_cmp(f: dict[str, Any]) -> bool:
            a, b = f.get(fact), f.get(other)
            return a is not None and b is not None and op(a, b)
        return ref_cmp
    value = n.value

    def cmp(f: dict[str, Any]) -> bool:
        a = f.get(fact)
        return a is not None and op(a, value)
    return cmp


def explain(n: Node, facts: dict[str, Any]) -> list[str]:
    """Why a condition is false: each failing leaf with what was expected and what the case had."""
    if evaluate(n, facts):
        return []
    if isinstance(n, All):
        return [r for i in n.items for r in explain(i, facts)]
    if isinstance(n, Any_):
        return ["none of: " + "; ".join(r for i in n.items for r in explain(i, facts))]
    if isinstance(n, Exists):
        return [f"{n.fact} {'is absent' if n.present else 'is present'}"]
    actual = facts.get(n.fact, "absent")
    return [f"expected {describe(n)}, case has {n.fact} = {actual}"]


def facts_used(n: Node) -> list[str]:
    """Fact names a condition reads, in order of appearance, without repeats."""
    out: list[str] = []

    def walk(x: Node) -> None:
        if isinstance(x, (All, Any_)):
            for i in x.items:
                walk(i)
        else:
            for name in (x.fact, x.value.fact if isinstance(x, Cmp) and isinstance(x.value, Ref) else None):
                if name and name not in out:
                    out.append(name)
    walk(n)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, Ref):
        return v.fact
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def describe(n: Node) -> str:
    """The condition in words, for reviewers (`leukodx rules show`)."""
    if isinstance(n, All):
        return " and ".join(f"({describe(i)})" if isinstance(i, Any_) else describe(i) for i in n.items)
    if isinstance(n, Any_):
        return " or ".join(f"({describe(i)})" if isinstance(i, All) else describe(i) for i in n.items)
    if isinstance(n, Exists):
        return f"{n.fact} is {'known' if n.present else 'not known'}"
    if isinstance(n.value, bool) and n.op == "eq":
        return n.fact if n.value else f"not {n.fact}"
    return f"{n.fact} {OPS[n.op]} {_fmt(n.value)}"
