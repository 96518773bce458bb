"""The Sweep tab: a grid over two or three settings, each cell a batched scan of K images (issue 17,
items 2 and 4).

Axes are typed as text ("2,4,6") and parsed by :func:`explorer.sweep.parse_grid`: a bad value gives
one message naming it and nothing runs. Before a grid starts its time is estimated from a measured
step cost (on the page's :class:`JobWorker`); above a minute the page asks first. The heatmaps
(HoloViews, one ``Pipe`` each) fill in as cells finish: ``on_cell`` on the worker thread -> the
worker's queue -> this session's periodic callback. Cancel keeps the finished cells; every sweep of
the session is kept, and exported as CSV from ``SweepResult.rows()``. A click on a cell opens its
setting in the Relaxation tab.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import time

import holoviews as hv
import panel as pn
import param

from ..evaluate import one_line
from ..scan import ScanSettings, scan_images
from ..sweep import (GRID_KEYS, PRESETS, Base, GridError, SweepResult, estimate_seconds, grid_cells,
                     parse_grid, sweep)
from . import charts
from .jobs import JobControls, JobWorker, drain_until_idle, on_session_end
from .scan_tab import MAX_IMAGES, RUN_KEYS, show_relaxation
from .state import DEFAULT_WIDTH, SAMPLE_SHAPE, UNTRAINED, SettingError

log = logging.getLogger("explorer.app")

NONE = "(none)"
CONFIRM_SECONDS = 60.0
DEFAULT_AXES = (("alpha", "2,4,6"), ("beta", "0.05,0.15,0.5"), (NONE, ""))
# (key, title, colour range): what each heatmap shows of a cell
METRICS = (("converged_free", "Fraction converged (free)", (0.0, 1.0)),
           ("median_steps_free", "Median steps to tol (free)", None),
           ("energy_rose", "Fraction with energy rise", (0.0, 1.0)),
           ("accuracy", "Accuracy", (0.0, 1.0)),
           ("median_spectral_radius", "Median spectral radius", None))
EMPTY = {"median_steps_free": "Steps to tol: none converged", "median_spectral_radius": "Spectral radius: not computed"}


def metric_value(cell: dict, key: str) -> float:
    if key == "converged_free":
        v = cell["fraction_converged"].get("free")
    elif key == "median_steps_free":
        v = cell["median_steps"].get("free")
    else:
        v = cell.get(key)
    return math.nan if v is None else float(v)


def csv_text(result: SweepResult) -> str:
    rows = result.rows()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class SweepTab(JobControls, pn.viewable.Viewer):
    """One page's Sweep tab."""

    present = param.Boolean(default=False, doc="Presentation mode: larger heatmaps and fonts (the page sets it).")

    def __init__(self, state, worker: JobWorker | None = None, notify=None, threads: int | None = 1, **params):
        super().__init__(**params)
        self.state = state
        self.worker = worker or JobWorker(threads=threads)
        self.notify = notify or (lambda text, level="error": log.warning("%s: %s", level, text))
        self.page_tabs = None
        self.history: list[dict] = []      # every sweep of this session: {"result", "axes", "model", "label"}
        self.shown: dict | None = None     # the sweep the heatmaps show (running or from the history)
        self._plan: dict | None = None     # a grid waiting for the person's confirmation
        self.estimate: float | None = None  # the last grid's estimated seconds
        self._callback = None
        self._layout = None
        self._dirty = False
        self.pipes: dict[tuple, hv.streams.Pipe] = {}    # (metric, third value label) -> its heatmap's data
        self.taps: dict[tuple, hv.streams.Tap] = {}
        self.axis_names = [pn.widgets.Select(label=f"Axis {i + 1}", options=[NONE, *GRID_KEYS], value=n, width=110)
                           for i, (n, _) in enumerate(DEFAULT_AXES)]
        self.axis_values = [pn.widgets.TextInput(label="values", value=v, placeholder="e.g. 2,4,6", width=230)
                            for _, v in DEFAULT_AXES]
        self.k_images = pn.widgets.IntInput(label="Images (K)", value=10, start=1, end=MAX_IMAGES, width=110)
        self.tol = pn.widgets.FloatInput(label="Tolerance", value=ScanSettings.tol, start=1e-12, end=0.5,
                                         step=1e-5, format="0.[000000]", width=120)
        self.preset_button = pn.widgets.Button(label="Preset: depth × residual", width=190, align="end")
        self.start_button = pn.widgets.Button(label="Run sweep", color="primary", width=110, align="end")
        self.cancel_button = pn.widgets.Button(label="Cancel", disabled=True, width=90, align="end")
        self.confirm_text = pn.pane.HTML("", margin=(8, 10))
        self.confirm_button = pn.widgets.Button(label="Run it", color="warning", width=90)
        self.decline_button = pn.widgets.Button(label="Don't run", width=90)
        self.confirm = pn.Row(self.confirm_text, self.confirm_button, self.decline_button, visible=False,
                              sizing_mode="stretch_width")
        self.progress = pn.indicators.Progress(value=0, max=1, visible=False, sizing_mode="stretch_width",
                                               height=18, margin=(5, 10))
        self.message = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self.status = pn.pane.HTML("<i>No sweep yet.</i>", sizing_mode="stretch_width", margin=(0, 10))
        self.history_select = pn.widgets.Select(label="Sweeps of this session", options={}, width=420)
        self.download = pn.widgets.FileDownload(callback=self._csv_file, filename="sweep.csv",
                                                label="Export CSV", disabled=True, width=140, align="end")
        self.heatmaps = pn.Column(sizing_mode="stretch_width")
        self.preset_button.on_click(lambda _e: self.apply_preset())
        self.start_button.on_click(lambda _e: self.start())
        self.cancel_button.on_click(lambda _e: self.cancel())
        self.confirm_button.on_click(lambda _e: self.start_confirmed())
        self.decline_button.on_click(lambda _e: self._decline())
        self.history_select.param.watch(lambda e: self._select(e.new), "value")
        self.param.watch(lambda _e: self._redraw(), "present")
        on_session_end(lambda: self.worker.stop(timeout=2.0))

    # -- the grid ------------------------------------------------------------------------------
    def grid(self) -> tuple[dict, list[str]]:
        """The grid the axis inputs describe and its axes, or GridError naming what is wrong."""
        items = [f"{name.value}={values.value}" for name, values in zip(self.axis_names, self.axis_values)
                 if name.value != NONE]
        grid = parse_grid(items)
        if not 2 <= len(grid) <= 3:
            raise GridError(f"choose two or three axes (got {len(grid)}): the heatmaps need two")
        grid_cells(grid)     # refuses a grid over the cell limit
        return grid, list(grid)

    def base(self) -> Base:
        """What the grid varies: the Relaxation tab's untrained builder, or its checkpoint's family."""
        s = self.state
        net = s.base_network()
        if s.model in UNTRAINED:
            options = dict(input_shape=SAMPLE_SHAPE, width=DEFAULT_WIDTH, n_classes=net.spec.n_classes, seed=0)
            return Base(net, f"untrained {net.spec.name}", options)
        entry = s.zoo.get(s.model) or s.trained.get(s.model)
        if entry is not None:
            return Base.checkpoint(net, entry.path)
        return Base(net, s.model)    # an upload: its own depth only

    def apply_preset(self) -> None:
        """Depth x residual: the builder's depths 3..25, or the depths the checkpoint's family has."""
        depths = PRESETS["depth-residual"]["depth"]
        if self.state.model not in UNTRAINED:
            try:
                family = self.base().family
            except SettingError as exc:
                self.show_message(str(exc))
                return
            both = sorted({d for d, r in family if (d, not r) in family})
            depths = both or sorted({d for d, _ in family})
        values = [("depth", ",".join(str(d) for d in depths)), ("residual", "on,off"), (NONE, "")]
        for (name, text), select, box in zip(values, self.axis_names, self.axis_values):
            select.value, box.value = name, text

    def _plan_sweep(self) -> dict:
        grid, axes = self.grid()
        s = self.state
        s.check_architecture()
        base = self.base()
        base.check(grid)
        k, tol = self.k_images.value, self.tol.value
        if k is None or not 1 <= k <= MAX_IMAGES:
            raise SettingError(f"images = {k} is not allowed: a sweep takes 1 to {MAX_IMAGES} images")
        if tol is None or not 0 < tol < 1:
            raise SettingError(f"tolerance = {tol} is not allowed: a relative step size above 0 and below 1")
        run_grid = dict(grid) if "alpha" in grid else {**grid, "alpha": [float(s.alpha)]}   # the tab's alpha
        settings = ScanSettings(beta=float(s.beta), t_free=int(s.t_free), t_nudge=int(s.t_nudge),
                                schedule=s.schedule, tol=float(tol))
        return {"grid": run_grid, "axes": axes, "base": base, "settings": settings, "k": int(k), "model": s.model}

    # -- running -----------------------------------------------------------------------------------
    def start(self) -> bool:
        """Check the grid, then estimate its time on the worker (and ask above a minute) and run it."""
        if self.worker.busy:
            self.show_message("a scan or sweep is already running on this page: cancel it first")
            return False
        try:
            plan = self._plan_sweep()
        except (GridError, SettingError) as exc:
            self.show_message(str(exc))
            return False
        self._submit(plan, confirmed=False)
        return True

    def start_confirmed(self) -> bool:
        plan, self._plan = self._plan, None
        self.confirm.visible = False
        if plan is None or self.worker.busy:
            return False
        self._submit(plan, confirmed=True)
        return True

    def _decline(self) -> None:
        self._plan = None
        self.confirm.visible = False
        self.status.object = "<i>The sweep was not run.</i>"

    def _submit(self, plan: dict, confirmed: bool) -> None:
        self.message.visible = False
        base, grid, settings, k = plan["base"], plan["grid"], plan["settings"], plan["k"]

        def job(put, should_stop):
            try:
                x, labels, source = scan_images(base.net, k)
            except Exception as exc:
                put({"kind": "failed", "message": f"cannot sweep on {k} images: {one_line(exc)}"})
                return
            if not confirmed:
                seconds = estimate_seconds(base, grid, x, settings)
                put({"kind": "estimate", "seconds": seconds})
                if seconds > CONFIRM_SECONDS:
                    put({"kind": "confirm", "seconds": seconds})
                    return
            put({"kind": "started", "source": source})
            result = sweep(base, grid, x, labels, settings, should_stop=should_stop,
                           on_cell=lambda cell, done, total: put({"kind": "cell", "cell": cell, "done": done,
                                                                  "total": total}))
            put({"kind": "done", "result": result})

        self._plan = plan
        cells = math.prod(len(v) for v in grid.values())
        self.launch(job, "sweep", f"<b>{'Running' if confirmed else 'Estimating'}</b> a grid of {cells} cells "
                                  f"on {k} images …", cells)

    # -- the drain (this session's periodic callback; tests call it) ------------------------------
    def drain(self) -> int:
        events = self.worker.drain("sweep")
        for ev in events:
            kind = ev["kind"]
            if kind == "estimate":
                self.estimate = ev["seconds"]
                self.status.object = (f"Estimated time: about <b>{charts.duration(ev['seconds'])}</b> "
                                      "(from a measured step cost, at full budgets).")
            elif kind == "confirm":
                self.confirm_text.object = (f"This sweep will take about <b>{charts.duration(ev['seconds'])}"
                                            "</b>. Run it?")
                self.confirm.visible = True
            elif kind == "started":
                self._begin(self._plan)
                self._plan = None
            elif kind == "cell":
                self.shown["cells"].append(ev["cell"])
                self.progress.param.update(value=ev["done"], max=ev["total"])
                self.status.object = f"<b>Running</b>: {ev['done']} of {ev['total']} cells done"
                self._dirty = True
            elif kind == "done":
                self._finish(ev["result"])
            elif kind == "failed":
                self._plan = None
                self.show_message(ev["message"])
                self.status.object = "<i>The sweep did not run.</i>"
        if self._dirty:
            self._dirty = False
            self._push()
        if not self.worker.busy and not self.worker.pending("sweep"):
            self.start_button.disabled, self.cancel_button.disabled = False, True
            self.progress.visible = False
            if self._callback is not None:
                self._callback.stop()
                self._callback = None
        return len(events)

    def _finish(self, result: SweepResult) -> None:
        shown = self.shown
        shown["result"] = result
        shown["cells"] = list(result.cells)
        total = math.prod(len(v) for v in result.grid.values())
        seconds = sum(c["seconds"] for c in result.cells)
        shown["label"] = (f"#{len(self.history) + 1}: {' × '.join(shown['axes'])} on {result.images} images, "
                          f"{len(result.cells)}/{total} cells{' (cancelled)' if result.cancelled else ''}")
        self.history.append(shown)
        self.status.object = (f"<b>{'Cancelled' if result.cancelled else 'Done'}</b>: {len(result.cells)} of "
                              f"{total} cells in {seconds:.1f} s"
                              f"{', the finished cells are kept' if result.cancelled else ''}.")
        self.history_select.options = {h["label"]: i for i, h in enumerate(self.history)}
        self.history_select.value = len(self.history) - 1
        self.download.disabled = False
        self._dirty = True

    # -- heatmaps -------------------------------------------------------------------------------------
    def _begin(self, plan: dict) -> None:
        """Empty heatmaps for a new sweep's grid (cells are NaN until they finish)."""
        self.shown = {"axes": plan["axes"], "grid": plan["grid"], "model": plan["model"], "cells": [],
                      "result": None, "label": ""}
        self._build_heatmaps(self.shown)

    def _select(self, index) -> None:
        if index is None or not 0 <= index < len(self.history) or self.history[index] is self.shown:
            return
        self.shown = self.history[index]
        self._build_heatmaps(self.shown)
        self._push()

    def _redraw(self) -> None:
        """The shown sweep's heatmaps again, at the size and fonts of the page's mode."""
        if self.shown is not None:
            self._build_heatmaps(self.shown)

    def _labels(self, entry: dict, axis: str) -> list[str]:
        return [charts.value_label(v) for v in entry["grid"][axis]]

    def _build_heatmaps(self, entry: dict) -> None:
        axes = entry["axes"]
        x, y = axes[0], axes[1]
        thirds = self._labels(entry, axes[2]) if len(axes) > 2 else [None]
        present = self.present
        self.pipes, self.taps, sections = {}, {}, []
        for third in thirds:
            panes = []
            for key, title, clim in METRICS:
                pipe = hv.streams.Pipe(data=[])

                def draw(data, key=key, title=title, clim=clim):
                    finite = [r[2] for r in data if math.isfinite(r[2])]
                    limits = clim or ((min(finite), max(finite)) if finite else (0.0, 1.0))
                    if limits[0] == limits[1]:
                        limits = (limits[0] - 0.5, limits[1] + 0.5)
                    # the third axis' value heads the row; a metric no cell has says so once cells ran
                    name = EMPTY[key] if key in EMPTY and not finite and entry["cells"] else title
                    return charts.heatmap(data, x, y, key, self._labels(entry, x), self._labels(entry, y),
                                          name, clim=limits, present=present).opts(framewise=True)
                dmap = hv.DynamicMap(draw, streams=[pipe])
                tap = hv.streams.Tap(source=dmap)
                tap.add_subscriber(lambda x=None, y=None, third=third: self._tapped(x, y, third))
                self.pipes[(key, third)], self.taps[(key, third)] = pipe, tap
                panes.append(pn.pane.HoloViews(dmap, margin=(5, 5)))
            head = [] if third is None else [pn.pane.HTML(f"<b>{charts.escape(axes[2])} = {third}</b>",
                                                          margin=(10, 10, 0, 10))]
            sections += [*head, pn.FlexBox(*panes, sizing_mode="stretch_width")]
        self.heatmaps.objects = sections
        self._push()

    def _cell_key(self, entry: dict, settings: dict) -> tuple:
        return tuple(charts.value_label(settings[a]) for a in entry["axes"])

    def heatmap_rows(self, key: str, third=None) -> list[tuple]:
        """(x label, y label, value) for every cell of the shown grid (NaN where not yet run)."""
        entry = self.shown
        axes = entry["axes"]
        done = {self._cell_key(entry, c["settings"]): c for c in entry["cells"]}
        rows = []
        for xv in self._labels(entry, axes[0]):
            for yv in self._labels(entry, axes[1]):
                cell = done.get((xv, yv) if third is None else (xv, yv, third))
                rows.append((xv, yv, metric_value(cell, key) if cell is not None else math.nan))
        return rows

    def _push(self) -> None:
        if self.shown is None:
            return
        for (key, third), pipe in self.pipes.items():
            pipe.send(self.heatmap_rows(key, third))

    def _tapped(self, x, y, third) -> None:
        if x is None or y is None or self.shown is None:
            return
        key = (str(x), str(y)) if third is None else (str(x), str(y), third)
        cell = next((c for c in self.shown["cells"] if self._cell_key(self.shown, c["settings"]) == key), None)
        if cell is None:
            self.show_message(f"the cell {', '.join(key)} has not run (yet)", level="warning")
            return
        self.open_cell(cell["settings"], self.shown)

    # -- opening a cell in the Relaxation tab -----------------------------------------------------------
    def open_cell(self, settings: dict, entry: dict | None = None) -> bool:
        """Set the Relaxation tab to a cell's setting; depth and residual only for an untrained builder."""
        s, entry = self.state, entry or self.shown or {}
        notes = []
        if entry.get("model") and s.model != entry["model"]:
            s.model = entry["model"]       # first: a model brings its own defaults, replaced below
        updates = {k: settings[k] for k in RUN_KEYS if k in settings}
        if "depth" in settings or "residual" in settings:
            depth, residual = settings.get("depth", s.depth), settings.get("residual", s.residual)
            lo, hi = s.param.depth.bounds
            family = s.family() if s.model not in UNTRAINED else {}
            if (depth, residual) in family and (depth, residual) != (s.depth, s.residual):
                s.model = family[(depth, residual)]    # the trained sibling, then the cell's settings
            elif s.model not in UNTRAINED:
                if (depth, residual) != (s.depth, s.residual):
                    notes.append(f"{s.model} fixes the depth and the skip edges: the cell's "
                                 f"{'residual' if residual else 'plain'} depth-{depth} network is a trained "
                                 "sibling; choose it in the model picker to relax it")
            elif not lo <= depth <= hi:
                notes.append(f"depth {depth} is beyond the Relaxation tab's builder ({lo} to {hi}): the depth "
                             f"stays {s.depth}")
                updates.update(residual=residual, model="untrained resnet" if residual else "untrained plain")
            else:
                updates.update(depth=depth, residual=residual,
                               model="untrained resnet" if residual else "untrained plain")
        updates = {k: v for k, v in updates.items() if getattr(s, k) != v}
        if updates:
            s.param.update(**updates)
        for note in notes:               # after the update: a new run clears the page's banner
            self.notify(note, level="warning")
            self.show_message(note, level="warning")
        show_relaxation(self.page_tabs)
        return not notes

    # -- export -------------------------------------------------------------------------------------------
    def _csv_file(self):
        entry = self.history[self.history_select.value] if self.history_select.value is not None else None
        text = csv_text(entry["result"]) if entry is not None else ""
        return io.BytesIO(text.encode("utf-8"))

    # -- tests and scripts ------------------------------------------------------------------------------
    def wait(self, timeout: float = 300.0, until=None) -> None:
        """Drain until the worker is idle (or ``until()`` holds)."""
        drain_until_idle(self.worker, "sweep", self.drain, "sweep", timeout, until)

    def __panel__(self):
        if self._layout is None:
            hint = pn.pane.HTML(
                "<div style='font-size:calc(13px * var(--explorer-text, 1));opacity:.8'>A grid over two or three of alpha, beta, depth, "
                "residual (on/off), schedule, t_free, t_nudge and tol, on the first K images, with the "
                "Relaxation tab's model and other settings. Values are comma-separated, e.g. 2,4,6. "
                "Depth and residual take untrained builder networks, or a checkpoint family's trained "
                "siblings. Click a cell to open its setting in the Relaxation tab.</div>",
                sizing_mode="stretch_width", margin=(0, 10))
            axes = pn.Column(*[pn.Row(n, v) for n, v in zip(self.axis_names, self.axis_values)])
            options = pn.Column(pn.Row(self.k_images, self.tol), self.preset_button,
                                pn.Row(self.start_button, self.cancel_button))
            self._layout = pn.Column(
                hint, pn.FlexBox(axes, options, sizing_mode="stretch_width"), self.message, self.confirm,
                self.progress, self.status, pn.Row(self.history_select, self.download),
                self.heatmaps, sizing_mode="stretch_width")
        return self._layout
