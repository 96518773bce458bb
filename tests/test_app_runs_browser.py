"""The page's stored runs in a real browser: the Runs list, Save run and Open run.

Uses the server and Chromium set-up of ``test_app_browser.py``.
"""
from __future__ import annotations

import pytest

from test_app_browser import Watched, browser, server  # noqa: F401  (fixtures)

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


def energy_runs(w) -> set:
    return set(w.sources().get("explorer.energy.free", {}).get("run") or [])


def test_runs_are_listed_drawn_again_saved_and_opened(server, browser, tmp_path):  # noqa: F811
    w = Watched(browser, server.url)
    try:
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
    finally:
        w.page.close()
