"""View 2: energy descent.

Phi through the free phase, F = Phi + beta * C through the nudged phases
(ENERGY_STATS), and the size of each step's change on a log scale. The steps
at which the energy rose are the engine's own finding (``energy_rose`` in a
phase's verdict, its evidence listing the steps), marked when the phase ends:
under the paper's schedule the skips make the second half-step a Jacobi step
between coupled layers, and descent is not guaranteed.

Curves are keyed by run id: a pinned run's curves (run A, drawn from its
record, dashed, an "A" at each curve's end) stay while another run streams
over them, so two runs can be compared in one plot (View.pin in base.py).
"""
from __future__ import annotations

import time

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, HoverTool

from ...run import Run, rose_steps
from ..worker import PHASES, PhaseEnded
from .base import (PHASE_COLORS, PHASE_LABELS, PINNED_LINE, ROSE_COLOR, Batch, PhaseBands, PinNote, StableRange, View,
                   bokeh_pane, cover_time, make_figure, set_time_range, static_legend, stored_batch, style_legend,
                   time_range)

ZOOM_SKIP = 3     # the y axis ignores the first free steps: the start from zero is far above
DELTA_EVERY = 0.25  # seconds between draws of the change-per-step plot
ENERGY_NAME = {"free": "Φ", "nudged+": "F", "nudged-": "F"}
CURVE_COLUMNS = ("x", "value", "phi", "cost", "F", "step", "beta", "run", "run_beta")


class Curves:
    """One run's three energy curves (a source and a line per phase); a pinned run's are dashed."""

    def __init__(self, fig, key: str, primary: bool):
        self.run_id: str | None = None
        self.sources = {p: ColumnDataSource(data={c: [] for c in CURVE_COLUMNS}, name=f"explorer.energy.{key}{p}")
                        for p in PHASES}
        style = {"line_width": 2.5} if primary else {**PINNED_LINE, "line_width": 2}
        self.lines = [fig.line("x", "value", source=self.sources[p], color=PHASE_COLORS[p], **style,
                               **({"legend_label": f"{ENERGY_NAME[p]}, {PHASE_LABELS[p]}"} if primary else {}))
                      for p in PHASES]

    def clear(self, run_id: str | None = None) -> None:
        self.run_id = run_id
        for s in self.sources.values():
            s.data = {c: [] for c in CURVE_COLUMNS}

    def fill(self, batch: Batch) -> None:
        """A whole stored run at once (a pinned run's curves)."""
        self.run_id = batch.run.id
        cols = phase_columns(batch)
        for p, s in self.sources.items():
            s.data = cols[p][1] if p in cols else {c: [] for c in CURVE_COLUMNS}

    def rows(self) -> int:
        return sum(len(s.data["x"]) for s in self.sources.values())


def phase_columns(batch: Batch) -> dict[str, tuple[np.ndarray, dict]]:
    """Per phase in the batch: its frames' positions and the curve's columns (Φ free, F nudged)."""
    run = batch.run
    phi, cst, f = batch.energy_of("phi"), batch.energy_of("cost"), batch.energy_of("F")
    phases = np.array(batch.phase)
    out = {}
    for p in PHASES:
        idx = np.flatnonzero(phases == p)
        if not len(idx):
            continue
        out[p] = idx, {"x": batch.x[idx], "value": phi[idx] if p == "free" else f[idx], "phi": phi[idx],
                       "cost": cst[idx], "F": f[idx], "step": batch.step[idx],
                       "beta": np.array([batch.frames[i].beta for i in idx]), "run": [run.id] * len(idx),
                       "run_beta": np.full(len(idx), run.beta)}
    return out


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
        # "A" at the end of each pinned curve, so the dashed lines are named in the plot itself
        self.pin_note = PinNote("dashed, an A at each curve's end")
        # (one per phase, each its own colour: a text glyph coloured from a column raised in the page
        # when its rows were removed)
        self.pin_marks = {p: ColumnDataSource(data={"x": [], "value": []}, name=f"explorer.energy.pinned_mark.{p}")
                          for p in PHASES}
        for p, src in self.pin_marks.items():
            self.fig.text("x", "value", text={"value": "A"}, source=src, color=PHASE_COLORS[p], text_font_size="13px",
                          text_font_style="bold", x_offset=4, text_baseline="middle")
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

    def draw_pinned(self, runs: list[Run]) -> None:
        """Pinned runs' curves (dashed, an "A" at each curve's end) from their records."""
        while len(self.overlays) < len(runs):
            self.overlays.append(Curves(self.fig, f"pinned{len(self.overlays)}.", primary=False))
        marks = {p: {"x": [], "value": []} for p in PHASES}
        for curves, run in zip(self.overlays, runs):
            batch = stored_batch(run)
            curves.fill(batch)
            for p, (_idx, cols) in phase_columns(batch).items():
                self._include(p, cols["step"], cols["value"])
                marks[p]["x"].append(float(cols["x"][-1]))
                marks[p]["value"].append(float(cols["value"][-1]))
        for curves in self.overlays[len(runs):]:
            curves.clear()
        for p, src in self.pin_marks.items():
            src.data = marks[p]
        self.pin_note.show(runs)
        cover_time(self.x_range, runs, shown=self.run)
        if self.run is not None:
            self._set_title()

    def pinned_sources(self):
        return {c.run_id: c.sources for c in self.overlays if c.run_id is not None}

    def start_run(self, run: Run) -> None:
        super().start_run(run)
        self.main.clear(run.id)
        for s in (self.rose, self.delta):
            s.data = {k: [] for k in s.data}
        set_time_range(self.x_range, run)
        cover_time(self.x_range, self.pinned_runs())
        for b in self.bands:
            b.place(run)
        self._last = {}
        self._pending_delta = ([], [], [])
        self.y.reset()
        self.dy.reset()
        for c in self.overlays:
            for p, s in c.sources.items():
                self._include(p, np.asarray(s.data["step"]), np.asarray(s.data["value"]))
        self.rises = 0
        self._set_title()

    def _include(self, phase: str, step: np.ndarray, value: np.ndarray) -> None:
        """The y axis follows the energy, past the free phase's first steps (the start from zero)."""
        if len(value):
            self.y.include(value[(step >= ZOOM_SKIP) | (phase != "free")])

    def _set_title(self) -> None:
        rose = f" · rose at {self.rises} step{'s' if self.rises != 1 else ''}" if self.rises else ""
        pinned = " · dashed: A" if self._overlaid else ""
        self.fig.title.text = f"Energy: Φ (free), F = Φ + βC (nudged), β = {self.run.beta:.3g}{rose}{pinned}"

    def push(self, batch: Batch) -> None:
        if not len(batch):
            return
        dx, dd, dc = [], [], []
        for p, (idx, cols) in phase_columns(batch).items():
            value = cols["value"]
            self._include(p, cols["step"], value)
            self.main.sources[p].stream(cols)
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
        return pn.Column(self.pin_note.pane, bokeh_pane(self.fig), bokeh_pane(self.dfig), sizing_mode="stretch_width")
