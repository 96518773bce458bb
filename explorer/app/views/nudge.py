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
from bokeh.models import ColorBar, ColumnDataSource, FactorRange, HoverTool, LinearColorMapper, LogColorMapper
from bokeh.palettes import Cividis256, Magma256, RdBu11

from ...record import STAT_INDEX
from .base import Batch, Run, View, bokeh_pane, make_figure

NUDGED = ("nudged+", "nudged-")
SIGN = {"nudged+": "+β", "nudged-": "−β"}
DIVERGING = tuple(reversed(RdBu11))  # blue negative, red positive
_DIST = STAT_INDEX["nudge_distance"]


class NudgeView(View):
    key = "nudge"
    title = "4 · Nudged versus free"
    about = ("How far each layer moves from the free fixed point s* while the output is nudged "
             "towards the label (log colour scale), and one feature map before and after.")

    def __init__(self, app_state):
        super().__init__(app_state)
        layers = list(app_state.base_network().layer_names)
        self.y_range = FactorRange(factors=list(reversed(layers)))
        self.mapper = LogColorMapper(palette=Magma256, low=1e-4, high=1.0, nan_color="#eeeeee")
        self.heat = {}
        self.figs = {}
        for p in NUDGED:
            src = ColumnDataSource(data={"step": [], "layer": [], "dist": [], "run": []},
                                   name=f"explorer.nudge.{p}")
            fig = make_figure(f"‖s_β − s*‖, nudged {SIGN[p]}", height=230, x_label="step of the nudged phase",
                              y_label="layer", y_range=self.y_range, x_range=(0, 50))
            fig.rect("step", "layer", width=1.0, height=0.95, source=src, line_color=None,
                     fill_color={"field": "dist", "transform": self.mapper})
            fig.add_tools(HoverTool(tooltips=[("layer", "@layer"), ("step", "@step"),
                                              ("‖s_β − s*‖", "@dist{0.000e}")]))
            fig.ygrid.grid_line_color = None
            self.heat[p], self.figs[p] = src, fig
        self.figs["nudged-"].add_layout(ColorBar(color_mapper=self.mapper, width=10, title="‖s_β − s*‖",
                                                 title_text_font_size="11px",
                                                 major_label_text_font_size="11px"), "right")
        self.figs["nudged+"].add_layout(ColorBar(color_mapper=self.mapper, width=10, title=" ",
                                                 major_label_text_font_size="11px"), "right")
        # Feature maps.
        self.state_mapper = LinearColorMapper(palette=Cividis256, low=0.0, high=6.0)
        self.diff_mapper = LinearColorMapper(palette=DIVERGING, low=-1.0, high=1.0)
        self.maps = {}
        self.map_figs = {}
        for key, title, mapper in (("free", "s* (free fixed point)", self.state_mapper),
                                   ("nudged", "s_β (nudged)", self.state_mapper),
                                   ("diff", "s_β − s*", self.diff_mapper)):
            src = ColumnDataSource(data={"image": [], "x": [], "y": [], "dw": [], "dh": []},
                                   name=f"explorer.nudge.map_{key}")
            fig = make_figure(title, height=230, x_label="", y_label="", match_aspect=True,
                              sizing_mode="fixed", width=260, min_border_left=10,
                              tools="hover,save", tooltips=[("value", "@image{0.000}")])
            fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=mapper)
            fig.axis.visible = False
            fig.grid.visible = False
            fig.add_layout(ColorBar(color_mapper=mapper, width=8, major_label_text_font_size="10px"), "right")
            self.maps[key], self.map_figs[key] = src, fig
        self.title_pane = pn.pane.HTML("", sizing_mode="stretch_width", margin=(0, 10),
                                       css_classes=["nudge-title"])
        self._latest: dict[str, np.ndarray] = {}  # phase -> last state [C, H, W] of the map layer
        self._max = 0.0

    # -- data ------------------------------------------------------------------------------
    def start_run(self, run: Run) -> None:
        super().start_run(run)
        factors = list(reversed(run.layers))
        if list(self.y_range.factors) != factors:
            self.y_range.factors = factors
        for p in NUDGED:
            self.heat[p].data = {k: [] for k in self.heat[p].data}
            self.figs[p].x_range.update(start=0, end=run.request.t_nudge + 1)
        for src in self.maps.values():
            src.data = {k: [] for k in src.data}
        self._latest = {}
        self._max = 0.0
        self.state_mapper.high = float(run.request.alpha)
        self._set_title()

    def _set_title(self) -> None:
        run = self.run
        r = run.request
        self.title_pane.object = (f"<div class='nudge-head'>Nudged versus free · <b>β = {r.beta:.3g}</b> · "
                                  f"run {run.run_id} · feature maps of layer <b>{r.map_layer}</b>, "
                                  f"channel <b>{self._channel()}</b></div>")
        for p in NUDGED:
            self.figs[p].title.text = f"‖s_β − s*‖ per layer, nudged {SIGN[p]} (β = {r.beta:.3g})"

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
        phases = np.array(batch.phase)
        layers = np.array(run.layers, dtype=object)
        for p in NUDGED:
            idx = np.flatnonzero(phases == p)
            if not len(idx):
                continue
            dist = batch.stats[idx][:, :, _DIST]
            n, L = dist.shape
            flat = dist.ravel()
            self.heat[p].stream({"step": np.repeat(batch.step[idx], L), "layer": np.tile(layers, n),
                                 "dist": np.where(flat > 0, flat, np.nan),
                                 "run": np.full(n * L, run.run_id)})
            top = float(np.nanmax(flat)) if np.isfinite(flat).any() else 0.0
            if top > self._max:
                self._max = top
                self.mapper.update(high=top, low=max(top * 1e-4, 1e-12))
        changed = False
        for p in ("free", *NUDGED):
            f = batch.latest(p)
            if f is not None and run.request.map_layer in f.states:
                self._latest[p] = f.states[run.request.map_layer]
                changed = True
        if changed:
            self._draw_maps()
            if "free" in self._latest and self.state.map_channel < 0:
                self._set_title()

    def _draw_maps(self) -> None:
        shown = self.state.map_phase
        free = self._latest.get("free")
        nudged = self._latest.get(shown)
        c = self._channel()
        for key, arr in (("free", free), ("nudged", nudged)):
            if arr is not None:
                self._image(key, arr[c])
        if free is not None and nudged is not None:
            diff = nudged[c] - free[c]
            m = float(np.abs(diff).max())
            m = m if m > 0 else 1e-6
            self.diff_mapper.update(low=-m, high=m)
            self._image("diff", diff)
        else:
            self.maps["diff"].data = {k: [] for k in self.maps["diff"].data}
        self.map_figs["nudged"].title.text = f"s_β, nudged {SIGN[shown]}"
        self.map_figs["diff"].title.text = f"s_β − s*, nudged {SIGN[shown]}"

    def _image(self, key: str, arr2d: np.ndarray) -> None:
        h, w = arr2d.shape
        # Bokeh draws image rows bottom-up; flip so row 0 is at the top, as in the input image.
        self.maps[key].data = {"image": [np.ascontiguousarray(arr2d[::-1])], "x": [0], "y": [0],
                               "dw": [w], "dh": [h]}

    def refresh_display(self) -> None:
        if self.run is not None:
            self._set_title()
            if self._latest:
                self._draw_maps()

    def sources(self):
        return {**{f"heat {p}": s for p, s in self.heat.items()}, **{f"map {k}": s for k, s in self.maps.items()}}

    def data_count(self) -> int:
        return sum(len(s.data["step"]) for s in self.heat.values()) + \
            sum(len(s.data["image"]) for s in self.maps.values())

    def body(self):
        heat = pn.Column(bokeh_pane(self.figs["nudged+"]), bokeh_pane(self.figs["nudged-"]),
                         sizing_mode="stretch_width")
        maps = pn.Row(*(pn.pane.Bokeh(self.map_figs[k]) for k in ("free", "nudged", "diff")))
        return pn.Column(self.title_pane, pn.Row(heat, pn.Column(maps), sizing_mode="stretch_width"),
                         sizing_mode="stretch_width")

