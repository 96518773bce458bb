"""View 4: nudged versus free.

Left: a layer-by-step heat map of ||s_beta - s*|| (stat nudge_distance) for
the nudged +beta and -beta phases. Right: feature maps of one channel of one
layer: the free state s*, the nudged state s_beta and their difference, from
the full states the engine records for that layer
(``RecordConfig(state_layers=(layer,), state_samples=(0,))``).
"""
from __future__ import annotations

import numpy as np
import panel as pn
from bokeh.models import ColorBar, ColumnDataSource, LinearColorMapper, LogColorMapper, Range1d
from bokeh.palettes import Cividis256, Magma256, RdBu11

from ...record import STAT_INDEX
from .base import (FONT_SIZES, INK, Batch, HeatImage, PinNote, Run, View, bokeh_pane, layer_axis, make_figure,
                   pinned_caption, stored_batch)

NUDGED = ("nudged+", "nudged-")
SIGN = {"nudged+": "+β", "nudged-": "−β"}
DIVERGING = tuple(reversed(RdBu11))  # blue negative, red positive
_DIST = STAT_INDEX["nudge_distance"]
GAP = 0.25                            # between feature-map panels, in map widths
MAPS_WIDTH = 660                      # px, the feature maps' figure
# px, the heat map's least width: its title at the presentation font (24 px, a generous 0.6 em a
# character) right of its layer labels. Narrower, the feature maps wrap below it (at 1024 px the
# title, 439 px, was cut in a 322-px figure beside the maps).
HEAT_MIN_WIDTH = 700
MAP_LABEL_SIZE = {False: "13px", True: "17px"}   # the feature maps' names, on a desk and when presenting


def heat_title(beta: float) -> str:
    return f"‖s_β − s*‖ per layer and step (β = {beta:.3g})"


def block_origin(phase: str, n_layers: int) -> int:
    """Image row of the last layer of a phase's block: nudged +beta on top, a blank row between."""
    return n_layers + 1 if phase == "nudged+" else 0


def label_rows(fig, layers: list[str]) -> None:
    """Name a heat map's rows: a block of layers per nudged phase, the first layer on top of its block."""
    n = len(layers)
    labels, positions = [], []
    for p in NUDGED:
        y0 = block_origin(p, n)
        for i, name in enumerate(reversed(layers)):
            labels.append(f"{name}  {SIGN[p]}")
            positions.append(y0 + i)
    layer_axis(fig, labels, positions)
    fig.y_range.update(start=-0.5, end=2 * n + 0.5)


def distances(batch: Batch, phase: str) -> tuple[np.ndarray, np.ndarray]:
    """The phase's real steps in the batch and ||s_beta - s*|| there, [steps, layers] (NaN where 0).
    Step 0 is s* itself: its distance is zero by definition."""
    idx = np.flatnonzero((np.array(batch.phase) == phase) & batch.real_step)
    dist = batch.stats[idx][:, :, _DIST]
    return batch.step[idx], np.where(dist > 0, dist, np.nan)


class NudgeView(View):
    key = "nudge"
    min_interval = 0.2
    title = "6 · Nudged versus free"
    about = ("How far each layer moves from the free fixed point s* while the output is nudged "
             "towards the label (log colour scale), and one feature map before and after.")

    def __init__(self, app_state, **params):
        super().__init__(app_state, **params)
        layers = list(app_state.base_network().layer_names)
        self.mapper = LogColorMapper(palette=Magma256, low=1e-4, high=1.0, nan_color="rgba(0, 0, 0, 0)")
        self.fig = make_figure("‖s_β − s*‖ per layer and step", height=380, x_label="step of the nudged phase",
                               y_label="", x_range=(0, 51), y_range=Range1d(-0.5, 2 * len(layers) + 0.5),
                               tools="xpan,xwheel_zoom,box_zoom,reset,save,hover",
                               tooltips=[("step", "$x{0}"), ("‖s_β − s*‖", "@image{0.000e}")])
        self.heat = {p: HeatImage(self.fig, self.mapper, f"explorer.nudge.{p}") for p in NUDGED}
        self.fig.ygrid.grid_line_color = None
        self.fig.add_layout(ColorBar(color_mapper=self.mapper, width=10, title="‖s_β − s*‖",
                                     title_text_font_size="11px", major_label_text_font_size="11px"), "right")
        self._layers: list[str] = []
        self._set_rows(layers)
        self._pinned_map(len(layers))
        # Feature maps: three panels side by side in one figure.
        self.state_mapper = LinearColorMapper(palette=Cividis256, low=0.0, high=6.0)
        self.diff_mapper = LinearColorMapper(palette=DIVERGING, low=-1.0, high=1.0)
        self.maps = {k: ColumnDataSource(data={"image": [], "x": [], "y": [], "dw": [], "dh": []},
                                         name=f"explorer.nudge.map_{k}") for k in ("free", "nudged", "diff")}
        self.labels = ColumnDataSource(data={"x": [], "y": [], "text": []}, name="explorer.nudge.map_labels")
        self.map_fig = make_figure("Feature maps", height=300, width=MAPS_WIDTH, sizing_mode="fixed", x_label="",
                                   y_label="", match_aspect=True, tools="hover,save",
                                   tooltips=[("value", "@image{0.000}")], min_border_left=10)
        for key, mapper in (("free", self.state_mapper), ("nudged", self.state_mapper), ("diff", self.diff_mapper)):
            self.map_fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.maps[key],
                               color_mapper=mapper)
        labels = self.map_fig.text("x", "y", text="text", source=self.labels, text_font_size=MAP_LABEL_SIZE[False],
                                   text_align="center", text_baseline="bottom", text_color=INK)
        # The panels' names follow the page's text size (style() sets the title's: larger when presenting).
        present_title = f"{FONT_SIZES[True]['title']}px"
        self.map_fig.title.on_change("text_font_size", lambda _a, _o, new: labels.glyph.update(
            text_font_size=MAP_LABEL_SIZE[new == present_title]))
        self.map_fig.axis.visible = False
        self.map_fig.grid.visible = False
        self.map_fig.add_layout(ColorBar(color_mapper=self.state_mapper, width=8, title="s",
                                         major_label_text_font_size="10px"), "right")
        self.map_fig.add_layout(ColorBar(color_mapper=self.diff_mapper, width=8, title="s_β − s*",
                                         major_label_text_font_size="10px"), "right")
        self._latest: dict[str, np.ndarray] = {}  # phase -> last state [C, H, W] of the map layer
        self._max = 0.0
        self._titled_channel = -1

    def _set_rows(self, layers: list[str]) -> None:
        if layers == self._layers:
            return
        self._layers = list(layers)
        label_rows(self.fig, self._layers)

    def _pinned_map(self, n_layers: int) -> None:
        """Run A's distances in a map of their own under B's (a map drawn over another hides it), on
        the same steps and colour scale, shown while A is pinned."""
        self.pinned_id: str | None = None
        self._alayers: list[str] = []
        self._pinned_max = 0.0
        self.afig = make_figure("A (pinned)", height=300, x_label="step of the nudged phase", y_label="",
                                x_range=self.fig.x_range, y_range=Range1d(-0.5, 2 * n_layers + 0.5),
                                tools="xpan,xwheel_zoom,box_zoom,reset,save,hover",
                                tooltips=[("step", "$x{0}"), ("‖s_β − s*‖ of A", "@image{0.000e}")])
        self.aheat = {p: HeatImage(self.afig, self.mapper, f"explorer.nudge.pinned.{p}") for p in NUDGED}
        self.afig.ygrid.grid_line_color = None
        self.afig.visible = False
        self.apane = bokeh_pane(self.afig)
        self.pin_note = PinNote("in the lower map")

    # -- data ------------------------------------------------------------------------------
    def start_run(self, run: Run) -> None:
        super().start_run(run)
        self._set_rows(list(run.layers))
        n = len(run.layers)
        for p in NUDGED:
            self.heat[p].reset(n, run.steps_of("nudged+") + 1, y0=block_origin(p, n))
        steps = max(r.steps_of("nudged+") for r in (run, *self.pinned_runs()))
        self.fig.x_range.update(start=0.5, end=steps + 0.5)
        for src in (*self.maps.values(), self.labels):
            src.data = {k: [] for k in src.data}
        self._latest = {}
        self._max = self._pinned_max     # one colour scale for A and B
        if self._max > 0:
            self.mapper.update(high=self._max, low=max(self._max * 1e-5, 1e-12))
        self.state_mapper.update(low=0.0, high=float(run.settings["alpha"]))
        self._set_title()

    def _set_title(self) -> None:
        run = self.run
        self._titled_channel = self._channel()
        self.fig.title.text = heat_title(run.beta)
        self.map_fig.title.text = (f"Feature maps of layer {run.settings['map_layer']}, "
                                   f"channel {self._titled_channel}")

    def _channel(self) -> int:
        """The chosen channel, or (-1) the channel of s* with the largest mean activity."""
        free = self._latest.get("free")
        c = int(self.state.map_channel)
        if free is None:
            return max(c, 0)
        if c < 0:
            return int(np.argmax(free.reshape(free.shape[0], -1).mean(1)))
        return min(c, free.shape[0] - 1)

    def push(self, batch: Batch) -> None:
        run = batch.run
        for p in NUDGED:
            steps, dist = distances(batch, p)
            if not len(steps):
                continue
            self.heat[p].fill(steps, dist[:, ::-1])
            top = float(np.nanmax(dist)) if np.isfinite(dist).any() else 0.0
            if top > self._max * 1.5 or (top > 0 and self._max == 0):   # re-scale in steps, not every tick
                self._max = top
                self.mapper.update(high=top, low=max(top * 1e-5, 1e-12))
        changed = False
        for p in ("free", *NUDGED):
            f = batch.latest(p)
            if f is not None and run.settings["map_layer"] in f.states:
                self._latest[p] = f.states[run.settings["map_layer"]]
                changed = True
        if changed:
            self._draw_maps()
            if self._channel() != self._titled_channel:
                self._set_title()

    def draw_pinned(self, runs: list[Run]) -> None:
        """The latest pinned run's distances in the lower map (hidden when none is pinned)."""
        run = runs[-1] if runs else None
        self.pinned_id = run.id if run is not None else None
        self.afig.visible = run is not None   # the figure: a served Bokeh pane rejects its own styles then
        self.pin_note.show(runs[-1:])
        self._pinned_max = 0.0
        if run is None:
            for h in self.aheat.values():
                h.reset(1, 1)
            return
        self._alayers = list(run.layers)
        n = len(self._alayers)
        label_rows(self.afig, self._alayers)
        self.afig.title.text = f"{pinned_caption(run)}: ‖s_β − s*‖"
        if run.steps_of("nudged+") + 0.5 > self.fig.x_range.end:
            self.fig.x_range.update(end=run.steps_of("nudged+") + 0.5)
        batch = stored_batch(run)
        for p in NUDGED:
            self.aheat[p].reset(n, run.steps_of("nudged+") + 1, y0=block_origin(p, n))
            steps, dist = distances(batch, p)
            if len(steps):
                self.aheat[p].fill(steps, dist[:, ::-1])
                if np.isfinite(dist).any():
                    self._pinned_max = max(self._pinned_max, float(np.nanmax(dist)))
        if self._pinned_max > self._max:
            self._max = self._pinned_max
            self.mapper.update(high=self._max, low=max(self._max * 1e-5, 1e-12))

    def pinned_distances(self, phase: str) -> dict[str, np.ndarray]:
        """Per layer of the pinned run drawn (A), ||s_beta - s*|| by step as drawn."""
        if self.pinned_id is None:
            return {}
        img = self.aheat[phase].array
        return {name: img[len(self._alayers) - 1 - i] for i, name in enumerate(self._alayers)}

    def pinned_sources(self):
        if self.pinned_id is None:
            return {}
        return {self.pinned_id: {f"heat {p}": h.source for p, h in self.aheat.items()}}

    def _draw_maps(self) -> None:
        shown = self.state.map_phase
        free = self._latest.get("free")
        nudged = self._latest.get(shown)
        c = self._channel()
        ref = free if free is not None else nudged
        if ref is None:
            return
        h, w = ref.shape[1:]
        step = w * (1 + GAP)
        titles = ["s*  (free)", f"s_β  (nudged {SIGN[shown]})", "s_β − s*"]
        # Colour range of the two states: their own maximum (a range up to alpha shows little).
        top = max(float(a[c].max()) for a in (free, nudged) if a is not None)
        top = top if top > 0 else float(self.run.settings["alpha"])
        if not (0.5 * self.state_mapper.high <= top <= self.state_mapper.high):
            self.state_mapper.update(low=0.0, high=top)
        for k, (key, arr) in enumerate((("free", free), ("nudged", nudged))):
            if arr is not None:
                self._image(key, arr[c], k * step)
        if free is not None and nudged is not None:
            diff = nudged[c] - free[c]
            m = float(np.abs(diff).max())
            m = m if m > 0 else 1e-6
            if not (0.5 * self.diff_mapper.high <= m <= self.diff_mapper.high):
                self.diff_mapper.update(low=-m, high=m)
            self._image("diff", diff, 2 * step)
        else:
            self.maps["diff"].data = {k: [] for k in self.maps["diff"].data}
        labels = {"x": [k * step + w / 2 for k in range(3)], "y": [h + 0.5] * 3, "text": titles}
        if self.labels.data.get("text") != titles or self.labels.data.get("x") != labels["x"]:
            self.labels.data = labels

    def _image(self, key: str, arr2d: np.ndarray, x: float) -> None:
        h, w = arr2d.shape
        # Bokeh draws image rows bottom-up; flip so row 0 is at the top, as in the input image.
        self.maps[key].data = {"image": [np.ascontiguousarray(arr2d[::-1])], "x": [x], "y": [0],
                               "dw": [w], "dh": [h]}

    def refresh_display(self) -> None:
        super().refresh_display()
        if self.run is not None:
            self._set_title()
            if self._latest:
                self._draw_maps()

    def distances(self, phase: str) -> dict[str, np.ndarray]:
        """Per layer, ||s_beta - s*|| by step as drawn (NaN where not drawn; step 0 is s* itself)."""
        img = self.heat[phase].array
        return {n: img[len(self._layers) - 1 - i] for i, n in enumerate(self._layers)}

    def sources(self):
        return {**{f"heat {p}": h.source for p, h in self.heat.items()},
                **{f"map {k}": s for k, s in self.maps.items()}}

    def data_count(self) -> int:
        return sum(h.filled() for h in self.heat.values()) + sum(len(s.data["image"]) for s in self.maps.values())

    def body(self):
        # The maps beside the heat map where both fit, else below it (a wrapping flex row).
        heat = pn.Column(bokeh_pane(self.fig), self.apane, sizing_mode="stretch_width", min_width=HEAT_MIN_WIDTH,
                         styles={"flex": f"1 1 {HEAT_MIN_WIDTH}px"})
        self.heat_row = pn.Row(heat, pn.Column(bokeh_pane(self.map_fig, sizing_mode="fixed")),
                               sizing_mode="stretch_width", styles={"flex-wrap": "wrap"})
        return pn.Column(self.pin_note.pane, self.heat_row, sizing_mode="stretch_width")
