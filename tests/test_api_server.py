"""The real server process on a loopback port: every case file posted over HTTP must get exactly
what `engine.assess` gives for the same case (or the same problems, for rejected cases)."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from leukodx.engine import CaseError, assess
from leukodx.engine.render import to_json
from leukodx.cli.replay import find_case_files

from conftest import CASES, free_port, start_server, stop_server

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    proc = start_server(port, f"sqlite:///{tmp_path_factory.mktemp('db')}/fb.db", workers=2)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


def test_every_case_over_http_equals_the_engine(server):
    files = find_case_files([str(CASES)])
    with httpx.Client(base_url=server, timeout=30) as client:
        for path in files:
            body = path.read_bytes()
            r = client.post("/v1/assess", content=body, headers={"content-type": "application/yaml"})
            try:
                expected = json.loads(to_json(assess(body)))
            except CaseError as e:
                assert r.status_code == 422, path.name
                assert [x["loc"] for x in r.json()["errors"]] == [p.loc for p in e.problems], path.name
                continue
            assert r.status_code == 200, (path.name, r.text[:300])
            assert r.json() == expected, path.name


def test_concurrent_requests_never_get_another_requests_answer(server):
    """Many clients at once, each with a different case: every answer is its own case's assessment."""
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p in find_case_files([str(CASES)]) if "bad_input" not in p.parts][:40]
    expected = {p: json.loads(to_json(assess(p.read_bytes()))) for p in files}

    def post(path: Path) -> tuple[Path, dict]:
        with httpx.Client(base_url=server, timeout=60) as client:
            r = client.post("/v1/assess", content=path.read_bytes(), headers={"content-type": "application/yaml"})
            return path, r.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        for path, got in pool.map(post, files * 3):
            assert got == expected[path], path.name
