"""The EP against BPTT tab (issue 16, item 3): for the run on screen, how good is EP's gradient?

One button computes, on the page's job worker (never on the server's event loop), for the Relaxation
tab's model, image and settings (explorer.gradients):

- per parameter tensor, the cosine and relative error of centered and one-sided EP against BPTT
  through the free phase (the numbers ``python -m explorer gradcheck`` prints for the same network);
- the same at the run's budget (T_free, T_nudge) against a converged reference: how far the fixed
  budget is from the true gradient;
- the float32 estimate against the float64 one: when beta is too small for the precision in use;
- the GDU view (Ernoult et al. 2019): along the nudged phase, EP's running update against BPTT's
  gradient truncated to the last k steps, for a few units of a chosen tensor.
"""
from __future__ import annotations

import logging
import time

import holoviews as hv
import pandas as pd
import panel as pn
import param
import torch

from ..gradients import budget_against_converged, ep_against_bptt, gdu, precision
from .charts import TABLE_CSS, present_fonts
from .jobs import JobWorker, drain_until_idle, on_session_end, page_callback
from .state import SettingError, net_with_alpha

log = logging.getLogger("explorer.app")
OWNER = "gradients"
PARTS = ("through the free phase", "budget against converged", "float32 against float64")
UNIT_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")   # Okabe-Ito
GDU_HEIGHT = {False: 340, True: 480}   # the GDU pane on a desk and in presentation mode (legend below)
INTRO = ("<i>The button compares, for the Relaxation tab's model, image and settings, EP's gradient "
         "(centered and one-sided) with BPTT's per parameter tensor; the run's budget with a converged "
         "reference; float32 with float64; and EP's running update with BPTT's along the nudged phase "
         "(GDU). A few seconds on the default model, longer for deeper ones.</i>")


def comparison_frame(comparison) -> pd.DataFrame:
    """One row per parameter tensor: cosine and relative error per estimate."""
    rows = []
    for name, per in comparison.parameters.items():
        row = {"parameter": name}
        for est, v in per.items():
            row[f"{est} cosine"] = round(float(v["cosine"]), 4)
            row[f"{est} rel. error"] = round(float(v["rel_error"]), 4)
        rows.append(row)
    return pd.DataFrame(rows)


def gdu_curves(result, parameter: str, present: bool = False) -> hv.Overlay:
    """EP's running update (solid) and truncated BPTT (dashed) per followed unit of one tensor; in
    presentation mode with the Relaxation tab's large fonts and the legend below (beside the plot
    it squeezed a 1024-px page's curves)."""
    curves = []
    for j, unit in enumerate(result.units[parameter]):
        ep = [(k, row[j]) for k, row in zip(result.steps, result.ep[parameter])]
        bptt = [(k, row[j]) for k, row in zip(result.steps, result.bptt[parameter])]
        # One colour per entry, EP solid and BPTT dashed: a pair is read together (each curve had its own colour).
        # No wheel zoom: scrolling the page over the chart zoomed it out instead (the curves shrank to its middle).
        style = dict(color=UNIT_COLORS[j % len(UNIT_COLORS)], default_tools=[], tools=["hover"])
        curves.append(hv.Curve(ep, "nudged step k", "update", label=f"EP, entry {unit}").opts(**style))
        curves.append(hv.Curve(bptt, "nudged step k", "update", label=f"BPTT, entry {unit}").opts(
            **style, line_dash="dashed"))
    # The legend below the curves in two columns (HoloViews hands legend_cols to Bokeh's nrows).
    look = dict(height=GDU_HEIGHT[True] - 20, legend_position="bottom", legend_cols=2,
                fontsize=present_fonts()) if present else dict(height=GDU_HEIGHT[False] - 20, legend_position="right")
    return hv.Overlay(curves).opts(title=f"GDU: {parameter}", responsive=True, toolbar=None, **look)


def compute(net, x, target, settings: dict, put, should_stop) -> None:
    """The job: each part as it is ready (a part takes seconds on the default model)."""
    common = dict(beta=settings["beta"], t_free=settings["t_free"], t_nudge=settings["t_nudge"],
                  schedule=settings["schedule"])
    steps = [("through the free phase", lambda: ep_against_bptt(net, x, target, **common)),
             ("budget against converged", lambda: budget_against_converged(net, x, target, **common)),
             ("float32 against float64", lambda: precision(net, x, target, **common)),
             ("gdu", lambda: gdu(net, x, target, **common))]
    for part, fn in steps:
        if should_stop():
            put({"kind": "cancelled"})
            return
        with torch.enable_grad():   # BPTT differentiates the unrolled phase (the worker runs without grad)
            put({"kind": "part", "part": part, "result": fn()})
    put({"kind": "done"})


class GradientsTab(pn.viewable.Viewer):
    """EP's gradient estimate for the Relaxation tab's run, against BPTT, a converged reference and float64."""

    gdu_parameter = param.Selector(default=None, objects=[], label="GDU of tensor")
    present = param.Boolean(default=False, doc="Presentation mode: large fonts (the page sets it).")

    def __init__(self, state, worker: JobWorker | None = None, notify=None, **params):
        super().__init__(**params)
        self.state, self.worker = state, worker or JobWorker()
        self.notify = notify or (lambda text, level="error": log.warning("%s: %s", level, text))
        self.results: dict = {}
        self._callback = None
        self.start_button = pn.widgets.Button(label="Compare EP with BPTT for this run", color="primary")
        self.start_button.on_click(lambda _e: self.start())
        self.status = pn.pane.HTML(INTRO, sizing_mode="stretch_width")
        self._started, self._what = 0.0, ""
        self.tables = {p: pn.pane.DataFrame(pd.DataFrame(), index=False, sizing_mode="stretch_width",
                                            stylesheets=[TABLE_CSS])
                       for p in PARTS}
        self.notes = {p: pn.pane.HTML("", sizing_mode="stretch_width") for p in PARTS}
        # Nothing until computed: an empty Overlay cannot be drawn (HoloViews' SkipRendering), and
        # the page's tabs then failed to open this tab at all.
        self.gdu_plot = pn.pane.HoloViews(None, sizing_mode="stretch_width", height=GDU_HEIGHT[False])
        # Each part's heading, note and table show once that part has numbers (empty headings read as broken).
        self.sections = {p: pn.Column(pn.pane.Markdown(f"#### EP {p}"), self.notes[p], self.tables[p],
                                      sizing_mode="stretch_width", visible=False) for p in PARTS}
        self.gdu_section = pn.Column(
            pn.pane.Markdown("#### GDU: EP's running update against truncated BPTT along the nudged phase"),
            pn.widgets.Select.from_param(self.param.gdu_parameter, width=240), self.gdu_plot,
            sizing_mode="stretch_width", visible=False)
        self.param.watch(lambda _e: self._draw_gdu(), ["gdu_parameter", "present"])

    def start(self) -> bool:
        s = self.state
        try:
            net = net_with_alpha(s.base_network(), float(s.alpha))
            x = net.check_input(s.samples.normalised(s.sample).to(net.device))
            target = s.samples.labels[s.sample:s.sample + 1].to(net.device)
            settings = dict(beta=float(s.beta), t_free=int(s.t_free), t_nudge=int(s.t_nudge), schedule=s.schedule)
            self.worker.submit(lambda put, stop: compute(net, x, target, settings, put, stop), OWNER)
        except (SettingError, RuntimeError, ValueError) as exc:
            self.status.object = f"<b>Cannot start:</b> {exc}"
            return False
        self.results = {}
        for section in (*self.sections.values(), self.gdu_section):   # the last run's numbers are not this one's
            section.visible = False
        self.start_button.disabled = True
        self._what = (f"{s.model}, image {s.sample}: β = {s.beta:g}, T free {s.t_free}, T nudge {s.t_nudge}, "
                      f"schedule {s.schedule}")
        self._started = time.monotonic()
        self.status.object = f"computing for {self._what} …"
        if self._callback is None:
            self._callback = page_callback(self.drain)
            on_session_end(self.worker.stop)
        return True

    def drain(self) -> int:
        events = self.worker.drain(OWNER)
        for ev in events:
            if ev["kind"] == "part":
                self._show(ev["part"], ev["result"])
            elif ev["kind"] in ("done", "cancelled", "failed"):
                self.start_button.disabled = False
                self.status.object = {"done": self._done_text(), "cancelled": "cancelled."}.get(
                    ev["kind"], f"<b>failed:</b> {ev.get('message')}")
        return len(events)

    def _done_text(self) -> str:
        """What was computed, for which run, over how many tensors, in how long."""
        first = self.results.get(PARTS[0])
        tensors = f", {len(first.parameters)} tensors" if first is not None else ""
        return (f"Computed centered and one-sided EP against BPTT, the budget against a converged reference, "
                f"float32 against float64 and the GDU curves for {self._what}{tensors}, "
                f"in {time.monotonic() - self._started:.1f} s.")

    def _show(self, part: str, result) -> None:
        self.results[part] = result
        if part == "gdu":
            self.param.gdu_parameter.objects = list(result.units)
            self.gdu_parameter = next(iter(result.units), None)
            self._draw_gdu()
            self.gdu_section.visible = True
            return
        self.tables[part].object = comparison_frame(result)
        self.sections[part].visible = True
        worst = ", ".join(f"{k} {v:.4f}" for k, v in result.min_cosine.items())
        self.notes[part].object = f"against {result.reference}; lowest cosine: {worst}"

    def _draw_gdu(self) -> None:
        result = self.results.get("gdu")
        self.gdu_plot.height = GDU_HEIGHT[self.present]
        if result is not None and self.gdu_parameter in result.units:
            self.gdu_plot.object = gdu_curves(result, self.gdu_parameter, self.present)

    def wait(self, timeout: float = 300.0) -> None:
        """Drain until the job has ended (tests)."""
        drain_until_idle(self.worker, OWNER, self.drain, "comparison", timeout)

    def __panel__(self):
        return pn.Column(pn.Row(self.start_button, self.status, sizing_mode="stretch_width"),
                         *self.sections.values(), self.gdu_section, sizing_mode="stretch_width")
