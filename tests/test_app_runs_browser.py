"""The page's stored runs in a real browser: the Runs list, Save run and Open run; runs A and B.

Uses the server and Chromium set-up of ``test_app_browser.py``; the tests share one page.
"""
from __future__ import annotations

import re

import pytest

from test_app_browser import Watched

pytestmark = pytest.mark.browser

# The Runs list's Bokeh model (Panel's CustomSelect): its options as run ids, and the chosen one.
JS_RUNS = """() => {
  for (const m of Bokeh.documents[0]._all_models.values())
    if (m.title === 'Runs' && Array.isArray(m.options))
      return {options: m.options.map((o) => Array.isArray(o) ? o[0] : o), value: m.value};
  return null;
}"""
# Choose a run, as a person picking it from the list would.
JS_PICK_RUN = """(id) => {
  for (const m of Bokeh.documents[0]._all_models.values())
    if (m.title === 'Runs' && Array.isArray(m.options)) { m.value = id; return true; }
  return false;
}"""

# The residual switch, set as a person ticking it would.
JS_SET_RESIDUAL = """(on) => {
  for (const m of Bokeh.documents[0]._all_models.values())
    if (m.label === 'Residual' && 'active' in m) { m.active = on; return true; }
  return false;
}"""


def energy_runs(w, name: str = "explorer.energy.free") -> set:
    return set(w.sources().get(name, {}).get("run") or [])


@pytest.fixture(scope="module")
def page(server, browser):  # noqa: F811
    w = Watched(browser, server.url)
    try:
        yield w
    finally:
        w.page.close()


def test_runs_are_listed_drawn_again_saved_and_opened(page, tmp_path):
    w = page
    w.wait_for(w.all_drawn, what="the first run")
    w.wait_for(lambda: (w.page.evaluate(JS_RUNS) or {}).get("options"), what="the first run to be listed")
    (first,) = energy_runs(w)
    assert w.page.evaluate(JS_RUNS) == {"options": [first], "value": first}
    w.move_slider("0.15", 3)     # beta 0.18: a second run
    w.wait_for(lambda: len(w.page.evaluate(JS_RUNS)["options"]) == 2 and w.all_drawn()
               and energy_runs(w) != {first}, what="the second run to be listed")
    (second,) = energy_runs(w)
    assert w.page.evaluate(JS_RUNS) == {"options": [second, first], "value": second}   # newest first

    # Choosing the first run draws it again in every view.
    assert w.page.evaluate(JS_PICK_RUN, first)
    w.wait_for(lambda: energy_runs(w) == {first} and w.all_drawn(), what="the first run drawn again")
    assert all(b == pytest.approx(0.15) for b in w.sources()["explorer.energy.free"]["run_beta"])

    # Save run downloads the shown run's file; Open run brings it back.
    with w.page.expect_download(timeout=60_000) as info:
        w.page.get_by_role("button", name="Save run").click()
    path = tmp_path / "saved.parquet"
    info.value.save_as(path)
    assert info.value.suggested_filename == f"run-{first}.parquet" and path.stat().st_size > 1000
    w.page.evaluate(JS_PICK_RUN, second)
    w.wait_for(lambda: energy_runs(w) == {second}, what="the second run drawn again")
    upload = w.page.locator("input[type=file][accept='.parquet']")
    upload.set_input_files(str(path))
    w.wait_for(lambda: energy_runs(w) == {first} and w.all_drawn(), what="the opened file's run")

    # A file that is not a run: one clear message, and the page keeps serving.
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not a run")
    upload.set_input_files(str(bad))
    w.wait_for(lambda: w.page.get_by_text("could not open bad.parquet").count() > 0,
               what="the message about the bad file")
    w.move_slider("0.18", 2)      # beta 0.20: a new run is drawn live
    w.wait_for(lambda: len(w.page.evaluate(JS_RUNS)["options"]) == 3 and w.all_drawn(),
               what="a new run after the bad file")
    assert all(b == pytest.approx(0.2) for b in w.sources()["explorer.energy.free"]["run_beta"])
    assert w.errors() == [], w.console


# A's data in the compared views while B streams (explorer.<view>.pinned...: see View.draw_pinned).
PINNED_SOURCES = ("explorer.energy.pinned0.free", "explorer.trajectories.pinned0", "explorer.residual.pinned",
                  "explorer.nudge.pinned.nudged+")


def test_pin_a_switch_residual_off_and_b_is_drawn_over_a_with_the_differences(page):
    w = page
    w.wait_for(lambda: w.all_drawn() and len(energy_runs(w)) == 1, what="a finished run on screen")
    (a,) = energy_runs(w)
    w.page.get_by_role("button", name="Pin this run as A").click()
    hint = w.page.get_by_text("A is run")
    w.wait_for(lambda: hint.count() > 0, what="A pinned")
    assert f"A is run {a}" in hint.first.inner_text()
    assert w.page.evaluate(JS_SET_RESIDUAL, False)                       # the paper's question

    def b_over_a():
        b = energy_runs(w)
        src = w.sources()
        return (b and a not in b and energy_runs(w, PINNED_SOURCES[0]) == {a} and w.all_drawn()
                and all(src.get(n, {}).get("rows", 0) > 0 for n in PINNED_SOURCES))
    w.wait_for(b_over_a, what="B drawn over A in the energy, step-size, residual and nudged views")
    table = w.page.locator("table.compare")
    w.wait_for(lambda: table.locator("tr.differs", has_text="residual").count() == 1, what="the differences")
    text = table.inner_text()
    assert "A (pinned)" in text and "steps to tolerance" in text and "spectral radius" in text
    verdict = w.page.locator(".verdict").first.inner_text()
    named = re.findall(r"slowest layer (\w+)", verdict)
    assert named and all(re.fullmatch(r"s\d+|y", n) for n in named), verdict

    w.page.get_by_role("button", name="Pin this run as A").click()      # unpin: A leaves the views
    w.wait_for(lambda: not any(w.sources().get(n, {}).get("rows", 0) for n in PINNED_SOURCES),
               what="A's data gone after unpinning")
    assert w.errors() == [], w.console
