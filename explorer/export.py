"""Exports of a finished run (issue 18, item 4): records as CSV and JSON, views as PNG, SVG and an
animated GIF (matplotlib), and a standalone HTML replay (Bokeh, inline resources, no server).

Every function takes a :class:`~explorer.run.Run` and returns bytes. The views are drawn for one
sample of the batch (0, the one the page shows). The time axis is the page's: the free phase at
steps 0..T_free, nudged+ after it, nudged- after that (``Run.offset``).
"""
from __future__ import annotations

import io
import json
import math

import numpy as np

from .network import OUTPUT
from .record import ENERGY_STATS, LAYER_STATS
from .run import PHASE_ORDER, Run, to_table

# The page's views as figures: the energy, the trajectories' three plots (step size, mean activity,
# saturation), the residual share, the nudged-versus-free distances and the output units.
VIEWS = ("energy", "step_size", "activity", "saturation", "residual_share", "nudge", "output")
TIMED_VIEWS = ("energy", "step_size", "activity", "saturation", "residual_share")   # a GIF moves along these
LAYER_SERIES = ("step_size", "residual_share", "activity", "frac_zero", "frac_alpha")
FORMATS = ("png", "svg")
PHASE_COLOURS = {"free": "#1f77b4", "nudged+": "#d62728", "nudged-": "#2ca02c"}
MAX_GIF_FRAMES = 60


class ExportError(ValueError):
    """A run that cannot be exported as asked; the message says why."""


def _check(run: Run) -> None:
    if not any(True for _ in run.records()):
        raise ExportError("the run holds no records yet (no phase has finished)")


# ---------------------------------------------------------------------------
# Records: CSV and JSON
# ---------------------------------------------------------------------------

def records_frame(run: Run):
    """One row per phase, step, layer and sample with every LAYER_STATS and ENERGY_STATS column:
    the run file's long format (:func:`explorer.run.to_table`) without the units and state lists."""
    _check(run)
    table = to_table(run)
    return table.drop_columns(["units", "state"]).replace_schema_metadata(None).to_pandas()


def csv_bytes(run: Run) -> bytes:
    """The records as CSV. Floats are written with the shortest repr that reads back to the same
    float32/float64 value, so the numbers round-trip exactly at the record's precision."""
    df = records_frame(run)
    return df.to_csv(index=False).encode()


def json_data(run: Run, sample: int | None = None) -> dict:
    """Settings, network identity, verdicts and the records (per record: ``stats`` as
    [layer][stat][sample] and ``energy`` as [stat][sample], in the record's dtype printed as float)."""
    _check(run)
    records = []
    for r in run.records():
        stats, energy = r.stats.detach().cpu(), r.energy.detach().cpu()
        if sample is not None:
            stats, energy = stats[..., sample:sample + 1], energy[..., sample:sample + 1]
        records.append({"phase": r.phase, "step": r.step, "beta": r.beta,
                        "stats": stats.tolist(), "energy": energy.tolist()})
    return {"format": "explorer.run.json/1", "id": run.id, "settings": run.settings, "network": run.network,
            "sample": run.sample, "target": run.target.reshape(-1).tolist(), "class_names": list(run.class_names),
            "dtype": str(next(run.records()).stats.dtype).removeprefix("torch."),
            "layers": list(run.layers), "layer_stats": list(LAYER_STATS), "energy_stats": list(ENERGY_STATS),
            "verdicts": {n: run.phases[n].verdict for n in PHASE_ORDER if n in run.phases},
            "records": records}


def json_bytes(run: Run) -> bytes:
    return json.dumps(json_data(run)).encode()


# ---------------------------------------------------------------------------
# The views' data (one sample)
# ---------------------------------------------------------------------------

def series(run: Run, sample: int = 0) -> dict:
    """Per record, in time order: x (the page's step axis), phase, phi, F, and per layer each of
    LAYER_SERIES of ``sample`` ("step_size:s1", ...); as Python floats converted exactly from the
    record's values."""
    _check(run)
    out = {"x": [], "phase": [], "phi": [], "F": [], **{f"{k}:{l}": [] for k in LAYER_SERIES for l in run.layers}}
    index = {k: LAYER_STATS.index(k) for k in LAYER_SERIES}
    for r in run.records():
        out["x"].append(run.offset(r.phase) + r.step)
        out["phase"].append(r.phase)
        out["phi"].append(float(r.energy_of("phi")[sample]))
        out["F"].append(float(r.energy_of("F")[sample]))
        stats = r.stats[:, :, sample].tolist()
        for j, l in enumerate(r.layers):
            for k, i in index.items():
                out[f"{k}:{l}"].append(stats[j][i])
    return out


def _output(run: Run, sample: int = 0) -> dict[str, list[float]]:
    return {n: run.phases[n].output[sample].tolist() for n in PHASE_ORDER
            if n in run.phases and run.phases[n].output is not None}


# ---------------------------------------------------------------------------
# Matplotlib renderings: PNG, SVG, GIF
# ---------------------------------------------------------------------------

def _blank_figure(size=(7.0, 3.6)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure        # no pyplot: no global state, safe in a server thread
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure(size=(7.0, 3.6)):
    fig = _blank_figure(size)
    return fig, fig.add_subplot()


def _phase_spans(ax, run: Run) -> None:
    for n in PHASE_ORDER:
        if n in run.phases and n != "free":
            ax.axvline(run.offset(n), color="0.6", lw=0.8, ls=":")


_LAYER_TITLES = {"step_size": ("relative step ‖Δs‖/‖s‖", "Step size per layer"),
                 "residual_share": ("residual share", "Residual share per layer"),
                 "activity": ("mean of s", "Mean activity per layer"),
                 "saturation": ("fraction of units", "Units at 0 (solid) and at α (dashed) per layer")}


def _layer_lines(ax, run: Run, s: dict, x, view: str, sample: int) -> None:
    """One line per layer of a per-layer statistic (two for saturation: at 0 and at alpha). A phase's
    step 0 carries its start state, not a step: its layer statistics are placeholders, not drawn."""
    start = np.array([xi == run.offset(p) for xi, p in zip(x, s["phase"])])
    line = lambda key: np.where(start, np.nan, np.asarray(s[key], dtype=float))
    for n, l in enumerate(run.layers):
        colour = f"C{n % 10}"
        if view == "saturation":
            if l == OUTPUT:
                continue   # y is linear: never clipped
            ax.plot(x, line(f"frac_zero:{l}"), lw=1, color=colour, label=l)
            ax.plot(x, line(f"frac_alpha:{l}"), lw=1, color=colour, ls="--")
            continue
        y = line(f"{view}:{l}")
        if view == "step_size":
            y = np.where(y > 0, y, np.nan)     # log scale: the start state's 0 is not drawn
        ax.plot(x, y, lw=1, color=colour, label=l)
    if view == "step_size":
        ax.set_yscale("log")
    ylabel, title = _LAYER_TITLES[view]
    ax.set(xlabel="step", ylabel=ylabel, title=f"{title}, sample {sample}")


def _draw_nudge(run: Run, sample: int):
    """The nudged-versus-free view: ||s_beta - s*|| per layer and step of each nudged phase (log colour)."""
    from matplotlib.colors import LogNorm
    phases = [n for n in ("nudged+", "nudged-") if n in run.phases and run.phases[n].records]
    if not phases:
        raise ExportError("the nudged-versus-free view needs a nudged phase; this run has none yet")
    fig = _blank_figure((7.0, 1.6 + 1.4 * len(phases)))
    axes = fig.subplots(len(phases), 1, squeeze=False)[:, 0]
    i = LAYER_STATS.index("nudge_distance")
    maps = {n: np.array([r.stats[:, i, sample].tolist() for r in run.phases[n].records]).T for n in phases}
    positive = np.concatenate([m[m > 0] for m in maps.values()]) if maps else np.array([])
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    for ax, n in zip(axes, phases):
        m = np.where(maps[n] > 0, maps[n], np.nan)
        image = ax.imshow(m, aspect="auto", origin="upper", norm=norm, cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(run.layers)), run.layers, fontsize=7)
        ax.set(xlabel=f"step of {n} (beta = {run.phases[n].records[-1].beta:+.3g})",
               title=f"‖s_β − s*‖ per layer, {n}, sample {sample}")
    fig.colorbar(image, ax=list(axes), label="‖s_β − s*‖")
    return fig


def _draw(run: Run, view: str, sample: int = 0):
    """The figure of ``view`` and, for the stepped views, where the moving marker sits per record."""
    if view not in VIEWS:
        raise ExportError(f"view {view!r} is not one of {', '.join(VIEWS)}")
    s = series(run, sample)
    fig, ax = _figure()
    x = np.asarray(s["x"])
    if view == "energy":
        for n in PHASE_ORDER:
            m = np.array([p == n for p in s["phase"]])
            if m.any():
                ax.plot(x[m], np.asarray(s["phi"])[m], color=PHASE_COLOURS[n], lw=1.4, label=f"Φ ({n})")
                if n != "free":
                    ax.plot(x[m], np.asarray(s["F"])[m], color=PHASE_COLOURS[n], lw=1, ls="--", label=f"F ({n})")
        ax.set(xlabel="step", ylabel="energy", title=f"Energy Φ and F = Φ + βC, sample {sample}")
        marker_y = s["F"]
    elif view in ("step_size", "residual_share", "activity", "saturation"):
        _layer_lines(ax, run, s, x, view, sample)
        marker_y = None
    elif view == "nudge":
        return _draw_nudge(run, sample), None, None, None
    else:
        y = _output(run, sample)
        k = np.arange(run.n_classes)
        width = 0.8 / max(len(y), 1)
        for i, (n, v) in enumerate(y.items()):
            ax.bar(k + i * width, v, width, color=PHASE_COLOURS[n], label=f"y at the end of {n}")
        names = run.class_names if len(run.class_names) == run.n_classes else [str(c) for c in k]
        ax.set_xticks(k + width * (len(y) - 1) / 2, names, rotation=30, ha="right")
        ax.set(ylabel="y", title=f"Output units y, sample {sample} (label {names[run.label]})")
        ax.legend(fontsize=7, loc="best")
        return fig, ax, None, None
    _phase_spans(ax, run)
    ax.legend(fontsize=7, loc="best", ncols=2)
    return fig, ax, x, marker_y


def figure_bytes(run: Run, view: str, fmt: str = "png", sample: int = 0) -> bytes:
    """One view of the run as PNG or SVG (matplotlib renderings of the page's view data)."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    fig, *_ = _draw(run, view, sample)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    return buf.getvalue()


def gif_bytes(run: Run, view: str = "energy", sample: int = 0, max_frames: int = MAX_GIF_FRAMES,
              ms_per_frame: int = 80) -> bytes:
    """An animated GIF of ``view`` over the run: the curves drawn once, a marker (and a step line)
    moving; a frame every few steps so a long run has at most ``max_frames`` frames."""
    from PIL import Image
    if view not in TIMED_VIEWS:
        raise ExportError(f"the GIF shows a view over time: {', '.join(TIMED_VIEWS)}, not {view!r}")
    fig, ax, x, marker_y = _draw(run, view, sample)
    n = len(x)
    stride = max(1, -(-n // max_frames))
    frames_at = list(range(0, n, stride)) + ([n - 1] if (n - 1) % stride else [])
    cursor = ax.axvline(x[0], color="k", lw=1, animated=True)
    dot, = ax.plot([x[0]], [marker_y[0]] if marker_y is not None else [np.nan], "o", color="k", ms=6,
                   animated=True)
    label = ax.text(0.01, 0.02, "", transform=ax.transAxes, fontsize=8, animated=True)
    canvas = fig.canvas
    canvas.draw()                             # the static curves once; frames blit only the marker
    fig.set_layout_engine("none")
    background = canvas.copy_from_bbox(fig.bbox)
    frames = []
    for i in frames_at:
        canvas.restore_region(background)
        cursor.set_xdata([x[i], x[i]])
        if marker_y is not None:
            dot.set_data([x[i]], [marker_y[i]])
        label.set_text(f"step {x[i]} of {x[-1]}")
        for artist in (cursor, dot, label):
            ax.draw_artist(artist)
        frame = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
        frames.append(frame.convert("RGB").quantize(colors=64, method=Image.Quantize.FASTOCTREE))
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return buf.getvalue()


# ---------------------------------------------------------------------------
# Standalone HTML (Bokeh)
# ---------------------------------------------------------------------------

_REPLAY_JS = """
const i = Math.max(0, Math.min(slider.value, curves.data.x.length - 1));
const x = curves.data.x[i];
for (const s of spans) { s.location = x; }
marker.data = {x: [x], y: [curves.data.F[i]]};
label.text = `step ${x} of ${curves.data.x[curves.data.x.length - 1]} (${curves.data.phase[i]})`;
"""

_PLAY_JS = """
if (toggle.active) {
  if (slider.value >= slider.end) { slider.value = 0; }
  window._explorer_replay = setInterval(() => {
    if (slider.value >= slider.end) { toggle.active = false; return; }
    slider.value = slider.value + 1;
  }, 60);
} else if (window._explorer_replay) {
  clearInterval(window._explorer_replay);
}
"""


def _inline_resources():
    """Bokeh's own JS and CSS inline, without the files other libraries' models register
    (Panel's, once it is imported, would add a script by relative path the offline file lacks)."""
    from bokeh.resources import Resources

    class InlineOnly(Resources):
        def clone(self, *, components=None) -> "InlineOnly":     # file_html clones with the used components
            return InlineOnly(mode="inline", components=list(self.components if components is None else components))

        @property
        def js_files(self) -> list[str]:
            return []

        @property
        def css_files(self) -> list[str]:
            return []

    return InlineOnly(mode="inline")


ENERGY_ZOOM_FROM = 3   # as the page's energy view: the start from zero would flatten the rest


def _energy_range(s: dict):
    """The energy axis over Φ and F from free step 3 on (seen: the start at 0 against -490 left the
    whole replay a flat line at the bottom), with a little room; None (automatic) if nothing is finite."""
    from bokeh.models import DataRange1d, Range1d
    values = [v for key in ("phi", "F") for x, v in zip(s["x"], s[key])
              if x >= ENERGY_ZOOM_FROM and math.isfinite(v)]
    if not values:
        return DataRange1d()
    low, high = min(values), max(values)
    pad = 0.05 * (high - low) or 0.05 * abs(high) or 1.0
    return Range1d(low - pad, high + pad)


def html_bytes(run: Run, sample: int = 0) -> bytes:
    """A standalone HTML replay: the energy and step-size plots, a slider and a play button driven by
    CustomJS over the run's data embedded in the file (source ``curves``); Bokeh's JS inline, so
    the file needs no server and fetches nothing."""
    from bokeh.embed import file_html
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, CustomJS, Div, Slider, Span, Toggle
    from bokeh.palettes import Category10_10
    from bokeh.plotting import figure

    s = series(run, sample)
    curves = ColumnDataSource(s, name="curves")        # lists, so the numbers are JSON numbers in the file
    marker = ColumnDataSource({"x": [s["x"][0]], "y": [s["F"][0]]}, name="marker")
    common = dict(height=300, sizing_mode="stretch_width", x_axis_label="step")
    energy = figure(title="Energy Φ and F = Φ + βC", y_axis_label="energy", y_range=_energy_range(s), **common)
    energy.line("x", "phi", source=curves, color=PHASE_COLOURS["free"], legend_label="Φ")
    energy.line("x", "F", source=curves, color=PHASE_COLOURS["nudged+"], line_dash="dashed", legend_label="F")
    energy.scatter("x", "y", source=marker, size=9, color="black")
    steps = figure(title="Step size per layer (relative)", y_axis_type="log", y_axis_label="‖Δs‖/‖s‖",
                   x_range=energy.x_range, **common)
    for k, l in enumerate(run.layers):
        steps.line("x", f"step_size:{l}", source=curves, color=Category10_10[k % 10], legend_label=l)
    spans = []
    for fig in (energy, steps):
        fig.toolbar.logo = None
        fig.legend.location = "top_right"
        fig.legend.click_policy = "hide"
        span = Span(location=s["x"][0], dimension="height", line_color="black", line_width=1)
        fig.add_layout(span)
        spans.append(span)
    slider = Slider(start=0, end=len(s["x"]) - 1, value=0, step=1, title="record", sizing_mode="stretch_width")
    toggle = Toggle(label="▶ Play / ❚❚ Pause", active=False, width=150)
    label = Div(text=f"step {s['x'][0]} of {s['x'][-1]} (free)")
    slider.js_on_change("value", CustomJS(args=dict(slider=slider, curves=curves, marker=marker, spans=spans,
                                                    label=label), code=_REPLAY_JS))
    toggle.js_on_change("active", CustomJS(args=dict(toggle=toggle, slider=slider), code=_PLAY_JS))
    st = run.settings
    title = Div(text=f"<h3>Run {run.id}: {run.network.get('model', '')}, sample {run.sample}, "
                     f"β {st.get('beta')}, α {st.get('alpha')}, {st.get('schedule')}</h3>")
    layout = column(title, row(toggle, label), slider, energy, steps, sizing_mode="stretch_width")
    return file_html(layout, _inline_resources(), title=f"Run {run.id}").encode()


__all__ = ["VIEWS", "FORMATS", "ExportError", "records_frame", "csv_bytes", "json_data", "json_bytes",
           "series", "figure_bytes", "gif_bytes", "html_bytes"]
