"""`leukodx screen` (issue 17): a synthetic Bulk Data export made from the Synthea bundles, screened in
this process, by a local pool of 2 processes and by a Dask LocalCluster, with the same results; bad
input reported by file and line; filters; --resume; the summary; the progress line.

Needs the `screen` extra (pyarrow, dask[distributed]), which the `test` extra installs too; without
it the module is skipped, saying so."""
from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow", reason="leukodx screen needs pyarrow: pip install '.[screen]' (or '.[test]')")
import pyarrow.parquet as pq  # noqa: E402

from conftest import LEUKODX, ROOT  # noqa: E402
from leukodx.cli import screen_worker  # noqa: E402
from leukodx.cli.bulk import partition_of, patient_key  # noqa: E402
from leukodx.cli.main import main as cli_main  # noqa: E402
from leukodx.cli.screen import Progress, ScreenError, run_screen  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_screen", ROOT / "bench" / "screen.py")
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

AS_OF = gen.AS_OF
N = 24


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.ndjson").read_text().splitlines()]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("export")
    gen.make_export(d, N, seed=1)
    return d


@pytest.fixture(scope="module")
def baseline(export, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "r"
    run_screen(export, out, as_of=AS_OF, jobs=1, partitions=4)
    return out


def test_the_generator_is_seeded_and_makes_new_ids(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    gen.make_export(a, 5, seed=3)
    gen.make_export(b, 5, seed=3)
    gen.make_export(c, 5, seed=4)
    for name in ("Patient.ndjson", "Observation.ndjson", "MedicationRequest.ndjson"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
    ids = [json.loads(line)["id"] for line in (a / "Patient.ndjson").read_text().splitlines()]
    assert ids == [f"s3p{i}" for i in range(5)]
    # the first patients of a bigger export are the same patients: reproducible whatever the size
    gen.make_export(tmp_path / "d", 7, seed=3)
    assert (tmp_path / "d" / "Patient.ndjson").read_text().startswith((a / "Patient.ndjson").read_text())
    obs = [json.loads(line) for line in (a / "Observation.ndjson").read_text().splitlines()]
    assert any(gen._loinc(o) == gen.ANC for o in obs) and all(o["subject"]["reference"].startswith("Patient/s3p")
                                                               for o in obs)


def test_every_patient_gets_one_row_in_parquet_and_ndjson(export, baseline):
    run = json.loads((baseline / "run.json").read_text())
    assert run["totals"]["patients"] == run["totals"]["screened"] == N and run["failed"] == []
    table = pq.read_table(baseline / "results.parquet")
    nd = rows(baseline)
    assert table.num_rows == len(nd) == N
    assert table.column("patient").to_pylist() == [r["patient"] for r in nd]
    assert sorted(r["patient"] for r in nd) == sorted(f"Patient/s1p{i}" for i in range(N))
    assert table.schema.field("anc_date").type == pa.date32()
    assessed = [r for r in nd if r["status"] == "assessed"]
    assert assessed and all(r["tier"] in ("normal", "mild", "moderate", "severe", "profound", "unknown")
                            for r in assessed)
    with_anc = [r for r in assessed if r["anc"] is not None]
    assert with_anc and all(r["anc_date"] for r in with_anc)
    assert any(r["drug_classes"] for r in assessed) and any(r["causes"] for r in assessed)
    assert all({"id", "likelihood", "score"} == set(c) for r in assessed for c in r["causes"])
    # each worker process built its engine once
    assert set(run["engine_builds"].values()) == {1}


def test_a_row_is_what_the_fhir_mapping_and_engine_say(export, baseline):
    from leukodx.api.fhir import map_bundle
    from leukodx.engine import get_engine
    row = rows(baseline)[0]
    pid = row["patient"].split("/")[1]
    res = [json.loads(line) for f in export.glob("*.ndjson") for line in f.read_text().splitlines()]
    mine = [r for r in res if r.get("id") == pid or r.get("subject", {}).get("reference") == row["patient"]]
    eng = get_engine()
    m = map_bundle(mine, kb=eng.kb, patient_id=pid, as_of=AS_OF)
    a = eng.assess(m.case, partial=True)
    assert (row["tier"], row["anc"], row["alerts"]) == (a.risk_tier.tier, a.risk_tier.anc, [x.id for x in a.alerts])
    assert [c["id"] for c in row["causes"]] == [c.id for c in a.causes[:3]]


def test_a_local_pool_gives_the_same_results(export, baseline, tmp_path):
    run = run_screen(export, tmp_path / "r", as_of=AS_OF, jobs=2, partitions=4)
    assert run["mode"] == "local pool of 2 processes"
    assert (tmp_path / "r" / "results.ndjson").read_bytes() == (baseline / "results.ndjson").read_bytes()
    assert set(run["engine_builds"].values()) == {1}


def test_a_dask_local_cluster_gives_the_same_results(export, baseline, tmp_path):
    distributed = pytest.importorskip("distributed", reason="--dask needs dask[distributed]: pip install '.[screen]'")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cl, \
            distributed.Client(cl) as client:
        run = run_screen(export, tmp_path / "r", as_of=AS_OF, client=client, partitions=4)
    assert run["mode"].startswith("Dask, 2 worker")
    assert (tmp_path / "r" / "results.ndjson").read_bytes() == (baseline / "results.ndjson").read_bytes()
    assert set(run["engine_builds"].values()) == {1}


def test_a_cluster_the_run_started_stops_its_heartbeats_before_closing():
    # a heartbeat in flight while the scheduler shut down was logged by the worker with two tracebacks (1 run in 10)
    distributed = pytest.importorskip("distributed", reason="--dask needs dask[distributed]: pip install '.[screen]'")
    from leukodx.cli.executors import _Quiet
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cl, \
            distributed.Client(cl) as client:
        beating = lambda: [w.periodic_callbacks["heartbeat"].is_running() for w in cl.workers.values()]  # noqa: E731
        assert beating() == [True, True]
        _Quiet(client).close()
        assert beating() == [False, False]


def test_the_command_runs_on_dask_local(export, baseline, tmp_path):
    pytest.importorskip("distributed", reason="--dask needs dask[distributed]: pip install '.[screen]'")
    r = subprocess.run([LEUKODX, "screen", str(export), "--out", str(tmp_path / "r"), "--as-of", AS_OF.isoformat(),
                        "--dask", "local", "--workers", "1", "--partitions", "4"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{N} patients screened" in r.stdout and "Traceback" not in r.stderr
    assert "screening:" not in r.stderr and "\r" not in r.stderr     # not a terminal: no progress line
    assert (tmp_path / "r" / "results.ndjson").read_bytes() == (baseline / "results.ndjson").read_bytes()


def test_a_patient_lands_in_one_partition_with_all_its_resources(export, tmp_path):
    from leukodx.cli.bulk import partition_export, read_partition
    plan = partition_export(export, tmp_path / "w", 3)
    where: dict[str, set[int]] = {}
    for i, part in enumerate(plan.parts):   # each partition: its pieces
        for key, _, _, _ in read_partition(part):
            where.setdefault(key, set()).add(i)
    assert len(where) == N and all(len(v) == 1 for v in where.values())
    assert all(partition_of(k, 3) in v for k, v in where.items())
    assert plan.patients == N and sum(plan.patients_per_part) == N
    assert patient_key("https://ehr.example/fhir/Patient/abc/_history/2") == "Patient/abc"
    assert patient_key("Group/x") is None


def _bad_export(src: Path, dest: Path) -> dict[str, int]:
    """A copy of ``src`` with each kind of bad input; returns the line of each."""
    dest.mkdir()
    for f in src.glob("*.ndjson"):
        (dest / f.name).write_bytes(f.read_bytes())
    obs = (dest / "Observation.ndjson").read_text().splitlines()
    lines = {}
    good = json.loads(obs[0])
    orphan = dict(good, id="orphan-1", subject={"reference": "Patient/not-in-the-export"})
    obs += [obs[1][: len(obs[1]) // 2], json.dumps({"resourceType": "Fooservation", "id": "x"}), json.dumps(orphan)]
    lines["truncated"], lines["unknown"], lines["orphan"] = len(obs) - 2, len(obs) - 1, len(obs)
    (dest / "Observation.ndjson").write_text("\n".join(obs) + "\n")
    cond = json.loads((dest / "Condition.ndjson").read_text().splitlines()[0])
    latin = [json.dumps(dict(cond, id="c-ascii")), json.dumps(dict(cond, id="c-latin1", code={"text": "Sjögren"}),
                                                           ensure_ascii=False)]
    (dest / "Condition-latin1.ndjson").write_bytes(("\n".join(latin) + "\n").encode("latin-1"))
    lines["latin1"] = 2
    with gzip.open(dest / "Patient.ndjson.gz", "wb") as g:     # a compressed file is read the same way
        g.write((dest / "Patient.ndjson").read_bytes())
    (dest / "Patient.ndjson").unlink()
    return lines


def test_bad_input_is_reported_by_file_and_line_and_the_rest_is_screened(export, baseline, tmp_path):
    lines = _bad_export(export, tmp_path / "bad")
    run = run_screen(tmp_path / "bad", tmp_path / "r", as_of=AS_OF, jobs=1, partitions=4)
    assert run["totals"]["screened"] == N and run["failed"] == []
    problems = list(csv.DictReader((tmp_path / "r" / "problems.csv").open()))
    got = {(p["file"], int(p["line"]), p["kind"]) for p in problems}
    assert got == {("Observation.ndjson", lines["truncated"], "json"),
                   ("Observation.ndjson", lines["unknown"], "resource_type"),
                   ("Observation.ndjson", lines["orphan"], "patient_missing"),
                   ("Condition-latin1.ndjson", lines["latin1"], "encoding")}
    assert run["problem_counts"] == {"json": 1, "resource_type": 1, "patient_missing": 1, "encoding": 1}
    assert "Patient/not-in-the-export" in next(p["message"] for p in problems if p["kind"] == "patient_missing")
    base = {r["patient"]: r for r in rows(baseline)}
    for r in rows(tmp_path / "r"):     # the half line and the orphan lost nothing else
        assert (r["tier"], r["anc"]) == (base[r["patient"]]["tier"], base[r["patient"]]["anc"])
    page = (tmp_path / "r" / "summary.html").read_text()
    assert "Condition-latin1.ndjson" in page and "Fooservation" in page


def test_one_patients_failure_is_on_its_row_and_the_run_goes_on(export, tmp_path, monkeypatch):
    real = screen_worker.map_bundle

    def flaky(data, **kw):
        if kw["patient_id"] == "s1p3":
            raise RuntimeError("boom")
        return real(data, **kw)
    monkeypatch.setattr(screen_worker, "map_bundle", flaky)
    extra = tmp_path / "x"
    extra.mkdir()
    for f in export.glob("*.ndjson"):
        (extra / f.name).write_bytes(f.read_bytes())
    with open(extra / "Patient.ndjson", "a") as p, open(extra / "Observation.ndjson", "a") as o:
        p.write(json.dumps({"resourceType": "Patient", "id": "nolab", "gender": "female"}) + "\n")
        p.write(json.dumps({"resourceType": "Patient", "id": "implausible", "gender": "male"}) + "\n")
        o.write(json.dumps({"resourceType": "Observation", "id": "wbc-x", "status": "final",
                            "code": {"coding": [{"system": "http://loinc.org", "code": "6690-2"}]},
                            "subject": {"reference": "Patient/implausible"}, "effectiveDateTime": "2025-06-20",
                            "valueQuantity": {"value": 99999, "unit": "10*3/uL", "system": "http://unitsofmeasure.org",
                                              "code": "10*3/uL"}}) + "\n")
    run = run_screen(extra, tmp_path / "r", as_of=AS_OF, jobs=1, partitions=3)
    got = {r["patient"]: r for r in rows(tmp_path / "r")}
    assert len(got) == N + 2 and run["failed"] == []
    assert got["Patient/s1p3"]["status"] == "error" and "RuntimeError: boom" in got["Patient/s1p3"]["error"]
    assert got["Patient/nolab"]["status"] == "no_usable_lab"
    assert got["Patient/implausible"]["status"] == "error" and got["Patient/implausible"]["error"]
    assert sum(r["status"] == "assessed" for r in got.values()) == N - 1
    assert "Patient/s1p3" in (tmp_path / "r" / "summary.html").read_text()


def test_filters_keep_what_they_say(export, baseline, tmp_path):
    every = rows(baseline)
    run = run_screen(export, tmp_path / "a", as_of=AS_OF, jobs=1, partitions=4, only_alerts=True,
                     drug_classes=["thiopurine", "clozapine"])
    want = [r for r in every if r["alerts"] and ({"thiopurine", "clozapine"} & set(r["drugs"] + r["drug_classes"]))]
    assert [r["patient"] for r in rows(tmp_path / "a")] == [r["patient"] for r in want]
    assert run["totals"]["screened"] == N
    run_screen(export, tmp_path / "b", as_of=AS_OF, jobs=1, partitions=4, tier_at_most="mild")
    want = [r for r in every if r["tier"] in ("mild", "moderate", "severe", "profound")
            or r["tier_at_least"] in ("mild", "moderate", "severe", "profound")]
    assert want and [r["patient"] for r in rows(tmp_path / "b")] == [r["patient"] for r in want]
    with pytest.raises(ScreenError, match="did you mean thiopurine"):
        run_screen(export, tmp_path / "c", as_of=AS_OF, jobs=1, drug_classes=["thiopurin"])


def test_since_screens_only_patients_with_newer_data(export, tmp_path):
    run = run_screen(export, tmp_path / "a", as_of=AS_OF, jobs=1, partitions=2, since=date(2030, 1, 1))
    assert run["totals"]["screened"] == 0 and run["totals"]["skipped_since"] == N
    run = run_screen(export, tmp_path / "b", as_of=AS_OF, jobs=1, partitions=2, since=date(2025, 6, 1))
    assert 0 < run["totals"]["screened"] < N


def test_resume_skips_the_partitions_written(export, baseline, tmp_path, monkeypatch):
    real, calls, broken = screen_worker.screen_partition, [], {2}

    def failing(task):
        calls.append(task["index"])
        if task["index"] in broken:
            raise OSError("disk full")
        return real(task)
    monkeypatch.setattr(screen_worker, "screen_partition", failing)
    run = run_screen(export, tmp_path / "r", as_of=AS_OF, jobs=1, partitions=3)
    assert [f["index"] for f in run["failed"]] == [2] and not (tmp_path / "r" / "results.ndjson").exists()
    with pytest.raises(ScreenError, match="already holds a run"):
        run_screen(export, tmp_path / "r", as_of=AS_OF, jobs=1, partitions=3)
    with pytest.raises(ScreenError, match="other options"):
        run_screen(export, tmp_path / "r", as_of=date(2025, 1, 1), jobs=1, partitions=3, resume=True)
    calls.clear()
    broken.clear()
    run = run_screen(export, tmp_path / "r", as_of=AS_OF, jobs=1, resume=True)     # the run's own 3 partitions
    assert calls == [2] and run["failed"] == [] and run["totals"]["screened"] == N
    resumed = (tmp_path / "r" / "results.ndjson").read_text().splitlines()
    assert sorted(resumed) == sorted((baseline / "results.ndjson").read_text().splitlines())


def test_the_summary_counts_and_lists(baseline):
    page = (baseline / "summary.html").read_text()
    assert "<svg" in page and "Patients needing action" in page and "Drug classes" in page
    counts = list(csv.DictReader((baseline / "summary.csv").open()))
    tiers = {c["id"]: int(c["count"]) for c in counts if c["section"] == "tier"}
    every = rows(baseline)
    assert sum(tiers.values()) == sum(r["status"] == "assessed" for r in every)
    actions = list(csv.DictReader((baseline / "needs-action.csv").open()))
    assert [a["patient"] for a in actions] == [r["patient"] for r in every if r["needs_action"]]
    for a in actions:
        assert f"<td>{a['patient']}</td>" in page


def test_the_progress_line_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        p = Progress(stream)
        p.screening(0, 100)
        p.screening(50, 100)
        p.screening(100, 100)
        p.close()
    assert pipe.getvalue() == ""
    assert "100/100 patients (100%)" in tty.getvalue() and "/s" in tty.getvalue() and "ETA" in tty.getvalue()
    assert tty.getvalue().startswith("\r") and tty.getvalue().endswith("\n")


def test_the_command_line(export, tmp_path, capsys):
    assert cli_main(["screen", str(export), "--out", str(tmp_path / "r"), "--as-of", "2025-06-30", "--jobs", "1",
                     "--only-alerts"]) == 0
    assert "patients screened" in capsys.readouterr().out
    assert cli_main(["screen", str(tmp_path / "missing"), "--out", str(tmp_path / "q")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["screen", str(export), "--out", str(tmp_path / "q"), "--jobs", "2", "--dask", "local"])


def test_the_benchmark_runs(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "screen.py"), "--patients", "12", "--modes", "1",
                        "--json"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)["screen"]
    assert out[0]["patients"] == 12 and out[0]["patients_per_second"] > 0 and out[0]["rss_worker_max_mb"] > 0


def test_an_export_read_in_stripes_is_the_export_read_whole(export, tmp_path):
    """Stripes cut files at line boundaries, so every line lands once in its patient's partition with
    its own line number, and bad lines are reported at the same file and line."""
    from leukodx.cli.bulk import partition_export, plan_stripes, read_partition
    _bad_export(export, tmp_path / "bad")
    whole = partition_export(tmp_path / "bad", tmp_path / "w1", 3, stripes=1)
    striped = partition_export(tmp_path / "bad", tmp_path / "w7", 3, stripes=7)
    assert len(plan_stripes(sorted((tmp_path / "bad").iterdir()), 7)) >= 5     # the files were really cut
    assert max(len(p) for p in striped.parts) > 1
    assert [sorted(read_partition(p)) for p in striped.parts] == [sorted(read_partition(p)) for p in whole.parts]
    problems = lambda plan: sorted((p.file, p.line, p.kind) for p in plan.problems)  # noqa: E731
    assert problems(striped) == problems(whole) and len(problems(whole)) == 3
    assert (striped.problem_counts, striped.resources, striped.patients_per_part, striped.bytes_read) == \
        (whole.problem_counts, whole.resources, whole.patients_per_part, whole.bytes_read)


class _Blind:
    """An executor of 2 workers (run here) that do not see the paths in ``hidden``, as Dask workers on
    other machines may not."""
    hidden: tuple[str, ...] = ()
    submitted: list[str] = []

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        def submit(fn, tasks):
            _Blind.submitted += [fn.__name__] * len(tasks)
            for t in tasks:
                yield t, fn(t), None

        def sees(path):
            return not any(path.startswith(h) for h in _Blind.hidden)
        return "blind", 2, submit, sees

    def __exit__(self, *exc):
        return None


def test_workers_that_cannot_see_the_export_leave_the_read_to_the_command(export, baseline, tmp_path, monkeypatch):
    monkeypatch.setattr("leukodx.cli.screen.Executor", _Blind)
    monkeypatch.setattr(_Blind, "hidden", (str(export.resolve()),))
    monkeypatch.setattr(_Blind, "submitted", [])
    run_screen(export, tmp_path / "r", as_of=AS_OF, partitions=4)
    assert "stripe_task" not in _Blind.submitted and "screen_partition" in _Blind.submitted
    assert (tmp_path / "r" / "results.ndjson").read_bytes() == (baseline / "results.ndjson").read_bytes()

    monkeypatch.setattr(_Blind, "hidden", ())       # they see it: they read it, in stripes
    monkeypatch.setattr(_Blind, "submitted", [])
    run_screen(export, tmp_path / "r2", as_of=AS_OF, partitions=4)
    assert "stripe_task" in _Blind.submitted
    assert (tmp_path / "r2" / "results.ndjson").read_bytes() == (baseline / "results.ndjson").read_bytes()


def test_workers_that_cannot_see_the_results_folder_stop_the_run_with_a_clear_error(export, tmp_path, monkeypatch):
    monkeypatch.setattr("leukodx.cli.screen.Executor", _Blind)
    monkeypatch.setattr(_Blind, "hidden", (str((tmp_path / "r").resolve()),))
    with pytest.raises(ScreenError, match="do not see"):
        run_screen(export, tmp_path / "r", as_of=AS_OF, partitions=4)


def test_a_read_task_that_fails_stops_the_run_with_a_clear_error(export, tmp_path, monkeypatch):
    class Failing(_Blind):
        def __enter__(self):
            mode, workers, submit, sees = super().__enter__()

            def failing(fn, tasks):
                if fn.__name__ == "stripe_task":
                    for t in tasks:
                        yield t, None, "BrokenProcessPool: a worker died"
                    return
                yield from submit(fn, tasks)
            return mode, workers, failing, sees
    monkeypatch.setattr("leukodx.cli.screen.Executor", Failing)
    monkeypatch.setattr(_Blind, "hidden", ())
    with pytest.raises(ScreenError, match="reading stripe 0 of the export failed: BrokenProcessPool"):
        run_screen(export, tmp_path / "r", as_of=AS_OF, partitions=4)
