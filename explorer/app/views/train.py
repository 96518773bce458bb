"""The Train tab: train a network on Fashion-MNIST with EP while watching it learn.

Controls (``TrainSettings``) start a :class:`TrainWorker` for this page; the
page's periodic callback calls :meth:`TrainView.drain`, which streams the
worker's events into the plots:

- loss and accuracy per batch (this batch, and the running mean over the
  epoch), the test accuracy and loss after every epoch;
- a run starts from a new network (depth, width, residual) or continues
  from the weights of the Relaxation tab's model (then those three settings
  are disabled: the model fixes them);
- the probe image's free phase through the current weights, every few
  batches: each layer's relative step size ||s_t - s_(t-1)|| / ||s_t|| and
  the energy Phi per iteration (earlier probes stay, fainter, so the change
  of the dynamics over training shows), and its output y against the label.

Only :meth:`drain` touches Bokeh models; the button callbacks only talk to
the worker and mark what the next drain must redraw.
"""
from __future__ import annotations

import html
import logging
import time

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, NumeralTickFormatter, Range1d
from bokeh.palettes import Blues9

from ..helptext import with_help_icons
from ..state import SLIDER_RANGES, SettingError, class_name
from ..training import Probe, TrainSettings, TrainWorker, architecture_text, relaxation_model, save_stem
from .base import (INK, LOG_TICKS_JS, ROSE_COLOR, StableRange, bokeh_pane, layer_color, make_figure,  # noqa: F401
                   plain_log_ticks, static_legend, style_legend)
from .categories import Categories
from .output import image_title

log = logging.getLogger("explorer.app")

DRAW_EVERY = 0.25         # seconds between draws: a few repaints a second are plenty for training curves
PROBE_HISTORY = 12        # earlier probes kept (faint) in the Phi plot
TEST_COLOR = "#D55E00"
TRAIN_COLOR = "#0072B2"
OUT_RANGE = (-0.05, 1.15)  # the probe output's y axis: at least the targets 0 and 1 (and the values above them)
BATCH_COLOR = "#9DB4C8"
LABEL_COLOR, WRONG_COLOR, OTHER_COLOR = "#009E73", "#C00000", "#9DB4C8"
TYPED = ("width", "limit", "eval_limit", "epochs", "batch_size", "probe_every")
ARCHITECTURE = ("depth", "width", "residual")   # fixed by the model when continuing from one
SLIDER_SPAN = 32          # integer settings with a range this short get a slider (depth), others a typed box
# Presentation mode (large fonts, the settings column folded away): titles that fit a 1024-px projector
# (each figure's width there, measured in Chromium: the titles are checked against it), heights with the
# legend below the plot (beside it, the legend squeezed the plot to a few px: x tick labels ran together).
PRESENT_TITLES = {"step_fig": "Step size (log)"}    # in the card "Probe image: ..."
PRESENT_WIDTH_1024 = {"loss_fig": 490, "acc_fig": 490, "step_fig": 395, "phi_fig": 395, "out_fig": 980}
LEGEND_BELOW = ("loss_fig", "acc_fig")   # the Phi plot's legend is below it on a desk too (_phi_figure)
PRESENT_HEIGHT = {"loss_fig": 360, "acc_fig": 360, "step_fig": 360, "phi_fig": 360, "out_fig": 300}
BAR_TEXT = {False: "11px", True: "15px"}
PHASE_TEXT = {"loading": "loading data", "running": "training", "paused": "paused", "stopping": "stopping",
              "stopped": "stopped", "done": "finished", "failed": "failed", "idle": "not started"}


def widget_for(p: param.Parameter, **kw):
    """The widget of a setting, by its type: a slider for a short integer range, else a typed number;
    a checkbox for a switch; a menu for a choice."""
    if isinstance(p, param.Boolean):
        kind = pn.widgets.Checkbox
    elif isinstance(p, param.Integer):
        lo, hi = p.bounds or (None, None)
        kind = pn.widgets.IntSlider if lo is not None and hi is not None and hi - lo <= SLIDER_SPAN else \
            pn.widgets.IntInput
    elif isinstance(p, param.Number):
        kind = pn.widgets.FloatInput
    elif isinstance(p, param.Selector):
        kind = pn.widgets.Select
    else:
        kind = pn.widgets.TextInput
    return kind.from_param(p, **kw)


class TrainView(pn.viewable.Viewer):
    """One page's Train tab: its settings, its worker, its plots."""

    key = "train"
    present = param.Boolean(default=False, doc="Presentation mode: the settings folded away, plots that fit "
                                               "the large fonts (the page sets it).")

    def __init__(self, app_state, notify=None, on_saved=None, threads: int | None = 1, css: str = "",
                 clear_alert=None, **params):
        super().__init__(**params)
        self.app_state = app_state
        self.css = css
        self._layout = None
        self.settings = TrainSettings(depth=app_state.depth, residual=app_state.residual)
        self.notify = notify or (lambda text, level="error": log.warning("%s: %s", level, text))
        self.clear_alert = clear_alert or (lambda: None)   # an earlier refusal's banner goes once a run starts
        self.on_saved = on_saved
        self.threads = threads
        self.worker: TrainWorker | None = None
        self.saved: set[str] = set()      # names this page saved (it may replace its own, not others')
        self.events_drawn = 0
        self.outcome: str | None = None   # how the last run ended, once the page has drawn it
        self._dirty = True                # the next drain redraws status and buttons
        self._reset = False
        self._fresh = False       # the drain in progress emptied the sources (see _append)
        self._drawn_at = 0.0
        self._started: dict = {}
        self._last_batch: dict = {}
        self._last_eval: dict = {}
        self._layers: tuple = ()
        self._probe: Probe | None = None
        self.help_icons: dict = {}        # "?" icons beside the sliders and checkboxes (controls())
        self._hint_stale = True           # the start-from hint and the architecture widgets need a redraw
        self._build_figures()
        self._build_widgets()
        s = self.settings.param
        s.watch(lambda *_: self.start(), "start")
        s.watch(lambda *_: self.pause(), "pause")
        s.watch(lambda *_: self.resume(), "resume")
        s.watch(lambda *_: self.stop(), "stop")
        s.watch(lambda *_: self.save(), "save")
        s.watch(lambda *_: self._start_from_changed(), "start_from")
        app_state.param.watch(lambda *_: self._start_from_changed(), "model")

    # ------------------------------------------------------------------------------------
    # Figures
    # ------------------------------------------------------------------------------------
    def _build_figures(self) -> None:
        self._build_sources()
        self.loss_fig = self._loss_figure()
        self.acc_fig = self._accuracy_figure()
        self.step_fig = self._step_size_figure()
        self.phi_fig = self._phi_figure()
        self.out_fig = self._output_figure()
        self.img_fig = self._probe_image_figure()

    def _build_sources(self) -> None:
        self.batches = ColumnDataSource(data={k: [] for k in (
            "step", "epoch", "batch", "loss", "accuracy", "train_loss", "train_accuracy", "rate", "free_steps")},
            name="explorer.train.batches")
        self.evals = ColumnDataSource(data={"step": [], "epoch": [], "test_accuracy": [], "test_loss": [], "n": []},
                                      name="explorer.train.evals")
        self.probe_steps = ColumnDataSource(data={"xs": [], "ys": [], "layer": [], "color": []},
                                            name="explorer.train.probe_steps")
        self.probe_phi = ColumnDataSource(data={"iteration": [], "phi": []}, name="explorer.train.probe_phi")
        self.probe_history = ColumnDataSource(data={"xs": [], "ys": [], "step": [], "color": []},
                                              name="explorer.train.probe_history")
        self.probe_output = ColumnDataSource(data={"x": [], "name": [], "y": [], "color": [], "target": [],
                                                   "text": [], "text_y": []}, name="explorer.train.probe_output")
        self.probe_image = ColumnDataSource(data={"image": [], "x": [], "y": [], "dw": [], "dh": []},
                                            name="explorer.train.probe_image")

    def _training_curves(self, title: str, y_label: str, y: str, test_y: str, y_range):
        """Loss or accuracy over the steps: this batch, the epoch's running mean, the test after each epoch;
        the figure and its train-mean and test renderers (for their hover tools)."""
        fig = make_figure(title, height=280, x_label="training step (batch)", y_label=y_label, y_range=y_range,
                          tools="xpan,xwheel_zoom,box_zoom,reset,save")
        fig.line("step", y, source=self.batches, color=BATCH_COLOR, line_width=1, legend_label="this batch")
        train = fig.line("step", f"train_{y}", source=self.batches, color=TRAIN_COLOR, line_width=2.5,
                         legend_label="epoch mean (train)")
        fig.line("step", test_y, source=self.evals, color=TEST_COLOR, line_width=2, line_dash="dashed")
        test = fig.scatter("step", test_y, source=self.evals, color=TEST_COLOR, size=9,
                           legend_label="test, after each epoch")
        return fig, train, test

    def _loss_figure(self):
        self.loss_y = StableRange(floor=(0.0, 0.1), headroom=0.08)
        fig, train, _ = self._training_curves("Loss (MSE cost)", "loss", "loss", "test_loss", self.loss_y.range)
        fig.add_tools(HoverTool(renderers=[train], mode="vline", tooltips=[
            ("step", "@step"), ("epoch", "@epoch"), ("batch loss", "@loss{0.0000}"),
            ("epoch mean", "@train_loss{0.0000}"), ("images/s", "@rate{0}")]))
        style_legend(fig, "top_right")
        static_legend(fig)
        return fig

    def _accuracy_figure(self):
        fig, train, test = self._training_curves("Accuracy", "accuracy", "accuracy", "test_accuracy",
                                                 Range1d(0, 1.02))
        fig.yaxis.formatter = NumeralTickFormatter(format="0%")
        fig.add_tools(HoverTool(renderers=[train], mode="vline", tooltips=[
            ("step", "@step"), ("batch accuracy", "@accuracy{0.0%}"), ("epoch mean", "@train_accuracy{0.0%}"),
            ("free-phase steps", "@free_steps")]))
        fig.add_tools(HoverTool(renderers=[test], tooltips=[
            ("after epoch", "@epoch"), ("test accuracy", "@test_accuracy{0.0%}"), ("test images", "@n")]))
        style_legend(fig, "bottom_right")
        static_legend(fig)
        return fig

    def _step_size_figure(self):
        self.step_y = StableRange(log=True)
        fig = make_figure("Probe: step size per layer (log)", height=300, x_label="free-phase iteration",
                          y_label="‖Δs‖ / ‖s‖", y_axis_type="log", y_range=self.step_y.range)
        fig.multi_line("xs", "ys", source=self.probe_steps, line_color="color", line_width=2, legend_field="layer")
        style_legend(fig, "top_right")
        plain_log_ticks(fig)
        return fig

    def _phi_figure(self):
        self.phi_y = StableRange(headroom=0.08)
        fig = make_figure("Probe: energy Φ", height=300, x_label="free-phase iteration", y_label="Φ",
                          y_range=self.phi_y.range)
        fig.multi_line("xs", "ys", source=self.probe_history, line_color="color", line_width=1.5, line_alpha=0.7,
                       legend_label="earlier probes (darker: later)")
        now = fig.line("iteration", "phi", source=self.probe_phi, color=ROSE_COLOR, line_width=2.5,
                       legend_label="latest probe")
        fig.add_tools(HoverTool(renderers=[now], tooltips=[("iteration", "@iteration"), ("Φ", "@phi{0.0000}")]))
        style_legend(fig, "top_right")
        # Below the plot, also on a desk: beside it, the legend left the plot about 90 px at 1280x720.
        legend_below(fig, True)
        return fig

    def _output_figure(self):
        """The probe's output units y against the label: class names on a numeric axis (categories.py)."""
        names = [class_name(self.app_state.samples.class_names, k) for k in range(10)]
        fig = make_figure("Probe output y", height=230, x_label="", y_label="y",
                          x_range=Range1d(-0.5, len(names) - 0.5), y_range=Range1d(*OUT_RANGE), tools="save")
        self.out_classes = Categories(fig, names)
        fig.vbar(x="x", top="y", width=0.75, source=self.probe_output, color="color")
        fig.scatter(x="x", y="target", source=self.probe_output, marker="dash", size=22, line_width=3,
                    color=INK)
        # Each bar's value written above it: early in training every y is near 0 (or below), and the
        # bars alone look like an empty plot although the probe has run.
        self.bar_text = fig.text(x="x", y="text_y", text="text", source=self.probe_output, text_align="center",
                                 text_baseline="bottom", text_font_size=BAR_TEXT[False], text_color=INK,
                                 y_offset=-2)
        fig.xaxis.major_label_orientation = 0.9
        fig.xgrid.grid_line_color = None
        return fig

    def _probe_image_figure(self):
        fig = make_figure(image_title("Probe"), height=200, width=180, x_label="", y_label="",
                          sizing_mode="fixed", tools="", toolbar_location=None, match_aspect=True,
                          min_border_left=5)
        fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.probe_image, palette="Greys256")
        fig.axis.visible = False
        fig.grid.visible = False
        return fig

    def _build_widgets(self) -> None:
        s = self.settings
        css = ["explorer-train"]
        self.status = pn.pane.HTML(self._status_html(), sizing_mode="stretch_width", margin=(4, 10),
                                   css_classes=css)
        self.probe_text = pn.pane.HTML("<div class='pred pending'>The probe image is relaxed through the "
                                       "current weights every few batches.</div>", width=180, margin=(0, 5))
        # Widths by label ("Resume" was cut at 62 px), together within the 290-px settings column.
        self.buttons = {name: pn.widgets.Button.from_param(s.param[name], color=kind, width=width,
                                                            margin=(5, 2))
                        for name, kind, width in (("start", "primary", 60), ("pause", "default", 62),
                                                  ("resume", "default", 74), ("stop", "danger", 58))}
        self.save_button = pn.widgets.Button.from_param(s.param.save, color="success", width=70,
                                                        margin=(23, 5, 5, 3))
        # Presentation mode: the run buttons above the plots and the settings column folded away (a
        # toggle opens it); the same actions as the column's buttons.
        self.present_buttons = {name: pn.widgets.Button.from_param(s.param[name], color=b.color, width=90,
                                                                    margin=(5, 3))
                                for name, b in self.buttons.items()}
        self.show_settings = pn.widgets.Toggle(label="Settings", value=False, width=110, margin=(5, 3, 5, 15))
        self.show_settings.param.watch(lambda _e: self._fold_settings(), "value")
        self.present_bar = pn.Row(*self.present_buttons.values(), self.show_settings, visible=False,
                                  margin=(0, 5))
        self._left = None
        self._desk = {}       # each figure's desk title and height, kept while presenting
        fit = {"sizing_mode": "stretch_width"}
        self.start_from = pn.widgets.RadioBoxGroup.from_param(s.param.start_from, inline=False, margin=(0, 10),
                                                              **fit)
        self.start_hint = pn.pane.HTML("", margin=(0, 10), **fit)
        self.arch_widgets = {name: widget_for(s.param[name], **fit) for name in ARCHITECTURE}
        self._update_start_hint()

    # ------------------------------------------------------------------------------------
    # Actions (page thread; widget callbacks)
    # ------------------------------------------------------------------------------------
    def start(self) -> bool:
        """Train with the current settings (from scratch or from the Relaxation tab's model); False (and a
        message) if they cannot run."""
        if self.worker is not None and self.worker.active:
            self.notify("a training run is in progress: stop it before starting another", "warning")
            return False
        start = None
        try:
            if self.settings.continuing:
                start = relaxation_model(self.app_state)
            config = self.settings.config(start=start)
        except SettingError as exc:
            self.notify(str(exc))
            return False
        samples = self.app_state.samples
        index = int(self.app_state.sample)    # the relaxation tab's input image is the probe
        self._probe = Probe(samples.normalised(index), int(samples.labels[index]), index,
                            samples.images[index, 0].numpy(), samples.class_names)
        self.worker = TrainWorker(config, self._probe, probe_every=self.settings.probe_every,
                                  threads=self.threads or 0, start=start)
        self._reset = True
        self._dirty = True
        self._started, self._last_batch, self._last_eval = {}, {}, {}
        self.outcome = None
        self.worker.start()
        self.clear_alert()
        return True

    def pause(self) -> None:
        if self.worker is None or self.worker.phase not in ("loading", "running"):
            self.notify("nothing to pause: no run is training", "warning")
            return
        self.worker.pause()
        self._dirty = True

    def resume(self) -> None:
        if self.worker is None or self.worker.phase != "paused":
            self.notify("nothing to resume: no run is paused", "warning")
            return
        self.worker.resume()
        self._dirty = True

    def stop(self) -> None:
        if self.worker is None or not self.worker.active:
            self.notify("nothing to stop: no run is training", "warning")
            return
        self.worker.stop()
        self._dirty = True

    def save(self) -> bool:
        """Save the current weights under the typed name (on the worker, between batches)."""
        if self.worker is None:
            self.notify("nothing to save: start a training run first")
            return False
        try:
            stem = save_stem(self.settings.save_name)
            if stem.with_suffix(".json").exists() and stem.name not in self.saved:
                raise SettingError(f"a trained model named {stem.name!r} already exists; choose another name")
            self.worker.save(stem)
        except SettingError as exc:
            self.notify(str(exc))
            return False
        self.saved.add(stem.name)
        return True

    def _start_from_changed(self) -> None:
        """Start-from or the Relaxation tab's model changed: the next drain redraws the hint."""
        self._hint_stale = True
        self._dirty = True

    def shutdown(self, reason: str = "", wait: float = 2.0) -> bool:
        """Stop this page's training (the session closed); True if a running worker was stopped."""
        worker = self.worker
        if worker is None or worker.closed or not worker.alive:
            return False
        worker.stop(timeout=wait, closed=True)
        return True

    # ------------------------------------------------------------------------------------
    # The drain (the page's periodic callback only)
    # ------------------------------------------------------------------------------------
    def has_news(self) -> bool:
        """Anything to draw now (attribute reads only: the page's timer asks every tick)."""
        if self._dirty:
            return True
        w = self.worker
        return w is not None and w.pending and time.monotonic() - self._drawn_at >= DRAW_EVERY

    def drain(self) -> int:
        """Stream the worker's events into the plots; returns how many events were drawn."""
        if not (self._dirty or (self.worker is not None and self.worker.pending)):
            return 0
        self._fresh = self._reset      # the sources are emptied in this drain: append by assignment
        if self._reset:
            self._reset = False
            self._clear()
        events = self.worker.drain() if self.worker is not None else []
        batches = [e for e in events if e["kind"] == "batch"]
        probes = [e for e in events if e["kind"] == "probe"]
        for e in events:
            kind = e["kind"]
            if kind == "start":
                self._started = e
            elif kind == "eval":
                self._last_eval = e
                self._append(self.evals, {"step": [e["step"]], "epoch": [e["epoch"]],
                                          "test_accuracy": [e["test_accuracy"]], "test_loss": [e["test_loss"]],
                                          "n": [e["n"]]})
                self.loss_y.include([e["test_loss"]])
            elif kind == "saved":
                self._saved(e)
            elif kind == "save_failed":
                self.notify(f"saving {e['name']} failed: {e['message']}")
            if kind in ("done", "stopped", "failed"):
                self.outcome = kind
            if kind == "failed":
                self.notify(f"training failed: {e['message']}")
            elif kind == "done":
                acc = e.get("test_accuracy")
                self.notify("training finished" + (f": test accuracy {100 * acc:.1f} % on {e['test_images']} "
                                                   "images" if acc is not None else ""), "success")
            elif kind == "stopped":
                self.notify(f"training stopped at step {e['step']}", "info")
        if batches:
            self._last_batch = batches[-1]
            cols = {k: [b[k] for b in batches] for k in self.batches.data}
            self._append(self.batches, cols)
            self.loss_y.include(cols["loss"])
        for p in probes[-PROBE_HISTORY:]:
            self._history(p)
        if probes:
            self._show_probe(probes[-1])
        self._update_status()
        self._dirty = False
        self._drawn_at = time.monotonic()
        self.events_drawn += len(events)
        return len(events)

    def _append(self, source, cols: dict, rollover: int | None = None) -> None:
        """Rows onto a source: streamed, or, in the drain that emptied it, assigned as new lists. The
        emptying is sent with the tick's other changes (one held message), serialised then: a stream
        extends the very lists it holds, so the page got the rows twice (48 batches drawn as 64 rows,
        the epoch-mean line looping back to step 1)."""
        if not self._fresh:
            source.stream(cols, rollover=rollover)
            return
        data = {k: list(source.data[k]) + list(cols[k]) for k in source.data}
        source.data = {k: v[-rollover:] for k, v in data.items()} if rollover else data

    def _clear(self) -> None:
        for s in (self.batches, self.evals, self.probe_steps, self.probe_phi, self.probe_history,
                  self.probe_output):
            s.data = {k: [] for k in s.data}
        for r in (self.loss_y, self.step_y, self.phi_y):
            r.reset()
        p = self._probe
        img = p.image.astype(np.float32)
        h, w = img.shape
        self.probe_image.data = {"image": [np.ascontiguousarray(img[::-1])], "x": [0], "y": [0], "dw": [w], "dh": [h]}
        self.img_fig.title.text = image_title("Probe", p.index, class_name(p.class_names, p.label))
        self.probe_text.object = "<div class='pred pending'>waiting for the first probe …</div>"

    def _history(self, p: dict) -> None:
        """Each probe's Phi curve joins the faint history, shaded darker as training goes on."""
        shades = Blues9[::-1][2:]          # light to dark
        k = min(len(self.probe_history.data["step"]), len(shades) - 1)
        self._append(self.probe_history, {"xs": [p["iteration"].tolist()], "ys": [p["phi"].tolist()],
                                          "step": [p["step"]], "color": [shades[k]]}, rollover=PROBE_HISTORY)
        self.phi_y.include(p["phi"][min(3, len(p["phi"]) - 1):])   # the start from zero lies far above

    def _show_probe(self, p: dict) -> None:
        layers = list(p["layers"])
        steps = p["step_size"]
        it = p["iteration"][1:].tolist()
        ys = [steps[1:, j] for j in range(len(layers))]
        self.probe_steps.data = {"xs": [it] * len(layers), "ys": [y.tolist() for y in ys], "layer": layers,
                                 "color": [layer_color(layers, n) for n in layers]}
        self.step_y.include(steps[1:])
        self.probe_phi.data = {"iteration": p["iteration"].tolist(), "phi": p["phi"].tolist()}
        y = p["output"]
        names = [class_name(self._probe.class_names, k) for k in range(len(y))]
        self.out_classes.set(names)
        k, label = p["predicted"], p["label"]
        self.probe_output.data = {"x": Categories.positions(len(y)), "name": names, "y": y.tolist(),
                                  "color": [LABEL_COLOR if j == label else (WRONG_COLOR if j == k else OTHER_COLOR)
                                            for j in range(len(y))],
                                  "target": [1.0 if j == label else 0.0 for j in range(len(y))],
                                  "text": [f"{v:.2f}" for v in y], "text_y": np.maximum(y, 0.0).tolist()}
        # The axis holds every bar (y below 0 or above 1 too) and the target marks at 0 and 1.
        finite = y[np.isfinite(y)]
        low = min(OUT_RANGE[0], float(finite.min()) - 0.05) if finite.size else OUT_RANGE[0]
        high = max(OUT_RANGE[1], float(finite.max()) + 0.15) if finite.size else OUT_RANGE[1]
        y_range = self.out_fig.y_range
        if (y_range.start, y_range.end) != (low, high):
            y_range.update(start=low, end=high)
        ok = k == label
        guess = class_name(self._probe.class_names, k)
        self.probe_text.object = (
            f"<div class='pred {'ok' if ok else 'bad'}'>at step <b>{p['step']}</b>: predicts "
            f"<b>{html.escape(guess)}</b> (y {y[k]:.2f}) {'✓' if ok else '✗'}<br>"
            f"free phase {p['status'].replace('_', ' ')} in {p['steps']} steps</div>")

    def _saved(self, e: dict) -> None:
        try:
            choice = self.app_state.add_trained(e["path"])
        except SettingError as exc:
            self.notify(str(exc))
            return
        self.notify(f"saved {e['name']} at step {e['step']}: choose '{choice}' in the model picker", "success")
        if self.on_saved is not None:
            self.on_saved(choice)

    # ------------------------------------------------------------------------------------
    # Status and buttons
    # ------------------------------------------------------------------------------------
    @property
    def phase(self) -> str:
        return self.worker.phase if self.worker is not None else "idle"

    def _status_html(self) -> str:
        phase = self.phase
        parts = [f"<span class='badge train-{phase}'>{PHASE_TEXT[phase]}</span>"]
        st, b, ev = self._started, self._last_batch, self._last_eval
        if st:
            parts.append(f"<b>{html.escape(st['network'])}</b> · {st['parameters']:,} parameters · "
                         f"{st['train_images']:,} images on {html.escape(st['device'])}")
            if st.get("fine_tuned_from"):
                parts.append(f"fine-tuning <b>{html.escape(st['fine_tuned_from'])}</b>")
        if b:
            parts.append(f"epoch {b['epoch']}/{st.get('epochs', '?')} · batch {b['batch']}/"
                         f"{st.get('batches_per_epoch', '?')} · {b['rate']:.0f} images/s")
            parts.append(f"train loss {b['train_loss']:.4f} · train accuracy {100 * b['train_accuracy']:.1f} %")
        if ev:
            parts.append(f"test accuracy <b>{100 * ev['test_accuracy']:.1f} %</b> ({ev['n']} images, "
                         f"after epoch {ev['epoch']})")
        return "<div class='status train-status'>" + " &nbsp;·&nbsp; ".join(parts) + "</div>"

    def _update_start_hint(self) -> None:
        """Say where the next run starts from; disable the settings the model fixes."""
        self._hint_stale = False
        continuing = self.settings.continuing
        for name in ARCHITECTURE:
            widget = self.arch_widgets[name]
            if widget.disabled != continuing:
                widget.disabled = continuing
        if not continuing:
            text = "A new network built from depth, width and residual below (seed 0)."
        else:
            try:
                start = relaxation_model(self.app_state)
            except SettingError as exc:
                text = f"<span class='warn'>{html.escape(str(exc))}</span>"
            else:
                text = (f"Continues from <b>{html.escape(start.choice)}</b> ({architecture_text(start.spec)}): "
                        "depth, width and residual come from it, and its weights are copied at Start "
                        "(the Relaxation tab keeps its own). α below applies.")
        text = f"<div class='hint start-hint'>{text}</div>"
        if self.start_hint.object != text:
            self.start_hint.object = text

    def _update_status(self) -> None:
        if self._hint_stale:
            self._update_start_hint()
        text = self._status_html()
        if self.status.object != text:
            self.status.object = text
        phase = self.phase
        enabled = {"start": phase not in ("loading", "running", "paused", "stopping"),
                   "pause": phase in ("loading", "running"), "resume": phase == "paused",
                   "stop": phase in ("loading", "running", "paused")}
        for buttons in (self.buttons, self.present_buttons):
            for name, button in buttons.items():
                if button.disabled == enabled[name]:
                    button.disabled = not enabled[name]
        can_save = self.worker is not None and self.worker.trainer is not None
        if self.save_button.disabled == can_save:
            self.save_button.disabled = not can_save

    def counts(self) -> dict[str, int]:
        return {"batches": len(self.batches.data["step"]), "evals": len(self.evals.data["step"]),
                "probe_layers": len(self.probe_steps.data["xs"]), "probe_phi": len(self.probe_phi.data["phi"]),
                "probe_history": len(self.probe_history.data["step"])}

    # ------------------------------------------------------------------------------------
    # Layout
    # ------------------------------------------------------------------------------------
    def controls(self, css: str = ""):
        s = self.settings

        def section(title, *items):
            return pn.Column(pn.pane.HTML(f"<div class='section'>{title}</div>", stylesheets=[css],
                                          margin=(8, 10, 0, 10)), *items, sizing_mode="stretch_width")

        def params(*names, **widgets):
            # Counts spanning orders of magnitude (images, batches) are typed, not slid.
            # Panel widgets default to 300 px; these fit the column they sit in.
            fit = {"sizing_mode": "stretch_width"}
            widgets = {n: {**fit, **({"type": pn.widgets.IntInput} if n in TYPED else {}), **widgets.get(n, {})}
                       for n in names}
            return pn.Param(s, parameters=list(names), show_name=False, sizing_mode="stretch_width",
                            widgets=widgets)
        start, end = SLIDER_RANGES["beta"]
        slider = {"type": pn.widgets.FloatSlider, "format": "0.00", "start": start, "end": end}
        arch = self.arch_widgets
        column = pn.Column(
            section("Start from", self.start_from, self.start_hint),
            section("Network", pn.Column(arch["depth"], arch["width"], arch["residual"], margin=(5, 10),
                                         sizing_mode="stretch_width"),
                    params("alpha", alpha={"type": pn.widgets.FloatInput, "step": 0.5})),
            section("Data", params("limit", "eval_limit")),
            section("EP", params("beta", "t_free", "t_nudge", "tol", beta=slider,
                                 tol={"type": pn.widgets.FloatInput, "step": 1e-4})),
            section("Optimisation", params("epochs", "batch_size", "lr", "probe_every",
                                           lr={"type": pn.widgets.FloatInput, "step": 0.005})),
            sizing_mode="stretch_width")
        # Sliders and checkboxes show no help of their own (Panel 1.9): a "?" beside each.
        docs = {p.label: p.doc for p in s.param.objects("existing").values() if p.doc and p.label}
        self.help_icons = with_help_icons([column], docs)
        return column

    def __panel__(self):
        if self._layout is None:
            self._layout = self._build_layout()
        return self._layout

    def _build_layout(self):
        css = self.css
        for pane in (self.status, self.probe_text, self.start_hint):
            pane.stylesheets = [css]
        run_row = pn.Row(*self.buttons.values(), sizing_mode="stretch_width", margin=(0, 5))
        name = pn.widgets.TextInput.from_param(self.settings.param.save_name, width=185, margin=(5, 3, 5, 10))
        save_row = pn.Row(name, self.save_button, margin=(0, 5))
        hint = pn.pane.HTML("<div class='hint'>The probe is the Relaxation tab's input image at Start. A saved "
                            "checkpoint appears in the model picker as <b>trained: NAME</b>.</div>",
                            stylesheets=[css], margin=(0, 10))
        left = self._left = pn.Column(run_row, save_row, hint, self.controls(css), width=290)
        probe = pn.Card(
            pn.Row(pn.Column(bokeh_pane(self.img_fig, sizing_mode="fixed"), self.probe_text),
                   bokeh_pane(self.step_fig), bokeh_pane(self.phi_fig), sizing_mode="stretch_width"),
            bokeh_pane(self.out_fig),
            title="Probe image: its free phase through the current weights", collapsible=True,
            margin=(6, 6), sizing_mode="stretch_width", css_classes=["explorer-view", "view-train-probe"])
        curves = pn.Card(pn.Row(bokeh_pane(self.loss_fig), bokeh_pane(self.acc_fig), sizing_mode="stretch_width"),
                         title="Loss and accuracy", collapsible=True, margin=(6, 6), sizing_mode="stretch_width",
                         css_classes=["explorer-view", "view-train-curves"])
        right = pn.Column(self.present_bar, self.status, curves, probe, sizing_mode="stretch_width")
        layout = pn.Row(left, right, sizing_mode="stretch_width")
        self.param.watch(lambda _e: self._apply_present(), "present")
        self._apply_present()
        return layout

    # ------------------------------------------------------------------------------------
    # Presentation mode (a widget callback: the page's thread)
    # ------------------------------------------------------------------------------------
    def _fold_settings(self) -> None:
        if self._left is not None:
            self._left.visible = not self.present or self.show_settings.value

    def _apply_present(self) -> None:
        """Fold the settings column away and fit titles and legends to the large fonts; back on a desk."""
        on = self.present
        self.present_bar.visible = on
        self._fold_settings()
        for name in PRESENT_WIDTH_1024:
            fig = getattr(self, name)
            desk = self._desk.setdefault(name, (fig.title.text, fig.height))
            fig.title.text = PRESENT_TITLES.get(name, desk[0]) if on else desk[0]
            fig.height = PRESENT_HEIGHT[name] if on else desk[1]
            if name in LEGEND_BELOW:
                legend_below(fig, on)
        self.bar_text.glyph.text_font_size = BAR_TEXT[on]


def legend_below(fig, below: bool) -> None:
    """A figure's legend below the plot (one entry a line) or beside it, on its right (style_legend)."""
    for leg in fig.legend:
        if below and leg in fig.right:
            fig.right = [m for m in fig.right if m is not leg]
            fig.below = [*fig.below, leg]
        elif not below and leg in fig.below:
            fig.below = [m for m in fig.below if m is not leg]
            fig.right = [*fig.right, leg]


__all__ = ["TrainView"]
