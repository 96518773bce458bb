"""The one record format that flows from the dynamics to every view and export.

Each relaxation step emits a :class:`StepRecord`: a few small tensors whose
rows are named by :data:`LAYER_STATS` and :data:`ENERGY_STATS`, per layer and
per sample. A phase ends with a :class:`Verdict` (data, never an exception).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Per layer, per sample. Drive norms are ||component|| of the layer's
# pre-activation; residual_share = ||skip|| / (||direct|| + ||skip|| + ||feedback||).
LAYER_STATS = (
    "step_size",          # ||s_t - s_(t-1)|| / ||s_t||
    "activity",           # mean of s
    "frac_zero",          # fraction of units at 0
    "frac_alpha",         # fraction of units at alpha
    "drive_direct",       # feed-forward drive through the main-path edge
    "drive_skip",         # feed-forward drive through the residual (skip) edge
    "drive_feedback",     # drive from the layers above (transposed edges)
    "drive_bias",         # the bias
    "residual_share",
    "nudge_distance",     # ||s_beta - s*||, nudged phases only (else 0)
    "nudge_per_beta",     # ||s_beta - s*|| / |beta|: the error signal, comparable across beta
)
ENERGY_STATS = ("phi", "cost", "F")  # per sample; F = Phi + beta * C
STAT_INDEX = {n: i for i, n in enumerate(LAYER_STATS)}
ENERGY_INDEX = {n: i for i, n in enumerate(ENERGY_STATS)}


@dataclass
class RecordConfig:
    """What to record. ``RecordConfig(scalars=False)`` and no states records nothing."""

    scalars: bool = True
    units: int = 4                       # a few fixed units per layer, for trajectories
    state_layers: tuple[str, ...] = ()   # full state tensors of these layers ...
    state_samples: tuple[int, ...] = (0,)  # ... for these samples of the batch ...
    state_every: int = 1                 # ... every this many steps
    keep: bool = True                    # keep records on the result (else only on_step)

    @property
    def any(self) -> bool:
        return self.scalars or bool(self.state_layers)


@dataclass
class StepRecord:
    phase: str                  # "free", "nudged+", "nudged-"
    step: int                   # 0 is the start state, 1 .. T the steps
    beta: float
    layers: tuple[str, ...]     # row names of ``stats`` and ``units``
    stats: torch.Tensor         # [n_layers, len(LAYER_STATS), batch]
    energy: torch.Tensor        # [len(ENERGY_STATS), batch]
    units: torch.Tensor | None = None            # [n_layers, units, batch]
    states: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> [samples, ...]

    def stat(self, name: str, layer: str | None = None) -> torch.Tensor:
        """One statistic: [n_layers, batch], or [batch] for one layer."""
        rows = self.stats[:, STAT_INDEX[name]]
        return rows if layer is None else rows[self.layers.index(layer)]

    def energy_of(self, name: str) -> torch.Tensor:
        return self.energy[ENERGY_INDEX[name]]

    def to(self, device) -> "StepRecord":
        return StepRecord(self.phase, self.step, self.beta, self.layers, self.stats.to(device),
                          self.energy.to(device), None if self.units is None else self.units.to(device),
                          {k: v.to(device) for k, v in self.states.items()})

    def to_dict(self, per_sample: bool = False) -> dict:
        """JSON-friendly: batch means (and per-sample lists if asked)."""
        def reduce(t):
            t = t.detach().float().cpu()
            return t.tolist() if per_sample else t.mean(-1).tolist()
        out = {"phase": self.phase, "step": self.step, "beta": self.beta,
               "energy": {n: reduce(self.energy[i]) for i, n in enumerate(ENERGY_STATS)},
               "layers": {l: {n: reduce(self.stats[j, i]) for i, n in enumerate(LAYER_STATS)}
                          for j, l in enumerate(self.layers)}}
        if self.units is not None:
            for j, l in enumerate(self.layers):
                out["layers"][l]["units"] = reduce(self.units[j].t()) if not per_sample \
                    else self.units[j].detach().float().cpu().tolist()
        return out


@dataclass
class Finding:
    kind: str          # converged | not_converged | energy_rose | saturated | silent | non_finite | cancelled
    message: str
    step: int | None = None
    layer: str | None = None
    # What the finding rests on, as data: energy_rose {"steps": every step at which F (Phi) rose};
    # converged / not_converged {"relative_step": the last one, "tol": the tolerance judged by}.
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "step": self.step, "layer": self.layer,
                "evidence": dict(self.evidence)}


@dataclass
class Verdict:
    """How a phase ended: a status plus every finding, in words and as data."""

    status: str
    findings: list[Finding]

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    @property
    def message(self) -> str:
        return "; ".join(f.message for f in self.findings)

    def first(self, kind: str) -> Finding | None:
        return next((f for f in self.findings if f.kind == kind), None)

    def to_dict(self) -> dict:
        return {"status": self.status, "message": self.message,
                "findings": [f.to_dict() for f in self.findings]}


@dataclass
class PhaseResult:
    phase: str
    beta: float
    state: dict[str, torch.Tensor]
    steps: int
    verdict: Verdict
    records: list[StepRecord] = field(default_factory=list)
    phi: torch.Tensor | None = None     # Phi of ``state`` per sample, when it was recorded
    stepper: str = ""                   # which stepper ran it: "native", "eager" (explorer.dynamics.STEPPERS)
    # per edge and direction the code that computed its output and how that was chosen:
    # {"s3->s4": {"forward": {"kernel": "small", "by": "timed"}, "feedback": ...}} (native stepper)
    kernels: dict = field(default_factory=dict)

    def series(self, name: str, layer: str | None = None) -> torch.Tensor:
        """A statistic over steps: [steps, n_layers, batch] (or [steps, batch])."""
        if name in ENERGY_INDEX:
            return torch.stack([r.energy_of(name) for r in self.records])
        return torch.stack([r.stat(name, layer) for r in self.records])

    def to_dict(self, per_sample: bool = False) -> dict:
        return {"phase": self.phase, "beta": self.beta, "steps": self.steps, "stepper": self.stepper,
                "verdict": self.verdict.to_dict(),
                "records": [r.to_dict(per_sample) for r in self.records]}
