"""Shared fixtures: one knowledge base and one engine of each backend per test session."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from leukodx.engine import Engine
from leukodx.engine.kb import KnowledgeBase, default

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "cases"


LOG_CAPTURE = io.StringIO()   # every leukodx log line of the test run (read by test_zz_log_hygiene.py)


@pytest.fixture(scope="session", autouse=True)
def capture_leukodx_logs():
    from leukodx.api.middleware import JsonFormatter
    handler = logging.StreamHandler(LOG_CAPTURE)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("leukodx").addHandler(handler)
    yield
    logging.getLogger("leukodx").removeHandler(handler)


@pytest.fixture(scope="session")
def kb() -> KnowledgeBase:
    return default()


@pytest.fixture(scope="session")
def engine(kb: KnowledgeBase) -> Engine:
    return Engine(kb)


@pytest.fixture(scope="session")
def plain_engine(kb: KnowledgeBase) -> Engine:
    return Engine(kb, backend="plain")


def base_case(**overrides):
    """A small valid case; keyword arguments replace top-level parts."""
    case = {
        "id": "t",
        "as_of": "2025-03-10",
        "patient": {"age_years": 50, "sex": "female", "weight_kg": 70},
        "labs": [
            {"test": "wbc", "value": 5.0, "unit": "10^9/L", "time": "2025-03-10T08:00:00Z"},
            {"test": "anc", "value": 3.0, "unit": "10^9/L", "time": "2025-03-10T08:00:00Z"},
            {"test": "hemoglobin", "value": 13.5, "unit": "g/dL", "time": "2025-03-10T08:00:00Z"},
            {"test": "platelets", "value": 250, "unit": "10^9/L", "time": "2025-03-10T08:00:00Z"},
        ],
    }
    case.update(overrides)
    return case


def lab(test, value, unit="10^9/L", time="2025-03-10T08:00:00Z", **extra):
    return {"test": test, "value": value, "unit": unit, "time": time, **extra}
