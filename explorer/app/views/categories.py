"""Class names on a numeric axis: factor k drawn at x = k (the output chart, the Train tab's probe output).

Bokeh's FactorRange left the output chart blank now and then (its frame's scale mapped to NaN
after the plot was laid out while its box was still resizing at page load: axes and bars were
skipped while titles and legend were drawn). A Range1d with fixed ticks labelled by name draws
the same chart without it; nor can a resend of a FactorRange's read-only start and end (the server
holds 0 for both) collapse a chart whose x range is a Range1d.
"""
from __future__ import annotations

from bokeh.models import FixedTicker, Range1d


class Categories:
    """The x axis of ``fig`` shows ``names`` at 0, 1, ...; ``positions()`` gives the glyphs' x column."""

    def __init__(self, fig, names: list[str]):
        self.fig = fig
        self.range: Range1d = fig.x_range
        self.names: list[str] = []
        self.ticker = FixedTicker(ticks=[])
        fig.xaxis.ticker = self.ticker
        self.set(names)

    def set(self, names: list[str]) -> bool:
        """Label the axis with ``names``; False when they are already shown."""
        names = list(names)
        if names == self.names:
            return False
        self.names = names
        n = len(names)
        self.ticker.ticks = list(range(n))
        self.fig.xaxis.major_label_overrides = {k: name for k, name in enumerate(names)}
        self.range.update(start=-0.5, end=n - 0.5)
        return True

    @staticmethod
    def positions(n: int) -> list[int]:
        return list(range(n))
