"""Equilibrium propagation: phases, local gradient estimates, and the BPTT reference.

EP estimate for every parameter theta (MODEL.md, "Learning")::

    centered:  g = [dPhi/dtheta(s+) - dPhi/dtheta(s-)] / (2 beta)
    one-sided: g = [dPhi/dtheta(s+) - dPhi/dtheta(s*)] / beta

dPhi/dW for an edge is minus the pre/post correlation (a Hebbian term) and
dPhi/db_k is minus the state; both are closed form, no autograd. Gradients are
of the batch-mean cost.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .dynamics import cost, relax, schedule_groups, step
from .network import INPUT, OUTPUT, HopfieldNetwork
from .record import PhaseResult, RecordConfig

VARIANTS = ("centered", "one_sided")


@dataclass
class EPPhases:
    free: PhaseResult
    plus: PhaseResult
    minus: PhaseResult | None = None

    @property
    def phases(self) -> list[PhaseResult]:
        return [p for p in (self.free, self.plus, self.minus) if p is not None]


@dataclass
class EPResult:
    grads: dict[str, torch.Tensor]      # parameter name -> estimate (same shape)
    phases: EPPhases
    loss: float                          # batch-mean cost at the free fixed point
    correct: int                         # argmax(y*) == target


def run_phases(net: HopfieldNetwork, x, target, *, beta: float, t_free: int, t_nudge: int,
               schedule: str = "paper", tol: float | None = None, variant: str = "centered",
               state: dict | None = None, record: RecordConfig | None = None,
               on_step=None, should_stop=None, omega: float = 1.0, nudge_tol="tol",
               on_phase=None) -> EPPhases:
    """Free phase from ``state`` (zeros if None), then the nudged phase(s) from s*.

    ``tol`` stops the free phase once converged; the nudged phases use
    ``nudge_tol`` (the same by default; None runs them for exactly ``t_nudge``:
    short fixed nudges let centered EP cancel what drift the free phase left).
    ``on_phase(result)`` is called with each phase's :class:`PhaseResult` as soon as it ends
    (a page shows each verdict then, not after the last phase).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EP variant {variant!r}; choose one of {VARIANTS}")
    if beta <= 0:
        raise ValueError(f"EP needs beta > 0 (the nudged phases use +beta and -beta), got {beta}")
    common = dict(schedule=schedule, record=record, on_step=on_step, should_stop=should_stop, omega=omega)
    ended = on_phase if on_phase is not None else (lambda result: None)
    free = relax(net, x, steps=t_free, beta=0.0, target=target, state=state, phase="free", tol=tol, **common)
    ended(free)
    common["tol"] = tol if nudge_tol == "tol" else nudge_tol
    plus = relax(net, x, steps=t_nudge, beta=beta, target=target, state=free.state,
                 free_state=free.state, phase="nudged+", state_phi=free.phi, **common)
    ended(plus)
    minus = None
    if variant == "centered":
        minus = relax(net, x, steps=t_nudge, beta=-beta, target=target, state=free.state,
                      free_state=free.state, phase="nudged-", state_phi=free.phi, **common)
        ended(minus)
    return EPPhases(free, plus, minus)


def phi_param_grads(net: HopfieldNetwork, state: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """dPhi/dtheta at ``state``, summed over the batch, in closed form."""
    full = dict(state)
    full[INPUT] = x
    grads = {}
    for e in net.edges:
        grads[f"weights.{e.spec.key}"] = -e.weight_grad(full[e.spec.src], full[e.spec.dst])
    for n in net.layer_names:
        s = full[n]
        grads[f"biases.{n}"] = -(s.flatten(2).sum((0, 2)) if s.dim() > 2 else s.sum(0))
    return grads


def ep_gradient(net: HopfieldNetwork, x, target, *, beta: float, t_free: int, t_nudge: int,
                schedule: str = "paper", tol: float | None = None, variant: str = "centered",
                state: dict | None = None, record: RecordConfig | None = None,
                on_step=None, omega: float = 1.0, nudge_tol="tol") -> EPResult:
    """The EP estimate of d(mean cost at s*)/dtheta for every parameter."""
    x = net.check_input(x)
    with torch.no_grad():
        phases = run_phases(net, x, target, beta=beta, t_free=t_free, t_nudge=t_nudge,
                            schedule=schedule, tol=tol, variant=variant, state=state,
                            record=record, on_step=on_step, omega=omega, nudge_tol=nudge_tol)
    return estimate(net, x, target, phases, beta=beta, variant=variant)


@torch.no_grad()
def estimate(net: HopfieldNetwork, x, target, phases: EPPhases, *, beta: float,
             variant: str = "centered") -> EPResult:
    """The EP estimate (MODEL.md, step 3) from phases already run, of the batch-mean cost."""
    batch = x.shape[0]
    g_plus = phi_param_grads(net, phases.plus.state, x)
    if variant == "centered":
        g_ref, scale = phi_param_grads(net, phases.minus.state, x), 2 * beta * batch
    else:
        g_ref, scale = phi_param_grads(net, phases.free.state, x), beta * batch
    grads = {k: (g_plus[k] - g_ref[k]) / scale for k in g_plus}
    target_t = torch.as_tensor(target, device=x.device).long().reshape(-1)
    y = phases.free.state[OUTPUT]
    loss = float(cost(net.spec, y, target_t).mean())
    correct = int((y.argmax(1) == target_t).sum())
    return EPResult(grads, phases, loss, correct)


def set_grads(net: HopfieldNetwork, grads: dict[str, torch.Tensor]) -> None:
    """Write estimates into ``.grad`` so any torch optimiser can step."""
    for name, p in net.named_parameters():
        g = grads[name].to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad.copy_(g)


def bptt_gradient(net: HopfieldNetwork, x, target, *, steps: int, schedule: str = "paper",
                  state: dict | None = None) -> dict[str, torch.Tensor]:
    """Reference: autograd through the unrolled free phase, of the batch-mean cost of y_T."""
    x = net.check_input(x)
    target = torch.as_tensor(target, device=x.device).long().reshape(-1)
    groups = schedule_groups(net.spec, schedule)
    s = net.zero_state(x.shape[0]) if state is None else {n: state[n].detach() for n in net.layer_names}
    s[INPUT] = x
    names, params = zip(*net.named_parameters())
    with torch.enable_grad():
        for _ in range(steps):
            s = step(net, s, groups)
        loss = cost(net.spec, s[OUTPUT], target).mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(p)) for n, g, p in zip(names, grads, params)}


def compare(estimate: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per parameter: cosine similarity and relative error ||g - ref|| / ||ref||."""
    out = {}
    for k, ref in reference.items():
        g = estimate[k].flatten().double()
        r = ref.flatten().double()
        denom = float(g.norm() * r.norm())
        cos = float(g @ r) / denom if denom > 0 else (1.0 if float(g.norm()) == float(r.norm()) else 0.0)
        rel = float((g - r).norm() / r.norm()) if float(r.norm()) > 0 else float(g.norm())
        out[k] = {"cosine": cos, "rel_error": rel, "norm": float(r.norm())}
    return out
