"""Why a phase ended as it did: a verdict per sample, with its class and evidence (issue 16).

The engine's own stopping rule watches the whole batch; a person looking at one image wants to
know, for that image, *when* the tolerance was met, *which* layer was slowest, and, when it was
not met, *why*: the dynamics diverged (|F| runs away), oscillate (a cycle in the step size, as
the synchronous schedule produces at high gain), stalled (still shrinking at an observed rate:
about N more steps needed, unless the spectral radius ρ at the last state is >= 1), or stopped
shrinking. Everything here is read from a phase's records (the same numbers every view plots),
so the verdict's measure is the plotted one:

    r(t) = max over layers k of ||s_k(t) - s_k(t-1)|| / ||s_k(t)||     (the step-size view)

It is 0, not 0/0, for a layer the nudge does not reach (its state does not move) and for a
silent layer (all zero: the record divides by ||s|| + 1e-12).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from .record import ENERGY_INDEX, STAT_INDEX, PhaseResult

MEASURE = ("the largest relative step over layers, max_k ||s_k(t) - s_k(t-1)|| / ||s_k(t)||, "
           "as the step-size view plots it")
KINDS = ("converged", "diverged", "oscillating", "stalled", "not_converged", "non_finite", "cancelled",
         "no_steps")
DIVERGE_FACTOR = 100.0    # |F| this many times its scale at the phase's start: a runaway
MAX_PERIOD = 8            # the longest cycle looked for in the step size
CYCLE_RTOL = 1e-4         # two steps one period apart agree to this fraction of the tail's largest step
CYCLE_REPEATS = 3         # a cycle must repeat this many times at the end of the phase ...
CYCLE_MIN_STEPS = 12      # ... and over at least this many steps (a slow crawl is not a cycle)
RATE_WINDOW = 20          # steps at the end of the phase over which the rate is observed


@dataclass
class Diagnosis:
    """One phase of one sample: how it ended (``kind``) and the numbers that show it."""

    phase: str
    sample: int
    kind: str
    tol: float
    steps: int
    final: float                      # r at the last step
    met_at: int | None = None         # first step with r < tol
    slowest_layer: str | None = None  # the layer with the largest relative step at the end
    slowest_final: float = 0.0
    rate: float | None = None         # observed asymptotic rate q: r(t) ~ q^t at the end
    steps_needed: int | None = None   # stalled: about this many more steps to reach tol
    period: int | None = None         # oscillating: the cycle's period in steps
    cycle_since: int | None = None
    growth: float | None = None       # diverged: |F| at the end over its scale at the start
    runaway_layer: str | None = None
    spectral_radius: float | None = None   # ρ of one step's Jacobian at the last state, when estimated
    notes: list[dict] = field(default_factory=list)   # the engine's other findings (energy rose, saturated ...)
    measure: str = MEASURE

    @property
    def converged(self) -> bool:
        return self.kind == "converged"

    def headline(self) -> str:
        """The verdict in one line, naming the step, the layer and the numbers."""
        slow = f"slowest layer {self.slowest_layer} at {self.slowest_final:.1e}" if self.slowest_layer else ""
        if self.kind == "converged":
            return f"converged at step {self.met_at} (r < {self.tol:.0e}); {slow} at the end"
        if self.kind == "diverged":
            who = f"; {self.runaway_layer} runs away" if self.runaway_layer else ""
            return f"diverged: |F| grew {self.growth:.3g}x over the phase{who}"
        if self.kind == "oscillating":
            return (f"oscillating: a period-{self.period} cycle since step {self.cycle_since} "
                    f"(r stays at {self.final:.1e} > {self.tol:.0e}); {slow}; it cannot converge")
        if self.kind == "stalled":
            return self._stalled(slow)
        if self.kind == "not_converged":
            rate = f"observed rate {self.rate:.3f} a step" if self.rate is not None else "no observed rate"
            return f"not converged: r = {self.final:.1e} > {self.tol:.0e} and not shrinking ({rate}); {slow}"
        if self.kind == "no_steps":
            return "no steps were run"
        return self.notes[0]["message"] if self.notes else self.kind

    def _stalled(self, slow: str) -> str:
        """Still shrinking: N more steps at the observed rate, unless ρ >= 1 at the last state says it
        cannot converge there (then no promise of N steps: the rate need not last)."""
        # enough digits that a rate below 1 never reads as 1.000
        rate = f"{self.rate:.3f}" if self.rate < 0.9995 else f"{self.rate:.6f}"
        shrinking = f"stalled: still shrinking at observed rate {rate} a step"
        if self.spectral_radius is not None and self.spectral_radius >= 1.0:
            return (f"{shrinking}, but ρ = {self.spectral_radius:.3f} at the last state: at this "
                    f"linearisation it cannot converge, and the rate may not last; {slow}")
        return f"{shrinking}, needs about {self.steps_needed} more steps to reach {self.tol:.0e}; {slow}"

    def message(self) -> str:
        return "; ".join([self.headline(), *_note_lines(self.notes)])

    def to_dict(self) -> dict:
        out = asdict(self)
        out["message"] = self.message()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Diagnosis":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def with_spectral_radius(d: dict, rho: float | None) -> dict:
    """A diagnosis (``to_dict``) told the spectral radius at its phase's last state, its message
    recomposed so that the verdict and the stability estimate cannot contradict each other."""
    if rho is None or not math.isfinite(rho):
        return d
    return Diagnosis.from_dict({**d, "spectral_radius": float(rho)}).to_dict()


def _period(r: np.ndarray, f: np.ndarray | None) -> tuple[int, int] | None:
    """The smallest p >= 2 such that the end of the trace repeats with period p: (p, first step of the
    cycle). (A period-2 state cycle has a constant step size but an alternating F: p = 1 is a crawl.)"""
    tail_scale = float(np.max(np.abs(r[-CYCLE_REPEATS * MAX_PERIOD:]))) if r.size else 0.0
    if tail_scale == 0.0:
        return None
    if f is None and np.ptp(r[-CYCLE_MIN_STEPS:]) <= CYCLE_RTOL * tail_scale:
        return None   # a constant step with no energy to tell a two-state flip from a crawl
    for p in range(2, MAX_PERIOD + 1):
        n = max(CYCLE_REPEATS * p, CYCLE_MIN_STEPS) + p
        if r.size < n:
            break
        same = np.abs(r[p:] - r[:-p]) <= CYCLE_RTOL * tail_scale
        if f is not None and f.size == r.size:
            same &= np.abs(f[p:] - f[:-p]) <= 1e-6 * (np.abs(f[p:]) + 1.0)
        if not same[-(n - p):].all():
            continue
        start = len(same)
        while start > 0 and same[start - 1]:
            start -= 1
        return p, start + 1
    return None


def observed_rate(r: np.ndarray, window: int = RATE_WINDOW) -> float | None:
    """The rate q with r(t) ~ q^t over the last ``window`` steps (a geometric mean of the ratios); 0 when
    the trace reached exactly 0, None when too short."""
    r = np.asarray(r, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size < 3:
        return None
    w = min(window, r.size - 1)
    a, b = r[-w - 1], r[-1]
    if b == 0.0:
        return 0.0
    if a <= 0.0:
        return None
    return float((b / a) ** (1.0 / w))


def _growth(f: np.ndarray, nudged: bool) -> float | None:
    """|F| at its largest over its scale at the start: F(s*) for a nudged phase; for the free phase
    (which starts from zero and descends far) its largest |F| over the first half."""
    if f.size < 4:
        return None
    half = f.size // 2
    ref = abs(f[0]) if nudged else float(np.max(np.abs(f[:half])))
    late = f if nudged else f[half:]
    return float(np.max(np.abs(late)) / (ref + 1.0))


def classify(rel: np.ndarray, layers: tuple[str, ...], tol: float, *, phase: str = "free", sample: int = 0,
             f: np.ndarray | None = None, activity: np.ndarray | None = None, notes: list[dict] | None = None,
             ) -> Diagnosis:
    """The diagnosis of one sample's phase from its traces: ``rel`` [T+1, L] the per-layer relative step
    (row 0 the start), ``f`` [T+1] the energy F, ``activity`` [T+1, L] the layers' mean state."""
    notes = list(notes or [])
    steps = rel.shape[0] - 1
    if steps <= 0:
        return Diagnosis(phase, sample, "no_steps", tol, 0, 0.0, notes=notes)
    per_layer = rel[1:]
    r = per_layer.max(axis=1)
    d = Diagnosis(phase, sample, "not_converged", tol, steps, float(r[-1]), notes=notes)
    slow = int(np.argmax(per_layer[-1])) if np.isfinite(per_layer[-1]).all() else None
    if slow is not None:
        d.slowest_layer, d.slowest_final = layers[slow], float(per_layer[-1, slow])
    kinds = {n.get("kind") for n in notes}
    if "non_finite" in kinds or not np.isfinite(r).all() or (f is not None and not np.isfinite(f).all()):
        d.kind = "non_finite" if "cancelled" not in kinds else "cancelled"
        return d
    under = np.nonzero(r < tol)[0]
    d.met_at = int(under[0]) + 1 if under.size else None
    d.rate = observed_rate(r)
    growth = _growth(f, phase != "free") if f is not None else None
    cycle = _period(r, None if f is None else f[1:])
    if r[-1] < tol:
        d.kind = "converged"
        if growth is not None and growth > DIVERGE_FACTOR:   # a fixed point, but far out
            d.growth, d.runaway_layer = growth, _runaway(activity, layers)
            d.notes.append({"kind": "runaway", "layer": d.runaway_layer, "step": None, "message":
                            f"|F| grew {growth:.3g}x over the phase: {d.runaway_layer} ran away"})
    elif cycle is not None:
        d.kind, (d.period, d.cycle_since) = "oscillating", cycle
    elif growth is not None and growth > DIVERGE_FACTOR:
        d.kind, d.growth = "diverged", growth
        d.runaway_layer = _runaway(activity, layers)
    elif "cancelled" in kinds:
        d.kind = "cancelled"
    elif d.rate is not None and d.rate < 1.0:
        d.kind = "stalled"
        d.steps_needed = int(math.ceil(math.log(tol / r[-1]) / math.log(d.rate))) if d.rate > 0 else 1
    return d


def _note_lines(notes: list[dict]) -> list[str]:
    """The engine's findings in words, layers that went silent or saturated together in one line."""
    lines, grouped = [], {}
    for n in notes:
        if n.get("kind") in ("silent", "saturated"):
            grouped.setdefault((n["kind"], n.get("step")), []).append(n.get("layer"))
        elif n.get("kind") not in ("non_finite", "cancelled"):
            lines.append(n["message"])
    for (kind, step), names in grouped.items():
        who = f"layer {names[0]}" if len(names) == 1 else f"layers {', '.join(names)}"
        lines.append(f"{who} {kind} from step {step}" + (": no signal passes" if kind == "silent" else ""))
    return lines


def _runaway(activity: np.ndarray | None, layers) -> str | None:
    """The layer whose mean state grew the most in magnitude over the phase."""
    if activity is None or activity.shape[0] < 2:
        return None
    start = np.abs(activity[0]) + 1e-3
    return layers[int(np.argmax(np.abs(activity[-1]) / start))]


def _engine_notes(result: PhaseResult) -> list[dict]:
    """The engine's findings other than its own (batch-wide) convergence call."""
    return [f.to_dict() for f in result.verdict.findings if f.kind not in ("converged", "not_converged")]


def _traces(result: PhaseResult) -> tuple[np.ndarray, np.ndarray]:
    """All samples' statistics [T+1, L, S, B] and F [T+1, B] of a recorded phase, stacked once."""
    stats = torch.stack([rec.stats for rec in result.records]).detach().double().cpu().numpy()
    f = torch.stack([rec.energy[ENERGY_INDEX["F"]] for rec in result.records]).detach().double().cpu().numpy()
    return stats, f


def _unrecorded(result: PhaseResult, tol: float, sample: int, notes: list[dict]) -> Diagnosis:
    kind = "no_steps" if result.steps == 0 else "not_converged"
    kind = next((n["kind"] for n in notes if n["kind"] in ("non_finite", "cancelled")), kind)
    return Diagnosis(result.phase, sample, kind, tol, result.steps, float("nan"), notes=notes)


def diagnose(result: PhaseResult, tol: float, sample: int = 0) -> Diagnosis:
    """Diagnose one sample of a recorded phase (it needs the scalar records: RecordConfig(keep=True))."""
    return diagnose_all(result, tol, samples=[sample])[0]


def diagnose_all(result: PhaseResult, tol: float, samples=None) -> list[Diagnosis]:
    """Every sample of a recorded phase (or those in ``samples``)."""
    if not result.records:
        return [_unrecorded(result, tol, b, _engine_notes(result)) for b in (samples or [0])]
    stats, f = _traces(result)
    layers = result.records[0].layers
    rel, act = stats[:, :, STAT_INDEX["step_size"]], stats[:, :, STAT_INDEX["activity"]]
    return [classify(rel[:, :, b], layers, tol, phase=result.phase, sample=b, f=f[:, b], activity=act[:, :, b],
                     notes=_engine_notes(result))
            for b in (range(stats.shape[-1]) if samples is None else samples)]


def diagnose_each(result, tol: float) -> list[Diagnosis]:
    """Every sample of a :func:`~explorer.dynamics.each.relax_each` phase, each from its own trace and
    with the findings the tracker makes of it alone: the verdict it gets relaxed alone."""
    from .dynamics.tracker import sample_findings
    findings = sample_findings(result.layers, result.beta, result.stats, result.energy, result.steps,
                               result.ended, result.bad_layer)
    rel_row, act_row, f_row = STAT_INDEX["step_size"], STAT_INDEX["activity"], ENERGY_INDEX["F"]
    out = []
    for b, end in enumerate(result.steps):
        notes = [f.to_dict() for f in findings[b]]
        if end == 0 and result.ended[b] == "non_finite":   # refused to step: as diagnose_all reads it
            out.append(Diagnosis(result.phase, b, "non_finite", tol, 0, float("nan"), notes=notes))
            continue
        stats, energy = result.stats[:end + 1, :, :, b], result.energy[:end + 1, :, b]
        out.append(classify(stats[:, :, rel_row], result.layers, tol, phase=result.phase, sample=b,
                            f=energy[:, f_row], activity=stats[:, :, act_row], notes=notes))
    return out
