"""The served explorer in a real browser (Debian Chromium through playwright).

Starts ``panel serve app.py`` on a free port, opens it headless, and checks
through the page's Bokeh document that every view has drawn data, that
moving the beta slider with the keyboard starts a new run the nudged-versus-
free view shows, that the console stays clean and nothing is fetched from
outside the server, and that a closed tab's worker stops; and that the Train
tab trains, streams its loss and probe plots, and stops with its tab.
"""
from __future__ import annotations

import re
import time

import pytest
from bokeh.util.token import get_session_id

from explorer.app.served import ROOT

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts"

# Reads the explorer's data sources (named "explorer.<view>.<what>") from the page's Bokeh document.
JS_SOURCES = """() => {
  const out = {};
  if (!window.Bokeh || !Bokeh.documents.length) return out;
  for (const m of Bokeh.documents[0].all_models) {
    if (m.name && m.name.startsWith('explorer.') && m.data) {
      const cols = Object.keys(m.data);
      let rows = cols.length ? m.data[cols[0]].length : 0;
      if (m.data.image && m.data.image.length) {   // an image: count the cells drawn
        rows = 0;
        for (const v of m.data.image[0]) if (Number.isFinite(v)) rows += 1;
      }
      out[m.name] = {rows: rows,
                     run: m.data.run ? Array.from(m.data.run) : null,
                     run_beta: m.data.run_beta ? Array.from(m.data.run_beta) : null};
    }
  }
  return out;
}"""
JS_TITLES = """() => {
  const out = [];
  for (const m of Bokeh.documents[0].all_models)
    if (m.constructor.__name__ === 'Title' && m.text) out.push(m.text);
  return out;
}"""
# Every plotted view must hold data: one source per view. (The verdict is text: see verdicts_shown.)
VIEW_SOURCES = {"trajectories": "explorer.trajectories.stats", "energy": "explorer.energy.free",
                "residual": "explorer.residual.heat", "nudge": "explorer.nudge.nudged+",
                "feature maps": "explorer.nudge.map_diff", "output": "explorer.output.bars",
                "input": "explorer.output.input"}
FINAL_BADGES = ".verdict .badge.converged, .verdict .badge.not_converged, .verdict .badge.non_finite"


class Watched:
    """A page with its console messages and network requests recorded."""

    def __init__(self, browser, url, height=2700, width=1600):
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.console, self.failed, self.outside = [], [], []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.console.append(("error", str(e))))
        self.page.on("requestfailed", lambda r: self.failed.append(r.url))
        self.page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:"))
                     else self.outside.append(r.url))
        self.page.goto(url, timeout=90_000)
        self.page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=90_000)

    def sources(self):
        return self.page.evaluate(JS_SOURCES)

    def wait_for(self, predicate, timeout=60, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        rows = {k: v["rows"] for k, v in self.sources().items()}
        raise AssertionError(f"timed out waiting for {what}; rows per source: {rows}")

    def verdicts_shown(self) -> int:
        """Phases whose verdict (converged / not converged / non-finite) the verdict view shows."""
        return self.page.locator(FINAL_BADGES).count()

    def all_drawn(self, run: int | None = None) -> bool:
        return all_views_drawn(self.sources(), run) and self.verdicts_shown() == 3

    def errors(self):
        return [text for kind, text in self.console if kind == "error"]

    def move_slider(self, current: str, presses: int, key="ArrowRight"):
        """Move the slider whose handle shows ``current`` with the keyboard, as a person would."""
        handle = self.page.locator(f"[role=slider][aria-valuetext='{current}']")
        handle.first.focus()
        for _ in range(presses):
            self.page.keyboard.press(key)


def all_views_drawn(src: dict, run: int | None = None) -> bool:
    for name in VIEW_SOURCES.values():
        s = src.get(name)
        if not s or s["rows"] == 0:
            return False
    return run is None or set(src["explorer.energy.free"]["run"]) == {run}


def page_session_id(page) -> str:
    """The Bokeh session id of a served page, read from the token the server embedded in it."""
    token = re.search(r'"token"\s*:\s*"([^"]+)"', page.content())
    assert token, "the page holds no session token"
    return get_session_id(token.group(1))


def close_and_expect_log(server, page, what: str, within: float = 30.0) -> None:
    """Close a tab; the server must log "session <its id>: <what>" within ``within`` seconds.

    The server is shared by every browser test, so only this page's own line counts.
    """
    line = f"session {page_session_id(page)}: {what}"
    assert server.count(line) == 0, f"'{line}' logged before the tab was closed"
    page.close()
    deadline = time.monotonic() + within
    while server.count(line) == 0:
        assert time.monotonic() < deadline, f"no '{line}' within {within:.0f} s of closing the tab"
        time.sleep(0.2)


def test_served_app_draws_every_view_and_follows_the_beta_slider(server, browser):
    w = Watched(browser, server.url)
    try:
        w.wait_for(w.all_drawn, what="every view to draw its first run")
        src = w.sources()
        first_run = src["explorer.energy.free"]["run"][0]
        assert src["explorer.energy.free"]["run_beta"][0] == pytest.approx(0.15)
        assert w.page.get_by_text("Convergence verdict").count() >= 1
        verdict_text = w.page.locator(".verdict").inner_text()
        assert "free phase" in verdict_text and "converged" in verdict_text

        # Beta 0.15 -> 0.20 with five presses of the arrow key.
        w.move_slider("0.15", 5)

        def new_run_shown():
            titles = w.page.evaluate(JS_TITLES)
            nudge_titled = any("per layer and step (β = 0.2)" in t for t in titles)
            s = w.sources()
            runs = s["explorer.energy.nudged+"]["run"]
            return (nudge_titled and s["explorer.nudge.nudged+"]["rows"] > 0 and runs
                    and min(runs) > first_run and s)
        src = w.wait_for(new_run_shown, what="the nudged-versus-free view to show beta = 0.2")
        new_run = src["explorer.energy.nudged+"]["run"][0]
        assert all(b == pytest.approx(0.2) for b in src["explorer.energy.nudged+"]["run_beta"])
        w.wait_for(lambda: w.all_drawn(run=new_run), what="the new run to finish")
        ARTIFACTS.mkdir(exist_ok=True)
        w.page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)

        # The page's repaint shortcuts found the Bokeh internals they patch.
        assert sorted(w.page.evaluate("() => window.__explorer_patched")) == [
            "css_lookup", "font_size", "legend_position", "same_css"]
        # The page reports which views it shows, in its document, so the server can hold back the rest.
        shown = w.page.evaluate("""() => Bokeh.documents[0].get_model_by_name('explorer.visible').data.keys""")
        assert "energy" in shown and "*" not in shown, shown

        assert w.errors() == [], w.console
        assert w.failed == [], w.failed
        assert w.outside == [], w.outside
    finally:
        w.page.close()


def test_tabs_are_independent_and_a_closed_tab_stops_its_worker(server, browser):
    a = Watched(browser, server.url, height=1000)
    b = Watched(browser, server.url, height=1000)
    try:
        def in_sight_drawn(w):
            src = w.sources()
            return (all(src[f"explorer.energy.{p}"]["rows"] > 0 for p in ("free", "nudged+", "nudged-"))
                    and src["explorer.output.bars"]["rows"] > 0 and w.verdicts_shown() == 3)
        for w in (a, b):
            w.wait_for(lambda: in_sight_drawn(w), what="both tabs to draw what is in sight")
        run_a = a.sources()["explorer.energy.free"]["run"][0]
        b.move_slider("0.15", 2)   # beta 0.17 in tab b only
        b.wait_for(lambda: all(x == pytest.approx(0.17) for x in (b.sources()["explorer.energy.free"]["run_beta"] or [0])),
                   what="tab b to run with beta 0.17")
        # A 1000-pixel page does not show the nudged-versus-free view: the server holds the new
        # run back from it (it still shows beta 0.15) until the page scrolls to it.
        def nudge_title(w):
            return next(t for t in w.page.evaluate(JS_TITLES) if "per layer and step" in t)
        b.wait_for(lambda: b.verdicts_shown() == 3, what="tab b's run with beta 0.17 to end")
        assert "(β = 0.15)" in nudge_title(b)
        b.page.locator(".view-nudge").first.scroll_into_view_if_needed()
        b.wait_for(lambda: "(β = 0.17)" in nudge_title(b), what="the nudged-versus-free view to catch up once in sight")
        src_a = a.sources()
        assert src_a["explorer.energy.free"]["run"][0] == run_a
        assert all(x == pytest.approx(0.15) for x in src_a["explorer.energy.free"]["run_beta"])
        close_and_expect_log(server, b.page, "worker stopped")
        assert a.errors() == [], a.console
    finally:
        for w in (a, b):
            if not w.page.is_closed():
                w.page.close()


# The Train tab's widgets whose titles are unique on the page (the relaxation has its own T free, beta).
# Returns how many it set: the tab's widgets exist only once the tab has been opened.
JS_SET_BY_TITLE = """(values) => {
  let n = 0;
  for (const m of Bokeh.documents[0].all_models)
    if (m.title in values && 'value' in m) { m.value = values[m.title]; n += 1; }
  return n;
}"""


def test_the_train_tab_trains_and_streams_loss_and_probe_dynamics(server, browser):
    w = Watched(browser, server.url, height=1300)
    try:
        w.page.get_by_text("Train", exact=True).first.click()
        tiny = {"Training images": 256, "Test images": 64, "Width": 4, "Batch size": 32, "Epochs": 2}
        # No wait before the click: Panel applies a session's pending value changes before its next event.
        w.wait_for(lambda: w.page.evaluate(JS_SET_BY_TITLE, tiny) == len(tiny), what="the Train tab's widgets")
        w.page.get_by_role("button", name="Start").click()
        w.wait_for(lambda: w.sources().get("explorer.train.batches", {}).get("rows", 0) >= 4,
                   what="the loss plot to show batches")
        w.wait_for(lambda: w.sources().get("explorer.train.probe_steps", {}).get("rows", 0) > 0
                   and w.sources().get("explorer.train.probe_phi", {}).get("rows", 0) > 0,
                   what="the probe dynamics")
        w.wait_for(lambda: w.sources()["explorer.train.evals"]["rows"] == 2, timeout=90,
                   what="a test accuracy after each of the two epochs")
        w.wait_for(lambda: w.page.locator(".train-status .badge.train-done").count() == 1,
                   what="the status line to say the run finished")
        status = w.page.locator(".train-status").inner_text()
        assert "test accuracy" in status and "256 images" in status and "x4" in status, status
        assert w.errors() == [], w.console
        assert w.failed == [] and w.outside == [], (w.failed, w.outside)

        # A long run: closing the tab stops its training worker within seconds.
        w.page.evaluate(JS_SET_BY_TITLE, {"Epochs": 50})
        w.page.get_by_role("button", name="Start").click()
        w.wait_for(lambda: w.page.locator(".train-status .badge.train-running").count() == 1
                   and w.sources()["explorer.train.batches"]["rows"] > 0, what="the long run to train")
        close_and_expect_log(server, w.page, "training worker stopped")
    finally:
        if not w.page.is_closed():
            w.page.close()
