"""HoloViews charts of the Scan and Sweep tabs (Bokeh backend), and small text helpers."""
from __future__ import annotations

import base64
import html
import io
import math
import textwrap

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the Bokeh backend and its options)
import numpy as np

hv.Store.set_current_backend("bokeh")

PHASE_COLORS = {"free": "#0072B2", "nudged+": "#D55E00", "nudged-": "#009E73"}
BAR_COLOR = "#0072B2"
CHART = dict(width=380, height=240, toolbar=None, default_tools=["hover"], fontscale=1.0)
# Presentation mode: larger charts (two side by side on a 1024-px projector with the sidebar hidden),
# fonts as the Relaxation tab's (views/base.py style()), titles wrapped to the figure.
PRESENT_SIZE = dict(width=460, height=330)
# Panel's tables are 12 px (panel/dist/css/dataframe.css): scaled with the views' text (assets/app.css).
TABLE_CSS = "table.panel-df { font-size: calc(12px * var(--explorer-text, 1)); }"
LEGEND_ROOM = {False: 90, True: 120}   # px added to a chart whose legend is beside it (desk, presentation)
AXIS_ROOM = 90       # px left of the plot area (y ticks and label) at the presentation font
EM = 0.6             # a generous average character width of bold sans-serif, in em


def wrap_title(title: str, width: int, present: bool) -> str:
    """The title on as many lines as it needs to fit ``width`` px at the presentation font (desk: as is)."""
    if not present:
        return title
    from .views.base import FONT_SIZES
    chars = max(8, int((width - AXIS_ROOM) / (EM * FONT_SIZES[True]["title"])))
    return "\n".join(textwrap.wrap(title, chars)) or title


def present_fonts() -> dict:
    """HoloViews' fontsize option at the Relaxation tab's presentation sizes (views/base.py FONT_SIZES). Set
    when the plot is built: a legend restyled afterwards (a hook) was placed off the plot in Chromium."""
    from .views.base import FONT_SIZES
    px = {k: f"{v}px" for k, v in FONT_SIZES[True].items()}
    return {"title": px["title"], "labels": px["axis_label"], "xticks": px["tick"], "yticks": px["tick"],
            "legend": px["legend"], "clabel": px["axis_label"], "cticks": px["tick"]}


def chart_opts(title: str, present: bool, base: dict = CHART) -> dict:
    """Options of a Scan or Sweep chart: ``base`` on a desk; larger and restyled in presentation mode."""
    opts = dict(base)
    if present:
        opts.update(PRESENT_SIZE, fontsize=present_fonts())
    opts["title"] = wrap_title(title, opts["width"], present)
    return opts


def value_label(value) -> str:
    """A grid value as an axis label: on/off for residual, %g for numbers."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def percent(x) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def steps_histogram(histograms: dict[str, dict], present: bool = False) -> hv.Overlay:
    """Steps to tolerance per phase (the images that met it), as overlaid step histograms."""
    layers = []
    for phase, h in histograms.items():
        layers.append(hv.Histogram((np.asarray(h["edges"]), np.asarray(h["counts"])), kdims="steps to tol",
                                   vdims="images", label=phase).opts(
            fill_alpha=0.35, line_color=PHASE_COLORS.get(phase, "#555"),
            fill_color=PHASE_COLORS.get(phase, "#555")))
    # The legend beside the plot: inside (top right) it covered the bars near the budget's end, and
    # it was seen to slide off the plot's left edge after the layout moved.
    opts = chart_opts("Steps to tolerance (converged images)", present)
    opts["width"] += LEGEND_ROOM[present]
    return hv.Overlay(layers).opts(legend_position="right", **opts)


def count_bars(counts: dict, title: str, kdim: str, present: bool = False) -> hv.Bars:
    items = sorted(counts.items(), key=lambda kv: -kv[1]) or [("none", 0)]
    return hv.Bars(items, kdims=kdim, vdims="images").opts(color=BAR_COLOR, **chart_opts(title, present))


def radius_histogram(values: list[float], present: bool = False) -> hv.Histogram:
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=12)
    return hv.Histogram((edges, counts), kdims="spectral radius", vdims="images").opts(
        color=BAR_COLOR, **chart_opts("Spectral radius of the free fixed point", present))


def heatmap(rows: list[tuple], x: str, y: str, metric: str, x_values: list[str], y_values: list[str],
            title: str, clim=None, present: bool = False) -> hv.HeatMap:
    """One metric over two axes; cells not yet run are NaN (drawn blank)."""
    kdims = [hv.Dimension(x, values=x_values), hv.Dimension(y, values=y_values)]
    # No wheel zoom (HoloViews' default tools): scrolling the page over a heatmap zoomed it instead.
    opts = chart_opts(title, present, dict(width=340, height=260, toolbar=None, default_tools=[]))
    # A short colour-bar title (the figure's title names the metric): the column name, rotated, ran
    # past the plot's height and read "onverged_free".
    opts.update(clabel=COLORBAR_LABELS.get(metric, metric.replace("_", " ")), cmap="viridis", colorbar=True,
                tools=["hover", "tap"], xrotation=45 if len(x_values) > 8 else 0, nonselection_alpha=1.0)
    if clim is not None:
        opts["clim"] = clim
    return hv.HeatMap(rows, kdims=kdims, vdims=[hv.Dimension(metric)]).opts(**opts)


COLORBAR_LABELS = {"converged_free": "fraction", "median_steps_free": "steps", "energy_rose": "fraction",
                   "accuracy": "fraction", "median_spectral_radius": "ρ"}


def thumbnail(image: np.ndarray, scale: int = 3) -> str:
    """A grey image [H, W] (any range) as an <img> tag with a PNG data URL."""
    from PIL import Image
    a = np.asarray(image, dtype=np.float64)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    a = np.zeros_like(a) if not math.isfinite(hi - lo) or hi <= lo else (a - lo) / (hi - lo)
    img = Image.fromarray((a * 255).astype(np.uint8)).resize((a.shape[1] * scale, a.shape[0] * scale),
                                                             Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' width='{a.shape[1] * scale}' alt='image'>"


def escape(text) -> str:
    return html.escape(str(text))
