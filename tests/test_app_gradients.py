"""The EP against BPTT tab: the numbers of explorer.gradients for the run on screen."""
import pytest
import torch

from explorer.app.gradients_tab import GDU_HEIGHT, PARTS, GradientsTab
from explorer.app.state import ExplorerState, net_with_alpha
from explorer.gradients import ep_against_bptt


@pytest.fixture
def tab():
    state = ExplorerState(zoo=[], depth=2, t_free=25, t_nudge=8, beta=0.1)
    t = GradientsTab(state)
    yield t
    t.worker.stop()


def test_the_tab_shows_ep_against_bptt_for_the_run_on_screen(tab):
    # Before: what the button computes and about how long, and no empty headings or GDU list.
    assert "BPTT" in tab.status.object and "seconds" in tab.status.object
    assert not any(section.visible for section in tab.sections.values()) and not tab.gdu_section.visible
    assert tab.start()
    tab.wait()
    s = tab.state
    net = net_with_alpha(s.base_network(), s.alpha)
    expected = ep_against_bptt(net, s.samples.normalised(s.sample), s.samples.labels[s.sample:s.sample + 1],
                               beta=s.beta, t_free=s.t_free, t_nudge=s.t_nudge, schedule=s.schedule)
    # After: what was computed, for which run, over how many tensors, in how long ("done." said none of it).
    done = tab.status.object
    assert not tab.start_button.disabled and "centered and one-sided EP against BPTT" in done
    assert f"image {s.sample}" in done and f"{len(expected.parameters)} tensors" in done and " s." in done
    assert all(section.visible for section in tab.sections.values()) and tab.gdu_section.visible
    table = tab.tables["through the free phase"].object
    assert list(table["parameter"]) == list(expected.parameters)
    for name, row in zip(table["parameter"], table.to_dict("records")):
        for est in ("centered", "one_sided"):
            assert row[f"{est} cosine"] == pytest.approx(expected.parameters[name][est]["cosine"], abs=1e-4)
    for part in PARTS:
        assert len(tab.tables[part].object) == len(expected.parameters) and "lowest cosine" in tab.notes[part].object
    assert "bptt cosine" in tab.tables["budget against converged"].object.columns
    assert tab.gdu_parameter in tab.results["gdu"].units and tab.gdu_plot.object is not None
    assert len(tab.gdu_plot.object) == 2 * len(tab.results["gdu"].units[tab.gdu_parameter])
    # Presentation mode (the page sets it): the GDU plot drawn again with large fonts, its legend below
    # the curves (beside them it squeezed the plot on a 1024-px projector), the same curves.
    import holoviews as hv
    from bokeh.models import Legend
    tab.present = True
    fig = hv.render(tab.gdu_plot.object, backend="bokeh")
    assert min(float(str(a.major_label_text_font_size).rstrip("px")) for a in (*fig.xaxis, *fig.yaxis)) >= 16
    assert [m for m in fig.below if isinstance(m, Legend)] and not [m for m in fig.right if isinstance(m, Legend)]
    assert len(tab.gdu_plot.object) == 2 * len(tab.results["gdu"].units[tab.gdu_parameter])
    assert tab.gdu_plot.height > GDU_HEIGHT[False]
    # Scrolling the page over the chart zoomed it out (HoloViews' wheel zoom, active by default).
    from bokeh.models import WheelZoomTool
    for present in (True, False):
        tab.present = present
        fig = hv.render(tab.gdu_plot.object, backend="bokeh")
        assert not [t for t in fig.tools if isinstance(t, WheelZoomTool)], fig.tools
    # An entry's EP and BPTT curves share a colour (EP solid, BPTT dashed), and entries differ.
    colors = {}
    for r in fig.renderers:
        label = next(i.label["value"] for leg in fig.legend for i in leg.items if r in i.renderers)
        colors.setdefault(label.split("entry ")[1], {})[label.split(",")[0]] = (r.glyph.line_color, r.glyph.line_dash)
    assert len(colors) == len(tab.results["gdu"].units[tab.gdu_parameter])
    for entry in colors.values():
        assert entry["EP"][0] == entry["BPTT"][0] and entry["EP"][1] != entry["BPTT"][1]
    assert len({entry["EP"][0] for entry in colors.values()}) == len(colors)


def test_while_a_scan_holds_the_pages_worker_the_tab_says_so_and_runs_nothing(tab):
    import threading
    release = threading.Event()
    tab.worker.submit(lambda put, stop: release.wait(60), "scan")    # the page's worker is busy
    try:
        assert not tab.start() and "already running" in tab.status.object and not tab.results
    finally:
        release.set()


def test_the_tab_opens_before_anything_is_computed(tab):
    # The GDU plot started as an empty Overlay, which HoloViews cannot draw (SkipRendering): the served
    # page's tabs failed to open this tab at all.
    import panel as pn
    from bokeh.document import Document
    for present in (False, True):    # on a desk and in presentation mode
        tab.present = present
        assert pn.panel(tab).get_root(Document()) is not None
