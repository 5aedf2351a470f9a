"""leukodx: leukopenia diagnostic decision support.

The installed package maps the repository's top-level folders (pyproject.toml, [tool.setuptools]):

    leukodx          this file: the version and the public API
    leukodx.engine   engine/   parse -> normalize -> derive -> reason -> rank -> explain
    leukodx.rules    rules/    the knowledge base, as data
    leukodx.api      api/      REST and CDS Hooks (FastAPI), FHIR mapping
    leukodx.cli      cli/      the `leukodx` command, case replay, knowledge-base docs

    >>> import leukodx
    >>> leukodx.assess("cases/tiers/tier-severe-anc-exactly-0-1.yaml").risk_tier.tier
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "assess", "Engine", "CaseError"]


def __getattr__(name: str) -> Any:
    """The engine is imported on first use, so `import leukodx` stays cheap."""
    if name in ("assess", "Engine", "CaseError"):
        from . import engine
        return getattr(engine, name)
    raise AttributeError(f"module 'leukodx' has no attribute {name!r}")
