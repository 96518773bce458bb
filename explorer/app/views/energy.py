"""View 2: energy descent.

Phi through the free phase, F = Phi + beta * C through the nudged phases
(ENERGY_STATS), and the size of each step's change on a log scale. A step at
which the energy rose (by more than the engine's tolerance, 1e-5 relative) is
marked: under the paper's schedule the skips make the second half-step a
Jacobi step between coupled layers, and descent is not guaranteed.
"""
from __future__ import annotations

import time

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, HoverTool

from ..worker import PHASES
from .base import (PHASE_COLORS, PHASE_LABELS, ROSE_COLOR, Batch, PhaseBands, Run, StableRange, View,
                   bokeh_pane, make_figure, set_time_range, static_legend, style_legend, time_range)

ZOOM_SKIP = 3     # the y axis ignores the first free steps: the start from zero is far above
DELTA_EVERY = 0.25  # seconds between draws of the change-per-step plot
RISE_TOL = 1e-5   # as explorer.dynamics.relax: a rise above 1e-5 * (|F| + 1) counts
ENERGY_NAME = {"free": "Φ", "nudged+": "F", "nudged-": "F"}


class EnergyView(View):
    key = "energy"
    title = "2 · Energy descent"
    about = ("Φ during the free phase, F = Φ + βC during the nudged phases (both nudged phases start "
             "from the free fixed point s*). Red crosses: steps where the energy rose. The axis follows the "
             f"energy after free step {ZOOM_SKIP}; the start from zero lies above it.")

    def __init__(self, app_state):
        super().__init__(app_state)
        cols = {"x": [], "value": [], "phi": [], "cost": [], "F": [], "step": [], "beta": [], "run": [],
                "run_beta": []}
        self.phase_sources = {p: ColumnDataSource(data=dict(cols), name=f"explorer.energy.{p}")
                              for p in PHASES}
        self.rose = ColumnDataSource(data={"x": [], "value": [], "delta": []}, name="explorer.energy.rose")
        self.delta = ColumnDataSource(data={"x": [], "delta": [], "color": []}, name="explorer.energy.delta")
        self.x_range = time_range()
        self.y = StableRange(headroom=0.08)
        self.dy = StableRange(log=True)
        self.fig = make_figure("Energy: Φ (free), F (nudged)", height=300, y_label="energy",
                               x_range=self.x_range, y_range=self.y.range)
        lines = [self.fig.line("x", "value", source=self.phase_sources[p], color=PHASE_COLORS[p], line_width=2.5,
                               legend_label=f"{ENERGY_NAME[p]}, {PHASE_LABELS[p]}") for p in PHASES]
        self.fig.scatter("x", "value", source=self.rose, marker="x", size=11, line_width=2.5,
                         color=ROSE_COLOR, legend_label="energy rose")
        self.fig.add_tools(HoverTool(tooltips=[("iteration", "@x"), ("step", "@step"), ("Φ", "@phi{0.0000}"),
                                               ("cost C", "@cost{0.0000}"), ("F", "@F{0.0000}")],
                                     renderers=lines))
        style_legend(self.fig, "top_right")
        static_legend(self.fig)
        self.bands = [PhaseBands(self.fig)]
        self.dfig = make_figure("Energy change per step |ΔE| (log)", height=200, y_label="|ΔE|",
                                y_axis_type="log", x_range=self.x_range, y_range=self.dy.range)
        self.dfig.scatter("x", "delta", source=self.delta, color="color", size=4, alpha=0.8)
        self.bands.append(PhaseBands(self.dfig, labels=False))
        self._last: dict[str, float] = {}
        self._pending_delta: tuple[list, list, list] = ([], [], [])
        self._delta_at = 0.0
        self.rises = 0

    def start_run(self, run: Run) -> None:
        super().start_run(run)
        for s in (*self.phase_sources.values(), self.rose, self.delta):
            s.data = {k: [] for k in s.data}
        set_time_range(self.x_range, run)
        for b in self.bands:
            b.place(run)
        self._last = {}
        self._pending_delta = ([], [], [])
        self.y.reset()
        self.dy.reset()
        self.rises = 0
        self._set_title()

    def _set_title(self) -> None:
        rose = f" · rose at {self.rises} step{'s' if self.rises != 1 else ''}" if self.rises else ""
        self.fig.title.text = f"Energy: Φ (free), F = Φ + βC (nudged), β = {self.run.beta:.3g}{rose}"

    def push(self, batch: Batch) -> None:
        if not len(batch):
            return
        run = batch.run
        phi, cst, f = batch.energy_of("phi"), batch.energy_of("cost"), batch.energy_of("F")
        phases = np.array(batch.phase)
        rose_x, rose_v, rose_d = [], [], []
        dx, dd, dc = [], [], []
        for p in PHASES:
            idx = np.flatnonzero(phases == p)
            if not len(idx):
                continue
            value = phi[idx] if p == "free" else f[idx]
            self.y.include(value[(batch.step[idx] >= ZOOM_SKIP) | (p != "free")])
            self.phase_sources[p].stream({
                "x": batch.x[idx], "value": value, "phi": phi[idx], "cost": cst[idx], "F": f[idx],
                "step": batch.step[idx], "beta": np.array([batch.frames[i].beta for i in idx]),
                "run": np.full(len(idx), run.run_id),
                "run_beta": np.full(len(idx), run.beta)})
            prev = self._last.get(p)
            for i, v in zip(idx, value):
                if batch.step[i] > 0 and prev is not None and np.isfinite(v):
                    d = v - prev
                    rose = d > RISE_TOL * (abs(prev) + 1.0)
                    if d != 0:
                        dx.append(batch.x[i])
                        dd.append(abs(d))
                        dc.append(ROSE_COLOR if rose else PHASE_COLORS[p])
                    if rose:
                        rose_x.append(batch.x[i])
                        rose_v.append(v)
                        rose_d.append(d)
                prev = v
            self._last[p] = prev
        if dx:
            self._pending_delta[0].extend(dx)
            self._pending_delta[1].extend(dd)
            self._pending_delta[2].extend(dc)
        if time.monotonic() - self._delta_at >= DELTA_EVERY:
            self._flush_delta()
        if rose_x:
            self.rose.stream({"x": rose_x, "value": rose_v, "delta": rose_d})
            self.rises += len(rose_x)
            self._set_title()

    def _flush_delta(self) -> None:
        """The change-per-step plot is secondary: it is drawn a few times a second, not every tick."""
        dx, dd, dc = self._pending_delta
        if dx:
            self.dy.include(dd)
            self.delta.stream({"x": dx, "delta": dd, "color": dc})
        self._pending_delta = ([], [], [])
        self._delta_at = time.monotonic()

    def phase_ended(self, event) -> None:
        self._flush_delta()

    def run_ended(self, event) -> None:
        self._flush_delta()

    def sources(self):
        return {**{f"phase {p}": s for p, s in self.phase_sources.items()}, "rose": self.rose,
                "delta": self.delta}

    def data_count(self) -> int:
        return sum(len(s.data["x"]) for s in self.phase_sources.values())

    def body(self):
        return pn.Column(bokeh_pane(self.fig), bokeh_pane(self.dfig), sizing_mode="stretch_width")
