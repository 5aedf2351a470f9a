"""The benchmarks run once in a tiny configuration, so they cannot rot. No timing is asserted."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT


def run(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--json"], capture_output=True,
                         text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_engine_bench():
    r = run("engine.py", "--rounds", "1")
    assert r["durable"]["n"] == r["cases"] > 50 and isinstance(r["ratio_median"], float)   # reported, not judged
    assert set(r["stages_us_durable"]) == {"parse", "normalize", "derive", "reason", "rank", "explain", "serialize"}


def test_replay_bench():
    r = run("replay.py", "--cases", "40", "--jobs", "1", "2")
    assert [x["failed"] for x in r["replay"]] == [0, 0] and r["replay"][1]["cases"] == 40


def test_memory_bench():
    r = run("memory.py", "--assessments", "200")
    assert r["assessments"] == 200 and r["rss_after_mb"] > 0


def test_http_bench():
    r = run("http_load.py", "--duration", "0.5", "--workers", "1", "--clients", "2")
    assert {x["call"] for x in r["load"]} == {"assess", "cds_patient_view", "cds_patient_view_201_obs"}
    assert all(x["errors"] == 0 and x["requests"] > 0 for x in r["load"])


def test_http_pair_bench():
    """Both sides answer at the same time, each on a CPU of its own (side B here: the report link off); where
    the machine lacks what it needs, it says what and measures nothing."""
    r = run("http_pair.py", "--rounds", "2", "--duration", "0.5", "--warmup", "0", "--clients", "2",
            "--env-b", "LEUKODX_REPORT_LINK_MINUTES=0", "--python-b", sys.executable)
    if not r["measured"]:
        assert r["missing"] and r["rounds"] == []
        return
    assert [[x["side"] for x in pair] for pair in r["rounds"]] == [["A", "B"], ["A", "B"]]
    assert r["python"] == {"A": sys.executable, "B": sys.executable}                 # each side's interpreter
    first, second = sorted(os.sched_getaffinity(0))[:2]                              # the CPUs this process may use
    assert [[x["cpu"] for x in pair] for pair in r["rounds"]] == [[first, second], [second, first]]   # swapped
    assert all(x["errors"] == 0 and x["requests"] > 0 for pair in r["rounds"] for x in pair)
    assert len(r["rps_ratio_a_over_b"]) == 2 and r["rps_ratio_median"] > 0


def test_fhir_map_bench():
    r = run("fhir_map.py", "--megabytes", "0.3", "--rounds", "1")
    assert set(r) == {"synthea-shaped", "all-labs"}
    assert all(x["megabytes"] >= 0.3 and x["labs_in_case"] > 0 for x in r.values())
    assert r["all-labs"]["labs_in_case"] > r["synthea-shaped"]["labs_in_case"]


def test_instructions_bench():
    """Counted by valgrind where it is installed (the count itself is not judged); said so otherwise."""
    import shutil
    # 16 calls (about 90 M instructions) outweigh what start-up varies by on a busy machine (4 had counted -100 M)
    r = run("instructions.py", "--calls", "cds_patient_view", "--base", "2", "--more", "16")
    assert r["valgrind"] is bool(shutil.which("valgrind"))
    if r["valgrind"]:
        assert r["instructions_per_call"]["cds_patient_view"] > 0
    else:
        assert r["instructions_per_call"] == {}


def test_the_instruction_count_runs_the_calls_it_counts(tmp_path):
    """The measured program: each call goes through the whole application and is answered 200."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "instructions.py"), "--inner", "cds_patient_view", "2"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "LEUKODX_CDS_AUTH": "off",
                              "LEUKODX_FEEDBACK_DB_URL": f"sqlite:///{tmp_path}/feedback.db"})
    assert out.returncode == 0, out.stderr[-2000:]


def test_each_stage_the_instruction_count_can_count_runs(monkeypatch):
    """`--stages` counts these: each stage of a CDS call, run on what the stages before it made."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import instructions
    for name in instructions.STAGES:
        assert instructions.stage("cds_patient_view", name)() is not None, name
