"""The Scan tab: the Relaxation tab's model and settings over many images at once (issue 17, item 1).

A scan runs on the page's :class:`JobWorker` (never on the server's event loop), batched, with a
progress bar and Cancel; a periodic callback of this session drains its events. The result shows
the fraction converged per phase, steps to tolerance, failure classes and blamed layers, accuracy,
the spectral radius when computed, and the failing images by severity: one click opens an image in
the Relaxation tab with the scan's settings.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import panel as pn
import param

from ..dynamics import check_beta
from ..evaluate import one_line
from ..scan import ScanResult, ScanSettings, scan, scan_images
from . import charts
from .jobs import JobControls, JobWorker, drain_until_idle, on_session_end
from .state import UNTRAINED, SettingError, class_name, net_with_alpha

log = logging.getLogger("explorer.app")

GALLERY_MAX = 24           # failing images shown (the most severe)
MAX_IMAGES = 10_000
RUN_KEYS = ("alpha", "beta", "t_free", "t_nudge", "schedule", "tol")


def show_relaxation(tabs) -> None:
    """Switch the page's tabs to the Relaxation tab (``tabs`` is None outside the page)."""
    if tabs is None:
        return
    names = list(getattr(tabs, "_names", []))
    tabs.active = names.index("Relaxation") if "Relaxation" in names else 0


class ScanTab(JobControls, pn.viewable.Viewer):
    """One page's Scan tab."""

    present = param.Boolean(default=False, doc="Presentation mode: larger charts and fonts (the page sets it).")

    def __init__(self, state, worker: JobWorker | None = None, notify=None, threads: int | None = 1,
                 **params):
        super().__init__(**params)
        self.state = state
        self.worker = worker or JobWorker(threads=threads)
        self.notify = notify or (lambda text, level="error": log.warning("%s: %s", level, text))
        self.page_tabs = None            # the page's pn.Tabs, set by the page (to open the Relaxation tab)
        self.result: ScanResult | None = None
        self._summary: dict | None = None      # the shown scan's summary (its charts are drawn from it)
        self.context: dict | None = None  # the model and settings of the shown scan
        self.images: dict[int, np.ndarray] = {}   # index -> grey image of the failures shown
        self.source = ""
        self._running: dict | None = None
        self._callback = None
        self._layout = None
        self.n_images = pn.widgets.IntInput(label="Images", value=40, start=1, end=MAX_IMAGES, width=110)
        self.batch_size = pn.widgets.IntInput(label="Batch size", value=40, start=1, end=1024, width=110)
        self.tol = pn.widgets.FloatInput(label="Tolerance", value=ScanSettings.tol, start=1e-12, end=0.5,
                                         step=1e-5, format="0.[000000]", width=120)
        self.start_button = pn.widgets.Button(label="Scan", color="primary", width=100, align="end")
        self.cancel_button = pn.widgets.Button(label="Cancel", disabled=True, width=100, align="end")
        self.start_button.on_click(lambda _e: self.start())
        self.cancel_button.on_click(lambda _e: self.cancel())
        self.progress = pn.indicators.Progress(value=0, max=1, visible=False, sizing_mode="stretch_width",
                                               height=18, margin=(5, 10))
        self.message = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self.status = pn.pane.HTML("<i>No scan yet.</i>", sizing_mode="stretch_width", margin=(0, 10))
        self.phase_table = pn.pane.DataFrame(None, index=False, width=420, float_format=lambda v: f"{v:.4g}",
                                             na_rep="—", visible=False, stylesheets=[charts.TABLE_CSS])
        self.overview = pn.pane.HTML("", width=440, margin=(0, 10))
        self.steps_plot = pn.pane.HoloViews(None)
        self.classes_plot = pn.pane.HoloViews(None)
        self.layers_plot = pn.pane.HoloViews(None)
        self.radius_plot = pn.pane.HoloViews(None)
        # Shown and hidden through a box each: a HoloViews pane drawn with the page (a link that opens
        # this tab) raised a TypeError in Panel 1.9 when its own ``visible`` changed, and the results
        # never appeared.
        self.plot_boxes = [pn.Column(p, visible=False, margin=0)
                           for p in (self.steps_plot, self.classes_plot, self.layers_plot, self.radius_plot)]
        self.radius_note = pn.pane.HTML("", width=380, margin=(10, 10))
        self.gallery_head = pn.pane.HTML("", sizing_mode="stretch_width", margin=(10, 10, 0, 10))
        self.gallery = pn.FlexBox(sizing_mode="stretch_width")
        self.gallery_buttons: list[tuple[int, pn.widgets.Button]] = []
        self.param.watch(lambda _e: self._draw_charts(), "present")
        on_session_end(lambda: self.worker.stop(timeout=2.0))

    # -- starting and stopping ------------------------------------------------------------
    def _request(self) -> tuple:
        """The network, settings and image count the Relaxation tab's settings give, or SettingError."""
        s = self.state
        s.check_architecture()
        net = net_with_alpha(s.base_network(), float(s.alpha))
        try:
            check_beta(net.spec, float(s.beta))
        except ValueError as exc:
            raise SettingError(f"beta = {s.beta:g} is not allowed: {exc}") from exc
        n, batch, tol = self.n_images.value, self.batch_size.value, self.tol.value
        if n is None or not 1 <= n <= MAX_IMAGES:
            raise SettingError(f"images = {n} is not allowed: scan 1 to {MAX_IMAGES} images")
        if batch is None or batch < 1:
            raise SettingError(f"batch size = {batch} is not allowed: at least 1 image per batch")
        if tol is None or not 0 < tol < 1:
            raise SettingError(f"tolerance = {tol} is not allowed: a relative step size above 0 and below 1")
        settings = ScanSettings(beta=float(s.beta), t_free=int(s.t_free), t_nudge=int(s.t_nudge),
                                schedule=s.schedule, tol=float(tol))
        context = {"model": s.model, "depth": int(s.depth), "residual": bool(s.residual),
                   **{k: getattr(s, k) for k in RUN_KEYS}, "tol": float(tol)}
        return net, settings, int(n), int(batch), context

    def start(self) -> bool:
        """Start a scan with the Relaxation tab's model and settings; False (and a message) if not."""
        if self.worker.busy:
            self.show_message("a scan or sweep is already running on this page: cancel it first")
            return False
        try:
            net, settings, n, batch, context = self._request()
        except SettingError as exc:
            self.show_message(str(exc))
            return False
        self.message.visible = False

        def job(put, should_stop):
            try:
                x, labels, source = scan_images(net, n)
            except Exception as exc:   # no test split on this machine, an odd input shape
                put({"kind": "failed", "message": f"cannot scan {n} images: {one_line(exc)}"})
                return
            put({"kind": "started", "source": source, "total": len(labels)})
            result = scan(net, x, labels, settings, batch_size=batch, should_stop=should_stop,
                          progress=lambda done, total: put({"kind": "progress", "done": done, "total": total}))
            shown = [o.index for o in result.failures()[:GALLERY_MAX]]
            images = {i: x[i].mean(0).to("cpu").float().numpy() for i in shown}
            put({"kind": "done", "result": result, "images": images, "source": source,
                 "cancelled": len(result.outcomes) < len(labels)})

        self._running = context
        self.launch(job, "scan", f"<b>Scanning</b> {n} images with {charts.escape(context['model'])} …", n)
        return True

    # -- the drain (this session's periodic callback; tests call it) ------------------------------
    def drain(self) -> int:
        events = self.worker.drain("scan")
        for ev in events:
            kind = ev["kind"]
            if kind == "started":
                self.source = ev["source"]
                self.progress.max = max(ev["total"], 1)
            elif kind == "progress":
                self.progress.param.update(value=ev["done"], max=max(ev["total"], 1))
                self.status.object = f"<b>Scanning</b>: {ev['done']} of {ev['total']} images relaxed"
            elif kind == "done":
                self.show_result(ev["result"], self._running or {}, ev["images"], ev["source"], ev["cancelled"])
            elif kind == "failed":
                self.show_message(ev["message"])
                self.status.object = "<i>The scan did not run.</i>"
        if not self.worker.busy and not self.worker.pending("scan"):
            self.start_button.disabled, self.cancel_button.disabled = False, True
            self.progress.visible = False
            if self._callback is not None:
                self._callback.stop()
                self._callback = None
        return len(events)

    # -- showing a result --------------------------------------------------------------------------
    def show_result(self, result: ScanResult, context: dict, images: dict, source: str,
                    cancelled: bool = False) -> None:
        """Tables, charts and gallery, then the status that says the scan is done: it came first and
        read as done seconds before the rest arrived (one held batch of changes, status last)."""
        self.result, self.context, self.images, self.source = result, dict(context), dict(images), source
        summary = result.summary()
        n = summary["images"]
        self.status.object = f"<i>Drawing the results of {n} images …</i>"
        with pn.io.hold():
            self.phase_table.object = pd.DataFrame({
                "phase": list(summary["fraction_converged"]),
                "fraction converged": list(summary["fraction_converged"].values()),
                "median steps to tol": [np.nan if v is None else v for v in summary["median_steps"].values()],
            })
            self.phase_table.visible = n > 0
            self.overview.object = self._overview_html(summary, context)
            self._summary = summary
            self._draw_charts()
            radius = summary["spectral_radius"]
            if radius:
                self.radius_note.object = f"Median spectral radius: <b>{radius['median']:.4g}</b>"
            else:
                self.radius_note.object = "<b>Spectral radius</b>: not computed for this scan."
            self._show_gallery(result)
            what = (f"<b>Cancelled</b>: the {n} images of the finished batches are shown" if cancelled
                    else f"<b>Scanned</b> {n} images in {result.seconds:.1f} s")
            self.status.object = f"{what} ({charts.escape(source)})."

    def _draw_charts(self) -> None:
        """The shown scan's charts, at the size and fonts of the page's mode (drawn again when it changes)."""
        summary, present = self._summary, self.present
        if summary is None:
            return
        n = summary["images"]
        if n:
            self.steps_plot.object = charts.steps_histogram(summary["steps_histogram"], present)
            self.classes_plot.object = charts.count_bars(summary["classes"], "Images by verdict (worst phase)",
                                                         "verdict", present)
            self.layers_plot.object = charts.count_bars(summary["blamed_layers"], "Blamed layer (failures)",
                                                        "layer", present)
        for box in self.plot_boxes[:3]:
            box.visible = n > 0
        radius = summary["spectral_radius"]
        if radius:
            self.radius_plot.object = charts.radius_histogram(radius["values"], present)
        self.plot_boxes[3].visible = bool(radius)

    def _overview_html(self, summary: dict, context: dict) -> str:
        # The scan's own tolerance (the result's), not the Relaxation tab's, is the one named.
        context = {**context, "tol": self.result.settings.get("tol", context.get("tol"))}
        settings = ", ".join(f"{k} = {charts.value_label(context[k])}" for k in RUN_KEYS if context.get(k) is not None)
        return (f"<div style='font-size:calc(14px * var(--explorer-text, 1));line-height:1.6'>"
                f"Accuracy: <b class='scan-accuracy'>{charts.percent(summary['accuracy'])}</b><br>"
                f"Images with an energy rise: <b>{charts.percent(summary['energy_rose'])}</b><br>"
                f"Model: {charts.escape(context.get('model', '?'))}<br>"
                f"<span style='opacity:.75'>{charts.escape(settings)}</span></div>")

    def _show_gallery(self, result: ScanResult) -> None:
        failures = result.failures()
        shown = failures[:GALLERY_MAX]
        more = f" (the {len(shown)} most severe shown)" if len(failures) > len(shown) else ""
        self.gallery_head.object = (f"<b>Failing images</b>: {len(failures)}{more}, most severe first. "
                                    "Open one to relax it in the Relaxation tab with these settings."
                                    if failures else "<b>Failing images</b>: none, every image converged.")
        cards, self.gallery_buttons = [], []
        names = self.state.samples.class_names
        for o in shown:
            worst = o.worst
            phase = next(p for p, d in o.phases.items() if d is worst)
            thumb = charts.thumbnail(self.images[o.index]) if o.index in self.images else ""
            text = (f"<div style='font-size:calc(12px * var(--explorer-text, 1));line-height:1.35'>{thumb}<br><b>#{o.index}</b> "
                    f"{charts.escape(class_name(names, o.label))} → {charts.escape(class_name(names, o.prediction))}"
                    f"<br><b>{charts.escape(worst['kind'])}</b> in the {charts.escape(phase)} phase: "
                    f"{charts.escape(worst.get('message', ''))}</div>")
            button = pn.widgets.Button(label=f"Open #{o.index}", width=110)
            button.on_click(lambda _e, i=o.index: self.open_image(i))
            self.gallery_buttons.append((o.index, button))
            cards.append(pn.Column(pn.pane.HTML(text, width=210, margin=(0, 5)), button, width=230,
                                   styles={"border": "1px solid #d0dbe6", "border-radius": "6px"},
                                   margin=(5, 5)))
        self.gallery.objects = cards

    # -- opening an image in the Relaxation tab ----------------------------------------------------
    def open_image(self, index: int) -> bool:
        """Relax image ``index`` of the shown scan in the Relaxation tab with the scan's settings."""
        ctx, s = self.context or {}, self.state
        if index >= len(s.samples.labels):
            self.show_message(f"image #{index} is from the test split; the Relaxation tab relaxes only the "
                              f"{len(s.samples.labels)} shipped samples", level="warning")
            return False
        if ctx.get("model") and s.model != ctx["model"]:
            s.model = ctx["model"]           # first: a model brings its own defaults, replaced below
        updates = {k: ctx[k] for k in RUN_KEYS if k in ctx and getattr(s, k) != ctx[k]}
        if s.model in UNTRAINED and "depth" in ctx:
            updates.update({k: ctx[k] for k in ("depth", "residual") if getattr(s, k) != ctx[k]})
        if s.sample != index:
            updates["sample"] = index
        if updates:
            s.param.update(**updates)
        show_relaxation(self.page_tabs)
        return True

    # -- tests and scripts ------------------------------------------------------------------------
    def wait(self, timeout: float = 120.0) -> None:
        """Drain until the scan has ended (tests)."""
        drain_until_idle(self.worker, "scan", self.drain, "scan", timeout)

    def __panel__(self):
        if self._layout is None:
            hint = pn.pane.HTML(
                "<div style='font-size:calc(13px * var(--explorer-text, 1));opacity:.8'>Relaxes many images with the Relaxation tab's model "
                "and settings (alpha, beta, T free, T nudge, schedule), many per batch, each stopping at the "
                "tolerance. Up to 40 images: the shipped samples; more: the Fashion-MNIST test split, "
                "when found.</div>", sizing_mode="stretch_width", margin=(0, 10))
            self._layout = pn.Column(
                pn.Row(self.n_images, self.batch_size, self.tol, self.start_button, self.cancel_button),
                hint, self.message, self.progress, self.status,
                pn.FlexBox(self.phase_table, self.overview, sizing_mode="stretch_width"),
                pn.FlexBox(*self.plot_boxes, self.radius_note, sizing_mode="stretch_width"),
                self.gallery_head, self.gallery, sizing_mode="stretch_width")
        return self._layout
