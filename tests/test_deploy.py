"""Issue 16, item 7: the container image and the compose file, tested without a container runtime.

The Dockerfile is read (its final stage: base image, user, healthcheck, command, environment) and its
commands are run as plain processes with the image's environment: the build's `leukodx rules check`
(warming the cache folder), the CMD (`leukodx serve` on a free loopback port) and the HEALTHCHECK
(which must fail before the server is ready and pass once it is). The CMD migrates the database
before serving and does not serve on a schema it does not know. compose.yaml is read for its
PostgreSQL wiring. Nothing leaves the loopback interface.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import ROOT, free_port
from leukodx.api.config import Settings

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
BIN = Path(sys.executable).parent          # the image has `leukodx` and `python` on PATH; here, this venv's


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):       # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE.read_text(encoding="utf-8"))
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def exec_form(stage: list[tuple[str, str]], word: str) -> list[str]:
    """The JSON (exec) form of CMD, or of HEALTHCHECK's CMD."""
    args = [a for w, a in stage if w == word][-1]
    if word == "HEALTHCHECK":
        args = args[args.index(" CMD ") + len(" CMD "):] if " CMD " in args else args.removeprefix("CMD ")
    return json.loads(args)


def image_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The image's environment here: the Dockerfile's ENV over this machine's, without any LEUKODX_*
    setting of the test run, the folders moved under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEUKODX_")}
    env.update(env_of(final_stage()))
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["LEUKODX_CACHE_DIR"] = str(tmp_path / "cache")
    env["LEUKODX_FEEDBACK_DB_URL"] = f"sqlite:///{tmp_path}/feedback.db"
    env.update(overrides)
    return env


def listening_on_all_addresses(port: int) -> bool:
    """A TCP socket listening on 0.0.0.0:port (/proc/net/tcp: local address 00000000:PORT, state 0A)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(r.split()[1] == f"00000000:{port:04X}" and r.split()[3] == "0A" for r in rows)


# ---- the Dockerfile ------------------------------------------------------------------------------

def test_the_image_is_slim_python_3_11_and_runs_as_a_non_root_user():
    stage = final_stage()
    base = stage[0][1].split()[0]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    users = [a for w, a in stage if w == "USER"]
    assert users, "no USER: the server would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) >= 1000), user
    cmd_at = max(i for i, (w, _) in enumerate(stage) if w == "CMD")
    user_at = max(i for i, (w, _) in enumerate(stage) if w == "USER")
    assert user_at < cmd_at


def test_the_wheel_is_installed_normally_from_what_the_build_stage_copies():
    steps = instructions(DOCKERFILE.read_text(encoding="utf-8"))
    installs = [a for w, a in final_stage() if w == "RUN" and "pip install" in a]
    assert installs and all(" -e " not in a and "--editable" not in a for a in installs)
    assert any("leukodx[postgres]" in a for a in installs)    # PostgreSQL's driver is in the image
    # Every folder the wheel is made of (pyproject.toml's package-dir) is copied into the build stage,
    # and let through by .dockerignore.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    folders = set(project["tool"]["setuptools"]["package-dir"].values()) - {"."}
    copied = {src for w, a in steps if w == "COPY" and not a.startswith("--from") for src in a.split()[:-1]}
    assert folders | {"pyproject.toml", "README.md", "__init__.py"} <= copied, folders - copied
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert all(f"!{f}/" in ignore for f in folders) and "!pyproject.toml" in ignore


def test_the_healthcheck_asks_readyz_and_the_command_serves_on_all_addresses_with_settings_from_env():
    stage = final_stage()
    health = " ".join(exec_form(stage, "HEALTHCHECK"))
    assert "/readyz" in health
    cmd = " ".join(exec_form(stage, "CMD"))
    assert re.search(r"^python -m leukodx\.api\.migrations upgrade && exec leukodx serve\b", cmd.split(" ", 2)[2])
    assert "--host 0.0.0.0" in cmd
    env = env_of(stage)
    assert "$LEUKODX_PORT" in cmd and "$LEUKODX_WORKERS" in cmd and {"LEUKODX_PORT", "LEUKODX_WORKERS"} <= set(env)
    known = {f"LEUKODX_{name.upper()}" for name in Settings.model_fields} | \
        {"LEUKODX_PORT", "LEUKODX_WORKERS", "LEUKODX_CACHE_DIR"}
    assert {k for k in env if k.startswith("LEUKODX_")} <= known
    exposed = [a for w, a in stage if w == "EXPOSE"]
    assert exposed == [env["LEUKODX_PORT"]]


def test_the_image_command_and_healthcheck_run_as_plain_processes(tmp_path):
    stage = final_stage()
    port = free_port()
    env = image_env(tmp_path, LEUKODX_PORT=str(port), LEUKODX_WORKERS="1",
                    LEUKODX_CDS_PUBLIC_BASE_URL="https://cds.example.org")
    # The build's checks (RUN leukodx ...), here: they warm the cache folder the workers then read.
    for args in (a for w, a in stage if w == "RUN" and a.startswith("leukodx ")):
        done = subprocess.run(shlex.split(args), env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert list((tmp_path / "cache").glob("kb-*.json"))
    health = exec_form(stage, "HEALTHCHECK")

    def healthy() -> bool:
        return subprocess.run(health, env=env, capture_output=True, timeout=30).returncode == 0

    assert not healthy()                                       # nothing listening yet
    server = subprocess.Popen(exec_form(stage, "CMD"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not healthy():
            assert server.poll() is None, server.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, "not healthy in 60 s"
            time.sleep(0.3)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert listening_on_all_addresses(port)                # --host 0.0.0.0
        os.killpg(server.pid, signal.SIGTERM)                  # `docker stop`
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert not healthy()
    from leukodx.api import migrations
    from leukodx.api.feedback import make_engine
    assert migrations.current(make_engine(env["LEUKODX_FEEDBACK_DB_URL"])) == migrations.HEAD   # migrated first


def test_the_image_command_does_not_serve_on_a_database_a_newer_leukodx_migrated(tmp_path):
    from sqlalchemy import text
    from leukodx.api.feedback import FeedbackStore
    env = image_env(tmp_path, LEUKODX_PORT=str(free_port()), LEUKODX_CDS_PUBLIC_BASE_URL="https://cds.example.org")
    store = FeedbackStore(env["LEUKODX_FEEDBACK_DB_URL"])
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    done = subprocess.run(exec_form(final_stage(), "CMD"), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "revision 9999" in done.stderr and "newer leukodx" in done.stderr and "listening" not in done.stdout


def test_the_image_command_refuses_to_serve_without_the_public_url(tmp_path):
    env = image_env(tmp_path, LEUKODX_PORT=str(free_port()))    # CDS auth on, no LEUKODX_CDS_PUBLIC_BASE_URL
    done = subprocess.run(exec_form(final_stage(), "CMD"), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "LEUKODX_CDS_PUBLIC_BASE_URL" in done.stderr


# ---- compose.yaml --------------------------------------------------------------------------------

def test_compose_runs_leukodx_on_postgresql_once_the_database_is_healthy():
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"db", "leukodx"}
    db, app = services["db"], services["leukodx"]
    assert db["image"].startswith("postgres:") and "${" not in db["image"]      # a fixed database image
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert db["environment"]["POSTGRES_PASSWORD"].startswith("${LEUKODX_DB_PASSWORD:?")
    assert app["build"] == "." and "command" not in app                         # the image's CMD: migrate, serve
    url = app["environment"]["LEUKODX_FEEDBACK_DB_URL"]
    assert url.startswith("postgresql://leukodx:${LEUKODX_DB_PASSWORD") and url.endswith("@db:5432/leukodx")
    assert app["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert app["environment"]["LEUKODX_CDS_PUBLIC_BASE_URL"].startswith("${LEUKODX_CDS_PUBLIC_BASE_URL:?")
    assert all(p.startswith("127.0.0.1:") for p in app["ports"])    # only the TLS proxy on the host reaches it
    assert app["read_only"] is True and "/tmp" in app["tmpfs"]


# ---- docs/deploy.md ------------------------------------------------------------------------------

def test_the_deployment_guide_covers_what_an_operator_sets_and_watches():
    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    for needed in ("TLS", "LEUKODX_CDS_PUBLIC_BASE_URL", "--workers", "PostgreSQL", "SQLite", "LEUKODX_CACHE_DIR",
                   "/readyz", "/healthz", "leukodx[postgres]", "python -m leukodx.api.migrations", "log"):
        assert needed in doc, needed
    named = set(re.findall(r"\bLEUKODX_[A-Z_]+\b", doc))
    known = {f"LEUKODX_{name.upper()}" for name in Settings.model_fields} | \
        {"LEUKODX_PORT", "LEUKODX_WORKERS", "LEUKODX_CACHE_DIR", "LEUKODX_DB_PASSWORD"}
    assert named - known == set()                        # no setting the code does not read
    for path in re.findall(r"`((?:docs|tests|api|cli|engine)/[\w./-]+\.(?:md|py))", doc):
        assert (ROOT / path).exists(), path


def test_the_wheel_ships_the_migrations():
    """Every file of api/migrations/ is in the wheel: a module of the package leukodx.api.migrations, or
    matched by its package-data (the migration scripts and Alembic's template)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert "leukodx.api.migrations" in project["packages"]
    globs = project["package-data"]["leukodx.api.migrations"]
    folder = ROOT / "api" / "migrations"
    files = [p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    shipped = [f for f in files if (f.suffix == ".py" and len(f.parts) == 1) or any(f.match(g) for g in globs)]
    assert sorted(shipped) == sorted(files) and Path("versions/0001_initial.py") in files
