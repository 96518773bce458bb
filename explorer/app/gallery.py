"""The input gallery: the shipped sample images as one clickable mosaic.

A click sets ``state.sample``; the highlight moves when the page's periodic
callback sees the new run start (only that callback touches Bokeh models).
"""
from __future__ import annotations

import math

import numpy as np
import panel as pn
from bokeh.events import Tap
from bokeh.models import ColumnDataSource, HoverTool

from .views.base import style

COLUMNS = 8


class Gallery:
    def __init__(self, state, width: int = 300):
        self.state = state
        images = state.samples.images[:, 0].numpy()
        n, h, w = images.shape
        self.n, self.cols = n, COLUMNS
        self.rows = math.ceil(n / COLUMNS)
        mosaic = np.zeros((self.rows * h, COLUMNS * w), dtype=np.float32)
        for i in range(n):
            r, c = divmod(i, COLUMNS)
            mosaic[r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i]
        from bokeh.plotting import figure
        height = int(width * self.rows / COLUMNS) + 30
        self.fig = figure(width=width, height=height, x_range=(0, COLUMNS), y_range=(0, self.rows),
                          tools="tap", toolbar_location=None, min_border=0, title="Click an image")
        style(self.fig)
        self.fig.title.text_font_size = "12px"
        self.fig.title.text_font_style = "normal"
        self.fig.image(image=[mosaic[::-1]], x=0, y=0, dw=COLUMNS, dh=self.rows, palette="Greys256")
        labels = [state.samples.label_name(i) for i in range(n)]
        centres = [divmod(i, COLUMNS) for i in range(n)]
        self.cells = ColumnDataSource(data={"x": [c + 0.5 for r, c in centres],
                                            "y": [self.rows - r - 0.5 for r, c in centres],
                                            "label": labels, "index": list(range(n))},
                                      name="explorer.gallery.cells")
        cells = self.fig.rect("x", "y", width=1, height=1, source=self.cells, fill_alpha=0, line_alpha=0,
                              selection_fill_alpha=0, selection_line_alpha=0, nonselection_fill_alpha=0,
                              nonselection_line_alpha=0)
        self.fig.add_tools(HoverTool(renderers=[cells], tooltips=[("#", "@index"), ("label", "@label")]))
        self.highlight = ColumnDataSource(data={"x": [0.5], "y": [self.rows - 0.5]}, name="explorer.gallery.highlight")
        self.fig.rect("x", "y", width=0.96, height=0.96, source=self.highlight, fill_alpha=0,
                      line_color="#E69F00", line_width=3)
        self.fig.axis.visible = False
        self.fig.grid.visible = False
        self.fig.on_event(Tap, self._on_tap)
        self.pane = pn.pane.Bokeh(self.fig, margin=(5, 10))

    def index_at(self, x: float, y: float) -> int | None:
        if not (0 <= x < COLUMNS and 0 <= y < self.rows):
            return None
        col, row = int(x), self.rows - 1 - int(y)
        i = row * COLUMNS + col
        return i if i < self.n else None

    def _on_tap(self, event) -> None:
        i = self.index_at(event.x, event.y)
        if i is not None and i != self.state.sample:
            self.state.sample = i

    def show(self, index: int) -> None:
        """Move the highlight (periodic callback only)."""
        r, c = divmod(index, COLUMNS)
        self.highlight.data = {"x": [c + 0.5], "y": [self.rows - r - 0.5]}
