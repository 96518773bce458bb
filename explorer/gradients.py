"""EP against BPTT for one network, input and target, per parameter tensor, as plain data.

Four views (MODEL.md, "Theory to test against"; Ernoult et al. 2019; Laborieux et al. 2021):

- :func:`ep_against_bptt`: centered and one-sided EP against BPTT through the free phase
  (what ``python -m explorer gradcheck`` prints, from the same calls);
- :func:`budget_against_converged`: the same estimates at the run's budget (T_free, T_nudge,
  no early stop) against a converged reference: BPTT over the last steps of a long free phase;
- :func:`gdu`: along the nudged phase, EP's running update (dPhi/dtheta(s_k) - dPhi/dtheta(s*)) / beta
  against BPTT's gradient truncated to the last k steps, for a few entries per tensor;
- :func:`precision`: the float32 estimate against the float64 one, per tensor (a beta too small
  for float32 shows as a low cosine).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch

from .dynamics import cost, relax, schedule_groups, step
from .ep import bptt_gradient, compare, estimate, phi_param_grads, run_phases
from .network import INPUT, OUTPUT, HopfieldNetwork
from .record import RecordConfig


@dataclass
class Comparison:
    """Estimates against a reference, per parameter tensor: cosine, relative error, reference norm."""

    reference: str                                   # what the estimates are compared against
    parameters: dict[str, dict[str, dict]]           # name -> estimate -> {cosine, rel_error, norm}
    min_cosine: dict[str, float]                     # estimate -> lowest cosine over the tensors
    verdicts: dict[str, str]                         # phase -> verdict message
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _comparison(reference_name: str, reference: dict, estimates: dict, verdicts: dict, settings: dict):
    per = {k: compare(g, reference) for k, g in estimates.items()}
    params = {name: {k: per[k][name] for k in per} for name in reference}
    return Comparison(reference_name, params, {k: min(v["cosine"] for v in per[k].values()) for k in per},
                      verdicts, settings)


def ep_against_bptt(net: HopfieldNetwork, x, target, *, beta: float, t_free: int, t_nudge: int,
                    schedule: str = "paper", tol: float | None = None,
                    bptt_steps: int | None = None) -> Comparison:
    """Centered and one-sided EP against BPTT through ``bptt_steps`` (default ``t_free``) free-phase
    steps from zero. One free and two nudged phases serve both estimates (one-sided uses s* and
    s+), which are the phases ``gradcheck`` runs for each."""
    x = net.check_input(x)
    with torch.no_grad():
        phases = run_phases(net, x, target, beta=beta, t_free=t_free, t_nudge=t_nudge, schedule=schedule,
                            tol=tol, variant="centered")
    estimates = {v: estimate(net, x, target, phases, beta=beta, variant=v).grads
                 for v in ("centered", "one_sided")}
    steps = t_free if bptt_steps is None else bptt_steps
    reference = bptt_gradient(net, x, target, steps=steps, schedule=schedule)
    verdicts = {p.phase: p.verdict.message for p in phases.phases}
    return _comparison(f"BPTT through {steps} free-phase steps", reference, estimates, verdicts,
                       dict(beta=beta, t_free=t_free, t_nudge=t_nudge, schedule=schedule, tol=tol,
                            bptt_steps=steps))


def converged_reference(net: HopfieldNetwork, x, target, *, schedule: str = "paper", steps: int = 1000,
                        window: int = 200, tol: float | None = None):
    """d(mean cost at s*)/dtheta near the converged fixed point: ``steps`` free-phase steps without
    autograd, then BPTT through the last ``window`` of them (the rest of the gradient shrinks as
    rho^window; memory grows with ``window``). Returns (grads, the long free phase)."""
    x = net.check_input(x)
    window = min(window, steps)
    with torch.no_grad():
        long = relax(net, x, steps=steps - window, schedule=schedule, tol=tol)
    return bptt_gradient(net, x, target, steps=window, schedule=schedule, state=long.state), long


def budget_against_converged(net: HopfieldNetwork, x, target, *, beta: float, t_free: int, t_nudge: int,
                             schedule: str = "paper", reference_steps: int | None = None,
                             reference_window: int | None = None) -> Comparison:
    """EP at the run's budget (exactly ``t_free`` and ``t_nudge`` steps) and BPTT through the same
    ``t_free`` steps, against :func:`converged_reference` (default: 10 x t_free steps, BPTT over
    the last 2 x t_free): how far the fixed budget is from the true gradient."""
    x = net.check_input(x)
    ref_steps = reference_steps or 10 * t_free
    window = reference_window or 2 * t_free
    with torch.no_grad():
        phases = run_phases(net, x, target, beta=beta, t_free=t_free, t_nudge=t_nudge, schedule=schedule,
                            tol=None, variant="centered")
    estimates = {v: estimate(net, x, target, phases, beta=beta, variant=v).grads
                 for v in ("centered", "one_sided")}
    estimates["bptt"] = bptt_gradient(net, x, target, steps=t_free, schedule=schedule)
    reference, long = converged_reference(net, x, target, schedule=schedule, steps=ref_steps, window=window)
    verdicts = {p.phase: p.verdict.message for p in phases.phases}
    verdicts["reference"] = long.verdict.message
    return _comparison(f"BPTT over the last {min(window, ref_steps)} of {ref_steps} free-phase steps",
                       reference, estimates, verdicts,
                       dict(beta=beta, t_free=t_free, t_nudge=t_nudge, schedule=schedule,
                            reference_steps=ref_steps, reference_window=window))


# ---------------------------------------------------------------------------
# GDU: EP's running update against truncated BPTT (Ernoult et al. 2019)
# ---------------------------------------------------------------------------

class _OneStep(torch.nn.Module):
    """One schedule step as a module, so :func:`torch.func.functional_call` can give every step
    its own copy of the parameters (whose gradients are then that step's contribution)."""

    def __init__(self, net: HopfieldNetwork, groups):
        super().__init__()
        self.net = net
        self.groups = groups

    def forward(self, s: dict) -> dict:
        return step(self.net, s, self.groups)


def truncated_bptt(net: HopfieldNetwork, x, target, state: dict, *, steps: int,
                   schedule: str = "paper") -> list[dict[str, torch.Tensor]]:
    """BPTT from ``state`` through ``steps`` free-phase steps, truncated to the last k steps for
    k = 1 .. steps: one forward and one backward pass, each step with its own parameter copies.
    Entry k - 1 equals ``bptt_gradient(..., steps=k, state=state)`` when ``state`` is a fixed point."""
    x = net.check_input(x)
    target = torch.as_tensor(target, device=x.device).long().reshape(-1)
    module = _OneStep(net, schedule_groups(net.spec, schedule))
    names = [n for n, _ in net.named_parameters()]
    copies = [{f"net.{n}": p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
              for _ in range(steps)]
    s = {n: state[n].detach() for n in net.layer_names}
    s[INPUT] = x
    with torch.enable_grad():
        for params in copies:
            s = torch.func.functional_call(module, params, (s,))
        loss = cost(net.spec, s[OUTPUT], target).mean()
        flat = [p for params in copies for p in params.values()]
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
    per_step = [dict(zip(names, grads[i * len(names):(i + 1) * len(names)])) for i in range(steps)]
    out, running = [], {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for contribution in reversed(per_step):       # the last step first: truncation to the last k
        running = {n: running[n] + (g.detach() if g is not None else 0) for n, g in contribution.items()}
        out.append(running)
    return out


@dataclass
class GDU:
    """Along the nudged phase, k = 1 .. steps: EP's running update against truncated BPTT."""

    steps: list[int]
    units: dict[str, list[int]]                  # parameter -> flat indices followed
    ep: dict[str, list[list[float]]]             # parameter -> [k][unit]
    bptt: dict[str, list[list[float]]]           # parameter -> [k][unit]
    cosine: dict[str, list[float | None]]        # parameter -> [k], whole tensor (None: BPTT's is zero)
    rel_error: dict[str, list[float]]            # parameter -> [k], whole tensor (||EP|| where BPTT's is 0)
    sign_agreement: dict[str, list[float]]       # parameter -> [k], fraction of entries with BPTT's sign
    free_verdict: str
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def gdu(net: HopfieldNetwork, x, target, *, beta: float, t_free: int, t_nudge: int, schedule: str = "paper",
        units: int = 3, tol: float | None = None, state: dict | None = None) -> GDU:
    """EP's one-sided running update (dPhi/dtheta(s_beta_k) - dPhi/dtheta(s*)) / beta at each nudged
    step k against BPTT's gradient truncated to the last k steps, per parameter tensor and for the
    ``units`` entries of each with the largest truncated-BPTT gradient at k = ``t_nudge``. The
    property holds exactly (as beta -> 0, at a fixed point) for the synchronous schedule; the
    group-sequential schedules shift which parameters a step reaches first."""
    x = net.check_input(x)
    batch = x.shape[0]
    with torch.no_grad():
        free = relax(net, x, steps=t_free, schedule=schedule, tol=tol, state=state)
        keep = RecordConfig(scalars=False, state_layers=tuple(net.layer_names),
                            state_samples=tuple(range(batch)), state_every=1)
        nudged = relax(net, x, steps=t_nudge, beta=beta, target=target, schedule=schedule, state=free.state,
                       free_state=free.state, record=keep)
        g_star = phi_param_grads(net, free.state, x)
        ep_steps = []
        for rec in nudged.records[1:]:
            s_k = {n: v.to(device=x.device, dtype=x.dtype) for n, v in rec.states.items()}
            g_k = phi_param_grads(net, s_k, x)
            ep_steps.append({n: (g_k[n] - g_star[n]) / (beta * batch) for n in g_k})
    bptt_steps = truncated_bptt(net, x, target, free.state, steps=len(ep_steps), schedule=schedule)
    names = [n for n, _ in net.named_parameters()]
    follow = {n: bptt_steps[-1][n].flatten().abs().argsort(descending=True)[:units].tolist() if ep_steps else []
              for n in names}
    result = GDU(list(range(1, len(ep_steps) + 1)), follow, {n: [] for n in names}, {n: [] for n in names},
                 {n: [] for n in names}, {n: [] for n in names}, {n: [] for n in names}, free.verdict.message,
                 dict(beta=beta, t_free=t_free, t_nudge=t_nudge, schedule=schedule))
    for e, b in zip(ep_steps, bptt_steps):
        stats = compare(e, b)
        for n in names:
            ef, bf = e[n].flatten(), b[n].flatten()
            result.ep[n].append(ef[follow[n]].tolist())
            result.bptt[n].append(bf[follow[n]].tolist())
            result.cosine[n].append(stats[n]["cosine"] if stats[n]["norm"] > 0 else None)
            result.rel_error[n].append(stats[n]["rel_error"])
            nonzero = bf != 0
            agree = (torch.sign(ef[nonzero]) == torch.sign(bf[nonzero])).double().mean() if nonzero.any() else 1.0
            result.sign_agreement[n].append(float(agree))
    return result


# ---------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------

def precision(net: HopfieldNetwork, x, target, *, beta: float, t_free: int, t_nudge: int,
              schedule: str = "paper", tol: float | None = None) -> Comparison:
    """Centered and one-sided EP computed in float32 against the same in float64, per tensor: the
    nudge moves the state by about beta, so a beta near float32's resolution of the state loses
    the estimate to rounding. The network itself is left in its dtype."""
    x = net.check_input(x)
    out = {}
    for dtype in (torch.float32, torch.float64):
        twin = copy.deepcopy(net).to(dtype)
        xd = x.to(dtype)
        with torch.no_grad():
            phases = run_phases(twin, xd, target, beta=beta, t_free=t_free, t_nudge=t_nudge,
                                schedule=schedule, tol=tol, variant="centered")
        out[dtype] = ({v: {k: g.double() for k, g in estimate(twin, xd, target, phases, beta=beta,
                                                                variant=v).grads.items()}
                       for v in ("centered", "one_sided")},
                      {p.phase: p.verdict.message for p in phases.phases})
    single, verdicts = out[torch.float32]
    double, _ = out[torch.float64]
    per = {v: compare(single[v], double[v]) for v in single}
    params = {name: {v: per[v][name] for v in per} for name in double["centered"]}
    return Comparison("the same estimate in float64", params,
                      {v: min(s["cosine"] for s in per[v].values()) for v in per}, verdicts,
                      dict(beta=beta, t_free=t_free, t_nudge=t_nudge, schedule=schedule, tol=tol))
