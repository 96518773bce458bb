"""What every view shares: the run's time axis, coalesced frames, figure styling.

A view owns raw Bokeh figures and the ``ColumnDataSource`` objects behind
them. Only the page's periodic callback calls a view's methods, so only that
callback touches Bokeh models (the worker thread never does).

The time axis of every "per step" plot runs through the three phases one
after the other: free phase ``0 .. T_free``, nudged +beta
``T_free .. T_free + T_nudge``, nudged -beta after that. Both nudged phases
start from the free fixed point s*.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import panel as pn
from bokeh.models import BoxAnnotation, ColumnDataSource, Label, Range1d
from bokeh.plotting import figure

from ...record import ENERGY_INDEX, STAT_INDEX
from ..state import RunRequest
from ..worker import PHASES, Frame, PhaseEnded, RunEnded

# Okabe-Ito colours: distinguishable for colour-blind viewers and on projectors.
PHASE_COLORS = {"free": "#0072B2", "nudged+": "#D55E00", "nudged-": "#009E73"}
PHASE_LABELS = {"free": "free phase", "nudged+": "nudged +β", "nudged-": "nudged −β"}
LAYER_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
                 "#000000", "#882255", "#44AA99", "#999933", "#AA4499", "#117733")
ROSE_COLOR = "#C00000"
FONT = "'Helvetica Neue', Arial, sans-serif"


def layer_color(layers, name: str) -> str:
    return LAYER_PALETTE[list(layers).index(name) % len(LAYER_PALETTE)]


@dataclass
class Run:
    """The run being shown: its request plus the geometry of the time axis."""
    request: RunRequest

    @property
    def run_id(self) -> int:
        return self.request.run_id

    @property
    def layers(self) -> tuple[str, ...]:
        return self.request.layers

    @property
    def hidden(self) -> tuple[str, ...]:
        return tuple(n for n in self.layers if n != "y")

    @property
    def beta(self) -> float:
        return self.request.beta

    def offset(self, phase: str) -> int:
        r = self.request
        return {"free": 0, "nudged+": r.t_free, "nudged-": r.t_free + r.t_nudge}[phase]

    @property
    def x_end(self) -> int:
        return self.request.total_steps

    def steps_of(self, phase: str) -> int:
        return self.request.t_free if phase == "free" else self.request.t_nudge


class Batch:
    """Frames of one run that arrived since the last tick, as arrays (built once per tick)."""

    def __init__(self, run: Run, frames: list[Frame]):
        self.run = run
        self.frames = frames
        self.phase = [f.phase for f in frames]
        self.step = np.array([f.step for f in frames], dtype=np.int64)
        self.x = np.array([run.offset(f.phase) + f.step for f in frames], dtype=np.float64)
        self.stats = np.stack([f.stats for f in frames]) if frames else np.zeros((0, len(run.layers), len(STAT_INDEX)))
        self.energy = np.stack([f.energy for f in frames]) if frames else np.zeros((0, len(ENERGY_INDEX)))
        units = [f.units for f in frames if f.units is not None]
        self.units = np.stack(units) if len(units) == len(frames) and frames else None
        # Step 0 carries the start state, not a step: its layer statistics are placeholders.
        self.real_step = self.step > 0

    def __len__(self) -> int:
        return len(self.frames)

    def stat(self, name: str) -> np.ndarray:
        """[n, n_layers]; NaN at step 0 (no update happened there)."""
        out = self.stats[:, :, STAT_INDEX[name]].copy()
        out[~self.real_step] = np.nan
        return out

    def energy_of(self, name: str) -> np.ndarray:
        return self.energy[:, ENERGY_INDEX[name]]

    def phase_starts(self) -> np.ndarray:
        """Positions of nudged-phase start frames (where lines must break)."""
        return np.array([i for i, (p, s) in enumerate(zip(self.phase, self.step)) if s == 0 and p != "free"],
                        dtype=np.int64)

    def latest(self, phase: str | None = None) -> Frame | None:
        for f in reversed(self.frames):
            if phase is None or f.phase == phase:
                return f
        return None


def with_breaks(batch: Batch, columns: dict[str, np.ndarray]) -> dict[str, list]:
    """Insert a NaN row before each nudged phase's first frame, so lines do not join phases."""
    starts = batch.phase_starts()
    if len(starts) == 0:
        return {k: np.asarray(v) for k, v in columns.items()}
    out = {}
    for k, v in columns.items():
        v = np.asarray(v, dtype=np.float64)
        out[k] = np.insert(v, starts, np.nan)
    return out


def make_figure(title: str, height: int = 260, x_label: str = "iteration", y_label: str = "",
                y_axis_type: str = "auto", tools: str = "xpan,xwheel_zoom,box_zoom,reset,save",
                **kw) -> figure:
    kw.setdefault("sizing_mode", "stretch_width")
    kw.setdefault("min_border_left", 60)
    kw.setdefault("toolbar_location", "right")
    fig = figure(title=title, height=height, y_axis_type=y_axis_type, tools=tools, **kw)
    fig.toolbar.autohide = True
    fig.toolbar.logo = None
    style(fig)
    fig.xaxis.axis_label = x_label
    fig.yaxis.axis_label = y_label
    return fig


def style(fig: figure) -> None:
    fig.title.text_font_size = "15px"
    fig.title.text_font = FONT
    fig.title.text_font_style = "bold"
    for axis in (*fig.xaxis, *fig.yaxis):
        axis.axis_label_text_font_size = "13px"
        axis.axis_label_text_font_style = "normal"
        axis.axis_label_text_font = FONT
        axis.major_label_text_font_size = "12px"
    fig.grid.grid_line_alpha = 0.35
    fig.outline_line_color = None
    fig.background_fill_color = "#fcfcfc"


def style_legend(fig: figure, location: str = "top_right") -> None:
    if not fig.legend:
        return
    leg = fig.legend[0]
    leg.location = location
    leg.label_text_font_size = "12px"
    leg.background_fill_alpha = 0.75
    leg.border_line_alpha = 0.2
    leg.spacing = 0
    leg.padding = 4
    leg.margin = 4


class PhaseBands:
    """Shaded spans marking the three phases on a time-axis figure."""

    def __init__(self, fig: figure, labels: bool = True):
        self.boxes, self.labels = {}, {}
        for phase in PHASES:
            box = BoxAnnotation(left=0, right=0, fill_color=PHASE_COLORS[phase], fill_alpha=0.06,
                                line_alpha=0, level="underlay")
            fig.add_layout(box)
            self.boxes[phase] = box
            if labels:
                lab = Label(x=0, y=4, x_units="data", y_units="screen", text=PHASE_LABELS[phase],
                            text_font_size="11px", text_color=PHASE_COLORS[phase], text_alpha=0.9,
                            x_offset=4)
                fig.add_layout(lab)
                self.labels[phase] = lab

    def place(self, run: Run) -> None:
        for phase in PHASES:
            left = run.offset(phase)
            self.boxes[phase].left = left
            self.boxes[phase].right = left + run.steps_of(phase)
            if phase in self.labels:
                self.labels[phase].x = left


def time_range(run: Run | None = None) -> Range1d:
    end = run.x_end if run is not None else 220
    return Range1d(0, end, bounds=(0, end))


def set_time_range(rng: Range1d, run: Run) -> None:
    rng.update(start=0, end=run.x_end, bounds=(0, run.x_end))


def empty(source: ColumnDataSource) -> None:
    source.data = {k: [] for k in source.data}


class View:
    """Base class: a titled card of Bokeh figures fed by ColumnDataSources."""

    key = "view"
    title = "view"
    about = ""

    def __init__(self, app_state):
        self.state = app_state
        self.run: Run | None = None

    # Called only from the page's periodic callback ----------------------------------------
    def start_run(self, run: Run) -> None:
        self.run = run

    def push(self, batch: Batch) -> None:
        pass

    def phase_ended(self, event: PhaseEnded) -> None:
        pass

    def run_ended(self, event: RunEnded) -> None:
        pass

    def refresh_display(self) -> None:
        """A display-only setting changed (no new run needed)."""

    def sources(self) -> dict[str, ColumnDataSource]:
        return {}

    def data_count(self) -> int:
        """Rows of data the view currently holds (what tests and the status line check)."""
        return sum(len(next(iter(s.data.values()), [])) for s in self.sources().values())

    # Layout -------------------------------------------------------------------------------
    def body(self):
        raise NotImplementedError

    def panel(self, **kw):
        kw.setdefault("sizing_mode", "stretch_width")
        header = pn.pane.HTML(f"<div class='view-about'>{self.about}</div>", margin=(0, 10),
                              sizing_mode="stretch_width") if self.about else None
        items = [header, self.body()] if header else [self.body()]
        return pn.Card(*items, title=self.title, collapsible=True, margin=(6, 6),
                       css_classes=["explorer-view", f"view-{self.key}"], **kw)


def bokeh_pane(fig, **kw):
    kw.setdefault("sizing_mode", "stretch_width")
    return pn.pane.Bokeh(fig, **kw)
