"""View 5: the output units and the prediction against the label.

Bars: the output units y of the free phase (live while it relaxes, then the
fixed point y*). Markers: y at the end of the nudged +beta and -beta phases,
pulled towards the one-hot target of the label. The prediction is argmax y*.
The plot's title stays short ("Output units y": the plot sits beside the
input image, so it is narrow); a smaller subtitle under it says the label,
then the prediction, so a saved PNG still tells them.
"""
from __future__ import annotations

import numpy as np
import panel as pn
import torch
from bokeh.models import ColumnDataSource, HoverTool, Range1d, Title

from ...network import OUTPUT
from ..state import class_name
from ..worker import PhaseEnded
from .base import INK, PHASE_COLORS, Batch, Run, StableRange, View, bokeh_pane, make_figure, static_legend
from .categories import Categories

LABEL_COLOR = "#009E73"
WRONG_COLOR = "#C00000"
OTHER_COLOR = "#9DB4C8"
IMAGE_WIDTH = 220   # px, the input image's figure


def image_title(what: str, index: int | None = None, label: str = "") -> str:
    """"Input #7" over its class name: on one line, "Input #0: T-shirt/top" ran past the image's
    narrow figure at the presentation font size (24 px). Two lines before an image is shown too: a
    title that gains a line leaves its first line's old paint above it (Bokeh 3.9)."""
    return f"{what}\n…" if index is None else f"{what} #{index}\n{label}"


class OutputView(View):
    key = "output"
    min_interval = 0.2
    title = "1 · Output and prediction"
    about = "The input image, the output units y and the prediction argmax y* against the label."

    def __init__(self, app_state, **params):
        super().__init__(app_state, **params)
        names = [class_name(app_state.samples.class_names, k) for k in range(10)]
        self.bars = ColumnDataSource(data={"x": Categories.positions(10), "name": names, "y": [0.0] * 10,
                                           "color": [OTHER_COLOR] * 10,
                                           "y_plus": [np.nan] * 10, "y_minus": [np.nan] * 10,
                                           "target": [0.0] * 10}, name="explorer.output.bars")
        self.image = ColumnDataSource(data={"image": [], "x": [], "y": [], "dw": [], "dh": []},
                                      name="explorer.output.input")
        self.x_range = Range1d(-0.5, 9.5)
        self.y = StableRange(floor=(0.0, 1.0), headroom=0.1)   # always shows the one-hot target
        self.fig = make_figure("Output units y", height=330, x_label="", y_label="y",
                               x_range=self.x_range, y_range=self.y.range, tools="save")
        self.classes = Categories(self.fig, names)
        # Laid out under the title (Bokeh puts the figure's own title outermost).
        self.subtitle = Title(text="", text_font_size="13px", text_font_style="normal")
        self.fig.add_layout(self.subtitle, "above")
        self.fig.vbar(x="x", top="y", width=0.75, source=self.bars, color="color", legend_label="y (free phase)")
        self.fig.scatter(x="x", y="target", source=self.bars, marker="dash", size=26, line_width=3,
                         color=INK, legend_label="target (one-hot)")
        self.fig.scatter(x="x", y="y_plus", source=self.bars, marker="triangle", size=10,
                         color=PHASE_COLORS["nudged+"], legend_label="y after nudged +β")
        self.fig.scatter(x="x", y="y_minus", source=self.bars, marker="inverted_triangle", size=10,
                         color=PHASE_COLORS["nudged-"], legend_label="y after nudged −β")
        self.fig.add_tools(HoverTool(tooltips=[("class", "@name"), ("y", "@y{0.000}"),
                                               ("y (+β)", "@y_plus{0.000}"), ("y (−β)", "@y_minus{0.000}")]))
        self.fig.xaxis.major_label_orientation = 0.6
        self.fig.xgrid.grid_line_color = None
        leg = self.fig.legend[0]
        leg.label_text_font_size = "12px"
        leg.spacing = 2
        leg.padding = 2
        leg.border_line_alpha = 0
        leg.orientation = "horizontal"
        leg.ncols = 2
        self.fig.add_layout(leg, "below")
        static_legend(self.fig, {"y (free phase)": OTHER_COLOR})
        self.img_fig = make_figure(image_title("Input"), height=230, x_label="", y_label="", sizing_mode="fixed",
                                   width=IMAGE_WIDTH, tools="save", match_aspect=True, min_border_left=10)
        self.img_fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.image, palette="Greys256")
        self.img_fig.axis.visible = False
        self.img_fig.grid.visible = False
        self.prediction = pn.pane.HTML("", css_classes=["prediction"], margin=(0, 10), width=IMAGE_WIDTH,
                                       height=84)
        self.predicted: int | None = None
        self._shown = None
        self._image_of: tuple | None = None

    def start_run(self, run: Run) -> None:
        super().start_run(run)
        r = run
        n = r.n_classes
        names = [class_name(r.class_names, k) for k in range(n)]
        self.classes.set(names)
        colors = [LABEL_COLOR if k == r.label else OTHER_COLOR for k in range(n)]
        self.bars.data = {"x": Categories.positions(n), "name": names, "y": [0.0] * n, "color": colors,
                          "y_plus": [np.nan] * n,
                          "y_minus": [np.nan] * n, "target": [1.0 if k == r.label else 0.0 for k in range(n)]}
        x = run.x[0].reshape(-1, *run.x.shape[-2:])[0] if run.x.dim() >= 3 else None
        key = (r.sample, None if x is None else float(x.double().sum()))
        if key != self._image_of:   # a new run on the same image needs no new picture
            self._image_of = key
            if x is None:
                self.image.data = {k: [] for k in self.image.data}
            else:   # the run's own input (the colour map spans its values: normalised or not looks alike)
                img = x.to(torch.float32).numpy()
                h, w = img.shape
                self.image.data = {"image": [np.ascontiguousarray(img[::-1])], "x": [0], "y": [0],
                                   "dw": [w], "dh": [h]}
        self.img_fig.title.text = image_title("Input", r.sample, class_name(r.class_names, r.label))
        self.predicted = None
        self._shown = None
        self.y.reset()
        self.y.include([0.0, 1.0])
        self._set_prediction(None, final=False)

    def _set_prediction(self, y: np.ndarray | None, final: bool) -> None:
        r = self.run
        shown = (None if y is None else int(np.argmax(y)), final)
        if y is not None and shown == self._shown:
            return   # the text only changes with the predicted class
        self._shown = shown
        label = class_name(r.class_names, r.label)
        if y is None:
            self.prediction.object = f"<div class='pred pending'>label <b>{label}</b><br>prediction: …</div>"
            self.subtitle.text = f"label: {label}"
            return
        k = int(np.argmax(y))
        self.predicted = k
        guess = class_name(r.class_names, k)
        ok = k == r.label
        state = "final" if final else "so far"
        mark = "✓ correct" if ok else "✗ wrong"
        self.prediction.object = (f"<div class='pred {'ok' if ok else 'bad'}'>label <b>{label}</b><br>"
                                  f"prediction ({state}): <b>{guess}</b> {mark}</div>")
        self.subtitle.text = f"predicted: {guess} {mark[0]}"

    def push(self, batch: Batch) -> None:
        """Live outputs: the bars follow y through the free phase, the markers through the nudged ones."""
        for phase in ("free", "nudged+", "nudged-"):
            f = batch.latest(phase)
            if f is not None and OUTPUT in f.states:
                self._show(phase, np.asarray(f.states[OUTPUT], dtype=np.float64), final=False)

    def _show(self, phase: str, y: np.ndarray, final: bool) -> None:
        n = len(y)
        self.y.include(y)
        if phase == "free":
            r = self.run
            k = int(np.argmax(y))
            colors = [LABEL_COLOR if j == r.label else (WRONG_COLOR if j == k else OTHER_COLOR)
                      for j in range(n)]
            self.bars.patch({"y": [(slice(0, n), y.tolist())], "color": [(slice(0, n), colors)]})
            self._set_prediction(y, final)
        else:
            col = "y_plus" if phase == "nudged+" else "y_minus"
            self.bars.patch({col: [(slice(0, n), y.tolist())]})

    def phase_ended(self, event: PhaseEnded) -> None:
        if event.status != "cancelled":
            self._show(event.phase, np.asarray(event.output, dtype=np.float64), final=event.phase == "free")

    def sources(self):
        return {"bars": self.bars, "input": self.image}

    def data_count(self) -> int:
        return int(np.count_nonzero(np.asarray(self.bars.data["y"], dtype=float))) + len(self.image.data["image"])

    def body(self):
        return pn.Row(pn.Column(bokeh_pane(self.img_fig, sizing_mode="fixed"), self.prediction),
                      bokeh_pane(self.fig), sizing_mode="stretch_width")
