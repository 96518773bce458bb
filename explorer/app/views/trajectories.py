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

from .base import (INK, PINNED_LINE, Batch, PhaseBands, PinNote, Run, StableRange, View, bokeh_pane, cover_time,
                   layer_color, make_figure, set_time_range, static_legend, stored_batch, style_legend, time_range,
                   with_breaks)

STATS = ("activity", "step_size", "frac_zero", "frac_alpha")
UNITS = 4
UNIT_DASH = ("solid", "dashed", "dotted", "dotdash")


def column(stat: str, layer: str) -> str:
    return f"{stat}__{layer}"


def unit_column(j: int, layer: str) -> str:
    return f"unit{j}__{layer}"


class TrajectoriesView(View):
    key = "trajectories"
    title = "5 · Per-layer state trajectories"
    about = ("Each colour is one layer. Step size on a log scale: a converging layer's line falls "
             "steadily; a flat or rising line is a layer that keeps moving.")

    def __init__(self, app_state, **params):
        super().__init__(app_state, **params)
        self.layers: tuple[str, ...] = ()
        self.x_range = time_range()
        self.ranges = {"activity": StableRange(), "step_size": StableRange(log=True),
                       "units": StableRange()}
        self.row = pn.Column(sizing_mode="stretch_width")
        self.pin_note = PinNote("dashed in the step-size plot")
        self.pinned: dict[str, ColumnDataSource] = {}   # a pinned run's step sizes, by run id
        self._pinned_lines: list[tuple[ColumnDataSource, dict]] = []   # (source, line per layer) per pinned run
        self._build(tuple(app_state.base_network().layer_names))

    # -- figures ------------------------------------------------------------------------
    def _build(self, layers: tuple[str, ...]) -> None:
        """(Re)create figures for a set of layers (only when the architecture changes)."""
        self.layers = layers
        hidden = [n for n in layers if n != "y"]
        cols = {"x": []}
        for stat in STATS:
            for n in layers:
                cols[column(stat, n)] = []
        for n in layers:
            for j in range(UNITS):
                cols[unit_column(j, n)] = []
        self.source = ColumnDataSource(data=cols, name="explorer.trajectories.stats")
        self.bands = []
        figs = {}
        common = dict(height=250, x_range=self.x_range)
        figs["activity"] = make_figure("mean activity", y_label="mean of s", y_range=self.ranges["activity"].range,
                                       **common)
        figs["step_size"] = make_figure("step size ‖Δs‖ / ‖s‖", y_label="relative step (log)", y_axis_type="log",
                                        y_range=self.ranges["step_size"].range, **common)
        figs["fractions"] = make_figure("units at 0 (solid) and at α (dashed)", y_label="fraction of units",
                                        y_range=(-0.02, 1.02), **common)
        legend_items = []
        for n in layers:
            color = layer_color(layers, n)
            r = figs["activity"].line("x", column("activity", n), source=self.source, color=color, line_width=2)
            figs["step_size"].line("x", column("step_size", n), source=self.source, color=color, line_width=2)
            legend_items.append(LegendItem(label=n, renderers=[r]))
            if n in hidden:
                figs["fractions"].line("x", column("frac_zero", n), source=self.source, color=color, line_width=2)
                figs["fractions"].line("x", column("frac_alpha", n), source=self.source, color=color,
                                       line_width=2, line_dash="dashed")
        legend = Legend(items=legend_items, title="layer", label_text_font_size="12px",
                        title_text_font_size="12px", spacing=0, padding=4, click_policy="hide")
        figs["activity"].add_layout(legend, "right")
        figs["units"] = make_figure("units of s1", y_label="unit value", y_range=self.ranges["units"].range,
                                    **common)
        self.unit_renderers = []
        for j in range(UNITS):
            r = figs["units"].line("x", unit_column(j, layers[0]), source=self.source, line_width=2,
                                   line_dash=UNIT_DASH[j], color=INK, legend_label=f"unit {j + 1}")
            self.unit_renderers.append(r)
        style_legend(figs["units"], "top_left")
        static_legend(figs["activity"])
        static_legend(figs["units"])
        for k, fig in figs.items():
            self.bands.append(PhaseBands(fig, labels=k == "activity"))
        self.figs = figs
        self._apply_units_layer()
        grid = pn.GridBox(*(bokeh_pane(figs[k]) for k in ("activity", "step_size", "fractions", "units")),
                          ncols=2, sizing_mode="stretch_width")
        self.row.objects = [self.pin_note.pane, grid]
        self.pinned, self._pinned_lines = {}, []
        self._overlaid = None   # new figures: pinned runs are drawn again at the next sync

    def _apply_units_layer(self) -> None:
        layer = self.state.units_layer if self.state.units_layer in self.layers else self.layers[0]
        for j, r in enumerate(self.unit_renderers):
            r.glyph.y = unit_column(j, layer)
            r.glyph.line_color = layer_color(self.layers, layer)
        self.figs["units"].title.text = f"{UNITS} fixed units of layer {layer}"
        self._units_layer = layer
        self.ranges["units"].reset()
        data = self.source.data
        if len(data["x"]):
            self.ranges["units"].include([data[unit_column(j, layer)] for j in range(UNITS)])

    # -- data ------------------------------------------------------------------------------
    def start_run(self, run: Run) -> None:
        super().start_run(run)
        if run.layers != self.layers:
            self._build(run.layers)
        else:
            self.source.data = {k: [] for k in self.source.data}
        for r in self.ranges.values():
            r.reset()
        for src in self.pinned.values():
            self.ranges["step_size"].include([v for k, v in src.data.items() if k != "x"])
        set_time_range(self.x_range, run)
        cover_time(self.x_range, self.pinned_runs())
        for b in self.bands:
            b.place(run)

    def push(self, batch: Batch) -> None:
        if not len(batch):
            return
        cols = {"x": batch.x}
        for stat in STATS:
            values = batch.stat(stat)
            if stat == "step_size":
                values = np.where(values > 0, values, np.nan)
            for i, n in enumerate(self.layers):
                cols[column(stat, n)] = values[:, i]
            if stat in self.ranges:
                self.ranges[stat].include(values)
        units = batch.units
        for i, n in enumerate(self.layers):
            for j in range(UNITS):
                cols[unit_column(j, n)] = (units[:, i, j] if units is not None and units.shape[2] > j
                                           else np.full(len(batch), np.nan))
        self.ranges["units"].include([cols[unit_column(j, self._units_layer)] for j in range(UNITS)])
        self.source.stream(with_breaks(batch, cols))

    def draw_pinned(self, runs: list[Run]) -> None:
        """Pinned runs' step sizes, dashed in each layer's colour, under the run that streams. Their
        sources and lines stay once made (emptied when unpinned): a page keeps a removed source."""
        fig = self.figs["step_size"]
        self.pinned = {}
        for k, run in enumerate(runs):
            if k == len(self._pinned_lines):
                self._pinned_lines.append((ColumnDataSource(data={"x": []}, name=f"explorer.trajectories.pinned{k}"),
                                           {}))
            src, lines = self._pinned_lines[k]
            for n in run.layers:
                if n not in lines:
                    lines[n] = fig.line("x", column("step_size", n), source=src, line_width=1.5, **PINNED_LINE)
                lines[n].glyph.line_color = layer_color(run.layers, n)
            batch = stored_batch(run)
            values = batch.stat("step_size")
            values = np.where(values > 0, values, np.nan)
            nothing = np.full(len(batch), np.nan)    # a line of a layer this run does not have
            cols = {"x": batch.x, **{column("step_size", n): (values[:, run.layers.index(n)] if n in run.layers
                                                              else nothing) for n in lines}}
            src.data = with_breaks(batch, cols)
            self.pinned[run.id] = src
            self.ranges["step_size"].include(values)
        for src, _lines in self._pinned_lines[len(runs):]:
            src.data = {k: [] for k in src.data}
        cover_time(self.x_range, runs, shown=self.run)
        fig.title.text = "step size ‖Δs‖ / ‖s‖" + (" · dashed: A" if runs else "")
        self.pin_note.show(runs)

    def pinned_sources(self):
        return {rid: {"step_size": src} for rid, src in self.pinned.items()}

    def refresh_display(self) -> None:
        super().refresh_display()
        if self.layers:
            self._apply_units_layer()

    def sources(self):
        return {"stats": self.source}

    def body(self):
        return self.row
