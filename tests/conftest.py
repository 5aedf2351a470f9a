"""Shared fixtures: one knowledge base and one engine of each backend per test session."""
from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leukodx.engine import Engine
from leukodx.engine.kb import KnowledgeBase, default

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "cases"
FIXTURES = ROOT / "tests" / "fixtures"   # third-party test data kept in the repository (see its README.md)
# The installed console script, as a user runs it (beside this interpreter, else on PATH).
LEUKODX = str(Path(sys.executable).with_name("leukodx")) if Path(sys.executable).with_name("leukodx").exists() \
    else shutil.which("leukodx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, db_url: str, workers: int = 1, **env: str) -> subprocess.Popen:
    """`leukodx serve` on a loopback port, in its own process group, once /readyz answers."""
    import httpx
    proc = subprocess.Popen([LEUKODX, "serve", "--port", str(port), "--workers", str(workers)],
                            env={**os.environ, "LEUKODX_FEEDBACK_DB_URL": db_url,
                                 # with CDS auth on, `leukodx serve` needs its public URL (the JWT audience)
                                 "LEUKODX_CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


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
def fixtures_dir() -> Path:
    return FIXTURES


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
