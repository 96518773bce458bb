"""Runs A and B: pin the run on screen as A, change anything, and the next run (B) is compared with it.

The energy, step-size, residual-share and nudged-versus-free views keep A drawn under B (View.pin in
base.py: dashed curves, or a map of A's own under B's); this view lists what differs: the settings and
architecture, then per phase the verdict and the steps to tolerance, the final Phi, the prediction
and the spectral radius at the free fixed point (:mod:`explorer.comparison`).
"""
from __future__ import annotations

import html

import panel as pn

from ...comparison import PHASES, differences
from ..worker import RunEnded
from .base import View


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else html.escape(str(value))


class CompareView(View):
    key = "compare"
    title = "Compare A and B"

    def __init__(self, app_state, **params):
        super().__init__(app_state, **params)
        self.pinned = None                 # run A
        self.current = None                # the last finished run (B once A is pinned)
        self.html = pn.pane.HTML(self._text(), sizing_mode="stretch_width", css_classes=["compare-pane"])

    @property
    def hidden(self) -> bool:
        """Never: the table lives in the sidebar, not among the views the page reports in sight, and
        a run's end must reach it (held back, B never showed in the table of a served page)."""
        return False

    @hidden.setter
    def hidden(self, _value: bool) -> None:
        pass

    def pin(self, run) -> None:
        self.pinned = run
        self.html.object = self._text()

    def run_ended(self, event: RunEnded) -> None:
        if not event.cancelled and event.run is not None:
            self.current = event.run
            self.html.object = self._text()

    def rows(self):
        if self.pinned is None or self.current is None or self.current.id == self.pinned.id:
            return []
        return differences(self.pinned, self.current)

    def _text(self) -> str:
        if self.pinned is None:
            return ("<div class='hint'>Pin the run on screen as <b>A</b>, then change anything (residual off, "
                    "another schedule, alpha, a model): the next run is <b>B</b>, drawn over A in the energy, "
                    "step-size, residual and nudged views and compared here.</div>")
        rows = self.rows()
        if not rows:
            return f"<div class='hint'>A is run {self.pinned.id}. Change a setting to run B.</div>"
        body = "".join(f"<tr class='{'differs' if d else ''}'><td>{html.escape(k)}</td><td>{_show(a)}</td>"
                       f"<td>{_show(b)}</td></tr>" for k, a, b, d in rows)
        return ("<table class='compare'><tr><th></th><th>A (pinned)</th><th>B</th></tr>" + body + "</table>"
                + self._unfinished_note())

    def _unfinished_note(self) -> str:
        """A pinned while it streamed, then stopped by the next change, has no outcomes: a column of
        dashes with no reason looked broken (seen: pin, then residual off at once)."""
        if all(name in self.pinned.phases for name in PHASES):
            return ""
        return ("<div class='hint'>A was pinned before it finished and the next change stopped it: "
                "its outcomes show as —. Pin a run once its verdicts show to compare how both ended.</div>")

    def body(self):
        return self.html
