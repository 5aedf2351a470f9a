"""The hostile battery (bench/hostile_battery.py) in a tiny configuration: one round of the catalogue
against `leukodx serve --workers 2` with CDS auth on, so it cannot rot. Counts of errors only: no
timing is asserted (the battery's /healthz stalls count answers slower than 1 s together with
failed ones, so they are the benchmark's to report, not the test's)."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

MUST_BE_ZERO = ("5xx", "crashes", "unreachable", "outbound_to_forbidden_listener", "tokens_accepted_twice",
                "wrong_audience_accepted")


def test_hostile_battery_tiny():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "hostile_battery.py"), "--workers", "2", "--rounds", "1",
                          "--threads", "4", "--idle", "6", "--json"],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.stdout.strip(), out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert out.returncode == (0 if report["ok"] else 1), out.stderr[-3000:]   # 1 only when a count is not 0
    result = report["results"][0]
    assert result["requests"] >= 80
    counts = {k: result[k] for k in MUST_BE_ZERO}
    assert counts == dict.fromkeys(counts, 0), (counts, result["five_xx"], result["twice"])
