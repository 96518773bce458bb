"""View 6: the run's convergence verdict in words.

One line per phase from ``PhaseResult.verdict``: its status (converged, not
converged, cancelled, non-finite) and every finding (energy rose, a layer
saturated or silent), plus the live progress of the phase being relaxed.
Each phase's verdict arrives as data as soon as that phase ends (the worker's
``PhaseEnded``, from ``explorer.ep.run_phases``'s ``on_phase``).
"""
from __future__ import annotations

import html
import time

import panel as pn
from bokeh.models import ColumnDataSource

from ..worker import PHASES, PhaseEnded, RunEnded
from ...diagnosis import with_spectral_radius
from ...dynamics import DEFAULT_TOL
from .base import PHASE_COLORS, PHASE_LABELS, Batch, Run, View

PROGRESS_EVERY = 0.25  # seconds between progress updates of the text
STATUS_WORDS = {"converged": "converged", "not_converged": "not converged", "cancelled": "cancelled",
                "non_finite": "non-finite (diverged)"}


MEASURE_SHORT = "max over layers of ||s(t) − s(t−1)|| / ||s(t)|| (the step-size view)"
KIND_WORDS = {"converged": "converged", "diverged": "diverged", "oscillating": "oscillating",
              "stalled": "stalled", "not_converged": "not converged", "non_finite": "non-finite",
              "cancelled": "cancelled", "no_steps": "no steps"}
KIND_BADGE = {"converged": "converged", "cancelled": "cancelled", "non_finite": "non_finite",
              "diverged": "non_finite"}


def _phase_body(ev: PhaseEnded) -> str:
    """A finished phase in words: the diagnosis of the image on screen (explorer.diagnosis) when the
    phase was recorded, else the engine's verdict."""
    d = ev.verdict.get("diagnosis")
    st = ev.verdict.get("stability") or {}
    if d is not None and ev.phase == "free" and "spectral_radius" in st:
        d = with_spectral_radius(d, st["spectral_radius"])   # ρ is estimated at this phase's last state
    if d is None:
        words = STATUS_WORDS.get(ev.status, ev.status)
        return f"<span class='badge {ev.status}'>{words}</span> <span class='msg'>{html.escape(ev.message)}</span>"
    badge = KIND_BADGE.get(d["kind"], "not_converged")
    return (f"<span class='badge {badge}'>{KIND_WORDS.get(d['kind'], d['kind'])}</span> "
            f"<span class='msg'>{html.escape(d['message'])}</span>")


def _stability_row(st: dict) -> str:
    """The fixed point's stability in one line: rho < 1 converges at rate rho, rho >= 1 cannot."""
    if "error" in st:
        return f"<div class='vrow stability'>stability at s*: not estimated ({html.escape(st['error'])})</div>"
    rho = st["spectral_radius"]
    badge = "rho-below-one" if rho < 1 else "rho-above-one"   # not a phase's verdict badge
    seen = st.get("observed_rate")
    seen = f" · observed rate {seen:.3f}" if isinstance(seen, (int, float)) else ""
    share = st["layer_share"].get(st["dominant_layer"], 0.0)
    words = "converges at rate ρ a step" if rho < 1 else "cannot converge (ρ ≥ 1)"
    return (f"<div class='vrow stability'>stability at s*: <span class='badge {badge}'>ρ = {rho:.3f}</span> "
            f"<span class='msg'>{words}{seen}; the slowest direction lives in {st['dominant_layer']} "
            f"({100 * share:.0f} %)</span></div>")


class VerdictView(View):
    key = "verdict"
    title = "2 · Convergence verdict"
    about = ""

    def __init__(self, app_state, **params):
        super().__init__(app_state, **params)
        self.source = ColumnDataSource(data={"phase": [], "status": [], "steps": [], "message": [], "run": []},
                                       name="explorer.verdict.phases")
        # At least a usual verdict's height (main.VERDICT_SIZE per mode): a usual run does not resize the page;
        # taller when a verdict needs it: nothing is cut (no scrollbar shows in a headless browser or
        # gets used on a projector).
        self.html = pn.pane.HTML("<div class='verdict'>waiting for the first run…</div>",
                                 sizing_mode="stretch_width", min_height=380, css_classes=["verdict-pane"])
        self.progress: dict[str, int] = {}
        self.rows: dict[str, PhaseEnded] = {}
        self.summary = ""
        self._rendered = 0.0

    def start_run(self, run: Run) -> None:
        super().start_run(run)
        self.source.data = {k: [] for k in self.source.data}
        self.progress, self.rows, self.summary = {}, {}, ""
        self._render()

    def push(self, batch: Batch) -> None:
        for p, s in zip(batch.phase, batch.step):
            self.progress[p] = int(s)
        now = time.monotonic()
        if now - self._rendered >= PROGRESS_EVERY:   # progress text: a few updates a second is live enough
            self._render()

    def phase_ended(self, event: PhaseEnded) -> None:
        self.rows[event.phase] = event
        self.source.stream({"phase": [event.phase], "status": [event.status], "steps": [event.steps],
                            "message": [event.message], "run": [self.run.id]})
        self._render()

    def run_ended(self, event: RunEnded) -> None:
        if not event.cancelled and event.seconds > 0:
            speed = getattr(self.state, "speed", None)
            pace = "at full speed" if speed == "max" else f"played at {speed} steps/s"
            self.summary = f"{event.steps} steps in {event.seconds:.2f} s ({pace})"
        self._render()

    def _render(self) -> None:
        self._rendered = time.monotonic()
        run = self.run
        if run is None:
            return
        r = run.settings
        lines = []
        for p in PHASES:
            color = PHASE_COLORS[p]
            head = f"<span class='phase' style='color:{color}'>{PHASE_LABELS[p]}</span>"
            total = run.steps_of(p)
            if p in self.rows:
                body = _phase_body(self.rows[p])
            elif p in self.progress:
                body = f"<span class='badge running'>running</span> step {self.progress[p]} / {total}"
            else:
                body = "<span class='badge waiting'>waiting</span>"
            lines.append(f"<div class='vrow'>{head}{body}</div>")
            if p == "free" and p in self.rows and "stability" in self.rows[p].verdict:
                lines.append(_stability_row(self.rows[p].verdict["stability"]))
        tol = r.get("tol") or DEFAULT_TOL
        settings = (f"β = {r['beta']:.3g} · α = {r['alpha']:.3g} · schedule <i>{r['schedule']}</i> · "
                    f"T free {r['t_free']} · T nudge {r['t_nudge']} · tolerance {tol:.0e} · run {run.id}<br>"
                    f"<span class='measure'>r = {MEASURE_SHORT}</span>")
        foot = f"<div class='vfoot'>{settings}" + (f"<br>{self.summary}" if self.summary else "") + "</div>"
        self.html.object = "<div class='verdict'>" + "".join(lines) + foot + "</div>"

    def sources(self):
        return {"phases": self.source}

    def data_count(self) -> int:
        return len(self.source.data["phase"])

    def body(self):
        return self.html

