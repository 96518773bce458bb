"""What every view shares: the run's time axis, coalesced frames, figure styling.

A view is a Panel ``Viewer`` fed by runs (:class:`explorer.run.Run`): it owns
raw Bokeh figures and the ``ColumnDataSource`` objects behind them, and draws
a run from its events (start, frames, phase ends, end), whether they stream
from the worker or are replayed from a stored run (:func:`replay_events`,
:meth:`View.draw_run`): the same code draws both. Only the page's periodic
callback calls a view's methods while it is served, so only that callback
touches Bokeh models (the worker thread never does).

The time axis of every "per step" plot runs through the three phases one
after the other: free phase ``0 .. T_free``, nudged +beta
``T_free .. T_free + T_nudge``, nudged -beta after that. Both nudged phases
start from the free fixed point s*.
"""
from __future__ import annotations

import html
import math
import time

import numpy as np
import panel as pn
import torch
from bokeh.models import (BasicTickFormatter, ColorBar, ColumnDataSource, CustomJS, CustomJSTicker,
                          CustomJSTickFormatter, GlyphRenderer, LabelSet, LogAxis, LogColorMapper, Range1d)
from bokeh.plotting import figure

from ...record import ENERGY_INDEX, STAT_INDEX
from ...run import Run
from ..worker import PHASES, Frame, PhaseEnded, RunEnded, RunStarted

# Okabe-Ito colours: distinguishable for colour-blind viewers and on projectors.
INK = "#8C8C8C"   # marks with no colour of their own: a mid grey reads on the light and the dark theme
PHASE_COLORS = {"free": "#0072B2", "nudged+": "#D55E00", "nudged-": "#009E73"}
PHASE_LABELS = {"free": "free phase", "nudged+": "nudged +β", "nudged-": "nudged −β"}
LAYER_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
                 INK, "#882255", "#44AA99", "#999933", "#AA4499", "#117733")
ROSE_COLOR = "#C00000"
FONT = "'Helvetica Neue', Arial, sans-serif"


def layer_color(layers, name: str) -> str:
    return LAYER_PALETTE[list(layers).index(name) % len(LAYER_PALETTE)]


REPLAY_ID = -1   # the worker's run number of events replayed from a stored run


def replay_events(run: Run, upto: int | None = None) -> list:
    """A stored run as the events the worker sent while it ran (frames from its records); with
    ``upto``, only its first ``upto + 1`` frames (the three phases' records counted one after the
    other), each phase's end only once all its frames are in: the run as it stood at that step."""
    events: list = [RunStarted(REPLAY_ID, run.request, run)]
    steps, left, complete = 0, (float("inf") if upto is None else upto + 1), True
    for phase in PHASES:
        p = run.phases.get(phase)
        if p is None or left <= 0:
            complete = complete and p is None
            continue
        shown = p.records[:int(min(left, len(p.records)))]
        left -= len(shown)
        events.extend(Frame.from_record(REPLAY_ID, rec) for rec in shown)
        if len(shown) < len(p.records):
            complete = False
            continue
        y = p.output[0].to(torch.float64).numpy() if p.output is not None else np.full(run.n_classes, np.nan)
        events.append(PhaseEnded(REPLAY_ID, phase, p.steps, p.verdict, y))
        steps += p.steps
    if complete:
        cancelled = any(p.verdict.get("status") == "cancelled" for p in run.phases.values())
        events.append(RunEnded(REPLAY_ID, cancelled, 0.0, steps, run))
    return events


def replay_position(run: Run, index: int) -> tuple[str, int, int]:
    """Frame ``index`` of a run (phases counted one after the other) as (phase, step, that phase's steps)."""
    for phase in PHASES:
        p = run.phases.get(phase)
        if p is None:
            continue
        if index < len(p.records):
            return phase, p.records[index].step, p.steps
        index -= len(p.records)
    last = next(p for p in reversed([run.phases.get(n) for n in PHASES]) if p is not None)
    return last.phase, last.steps, last.steps


def replay_frames(run: Run) -> int:
    return sum(len(p.records) for p in run.phases.values())


def feed(views, events, run: Run | None, run_number: int | None = None) -> tuple[Run | None, int, int]:
    """Hand events to views as the page's drain does: consecutive frames as one :class:`Batch`.

    Returns the run now shown, its worker number and the frames drawn."""
    pending: list[Frame] = []
    drawn = 0

    def flush():
        nonlocal drawn
        if pending and run is not None:
            batch = Batch(run, list(pending))
            for view in views:
                view.offer(batch)
            drawn += len(pending)
        pending.clear()

    for ev in events:
        if isinstance(ev, Frame):
            if run is not None and ev.run_id == run_number:
                pending.append(ev)
            continue
        flush()
        if isinstance(ev, RunStarted):
            run, run_number = ev.run, ev.run_id
            for view in views:
                view.begin(run)
        elif isinstance(ev, (PhaseEnded, RunEnded)) and run is not None:
            for view in views:
                view.end(ev)
    flush()
    return run, run_number, drawn


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
    # Fewer tick labels: the browser measures every label (with style look-ups) at each repaint.
    for axis, n in ((fig.xaxis, 6), (fig.yaxis, 4)):
        for a in axis:
            if hasattr(a.ticker, "desired_num_ticks"):
                a.ticker.desired_num_ticks = n
            a.minor_tick_line_color = None
    return fig


# Font sizes (px) on a desk and in presentation mode (read from the back of a room).
FONT_SIZES = {False: {"title": 15, "axis_label": 13, "tick": 12, "legend": 12},
              True: {"title": 24, "axis_label": 19, "tick": 17, "legend": 16}}
# Plain numbers on axes and colour bars, never "5.000e-4" or "-5.000e+5": the digits the tick spacing
# needs ("-487.5", "-488", "0.0005"), large values in k / M / G ("-500k", "-1.5M"), and powers of ten
# only below 1e-4.
PLAIN_TICKS_JS = """
const top = Math.max(...ticks.map(Math.abs));
const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : (top || 1);
if (tick === 0) return "0";
const decimals = (unit) => {   // the decimals a spacing needs (2.5 -> 1, 0.25 -> 2)
  let d = 0;
  while (d < 8 && Math.abs(Math.round(unit * 10 ** d) - unit * 10 ** d) > 1e-6) d++;
  return d;
};
const minus = (text) => text.replace("-", "\\u2212");
if (top < 1e-4) {
  const e = Math.floor(Math.log10(top));
  return minus((tick / 10 ** e).toFixed(decimals(step / 10 ** e)) + "e" + e);
}
let scale = 1, suffix = "";
if (top >= 1e4)
  for (const [v, s] of [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]])
    if (top >= v) { scale = v; suffix = s; break; }
return minus((tick / scale).toFixed(decimals(step / scale))) + suffix;
"""


# Log-axis tick labels: powers of ten as 10⁻⁴ when every tick is one, else plain numbers (0.0005). Bokeh's
# LogTickFormatter hands ticks within one decade (a zoomed or narrow axis) to a BasicTickFormatter with
# its defaults, which prints "5.000e-4".
LOG_TICKS_JS = """
const sup = {"-": "\u207b", "0": "\u2070", "1": "\u00b9", "2": "\u00b2", "3": "\u00b3", "4": "\u2074",
             "5": "\u2075", "6": "\u2076", "7": "\u2077", "8": "\u2078", "9": "\u2079"};
const decade = (t) => t > 0 && Math.abs(t / Math.pow(10, Math.round(Math.log10(t))) - 1) < 1e-9;
if (ticks.every(decade)) {
  const e = Math.round(Math.log10(tick));
  return e >= 0 && e <= 3 ? String(Math.pow(10, e)) : "10" + String(e).split("").map((c) => sup[c]).join("");
}
return String(Number(tick.toPrecision(3)));
"""


def plain_ticks() -> CustomJSTickFormatter:
    return CustomJSTickFormatter(code=PLAIN_TICKS_JS)


def style(fig: figure, present: bool = False) -> None:
    sizes = FONT_SIZES[present]
    fig.title.text_font_size = f"{sizes['title']}px"
    fig.title.text_font = FONT
    fig.title.text_font_style = "bold"
    for axis in (*fig.xaxis, *fig.yaxis):
        axis.axis_label_text_font_size = f"{sizes['axis_label']}px"
        axis.axis_label_text_font_style = "normal"
        axis.axis_label_text_font = FONT
        axis.major_label_text_font_size = f"{sizes['tick']}px"
    for leg in fig.legend:
        leg.label_text_font_size = f"{sizes['legend']}px"
    for bar in color_bars(fig):
        bar.major_label_text_font_size = f"{sizes['tick']}px"
        bar.title_text_font_size = f"{sizes['axis_label']}px"
    fig.grid.grid_line_alpha = 0.35
    fig.outline_line_color = None
    fig.background_fill_color = "#fcfcfc"


def color_bars(fig: figure) -> list:
    return [m for m in (*fig.right, *fig.left, *fig.above, *fig.below) if isinstance(m, ColorBar)]


# Log-axis ticks: at most about five powers of ten (every k-th decade), 1-2-5 steps within two decades.
# Bokeh's LogTicker shows up to nine decades whatever desired_num_ticks says: on the 200-px |ΔE| plot in
# presentation mode (17-px labels) "1000 100 10 1 10⁻¹ … 10⁻⁵" were drawn over each other.
MAX_DECADE_TICKS = 5
LOG_TICKER_JS = """
const lo = Math.min(cb_data.start, cb_data.end), hi = Math.max(cb_data.start, cb_data.end);
if (!(lo > 0) || !Number.isFinite(hi)) return [];
const a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
const ticks = [];
if (b - a <= 2) {
  for (let e = a; e <= b; e++) for (const m of [1, 2, 5]) ticks.push(m * Math.pow(10, e));
} else {
  const k = Math.ceil((b - a) / MAX_DECADE_TICKS);
  for (let e = Math.ceil(a / k) * k; e <= b; e += k) ticks.push(Math.pow(10, e));
}
return ticks.filter((t) => t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9));
""".replace("MAX_DECADE_TICKS", str(MAX_DECADE_TICKS))


def plain_log_ticks(fig) -> None:
    """Tick labels of a figure's log axes as LOG_TICKS_JS writes them (never "5.000e-4"), at most about
    five of them (LOG_TICKER_JS)."""
    for axis in (*fig.xaxis, *fig.yaxis):
        if isinstance(axis, LogAxis):
            axis.formatter = CustomJSTickFormatter(code=LOG_TICKS_JS)
            axis.ticker = CustomJSTicker(major_code=LOG_TICKER_JS)


def tidy_ticks(fig: figure) -> None:
    """Plain tick labels on linear axes and colour bars; log axes as LOG_TICKS_JS writes them."""
    plain_log_ticks(fig)
    for axis in (*fig.xaxis, *fig.yaxis):
        if type(axis.formatter) is BasicTickFormatter:
            axis.formatter = plain_ticks()
    for bar in color_bars(fig):
        if bar.formatter == "auto" and not isinstance(bar.color_mapper, LogColorMapper):
            bar.formatter = plain_ticks()


def style_legend(fig: figure, location: str = "top_right", outside: bool = True) -> None:
    """The legend outside the plot area (beside it), so it never covers a curve; ``outside=False``
    for a caller that places it itself (below the plot)."""
    if not fig.legend:
        return
    leg = fig.legend[0]
    leg.location = "top_left" if location.startswith("top") else "bottom_left"
    leg.label_text_font_size = "12px"
    leg.background_fill_alpha = 0.0
    leg.border_line_alpha = 0.0
    leg.spacing = 0
    leg.padding = 2
    leg.margin = 2
    if outside and leg in fig.center:
        fig.center = [m for m in fig.center if m is not leg]
        fig.add_layout(leg, "right")


SHOW_TARGET_JS = """
const m = cb_obj.document.get_model_by_id(target);
if (m != null) m.visible = cb_obj.visible;
"""


def static_legend(fig: figure, colors: dict[str, str] | None = None) -> None:
    """Point each legend item at a proxy renderer on a one-row source that never changes.

    A Bokeh legend re-renders its items (new canvases, CSS look-ups) whenever the
    source of one of its renderers changes, i.e. at every streamed tick; measured
    in Chromium that was the largest single cost of a frame. The proxies draw
    nothing in the plot; ``colors`` gives a colour (by label) where the real
    glyph takes its colour from a data column. Clicking a proxy's legend entry
    still hides the real renderer.
    """
    colors = colors or {}
    for legend in fig.legend:
        for item in legend.items:
            label = getattr(item.label, "value", None)
            if label is None:
                continue   # a label per data row (legend_field) needs the real source
            proxies = []
            for r in item.renderers:
                props = dict(r.glyph.properties_with_values(include_defaults=False))
                fields = []
                for k, v in list(props.items()):
                    field = getattr(v, "field", None) or (v.get("field") if isinstance(v, dict) else None)
                    if field is None:
                        continue
                    if k.endswith("color"):
                        props[k] = colors.get(label, "#888888")
                    else:
                        fields.append(field)
                # One row that draws nothing in the plot (NaN numbers), so the legend has the row 0
                # it draws its swatch from (text columns, e.g. categorical positions, keep a value).
                row = {}
                for k, v in r.data_source.data.items():
                    first = v[0] if len(v) else None
                    row[k] = [first if isinstance(first, str) else float("nan")]
                for f in fields:
                    row.setdefault(f, [float("nan")])
                proxy = GlyphRenderer(data_source=ColumnDataSource(data=row), glyph=type(r.glyph)(**props))
                # by id, not by reference: the legend re-renders on any change reachable from its
                # items, and a reference would reach the real renderer's streaming source again
                proxy.js_on_change("visible", CustomJS(args={"target": r.id}, code=SHOW_TARGET_JS))
                fig.renderers.append(proxy)
                proxies.append(proxy)
            item.renderers = proxies


class PhaseBands:
    """Shaded spans marking the three phases on a time-axis figure.

    Drawn as one vectorised ``vstrip`` glyph (and one ``LabelSet``) rather than
    a BoxAnnotation and Label per phase: the browser repaints these figures at
    every tick, and each scalar annotation costs it a CSS style lookup per paint.
    """

    def __init__(self, fig: figure, labels: bool = True):
        self.source = ColumnDataSource(data={"left": [0, 0, 0], "right": [0, 0, 0],
                                             "color": [PHASE_COLORS[p] for p in PHASES],
                                             "label": [PHASE_LABELS[p] for p in PHASES]})
        fig.vstrip(x0="left", x1="right", source=self.source, fill_color="color", fill_alpha=0.07,
                   line_alpha=0, level="underlay")
        if labels:
            fig.add_layout(LabelSet(x="left", y=4, y_units="screen", text="label", source=self.source,
                                    x_offset=4, text_color="color", text_font_size="11px"))

    def place(self, run: Run) -> None:
        lefts = [run.offset(p) for p in PHASES]
        self.source.data = {"left": lefts, "right": [l + run.steps_of(p) for l, p in zip(lefts, PHASES)],
                            "color": [PHASE_COLORS[p] for p in PHASES],
                            "label": [PHASE_LABELS[p] for p in PHASES]}


class StableRange:
    """A y range that moves only when the data leave it, and then by a margin.

    An axis whose range follows the data on every tick changes its tick labels
    on every tick, which makes the browser lay the plot out again before each
    paint; a range that stays put lets it simply repaint.
    """

    def __init__(self, log: bool = False, floor: tuple[float, float] | None = None, headroom: float = 0.15):
        self.log = log
        self.floor = floor            # a span the range always covers, e.g. (0, 1)
        self.headroom = headroom
        self.range = Range1d(*(floor or ((1e-8, 1.0) if log else (0.0, 1.0))))
        self._span: tuple[float, float] | None = None

    def reset(self) -> None:
        self._span = None

    def include(self, values) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v) & ((v > 0) if self.log else True)]
        if not len(v):
            return
        lo, hi = float(v.min()), float(v.max())
        if self._span is not None and self._span[0] <= lo and hi <= self._span[1]:
            return
        if self._span is not None:
            lo, hi = min(lo, self._span[0]), max(hi, self._span[1])
        if self.floor is not None:
            lo, hi = min(lo, self.floor[0]), max(hi, self.floor[1])
        if self.log:
            start, end = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
            if end <= start:
                end = start * 10
        else:
            pad = self.headroom * max(hi - lo, 1e-6 * (abs(hi) + 1.0))
            start, end = lo - pad, hi + pad
        self._span = (start, end)
        self.range.update(start=start, end=end)


class HeatImage:
    """A rows x steps heat map as one image glyph, filled column by column with ``CDS.patch``.

    Thousands of rect glyphs (one per layer and step) cost the browser a
    spatial index and a pass over every rect at each update; one image costs
    a patch of the new columns and a redraw of a small bitmap.
    """

    def __init__(self, fig: figure, mapper, name: str):
        self.source = ColumnDataSource(data={"image": [np.full((1, 1), np.nan, dtype=np.float32)],
                                             "x": [-0.5], "y": [-0.5], "dw": [1], "dh": [1]}, name=name)
        self.renderer = fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.source,
                                  color_mapper=mapper)
        self.shape = (1, 1)

    def reset(self, rows: int, cols: int, y0: float = 0.0) -> None:
        """Empty (NaN) cells; column c is drawn centred on x = c, row r on y = y0 + r."""
        self.shape = (rows, cols)
        self.source.data = {"image": [np.full((rows, cols), np.nan, dtype=np.float32)], "x": [-0.5],
                            "y": [y0 - 0.5], "dw": [cols], "dh": [rows]}

    def fill(self, cols, values) -> None:
        """Set columns ``cols`` (ascending ints) to ``values`` [len(cols), rows] (row 0 at the bottom)."""
        cols = np.asarray(cols, dtype=np.int64)
        values = np.asarray(values, dtype=np.float32)
        keep = (cols >= 0) & (cols < self.shape[1])
        cols, values = cols[keep], values[keep]
        if not len(cols):
            return
        patches = []
        start = 0
        for i in range(1, len(cols) + 1):   # one patch per run of consecutive columns
            if i == len(cols) or cols[i] != cols[i - 1] + 1:
                block = values[start:i].T        # [rows, n]
                patches.append(((0, slice(0, self.shape[0]), slice(int(cols[start]), int(cols[i - 1]) + 1)),
                                np.ascontiguousarray(block).ravel()))
                start = i
        self.source.patch({"image": patches})

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.source.data["image"][0])

    def filled(self) -> int:
        return int(np.isfinite(self.array).sum())


def layer_axis(fig: figure, labels: list[str], positions: list[float] | None = None) -> None:
    """Name the rows of a heat map image on its y axis."""
    from bokeh.models import FixedTicker
    positions = list(range(len(labels))) if positions is None else positions
    fig.yaxis.ticker = FixedTicker(ticks=positions)
    fig.yaxis.major_label_overrides = {p: l for p, l in zip(positions, labels)}
    fig.yaxis.minor_tick_line_color = None


def time_range(run: Run | None = None) -> Range1d:
    end = run.x_end if run is not None else 220
    return Range1d(0, end, bounds=(0, end))


def set_time_range(rng: Range1d, run: Run) -> None:
    rng.update(start=0, end=run.x_end, bounds=(0, run.x_end))


def empty(source: ColumnDataSource) -> None:
    source.data = {k: [] for k in source.data}


# Runs A and B (issue 16): a pinned run (A) stays drawn, muted and labelled, under the run that streams (B).
PINNED_LINE = {"line_dash": "dashed", "line_alpha": 0.55}


_STORED: dict = {}   # the last stored batch made, by (run id, records): the four views draw A from one


def stored_batch(run: Run) -> Batch:
    """Every record of a stored run as one batch (the three phases one after the other)."""
    key = (run.id, sum(len(p.records) for p in run.phases.values()))
    if _STORED.get("key") != key:
        _STORED.update(key=key, batch=Batch(run, [Frame.from_record(REPLAY_ID, rec) for rec in run.records()]))
    return _STORED["batch"]


def pinned_caption(run: Run) -> str:
    """How a pinned run is named in the views: A, with what sets it apart at a glance."""
    s = run.settings
    return (f"A (pinned): {run.network.get('model')}, {'residual' if run.residual else 'plain'}, "
            f"depth {len(run.hidden)}, β {s['beta']:.3g}, α {s['alpha']:.3g}, {s['schedule']}")


class PinNote:
    """One line above a view's plots naming the pinned run (A) drawn muted in them."""

    def __init__(self, how: str):
        self.how = how   # how A is drawn here ("dashed", "in the lower map")
        self.pane = pn.pane.HTML("", visible=False, margin=(0, 10), sizing_mode="stretch_width",
                                 css_classes=["pin-note"])

    def show(self, runs) -> None:
        text = "".join(f"<div class='pin-note'>{self.how}: <b>{html.escape(pinned_caption(r))}</b>, "
                       f"run {html.escape(r.id)}</div>" for r in runs)
        if self.pane.object != text:
            self.pane.object = text
        self.pane.visible = bool(runs)


def cover_time(rng: Range1d, runs, shown: Run | None = None) -> None:
    """Fit a time axis to the given runs: with no ``shown`` run, widen it to cover them (pinned runs
    drawn under the shown one); with the shown run, fit it to that run and those pinned exactly, so
    the axis shrinks back once a longer run is unpinned."""
    if shown is None:
        end = max((r.x_end for r in runs), default=rng.end)
        if end > rng.end:
            rng.update(end=end, bounds=(0, end))
        return
    end = max([shown.x_end, *(r.x_end for r in runs)])
    if end != rng.end:
        rng.update(start=0, end=end, bounds=(0, end))


class View(pn.viewable.Viewer):
    """Base class: a titled card of Bokeh figures fed by ColumnDataSources, drawing runs.

    The page offers every tick's frames to every view (:meth:`offer`); a view
    with ``min_interval`` > 0 collects them and draws at most that often, so
    the browser repaints its secondary plots a few times a second rather than
    at every tick. :meth:`draw_run` draws a whole stored run through the same
    methods.
    """

    key = "view"
    title = "view"
    about = ""
    min_interval = 0.0   # seconds between draws while a run streams

    def __init__(self, app_state, **params):
        super().__init__(**params)
        self.state = app_state
        self.run: Run | None = None
        self.hidden = False   # scrolled out of sight in the page: collect, draw when seen again
        self._buffer: list = []
        self._deferred: list = []
        self._drawn_at = 0.0
        self._pins: dict[str, Run | None] = {}   # runs pinned as A, by id (None: its record not seen yet)
        self._overlaid: tuple[str, ...] | None = ()   # ids of the pinned runs drawn now (None: redraw)

    # Called only from the page's periodic callback ----------------------------------------
    def offer(self, batch: Batch) -> None:
        if not self.min_interval and not self.hidden and not self._buffer:
            self.push(batch)
            return
        self._collect(batch.frames)
        now = time.monotonic()
        if not self.hidden and now - self._drawn_at >= self.min_interval:
            self.flush(now)

    def _collect(self, frames) -> None:
        """Keep frames for a later draw; only the newest full states per phase are ever drawn."""
        for f in frames:
            if f.states:
                for old in reversed(self._buffer):
                    if old.phase == f.phase and old.states:
                        old.states = {}
                        break
            self._buffer.append(f)

    def flush(self, now: float | None = None) -> None:
        """Draw whatever is collected (before a phase ends, at the end, in tests)."""
        if self._deferred:
            return   # out of sight since a run started: everything waits for reveal()
        if self._buffer and self.run is not None:
            frames, self._buffer = self._buffer, []
            self.push(Batch(self.run, frames))
        self._drawn_at = time.monotonic() if now is None else now

    # The page calls these three; out of sight, a view only notes what to do when seen again.
    def begin(self, run: Run) -> None:
        """A run started."""
        self._buffer = []
        if self.hidden:
            self._deferred = [("start", run)]
        else:
            self._deferred = []
            self.start_run(run)
            self.sync_pins()

    def end(self, event) -> None:
        """A phase (PhaseEnded) or the run (RunEnded) ended."""
        if self.hidden or self._deferred:
            if self._buffer:
                self._deferred.append(("frames", self._buffer))
                self._buffer = []
            self._deferred.append(("event", event))
            return
        self.flush()
        if isinstance(event, PhaseEnded):
            self.phase_ended(event)
        else:
            self.run_ended(event)

    def reveal(self) -> None:
        """Came into view: catch up on what happened meanwhile."""
        ops, self._deferred = self._deferred, []
        for op, arg in ops:
            if op == "start":
                buffered, self._buffer = self._buffer, []
                self.start_run(arg)
                self.sync_pins()
                self._buffer = buffered
            elif op == "frames":
                self.push(Batch(self.run, arg))
            elif isinstance(arg, PhaseEnded):
                self.phase_ended(arg)
            else:
                self.run_ended(arg)
        self.flush()

    def draw_run(self, run: Run) -> None:
        """Draw a whole stored run at once (replay, a loaded file), as if it streamed."""
        feed([self], replay_events(run), None)
        self.flush()

    def start_run(self, run: Run) -> None:
        if self.run is not None and self._pins.get(self.run.id, self.run) is None:
            self._pins[self.run.id] = self.run   # pinned by id while it was shown: its record, now
        self.run = run

    def push(self, batch: Batch) -> None:
        pass

    # Runs A and B --------------------------------------------------------------------------
    def pin(self, run: Run | str, pinned: bool = True) -> None:
        """Keep (or stop keeping) a run drawn under the runs that follow; drawn at the next
        :meth:`sync_pins` (a run's start, or the drain's display refresh)."""
        run_id = run if isinstance(run, str) else run.id
        if not pinned:
            self._pins.pop(run_id, None)
            return
        known = run if isinstance(run, Run) else self.run if self.run is not None and self.run.id == run_id else None
        self._pins[run_id] = known or self._pins.get(run_id)

    def pinned_runs(self) -> list[Run]:
        """The pinned runs drawn under the shown one: those whose record is known, other than it."""
        shown = self.run.id if self.run is not None else None
        return [r for rid, r in self._pins.items() if r is not None and rid != shown]

    def sync_pins(self) -> None:
        """Draw the pinned runs now due, and drop those unpinned, when that set changed."""
        runs = self.pinned_runs()
        ids = tuple(r.id for r in runs)
        if ids != self._overlaid:
            self._overlaid = ids
            self.draw_pinned(runs)
            if not runs:
                _STORED.clear()   # the batch made for the last pinned run: not kept once nothing is pinned

    def draw_pinned(self, runs: list[Run]) -> None:
        """Draw these pinned runs (muted, labelled A) in place of those drawn before; [] clears."""

    def pinned_sources(self) -> dict[str, dict[str, ColumnDataSource]]:
        """Each drawn pinned run's sources, by run id."""
        return {}

    def phase_ended(self, event: PhaseEnded) -> None:
        pass

    def run_ended(self, event: RunEnded) -> None:
        pass

    def refresh_display(self) -> None:
        """A display-only setting changed (no new run needed), or a run was pinned or unpinned."""
        self.sync_pins()

    def sources(self) -> dict[str, ColumnDataSource]:
        return {}

    def data_count(self) -> int:
        """Rows of data the view currently holds (what tests and the status line check)."""
        return sum(len(next(iter(s.data.values()), [])) for s in self.sources().values())

    # Layout -------------------------------------------------------------------------------
    def body(self):
        raise NotImplementedError

    def __panel__(self):
        return self.panel()

    def panel(self, **kw):
        kw.setdefault("sizing_mode", "stretch_width")
        header = pn.pane.HTML(f"<div class='view-about'>{self.about}</div>", margin=(0, 10),
                              sizing_mode="stretch_width") if self.about else None
        items = [header, self.body()] if header else [self.body()]
        return pn.Card(*items, title=self.title, collapsible=True, margin=(6, 6),
                       css_classes=["explorer-view", f"view-{self.key}"], **kw)


def bokeh_pane(fig, **kw):
    kw.setdefault("sizing_mode", "stretch_width")
    if hasattr(fig, "xaxis"):   # by now the view has added its colour bars
        tidy_ticks(fig)
    return pn.pane.Bokeh(fig, **kw)
