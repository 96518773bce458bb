"""The eager stepper: each step in PyTorch tensor code (any device, dtype and autocast; no
compiler). The reference the native stepper is tested against."""
from __future__ import annotations

import math

import torch

from ..network import OUTPUT
from ..record import LAYER_STATS
from .energy import energies
from .stats import RAW, _layer_raw, _norm, _StatsLayout
from .stepper import Problem, Stepper, StepOut, register_stepper
from .updates import _edge_outputs, _pre_activation, _update

FRACTION_ROWS = [LAYER_STATS.index("frac_zero"), LAYER_STATS.index("frac_alpha")]


class EagerStepper(Stepper):
    """Updates ``problem.s`` in place, so :meth:`sync` has nothing to do."""

    name = "eager"
    label = "eager tensor code"

    def __init__(self, problem: Problem):
        super().__init__(problem)
        p = problem
        self.names = p.net.layer_names
        self.zeros = p.x.new_zeros(p.x.shape[0])
        self.layout = _StatsLayout(p.net, p.x, p.beta) if p.scalars else None
        self.scratch: dict[str, torch.Tensor] = {}   # per-layer buffers of the recorded statistics

    def _group(self, group, level: int, raw: dict, norms: dict) -> None:
        """One group's update: raw statistics (level 2) or the step's norms (level 1) per layer."""
        p, s = self.problem, self.problem.s
        new = {}
        for n in group:
            outs = _edge_outputs(p.net, s, n, p.weights, p.fixed)
            v = _update(p.net, n, _pre_activation(p.net, n, outs, level == 2, p.fixed), s[n], p.beta,
                        p.target_1h, p.omega)
            new[n] = (v, outs)
        for n, (v, outs) in new.items():
            ref = None if p.nudge_ref is None else p.nudge_ref[n]
            if level == 2:
                raw[n] = _layer_raw(p.net, n, v, s[n], outs, p.net.alpha, p.owner, self.zeros, ref, self.scratch)
            elif level == 1:
                norms[n] = torch.stack([_norm(v - s[n]), _norm(v if ref is None else v - ref)])
            s[n] = v

    def step(self, level: int, t: int, pending: StepOut | None = None, fractions_from: float = 0.0) -> StepOut:
        """Level 0 updates only, 1 also the norms for the relative step, 2 the whole record, its
        energy complete."""
        p, s = self.problem, self.problem.s
        raw, norms = {}, {}   # layer -> RAW rows [len(RAW), batch] (level 2), (||s_t - s_(t-1)||, ||s_t||) (1)
        for group in p.groups:
            self._group(group, level, raw, norms)
        out = StepOut.empty(t)
        if level == 0:
            return out
        if level == 2:
            stacked = torch.stack([raw[n] for n in self.names])          # [L, RAW, B]
            out.stats, phi_t = self.layout.derive(stacked)
            for e in p.jacobi_edges:  # both ends moved in one step: one extra (small) product
                phi_t = phi_t - e.energy(p.weights[e], s[e.spec.src], s[e.spec.dst])
            out.energy = energies(p.net.spec, phi_t, s[OUTPUT], p.target, p.beta)
            pairs = stacked[:, [0, 1 if p.nudge_ref is None else RAW.index("nudge")]]
        else:
            pairs = torch.stack([norms[n] for n in self.names])
        batch_norms = torch.linalg.vector_norm(pairs, dim=2).flatten()   # per layer 2 batch norms
        if level == 2:   # one copy to the host per step: on a GPU each one waits for the queue
            means = out.stats[:, FRACTION_ROWS].mean(-1).flatten()
            host = torch.cat([out.energy[2].sum().reshape(1), means, batch_norms]).tolist()
            out.f_sum, out.fractions, norms_host = host[0], host[1:1 + len(means)], host[1 + len(means):]
            out.max_fraction = max(out.fractions)
        else:
            norms_host = batch_norms.tolist()
        rels = [d / (m + 1e-12) for d, m in zip(norms_host[0::2], norms_host[1::2])]
        out.max_rel = max(rels) if all(map(math.isfinite, rels)) else float("nan")
        return out


register_stepper(EagerStepper)
