"""End-to-end: the clinician page in a real headless Chromium (Debian's package), driven by Playwright.

Three cases from cases/ are typed into the form; the result must show the tier, the top cause, a
source link and the chart. A screenshot of each result is saved to .artifacts/web/. An invalid unit
must show its error beside the field.

Chromium is looked for in LEUKODX_CHROMIUM, then as `chromium` or `chromium-browser` on PATH (Debian's
package, which .ci/run installs), then as Playwright's own downloaded build. Where one is found the
tests run, and a browser that does not start is a failure, never a skip; Playwright is a test
dependency, so a missing one is an import error. Only a machine with no Chromium at all skips them,
with the reason in pytest's summary (`-rs` is in the project's addopts)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import httpx
import playwright.sync_api as playwright_api
import pytest
import yaml

from conftest import CASES, ROOT, free_port, start_server, stop_server


def find_chromium() -> Optional[str]:
    given = os.environ.get("LEUKODX_CHROMIUM")
    if given:
        return given                      # named on purpose: used as given, so a wrong path fails loudly
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    with playwright_api.sync_playwright() as p:     # `playwright install chromium` puts one in its cache
        bundled = p.chromium.executable_path
    return bundled if bundled and Path(bundled).exists() else None


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: not in LEUKODX_CHROMIUM, not `chromium` or "
                                "`chromium-browser` on PATH, not installed by Playwright (.ci/run installs Debian's)")
SHOTS = ROOT / ".artifacts" / "web"
CASE_FILES = ["thiopurine/tpmt-poor-azathioprine-severe-neutropenia.yaml",
              "benign/duffy-null-stable-mild-isolated.yaml",
              "drugs/bactrim-agranulocytosis-day-24.yaml"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    proc = start_server(port, f"sqlite:///{tmp_path_factory.mktemp('db')}/fb.db",
                        LEUKODX_CDS_AUTH="off", LEUKODX_LOG_LEVEL="WARNING")
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


@pytest.fixture(scope="module")
def page(server):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                                          "--disable-background-networking", "--disable-component-update",
                                          "--disable-sync"])
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        yield pg
        browser.close()


def local_time(value) -> str:
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text.replace("+00:00", "").replace("Z", "")[:16]


def fill_case(page, server: str, case: dict) -> None:
    page.goto(server + "/")
    page.wait_for_selector("#labs tbody tr")
    p = case.get("patient", {})
    if "age_years" in p:
        page.fill("#age", str(p["age_years"]))
    page.select_option("#sex", p.get("sex", "unknown"))
    if p.get("weight_kg"):
        page.fill("#weight", str(p["weight_kg"]))
    if p.get("duffy_null") is not None:
        page.select_option("#duffy", "true" if p["duffy_null"] else "false")
    if case.get("as_of"):
        page.fill("#as_of", str(case["as_of"])[:10])
    rows = page.locator("#labs tbody tr")
    for i, lab in enumerate(case["labs"]):
        if i >= rows.count():
            page.click("#add-lab")
        row = rows.nth(i)
        row.locator(".lab-test").select_option(lab["test"])
        row.locator(".lab-value").fill(str(lab["value"]))
        row.locator(".lab-unit").fill(lab["unit"])
        if lab.get("time"):
            row.locator(".lab-time").fill(local_time(lab["time"]))
    for i, med in enumerate(case.get("medications", [])):
        if i >= page.locator("#meds tbody tr").count():
            page.click("#add-med")
        row = page.locator("#meds tbody tr").nth(i)
        row.locator(".med-name").fill(med["name"])
        row.locator(".med-status").select_option(med.get("status", "active"))
        if med.get("start"):
            row.locator(".med-start").fill(str(med["start"])[:10])
    h = case.get("history", {})
    for key, sel in (("tpmt", "#tpmt"), ("nudt15", "#nudt15")):
        if h.get(key):
            page.fill(sel, str(h[key]))
    if h.get("temperature_c") is not None:
        page.fill("#temperature", str(h["temperature_c"]))
    if h.get("conditions"):
        page.fill("#conditions", "\n".join(h["conditions"]))


@pytest.mark.parametrize("name", CASE_FILES)
def test_a_clinician_assesses_a_case_through_the_form(page, server, name):
    case = yaml.safe_load((CASES / name).read_text())
    fill_case(page, server, case)
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden]) #tier")
    expect = case["expect"]
    assert f"Risk tier: {expect['risk_tier']}" in page.inner_text("#tier")
    titles = {c["id"]: c["title"] for c in httpx.get(server + "/v1/causes").json()}
    assert titles[expect["top_cause"]] in page.inner_text("#causes li:first-child")
    assert page.locator("a.source-link").count() > 0
    assert page.locator("#chart svg polyline").count() > 0 and page.locator("#chart .tier-band").count() > 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{Path(name).stem}.png"), full_page=True)


def test_an_invalid_unit_shows_its_error_beside_the_field(page, server):
    page.goto(server + "/")
    page.wait_for_selector("#labs tbody tr")
    row = page.locator("#labs tbody tr").first
    row.locator(".lab-value").fill("3.1")
    row.locator(".lab-unit").fill("furlongs")
    page.click("#submit")
    playwright_api.expect(row.locator(".field-error[data-for=unit]")).to_contain_text("furlongs")
    assert row.locator(".lab-unit").get_attribute("aria-invalid") == "true"
    assert page.locator("#result").is_hidden()


def test_the_page_uses_no_outside_resources(page, server):
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(server) else None)
    page.goto(server + "/")
    page.wait_for_selector("#labs tbody tr")
    assert outside == []


def test_a_history_error_shows_beside_its_field(page, server):
    page.goto(server + "/")
    page.wait_for_selector("#labs tbody tr")
    page.locator("#labs tbody tr").first.locator(".lab-value").fill("3.1")
    page.fill("#tpmt", "*99/*99")
    page.click("#submit")
    playwright_api.expect(page.locator("#tpmt + .field-error")).to_contain_text("diplotype")
    assert page.get_attribute("#tpmt", "aria-invalid") == "true"


def test_readable_at_200_percent_zoom(page, server):
    """A 600 px wide viewport is what a 1200 px screen shows at 200% zoom: nothing may need sideways scrolling."""
    page.set_viewport_size({"width": 600, "height": 900})
    try:
        page.goto(server + "/")
        page.wait_for_selector("#labs tbody tr")
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    finally:
        page.set_viewport_size({"width": 1200, "height": 900})
