"""The Scan and Sweep tabs driven from Python (issue 17, page side): what they show is what the
engine computes on the same images and settings; bad grids run nothing; a cancelled sweep keeps its
finished cells; a click on a failing image or a heatmap cell sets the Relaxation tab."""
from __future__ import annotations

import math
import threading
import time

import panel as pn
import pytest

from explorer import native
from explorer.app import ExplorerState
from explorer.app import sweep_tab as sweep_mod
from explorer.app.charts import percent
from explorer.app.jobs import JobWorker
from explorer.app.scan_tab import ScanTab
from explorer.app.state import net_with_alpha
from explorer.app.sweep_tab import SweepTab, csv_text
from explorer.scan import ScanSettings, scan, scan_images
from explorer.zoo import list_entries

SHORT = dict(t_free=25, t_nudge=8)


@pytest.fixture(autouse=True)
def eager_kernels():
    """Use the eager tensor code rather than wait for a build of the fused kernels (a server does the same)."""
    native.set_blocking(False)
    yield
    native.set_blocking(True)


def presentation_sizes(chart) -> dict:
    """The chart as the page draws it: its width, smallest tick-label size (px) of its axes and colour
    bars, and the longest title line's estimated width (0.6 em a character at its font size)."""
    import holoviews as hv
    from bokeh.models import ColorBar
    fig = hv.render(chart, backend="bokeh")
    bars = [m for m in (*fig.right, *fig.left, *fig.below) if isinstance(m, ColorBar)]
    ticks = [float(str(m.major_label_text_font_size).rstrip("px")) for m in (*fig.xaxis, *fig.yaxis, *bars)]
    title_px = float(str(fig.title.text_font_size).rstrip("px"))
    return {"width": fig.width, "tick": min(ticks),
            "title": max(len(line) for line in fig.title.text.split("\n")) * 0.6 * title_px}


def assert_presentable(chart, what: str) -> None:
    # Presentation mode: tick labels for the back of a room (issue 18, item 5) and no title cut at the
    # figure's edge (it runs from the plot area's left, at least 60 px in).
    sizes = presentation_sizes(chart)
    assert sizes["tick"] >= 16, f"{what}: tick labels of {sizes['tick']} px"
    assert sizes["title"] <= sizes["width"] - 60, f"{what}: title of {sizes['title']} px in {sizes['width']} px"


def untrained_state(**settings) -> ExplorerState:
    return ExplorerState(model="untrained resnet", zoo=[], trained=[], **{**SHORT, **settings})


def page_tabs(tab) -> pn.Tabs:
    """The page's tabs as the page builds them, showing the tab under test."""
    tabs = pn.Tabs(("Relaxation", pn.pane.HTML("relaxation")), ("Other", tab))
    tabs.active = 1
    tab.page_tabs = tabs
    return tabs


# ---------------------------------------------------------------------------------------------
# Scan
# ---------------------------------------------------------------------------------------------

def test_scan_tab_shows_the_numbers_of_scan_on_the_same_images():
    state = untrained_state(alpha=4.0, beta=0.2)
    tab = ScanTab(state)
    tab.__panel__()
    tab.n_images.value, tab.batch_size.value, tab.tol.value = 7, 4, 1e-3
    assert tab.start()
    assert tab.start_button.disabled and not tab.cancel_button.disabled
    tab.wait()
    assert tab.message.visible is False, tab.message.object

    net = net_with_alpha(state.base_network(), 4.0)
    x, labels, _ = scan_images(net, 7)
    expected = scan(net, x, labels, ScanSettings(beta=0.2, tol=1e-3, **SHORT), batch_size=4).summary()
    shown = tab.result.summary()
    table = tab.phase_table.object
    assert list(table["phase"]) == ["free", "nudged+", "nudged-"]
    assert list(table["fraction converged"]) == [expected["fraction_converged"][p] for p in table["phase"]]
    for p, v in zip(table["phase"], table["median steps to tol"]):
        assert (math.isnan(v) and expected["median_steps"][p] is None) or v == expected["median_steps"][p]
    assert f"Accuracy: <b class='scan-accuracy'>{percent(expected['accuracy'])}</b>" in tab.overview.object
    assert tab.overview.object.count("tol = ") == 1 and "tol = 0.001" in tab.overview.object   # the scan's own
    bars = tab.classes_plot.object.data
    assert dict(zip(bars["verdict"], bars["images"])) == expected["classes"]
    if expected["blamed_layers"]:
        layers = tab.layers_plot.object.data
        assert dict(zip(layers["layer"], layers["images"])) == expected["blamed_layers"]
    hist = tab.steps_plot.object.get(0).data
    assert list(hist["images"]) == expected["steps_histogram"]["free"]["counts"]
    assert shown["classes"] == expected["classes"]
    # the spectral radius at each image's free fixed point: its median and a histogram
    assert f"{expected['spectral_radius']['median']:.4f}" in tab.radius_note.object and tab.plot_boxes[3].visible
    # the gallery: every failure, most severe first
    failures = tab.result.failures()
    assert [i for i, _ in tab.gallery_buttons] == [o.index for o in failures]
    assert f"{len(failures)}" in tab.gallery_head.object
    assert not tab.start_button.disabled and tab.cancel_button.disabled and not tab.progress.visible
    # Presentation mode (the page sets it): the same charts drawn again, larger, with large fonts.
    tab.present = True
    for what in ("steps_plot", "classes_plot", "layers_plot", "radius_plot"):
        assert_presentable(getattr(tab, what).object, what)
    bars = tab.classes_plot.object.data
    assert dict(zip(bars["verdict"], bars["images"])) == expected["classes"]
    tab.present = False
    assert presentation_sizes(tab.classes_plot.object)["width"] == 380


def test_a_click_on_a_failing_image_opens_it_in_the_relaxation_tab_with_the_scan_settings():
    # A tolerance no image meets in 25 steps: every image fails, so the gallery has all of them.
    state = untrained_state(alpha=3.0, beta=0.3)
    tab = ScanTab(state)
    tabs = page_tabs(tab)
    tab.n_images.value, tab.tol.value = 5, 1e-9
    assert tab.start()
    tab.wait()
    assert len(tab.gallery_buttons) == 5
    index, button = tab.gallery_buttons[-1]
    state.param.update(alpha=7.5, beta=0.1, t_free=90, sample=0)    # changed after the scan
    button.clicks += 1
    assert state.sample == index and index != 0
    assert (state.alpha, state.beta, state.t_free, state.t_nudge) == (3.0, 0.3, 25, 8)
    assert tabs.active == 0


def test_a_scan_refuses_bad_settings_and_a_second_job():
    state = untrained_state()
    tab = ScanTab(state)
    tab.tol.value = 0
    assert not tab.start()
    assert "tolerance = 0" in tab.message.object and not tab.worker.busy
    tab.tol.value = 1e-3
    gate = threading.Event()
    tab.worker.submit(lambda put, should_stop: gate.wait(60))    # another job of this page, still running
    assert not tab.start()
    assert "already running" in tab.message.object
    gate.set()
    tab.wait()
    tab.n_images.value = 3
    assert tab.start()
    tab.wait()
    assert len(tab.result.outcomes) == 3 and not tab.message.visible


# ---------------------------------------------------------------------------------------------
# Sweep
# ---------------------------------------------------------------------------------------------

def sweep_tab(state, axes, k=3, worker=None) -> SweepTab:
    tab = SweepTab(state, worker=worker)
    tab.__panel__()
    tab.k_images.value = k
    for i, (name, values) in enumerate([*axes, ("(none)", "")][:3]):
        tab.axis_names[i].value, tab.axis_values[i].value = name, values
    return tab


@pytest.mark.parametrize("axes, words", [
    ([("alpha", "2,abc"), ("beta", "0.1")], "alpha = 'abc' is not a number"),
    ([("alpha", "2,4"), ("beta", "0.1,1.5")], "beta = 1.5 is not allowed here"),
    ([("alpha", "2,4"), ("depth", "3,40")], "depth = '40' is outside 1 to 25"),
    ([("alpha", "2,4"), ("beta", "")], "grid axis beta has no values"),
    ([("alpha", "2,4")], "choose two or three axes"),
    ([("alpha", ",".join(str(a) for a in range(1, 41))), ("beta", "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")],
     "the grid has 400 cells"),
])
def test_a_bad_grid_gives_one_message_naming_the_value_and_runs_nothing(axes, words):
    tab = sweep_tab(untrained_state(), axes)
    if words == "the grid has 400 cells":   # exactly at the limit runs: one more value does not
        tab.axis_values[0].value += ",41"
        words = "the grid has 410 cells, more than 400"
    assert not tab.start()
    assert tab.message.visible and words in tab.message.object, tab.message.object
    assert not tab.worker.busy and tab.shown is None and tab.history == []


def test_a_depth_the_checkpoint_family_lacks_is_refused_before_running():
    entries = [e for e in list_entries() if e.name == "fmnist-plain3-ep"]
    assert entries, "the zoo ships fmnist-plain3-ep"
    state = ExplorerState(zoo=entries, trained=[], **SHORT)
    tab = sweep_tab(state, [("depth", "3,11"), ("residual", "off")])
    assert not tab.start()
    assert "no plain network of depth 11" in tab.message.object
    assert not tab.worker.busy and tab.history == []


def test_sweep_heatmaps_hold_each_cells_numbers_and_a_click_sets_the_relaxation_tab():
    state = untrained_state(beta=0.2)
    tab = sweep_tab(state, [("alpha", "2,6"), ("t_nudge", "4,8")])
    tabs = page_tabs(tab)
    assert tab.start()
    tab.wait()
    assert tab.estimate is not None and tab.estimate > 0
    (entry,) = tab.history
    result = entry["result"]
    assert not result.cancelled and len(result.cells) == 4
    for key, _, _ in sweep_mod.METRICS:
        rows = tab.pipes[(key, None)].data
        assert len(rows) == 4
        for x, y, v in rows:
            cell = next(c for c in result.cells if (f"{c['settings']['alpha']:g}", str(c['settings']['t_nudge']))
                        == (x, y))
            want = sweep_mod.metric_value(cell, key)
            assert (math.isnan(v) and math.isnan(want)) or v == want
    # Presentation mode: the heatmaps built again, larger, with large fonts, holding the same cells.
    tab.present = True
    for (key, third), pipe in tab.pipes.items():
        assert len(pipe.data) == 4
    for pane in tab.heatmaps.select(pn.pane.HoloViews):
        assert_presentable(pane.object, "heatmap")
    # the CSV export: one row per cell
    text = tab._csv_file().read().decode()
    assert text == csv_text(result) and len(text.strip().splitlines()) == 5
    # a click on the cell alpha = 6, t_nudge = 4
    state.param.update(alpha=1.0, beta=0.5, t_nudge=30)
    tab.taps[("accuracy", None)].event(x="6", y="4")
    assert (state.alpha, state.t_nudge, state.beta, state.t_free) == (6.0, 4, 0.2, 25)
    assert tabs.active == 0


def test_a_depth_residual_cell_opens_its_untrained_network_and_says_why_when_it_cannot():
    state = untrained_state()
    tab = sweep_tab(state, [("depth", "3,5"), ("residual", "on,off")], k=2)
    tab.apply_preset()
    assert (tab.axis_names[0].value, tab.axis_names[1].value) == ("depth", "residual")
    assert tab.axis_values[0].value == "3,5,7,9,11,13,15,17,19,21,23,25"
    tab.axis_values[0].value = "3,5"
    assert tab.start()
    tab.wait()
    assert len(tab.history[0]["result"].cells) == 4
    tab.taps[("converged_free", None)].event(x="5", y="off")
    assert (state.model, state.depth, state.residual) == ("untrained plain", 5, False)
    # the Relaxation tab's builder reaches the paper's depth 25 too
    assert tab.open_cell({**tab.history[0]["result"].cells[0]["settings"], "depth": 25})
    assert state.depth == 25


def test_a_checkpoint_keeps_its_depth_when_a_cell_is_opened_and_says_why():
    state = ExplorerState(zoo=[e for e in list_entries() if e.name == "fmnist-plain3-ep"], trained=[], **SHORT)
    assert state.model.startswith("zoo: fmnist-plain3-ep")
    tab = sweep_tab(state, [("depth", "3,5"), ("beta", "0.1")])
    model = state.model
    assert not tab.open_cell({"depth": 5, "residual": False, "alpha": 2.0, "beta": 0.1, "t_free": 25,
                              "t_nudge": 8, "schedule": "paper"}, {"model": model})
    assert "fixes the depth" in tab.message.object and state.model == model and state.depth == 3
    assert state.alpha == 2.0 and state.beta == 0.1


class CancelAfterFirstCell(JobWorker):
    """Cancels the job as its first cell is handed over: the sweep ends with exactly one cell."""

    def _put(self, event, owner=None) -> None:
        super()._put(event, owner)
        if event.get("kind") == "cell":
            self.cancel()


def test_a_cancelled_sweep_keeps_its_finished_cells():
    state = untrained_state()
    tab = sweep_tab(state, [("alpha", "2,4,6"), ("beta", "0.1,0.3")], worker=CancelAfterFirstCell())
    assert tab.start()
    tab.wait()
    (entry,) = tab.history
    result = entry["result"]
    assert result.cancelled and len(result.cells) == 1
    assert "Cancelled" in tab.status.object and "1 of 6 cells" in tab.status.object
    rows = tab.pipes[("converged_free", None)].data
    assert sum(not math.isnan(v) for _, _, v in rows) == 1 and len(rows) == 6
    assert len(tab._csv_file().read().decode().strip().splitlines()) == 2
    # the page can run the next sweep; both stay in the session's list
    tab.worker = JobWorker()
    assert tab.start()
    tab.wait()
    assert len(tab.history) == 2 and len(tab.history[1]["result"].cells) == 6
    assert len(tab.history_select.options) == 2
    tab.history_select.value = 0                   # showing the first again
    assert sum(not math.isnan(v) for _, _, v in tab.pipes[("converged_free", None)].data) == 1


def test_a_grid_above_a_minute_waits_for_confirmation(monkeypatch):
    monkeypatch.setattr(sweep_mod, "CONFIRM_SECONDS", 0.0)   # every grid is "long"
    tab = sweep_tab(untrained_state(), [("alpha", "2,4"), ("beta", "0.1")], k=2)
    assert tab.start()
    tab.wait()
    assert tab.confirm.visible and "Run it?" in tab.confirm_text.object
    assert tab.history == [] and tab.shown is None
    tab.confirm_button.clicks += 1
    tab.wait()
    assert not tab.confirm.visible and len(tab.history) == 1 and len(tab.history[0]["result"].cells) == 2


def test_three_axes_give_one_heatmap_per_value_of_the_third():
    tab = sweep_tab(untrained_state(), [("alpha", "2,4"), ("beta", "0.1"), ("schedule", "paper,synchronous")],
                    k=2)
    assert tab.start()
    tab.wait()
    assert {third for _, third in tab.pipes} == {"paper", "synchronous"}
    for (key, third), pipe in tab.pipes.items():
        assert len(pipe.data) == 2 and all(not math.isnan(v) for *_, v in pipe.data if key != "median_spectral_radius"
                                           and key != "median_steps_free")


def test_scan_and_sweep_share_the_pages_worker_without_taking_each_others_events():
    state = untrained_state()
    scan_tab = ScanTab(state)
    tab = sweep_tab(state, [("alpha", "2,4"), ("beta", "0.1,0.3")], k=2, worker=scan_tab.worker)
    assert tab.start()
    assert not scan_tab.start() and "already running" in scan_tab.message.object
    scan_tab.wait()                      # the scan tab's drain runs while the sweep runs ...
    assert scan_tab.result is None
    tab.wait()                           # ... and the sweep still gets every cell
    assert len(tab.history) == 1 and len(tab.history[0]["result"].cells) == 4


def test_a_job_steps_aside_while_the_pages_live_run_wants_the_cpu():
    """A sweep or scan waits between its steps while ``defer_to()`` holds (a relaxation the user just
    started on the page), and goes on once it does not."""
    from explorer.app.jobs import JobWorker
    live = threading.Event()        # set: the live run is over
    asked, done = [], []

    def defer():
        asked.append(1)
        return not live.is_set()

    worker = JobWorker(defer_to=defer, defer_limit=600)

    def job(put, should_stop):
        for _ in range(5):
            if should_stop():
                return
            done.append(1)
    try:
        worker.submit(job)
        deadline = time.monotonic() + 60
        while len(asked) < 20:                    # the job asked many times and made no step
            assert time.monotonic() < deadline, "the job never asked whether to wait"
            time.sleep(0.01)
        assert done == []
        live.set()
        while worker.busy:
            assert time.monotonic() < deadline + 60, "the job did not go on after the live run"
            time.sleep(0.01)
        assert len(done) == 5
    finally:
        worker.stop()


@pytest.mark.parametrize("present", [False, True])
def test_the_steps_histograms_legend_sits_beside_the_plot_not_over_the_bars(present):
    # Inside the plot (top right) the legend covered the bars near the budget's end and was seen to
    # slide off the plot's left edge after the layout moved; beside it, the plot area keeps its width.
    import holoviews as hv
    from bokeh.models import Legend

    from explorer.app import charts
    hist = {p: {"edges": [0, 10, 20, 30], "counts": [1, 0, 2]} for p in ("free", "nudged+", "nudged-")}
    fig = hv.render(charts.steps_histogram(hist, present), backend="bokeh")
    (legend,) = [m for m in fig.right if isinstance(m, Legend)]
    assert [i.label["value"] for i in legend.items] == ["free", "nudged+", "nudged-"]
    assert not [m for m in fig.center if isinstance(m, Legend)]
    size = charts.PRESENT_SIZE if present else charts.CHART
    assert fig.width == size["width"] + charts.LEGEND_ROOM[present]


def test_a_sweep_heatmaps_colour_bar_has_a_short_title_and_the_wheel_scrolls_the_page():
    # The rotated colour-bar title was the column name ("fraction_converged_free" shown as "onverged_free").
    import holoviews as hv
    from bokeh.models import ColorBar, WheelZoomTool

    from explorer.app import charts
    from explorer.app.sweep_tab import METRICS
    for key, title, _ in METRICS:
        fig = hv.render(charts.heatmap([("2", "0.1", 0.5)], "alpha", "beta", key, ["2"], ["0.1"], title,
                                       present=True), backend="bokeh")
        (bar,) = [m for m in fig.right if isinstance(m, ColorBar)]
        assert "_" not in bar.title and len(bar.title) <= 8, bar.title
        # and no wheel zoom: scrolling the page over a heatmap zoomed it instead
        assert not [t for t in fig.tools if isinstance(t, WheelZoomTool)], fig.tools


def test_the_scan_status_says_done_only_after_the_charts_and_gallery():
    # "Scanned 12 images" showed while the charts, gallery and Scan button came 2.5 s later.
    state = untrained_state(alpha=3.0, beta=0.3)
    tab = ScanTab(state)
    tab.__panel__()
    tab.n_images.value, tab.tol.value = 3, 1e-9          # every image fails: a gallery to draw
    order = []
    tab.status.param.watch(lambda e: order.append(("status", e.new)), "object")
    tab.gallery.param.watch(lambda e: order.append(("gallery", len(e.new))), "objects")
    tab.steps_plot.param.watch(lambda e: order.append(("charts", None)), "object")
    tab.start_button.param.watch(lambda e: order.append(("scan button", e.new)), "disabled")
    assert tab.start()
    tab.wait()
    kinds = [k for k, _ in order]
    done = next(i for i, (k, v) in enumerate(order) if k == "status" and "Scanned" in v)
    assert kinds.index("charts") < done and kinds.index("gallery") < done and order[-1] == ("scan button", False)
    statuses = [v for k, v in order[:done + 1] if k == "status"]
    assert "Drawing the results of 3 images" in statuses[-2]
