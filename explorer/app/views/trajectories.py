"""View 1: per-layer state trajectories.

Per layer and iteration: the mean activity, the relative step size
||s_t - s_(t-1)|| / ||s_t|| (log scale), the fractions of units at 0 and at
alpha (LAYER_STATS activity, step_size, frac_zero, frac_alpha), and the
trajectories of a few fixed units of one chosen layer (record.units).
"""
from __future__ import annotations

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, Legend, LegendItem

from .base import (Batch, PhaseBands, Run, View, bokeh_pane, layer_color, make_figure,
                   set_time_range, style_legend, time_range, with_breaks)

STATS = (("activity", "mean activity", "mean of s", "linear"),
         ("step_size", "step size", "‖Δs‖ / ‖s‖ (log)", "log"),
         ("frac_zero", "fraction of units at 0", "fraction", "linear"),
         ("frac_alpha", "fraction of units at α", "fraction", "linear"))
UNITS = 4
UNIT_DASH = ("solid", "dashed", "dotted", "dotdash")


def column(stat: str, layer: str) -> str:
    return f"{stat}__{layer}"


def unit_column(j: int, layer: str) -> str:
    return f"unit{j}__{layer}"


class TrajectoriesView(View):
    key = "trajectories"
    title = "1 · Per-layer state trajectories"
    about = ("Each line is one layer. Step size on a log scale: a converging layer's line falls "
             "steadily; a flat or rising line is a layer that keeps moving.")

    def __init__(self, app_state):
        super().__init__(app_state)
        self.layers: tuple[str, ...] = ()
        self.source = ColumnDataSource(data={"x": []}, name="explorer.trajectories.stats")
        self.x_range = time_range()
        self.figs = {}
        self.bands = []
        self.unit_renderers = []
        self.row = pn.Column(sizing_mode="stretch_width")
        self._build(tuple(app_state.base_network().layer_names))

    # -- figures ------------------------------------------------------------------------
    def _build(self, layers: tuple[str, ...]) -> None:
        """(Re)create figures for a set of layers (only when the architecture changes)."""
        self.layers = layers
        hidden = [n for n in layers if n != "y"]
        cols = {"x": []}
        for stat, *_ in STATS:
            for n in layers:
                cols[column(stat, n)] = []
        for n in layers:
            for j in range(UNITS):
                cols[unit_column(j, n)] = []
        self.source = ColumnDataSource(data=cols, name="explorer.trajectories.stats")
        self.figs, self.bands = {}, []
        legend_items = []
        for stat, title, ylab, axis in STATS:
            fig = make_figure(title, height=230, y_label=ylab, y_axis_type=axis, x_range=self.x_range)
            shown = hidden if stat.startswith("frac") else layers
            for n in shown:
                r = fig.line("x", column(stat, n), source=self.source, color=layer_color(layers, n),
                             line_width=2, alpha=0.9)
                if stat == "activity":
                    legend_items.append(LegendItem(label=n, renderers=[r]))
            if stat.startswith("frac"):
                fig.y_range.start, fig.y_range.end = -0.02, 1.02
            self.bands.append(PhaseBands(fig, labels=stat == "activity"))
            self.figs[stat] = fig
        legend = Legend(items=legend_items, title="layer", orientation="vertical",
                        label_text_font_size="12px", title_text_font_size="12px", spacing=0, padding=4,
                        location="top_left", click_policy="hide")
        self.figs["activity"].add_layout(legend, "right")
        ufig = make_figure("units of s1", height=230, y_label="unit value", x_range=self.x_range)
        self.unit_renderers = []
        for j in range(UNITS):
            r = ufig.line("x", unit_column(j, layers[0]), source=self.source, line_width=2,
                          line_dash=UNIT_DASH[j], color="#333333", legend_label=f"unit {j + 1}")
            self.unit_renderers.append(r)
        style_legend(ufig, "top_left")
        self.bands.append(PhaseBands(ufig, labels=False))
        self.figs["units"] = ufig
        self._apply_units_layer()
        f = self.figs
        grid = pn.GridBox(*(bokeh_pane(f[k]) for k in ("activity", "step_size", "units",
                                                         "frac_zero", "frac_alpha")),
                          ncols=3, sizing_mode="stretch_width")
        self.row.objects = [grid]

    def _apply_units_layer(self) -> None:
        layer = self.state.units_layer if self.state.units_layer in self.layers else self.layers[0]
        for j, r in enumerate(self.unit_renderers):
            r.glyph.y = unit_column(j, layer)
            r.glyph.line_color = layer_color(self.layers, layer)
        self.figs["units"].title.text = f"{UNITS} fixed units of layer {layer}"

    # -- data ------------------------------------------------------------------------------
    def start_run(self, run: Run) -> None:
        super().start_run(run)
        if run.layers != self.layers:
            self._build(run.layers)
        else:
            self.source.data = {k: [] for k in self.source.data}
        set_time_range(self.x_range, run)
        for b in self.bands:
            b.place(run)

    def push(self, batch: Batch) -> None:
        if not len(batch):
            return
        cols = {"x": batch.x}
        for stat, _, _, axis in STATS:
            values = batch.stat(stat)
            if axis == "log":
                values = np.where(values > 0, values, np.nan)
            for i, n in enumerate(self.layers):
                cols[column(stat, n)] = values[:, i]
        units = batch.units
        for i, n in enumerate(self.layers):
            for j in range(UNITS):
                cols[unit_column(j, n)] = (units[:, i, j] if units is not None and units.shape[2] > j
                                           else np.full(len(batch), np.nan))
        self.source.stream(with_breaks(batch, cols))

    def refresh_display(self) -> None:
        if self.layers:
            self._apply_units_layer()

    def sources(self):
        return {"stats": self.source}

    def body(self):
        return self.row
