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


def serve_script(script: str, *args: str) -> tuple[subprocess.Popen, str]:
    """Run a small Python HTTP server script on a free loopback port (its first argument); returns the
    process and its base URL once ``/ok/Patient/x`` answers."""
    import httpx
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", script, str(port), *args])
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{base}/ok/Patient/x", timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    return proc, base


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


# ---- the test run's leukodx logs (searched by test_zz_log_hygiene.py) -------------------------------
# Every leukodx log line a test process writes goes to LOG_CAPTURE (this process's lines, in memory)
# and to <run's base temp>/leukodx-logs/<process>.jsonl. Under pytest-xdist each worker (gw0, gw1 ...)
# writes its own file in the directory all workers share, and marks <worker>.done when its session
# ends, so the hygiene test can read every worker's lines once the others have finished.

LOG_CAPTURE = io.StringIO()
WORKER = os.environ.get("PYTEST_XDIST_WORKER")          # "gw0", "gw1" ... under pytest-xdist, else None


def log_dir(factory: pytest.TempPathFactory) -> Path:
    base = factory.getbasetemp()
    return (base.parent if WORKER else base) / "leukodx-logs"   # a worker's base temp is <run's>/popen-gwN


@pytest.fixture(scope="session", autouse=True)
def capture_leukodx_logs(tmp_path_factory):
    from leukodx.api.middleware import JsonFormatter
    directory = log_dir(tmp_path_factory)
    directory.mkdir(exist_ok=True)
    handlers = [logging.StreamHandler(LOG_CAPTURE),
                logging.FileHandler(directory / f"{WORKER or 'main'}.jsonl", encoding="utf-8")]
    for handler in handlers:
        handler.setFormatter(JsonFormatter())
        logging.getLogger("leukodx").addHandler(handler)
    yield
    for handler in handlers:
        logging.getLogger("leukodx").removeHandler(handler)
        handler.close()


def pytest_sessionfinish(session):
    """An xdist worker marks that it has written its last log line (also a worker that ran no test)."""
    if WORKER:
        directory = log_dir(session.config._tmp_path_factory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{WORKER}.done").touch()


def run_logs(config: pytest.Config, wait_seconds: float = 1800) -> str:
    """Every leukodx log line of the test run: this process's; under xdist, every worker's, after waiting
    for the other workers to finish (the caller must be the last test on its worker, as test_zz_... is:
    xdist hands out tests in file order and tells a worker to stop once none are left)."""
    if not WORKER:
        return LOG_CAPTURE.getvalue()
    directory = log_dir(config._tmp_path_factory)
    others = [f"gw{i}" for i in range(int(os.environ["PYTEST_XDIST_WORKER_COUNT"])) if f"gw{i}" != WORKER]
    deadline = time.monotonic() + wait_seconds        # a guard against a worker that died, not a timing check
    while missing := [w for w in others if not (directory / f"{w}.done").exists()]:
        if time.monotonic() > deadline:
            pytest.fail(f"xdist workers {missing} never finished; their logs cannot be searched")
        time.sleep(0.5)
    return "".join(p.read_text(encoding="utf-8") for p in sorted(directory.glob("*.jsonl")))


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
