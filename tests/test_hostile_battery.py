"""The hostile battery (bench/hostile_battery.py) in a tiny configuration: one round of the catalogue
against `leukodx serve --workers 2` with CDS auth on, so it cannot rot. Counts only; no timing
is asserted beyond the battery's own definition of a /healthz stall."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_hostile_battery_tiny():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "hostile_battery.py"), "--workers", "2", "--rounds", "1",
                          "--threads", "4", "--idle", "6", "--json"],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode in (0, 1), out.stderr[-3000:]
    result = json.loads(out.stdout)["results"][0]
    assert result["requests"] >= 80
    counts = {k: result[k] for k in ("5xx", "crashes", "unreachable", "healthz_stalls_over_1s",
                                     "outbound_to_forbidden_listener", "tokens_accepted_twice",
                                     "wrong_audience_accepted")}
    assert counts == dict.fromkeys(counts, 0), (counts, result["five_xx"], result["twice"])
