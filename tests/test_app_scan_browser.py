"""The Scan and Sweep tabs in a real browser (Debian Chromium through playwright): a scan of a few
images shows its results, a small sweep fills its heatmaps, the console stays clean; screenshots at
1280x720 go to test-artifacts/."""
from __future__ import annotations

import time

import pytest

from test_app_browser import ARTIFACTS

pytestmark = pytest.mark.browser
# Sets the widgets whose titles are given (those of the open tab), returns how many it set.
JS_SET_BY_TITLE = """(values) => {
  let n = 0;
  for (const m of Bokeh.documents[0]._all_models.values())
    if (m.title in values && 'value' in m) { m.value = values[m.title]; n += 1; }
  return n;
}"""
JS_TITLES = """() => {
  const out = [];
  for (const m of Bokeh.documents[0]._all_models.values())
    if (m.constructor.__name__ === 'Title' && m.text) out.push(m.text);
  return out;
}"""


def wait_for(predicate, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def screenshots(page, name: str) -> None:
    """The tab as a person sees it at 1280x720, and the whole page (what is below the fold)."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}-1280x720.png"), full_page=True)


def test_the_scan_tab_scans_a_few_images_and_the_sweep_tab_fills_its_heatmaps(server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    try:
        console = []
        page.on("console", lambda m: console.append((m.type, m.text)))
        page.on("pageerror", lambda e: console.append(("error", str(e))))
        # A link that opens the Scan tab (the Relaxation tab's views are then never drawn in this page).
        page.goto(server.url + "?t_free=30&t_nudge=10&tab=scan", timeout=90_000)
        page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=90_000)

        wait_for(lambda: page.evaluate(JS_SET_BY_TITLE, {"Images": 6, "Batch size": 3}) == 2,
                 what="the Scan tab's widgets")
        # No wait before the click: Panel applies a session's pending value changes before its next event.
        page.get_by_role("button", name="Scan", exact=True).click()
        wait_for(lambda: page.get_by_text("Scanned 6 images").count() > 0, what="the scan to finish")
        wait_for(lambda: "Steps to tolerance (converged images)" in page.evaluate(JS_TITLES),
                 what="the steps histogram")
        wait_for(lambda: page.get_by_role("button", name="Scan", exact=True).is_enabled(),
                 what="the Scan button to come back")
        wait_for(lambda: page.get_by_text("Median spectral radius").count() == 1,
                 what="the spectral radius note")
        assert page.get_by_text("Accuracy:").count() == 1
        screenshots(page, "scan-tab")

        page.get_by_text("Sweep", exact=True).first.click()
        wait_for(lambda: page.evaluate(JS_SET_BY_TITLE, {"Images (K)": 2}) == 1, what="the Sweep tab's widgets")
        values = page.locator("input[placeholder='e.g. 2,4,6']")
        values.nth(0).fill("2,6")
        values.nth(0).press("Enter")
        values.nth(1).fill("0.1,0.5")
        values.nth(1).press("Enter")
        page.get_by_role("button", name="Run sweep").click()
        wait_for(lambda: page.get_by_text("Done: 4 of 4 cells").count() > 0, what="the sweep to finish")
        wait_for(lambda: page.get_by_role("button", name="Run sweep").is_enabled(),
                 what="the Run sweep button to come back")
        titles = page.evaluate(JS_TITLES)
        assert "Fraction converged (free)" in titles and "Accuracy" in titles, titles
        screenshots(page, "sweep-tab")
        assert [text for kind, text in console if kind == "error"] == [], console
    finally:
        page.close()
