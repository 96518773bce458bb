"""View 3: residual-path contributions.

A layer's pre-activation is the sum of the direct (main-path) drive, the skip
drive (the 1x1 residual projection from two layers back), the feedback from
the layers above, and the bias. Per layer and step the engine records the
norms drive_direct, drive_skip, drive_feedback and
residual_share = ||skip|| / (||direct|| + ||skip|| + ||feedback||).
"""
from __future__ import annotations

import numpy as np
import panel as pn
from bokeh.models import ColorBar, ColumnDataSource, FactorRange, LinearColorMapper, Range1d
from bokeh.palettes import Viridis256

from .base import (Batch, HeatImage, PhaseBands, PinNote, Run, View, bokeh_pane, cover_time, layer_axis,
                   make_figure, pinned_caption, set_time_range, static_legend, stored_batch, style_legend,
                   time_range)

PARTS = ("direct", "skip", "feedback")
PART_COLORS = {"direct": "#0072B2", "skip": "#E69F00", "feedback": "#999999"}
PART_LABELS = {"direct": "direct edge", "skip": "skip edge", "feedback": "feedback"}


def drive_shares(batch: Batch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per real step and hidden layer: residual_share (clipped to [0, 1]) and the drive's split
    into direct, skip and feedback (fractions of their sum; NaN where a diverged run has none)."""
    run, keep = batch.run, batch.real_step
    hidden_idx = [run.layers.index(n) for n in run.hidden]
    parts = {p: batch.stat(f"drive_{p}")[keep][:, hidden_idx] for p in PARTS}
    share = batch.stat("residual_share")[keep][:, hidden_idx]
    total = sum(parts.values())
    total = np.where(np.isfinite(total) & (total > 0), total, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        split = {p: v / total for p, v in parts.items()}
    return np.clip(share, 0.0, 1.0), split


# Titles that fit at the presentation font (24 px): the share's formula is in the view's text above.
# The heat map keeps a least width for its title; the drive split's column holds its two-line title
# and its legend (at 1024x768 both titles were cut, and the legend ran past the figure).
SHARE_MIN_WIDTH = 640
SPLIT_WIDTH = 380
SPLIT_TITLE = "Drive split\nat the latest step"


def share_title(plain: bool) -> str:
    return "Residual share: none (plain network)" if plain else "Residual share per layer and iteration"


class ResidualView(View):
    key = "residual"
    min_interval = 0.2
    title = "4 · Residual-path contributions"
    about = ("Share of each layer's drive that comes through its skip edge, ‖skip‖ / (‖direct‖ + ‖skip‖ + "
             "‖feedback‖), per iteration (left), "
             "and the split of the drive into direct edge, skip edge and feedback at the latest step "
             "(right). Only even layers receive a skip.")

    def __init__(self, app_state, **params):
        super().__init__(app_state, **params)
        self.bars = ColumnDataSource(data={"layer": [], "direct": [], "skip": [], "feedback": []},
                                     name="explorer.residual.bars")
        self.x_range = time_range()
        layers = [n for n in app_state.base_network().layer_names if n != "y"]
        self.y_range = Range1d(-0.5, len(layers) - 0.5)
        self.mapper = LinearColorMapper(palette=Viridis256, low=0.0, high=1.0, nan_color="rgba(0, 0, 0, 0)")
        self.fig = make_figure(share_title(plain=False), height=300,
                               y_label="layer", x_range=self.x_range, y_range=self.y_range,
                               tools="xpan,xwheel_zoom,box_zoom,reset,save,hover",
                               tooltips=[("iteration", "$x{0}"), ("residual share", "@image{0.000}")])
        self.heat = HeatImage(self.fig, self.mapper, "explorer.residual.heat")
        self.fig.add_layout(ColorBar(color_mapper=self.mapper, width=10, title="share",
                                     title_text_font_size="11px", major_label_text_font_size="11px"),
                            "right")
        self.fig.ygrid.grid_line_color = None
        self.bands = PhaseBands(self.fig)
        self.bfig = make_figure(SPLIT_TITLE, height=300, width=SPLIT_WIDTH, sizing_mode="fixed",
                                x_label="share of the drive", y_label="",
                                y_range=FactorRange(factors=list(reversed(layers))), x_range=(0, 1))
        self.bfig.hbar_stack(list(PARTS), y="layer", height=0.7, source=self.bars,
                             color=[PART_COLORS[p] for p in PARTS],
                             legend_label=[PART_LABELS[p] for p in PARTS])
        style_legend(self.bfig, "bottom_right", outside=False)
        self.bfig.legend[0].orientation = "horizontal"
        self.bfig.legend[0].spacing = 10   # a gap between an item's label and the next swatch
        self.bfig.add_layout(self.bfig.legend[0], "below")
        static_legend(self.bfig)
        self.bfig.ygrid.grid_line_color = None
        self.plain = False
        self._layers: list[str] = []
        self._set_rows(layers)
        self._pinned_map()

    def _pinned_map(self) -> None:
        """Run A's shares in a map of their own under B's (one map over another would hide it), on the
        same time axis and colours, shown while A is pinned."""
        self.pinned_id: str | None = None
        self._alayers: list[str] = []
        self.afig = make_figure("A (pinned)", height=220, y_label="layer", x_range=self.x_range,
                                y_range=Range1d(-0.5, 0.5), tools="xpan,xwheel_zoom,box_zoom,reset,save,hover",
                                tooltips=[("iteration", "$x{0}"), ("residual share of A", "@image{0.000}")])
        self.aheat = HeatImage(self.afig, self.mapper, "explorer.residual.pinned")
        self.afig.ygrid.grid_line_color = None
        self.abands = PhaseBands(self.afig, labels=False)
        self.afig.visible = False
        self.apane = bokeh_pane(self.afig)
        self.pin_note = PinNote("in the lower map")

    def _set_rows(self, layers: list[str]) -> None:
        """Layer s1 on the top row of the image."""
        if layers == self._layers:
            return
        self._layers = list(layers)
        self.y_range.update(start=-0.5, end=len(layers) - 0.5)
        layer_axis(self.fig, list(reversed(layers)))
        self.bfig.y_range.factors = list(reversed(layers))

    def start_run(self, run: Run) -> None:
        super().start_run(run)
        self._set_rows(list(run.hidden))
        self.heat.reset(len(run.hidden), run.x_end + 1)
        self.bars.data = {k: [] for k in self.bars.data}
        set_time_range(self.x_range, run)
        cover_time(self.x_range, self.pinned_runs())
        self.bands.place(run)
        self.plain = not run.residual
        self.fig.title.text = share_title(self.plain)

    def push(self, batch: Batch) -> None:
        keep = batch.real_step
        if not keep.any():
            return
        share, split = drive_shares(batch)
        # Image rows bottom-up: the last layer first, so s1 is the top row.
        self.heat.fill(batch.x[keep].astype(np.int64), share[:, ::-1])
        self.bars.data = {"layer": list(batch.run.hidden), **{k: v[-1].tolist() for k, v in split.items()}}

    def draw_pinned(self, runs: list[Run]) -> None:
        """The latest pinned run's shares in the lower map (hidden when none is pinned)."""
        run = runs[-1] if runs else None
        self.pinned_id = run.id if run is not None else None
        self.afig.visible = run is not None   # the figure: a served Bokeh pane rejects its own styles then
        self.pin_note.show(runs[-1:])
        if run is None:
            self.aheat.reset(1, 1)
            cover_time(self.x_range, [], shown=self.run)
            return
        hidden = self._alayers = list(run.hidden)
        self.afig.y_range.update(start=-0.5, end=len(hidden) - 0.5)
        layer_axis(self.afig, list(reversed(hidden)))
        self.afig.title.text = f"{pinned_caption(run)}: residual share"
        self.abands.place(run)
        cover_time(self.x_range, [run], shown=self.run)
        self.aheat.reset(len(hidden), run.x_end + 1)
        batch = stored_batch(run)
        if batch.real_step.any():
            self.aheat.fill(batch.x[batch.real_step].astype(np.int64), drive_shares(batch)[0][:, ::-1])

    def pinned_shares(self) -> dict[str, np.ndarray]:
        """Per layer of the pinned run drawn (A), its residual shares as drawn."""
        if self.pinned_id is None:
            return {}
        img = self.aheat.array
        n = img.shape[0]
        return {name: img[n - 1 - i] for i, name in enumerate(self._alayers)}

    def pinned_sources(self):
        return {self.pinned_id: {"heat": self.aheat.source}} if self.pinned_id is not None else {}

    def shares(self) -> dict[str, np.ndarray]:
        """Per layer, the residual shares drawn so far (NaN where no step has been drawn)."""
        img = self.heat.array
        return {n: img[len(self._layers) - 1 - i] for i, n in enumerate(self._layers)}

    def sources(self):
        return {"heat": self.heat.source, "bars": self.bars}

    def data_count(self) -> int:
        return self.heat.filled()

    def body(self):
        # The drive split beside the heat map where both fit, else below it (a wrapping flex row).
        heat = pn.Column(bokeh_pane(self.fig), self.apane, sizing_mode="stretch_width", min_width=SHARE_MIN_WIDTH,
                         styles={"flex": f"1 1 {SHARE_MIN_WIDTH}px"})
        # (the split's width on its figure, not on its column: a column's width adds to the row's least
        # width, which then ran past a 1024-px page instead of wrapping)
        self.share_row = pn.Row(heat, pn.Column(bokeh_pane(self.bfig, sizing_mode="fixed")),
                                sizing_mode="stretch_width", styles={"flex-wrap": "wrap"})
        return pn.Column(self.pin_note.pane, self.share_row, sizing_mode="stretch_width")
