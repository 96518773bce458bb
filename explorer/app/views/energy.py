"""View 2: energy descent.

Phi through the free phase, F = Phi + beta * C through the nudged phases
(ENERGY_STATS), and the size of each step's change on a log scale. The steps
at which the energy rose are the engine's own finding (``energy_rose`` in a
phase's verdict, its evidence listing the steps), marked when the phase ends:
under the paper's schedule the skips make the second half-step a Jacobi step
between coupled layers, and descent is not guaranteed.

Curves are keyed by run id: a pinned run's curves stay (dashed) while another
run streams over them, so two runs can be compared in one plot.
"""
from __future__ import annotations

import time

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, HoverTool

from ...run import Run, rose_steps
from ..worker import PHASES, PhaseEnded
from .base import (PHASE_COLORS, PHASE_LABELS, ROSE_COLOR, Batch, PhaseBands, StableRange, View,
                   bokeh_pane, make_figure, set_time_range, static_legend, style_legend, time_range)

ZOOM_SKIP = 3     # the y axis ignores the first free steps: the start from zero is far above
DELTA_EVERY = 0.25  # seconds between draws of the change-per-step plot
ENERGY_NAME = {"free": "Φ", "nudged+": "F", "nudged-": "F"}
CURVE_COLUMNS = ("x", "value", "phi", "cost", "F", "step", "beta", "run", "run_beta")


class Curves:
    """One run's three energy curves (a source and a line per phase)."""

    def __init__(self, fig, key: str, primary: bool):
        self.run_id: str | None = None
        self.sources = {p: ColumnDataSource(data={c: [] for c in CURVE_COLUMNS}, name=f"explorer.energy.{key}{p}")
                        for p in PHASES}
        style = {} if primary else {"line_dash": "dashed", "line_alpha": 0.55, "line_width": 2}
        self.lines = [fig.line("x", "value", source=self.sources[p], color=PHASE_COLORS[p],
                               **({"line_width": 2.5, **style} if primary else style),
                               **({"legend_label": f"{ENERGY_NAME[p]}, {PHASE_LABELS[p]}"} if primary else {}))
                      for p in PHASES]

    def clear(self, run_id: str | None = None) -> None:
        self.run_id = run_id
        for s in self.sources.values():
            s.data = {c: [] for c in CURVE_COLUMNS}

    def copy_from(self, other: "Curves") -> None:
        self.run_id = other.run_id
        for p, s in self.sources.items():
            s.data = dict(other.sources[p].data)

    def rows(self) -> int:
        return sum(len(s.data["x"]) for s in self.sources.values())


class EnergyView(View):
    key = "energy"
    title = "3 · Energy descent"
    about = ("Φ during the free phase, F = Φ + βC during the nudged phases (both nudged phases start "
             "from the free fixed point s*). Red crosses: steps where the engine found the energy rose. "
             f"The axis follows the energy after free step {ZOOM_SKIP}; the start from zero lies above it.")

    def __init__(self, app_state, **params):
        super().__init__(app_state, **params)
        self.rose = ColumnDataSource(data={"x": [], "value": [], "phase": []}, name="explorer.energy.rose")
        self.delta = ColumnDataSource(data={"x": [], "delta": [], "color": []}, name="explorer.energy.delta")
        self.x_range = time_range()
        self.y = StableRange(headroom=0.08)
        self.dy = StableRange(log=True)
        self.fig = make_figure("Energy: Φ (free), F (nudged)", height=300, y_label="energy",
                               x_range=self.x_range, y_range=self.y.range)
        self.main = Curves(self.fig, "", primary=True)
        self.overlays: list[Curves] = []       # pinned runs' curves, dashed
        self.pinned: set[str] = set()          # run ids whose curves stay when another run starts
        self.fig.scatter("x", "value", source=self.rose, marker="x", size=11, line_width=2.5,
                         color=ROSE_COLOR, legend_label="energy rose")
        self.fig.add_tools(HoverTool(tooltips=[("iteration", "@x"), ("step", "@step"), ("Φ", "@phi{0.0000}"),
                                               ("cost C", "@cost{0.0000}"), ("F", "@F{0.0000}")],
                                     renderers=self.main.lines))
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

    @property
    def phase_sources(self) -> dict[str, ColumnDataSource]:
        """The shown run's curves."""
        return self.main.sources

    def curves(self) -> dict[str, dict[str, ColumnDataSource]]:
        """Every drawn run's curves, by run id."""
        return {c.run_id: c.sources for c in (self.main, *self.overlays) if c.run_id is not None}

    def pin(self, run_id: str, pinned: bool = True) -> None:
        """Keep (or stop keeping) this run's curves when another run starts."""
        (self.pinned.add if pinned else self.pinned.discard)(run_id)

    def _keep_pinned(self, run: Run) -> None:
        """Move a pinned run off the main curves before ``run`` takes them; drop unpinned overlays."""
        for c in self.overlays:
            if c.run_id is not None and (c.run_id not in self.pinned or c.run_id == run.id):
                c.clear()
        if self.main.run_id in self.pinned and self.main.run_id != run.id:
            free = next((c for c in self.overlays if c.run_id is None), None)
            if free is None:
                free = Curves(self.fig, f"pinned{len(self.overlays)}.", primary=False)
                self.overlays.append(free)
            free.copy_from(self.main)

    def start_run(self, run: Run) -> None:
        super().start_run(run)
        self._keep_pinned(run)
        self.main.clear(run.id)
        for s in (self.rose, self.delta):
            s.data = {k: [] for k in s.data}
        set_time_range(self.x_range, run)
        for b in self.bands:
            b.place(run)
        self._last = {}
        self._pending_delta = ([], [], [])
        self.y.reset()
        self.dy.reset()
        for c in self.overlays:
            for s in c.sources.values():
                self.y.include(s.data["value"])
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
        dx, dd, dc = [], [], []
        for p in PHASES:
            idx = np.flatnonzero(phases == p)
            if not len(idx):
                continue
            value = phi[idx] if p == "free" else f[idx]
            self.y.include(value[(batch.step[idx] >= ZOOM_SKIP) | (p != "free")])
            self.main.sources[p].stream({
                "x": batch.x[idx], "value": value, "phi": phi[idx], "cost": cst[idx], "F": f[idx],
                "step": batch.step[idx], "beta": np.array([batch.frames[i].beta for i in idx]),
                "run": [run.id] * len(idx), "run_beta": np.full(len(idx), run.beta)})
            # |change| per step, to see the descent's pace (whether it rose is the engine's finding)
            prev = np.concatenate([[self._last.get(p, np.nan)], value[:-1]])
            d = np.abs(value - prev)
            keep = (batch.step[idx] > 0) & np.isfinite(d) & (d > 0)
            dx.extend(batch.x[idx][keep])
            dd.extend(d[keep])
            dc.extend([PHASE_COLORS[p]] * int(keep.sum()))
            self._last[p] = float(value[-1])
        if dx:
            self._pending_delta[0].extend(dx)
            self._pending_delta[1].extend(dd)
            self._pending_delta[2].extend(dc)
        if time.monotonic() - self._delta_at >= DELTA_EVERY:
            self._flush_delta()

    def _flush_delta(self) -> None:
        """The change-per-step plot is secondary: it is drawn a few times a second, not every tick."""
        dx, dd, dc = self._pending_delta
        if dx:
            self.dy.include(dd)
            self.delta.stream({"x": dx, "delta": dd, "color": dc})
        self._pending_delta = ([], [], [])
        self._delta_at = time.monotonic()

    def phase_ended(self, event: PhaseEnded) -> None:
        """Mark the steps at which the engine found this phase's energy rose."""
        self._flush_delta()
        steps = rose_steps(event.verdict)
        if not steps or self.run is None:
            return
        data = self.main.sources[event.phase].data
        at = {int(s): v for s, v in zip(data["step"], data["value"])}
        steps = [s for s in steps if s in at]
        if steps:
            offset = self.run.offset(event.phase)
            self.rose.stream({"x": [offset + s for s in steps], "value": [at[s] for s in steps],
                              "phase": [event.phase] * len(steps)})
            self.rises += len(steps)
            self._set_title()

    def run_ended(self, event) -> None:
        self._flush_delta()

    def sources(self):
        return {**{f"phase {p}": s for p, s in self.main.sources.items()}, "rose": self.rose,
                "delta": self.delta}

    def data_count(self) -> int:
        return self.main.rows()

    def body(self):
        return pn.Column(bokeh_pane(self.fig), bokeh_pane(self.dfig), sizing_mode="stretch_width")
