"""Relaxation dynamics: explicit closed-form layer updates, no autograd in the loop.

Phi is quadratic in each state with unit curvature, so minimising it over one
layer with the others fixed is (MODEL.md, "Dynamics")::

    s_k <- sigma_alpha( b_k + sum_{j->k} W_jk(s_j) + sum_{k->j} W_kj^T(s_j) )

The output y is unboxed; in a nudged phase with the MSE cost the exact
minimiser of F = Phi + beta * C over y is (drive + beta * t) / (1 + beta).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .network import INPUT, OUTPUT, HopfieldNetwork, NetworkSpec
from .record import (ENERGY_STATS, LAYER_STATS, Finding, PhaseResult, RecordConfig, StepRecord,
                     Verdict)

SCHEDULES = ("paper", "descent_safe", "synchronous")
SATURATED = 0.99   # a layer with this fraction of units at alpha (or at 0) is saturated (silent)
DEFAULT_TOL = 1e-4


# ---------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------

def schedule_groups(spec: NetworkSpec, schedule: str) -> list[tuple[str, ...]]:
    """Groups of layers updated together, in order, within one iteration.

    - ``paper``: odd layers (and y, unless y is coupled to an odd layer), then
      even layers. The even layers are joined by skips, so its second half is a
      Jacobi step between coupled layers.
    - ``descent_safe``: a greedy colouring of the coupling graph, odd layers
      first; no group holds two coupled layers, so every group update is an
      exact block minimisation and Phi cannot rise.
    - ``synchronous``: every layer at once.
    """
    names = [l.name for l in spec.layers]
    hidden = [n for n in names if n != OUTPUT]
    odd = [n for i, n in enumerate(hidden) if (i + 1) % 2 == 1]
    even = [n for i, n in enumerate(hidden) if (i + 1) % 2 == 0]
    if schedule == "paper":
        y_with_odd = not any(spec.coupled(OUTPUT, n) for n in odd)
        groups = [odd + ([OUTPUT] if y_with_odd else []), even + ([] if y_with_odd else [OUTPUT])]
        return [tuple(g) for g in groups if g]
    if schedule == "descent_safe":
        groups: list[list[str]] = []
        for n in odd + [OUTPUT] + even:
            for g in groups:
                if not any(spec.coupled(n, m) for m in g):
                    g.append(n)
                    break
            else:
                groups.append([n])
        return [tuple(g) for g in groups]
    if schedule == "synchronous":
        return [tuple(names)]
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")


# ---------------------------------------------------------------------------
# Cost, energy
# ---------------------------------------------------------------------------

def one_hot(spec: NetworkSpec, target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.one_hot(target, spec.n_classes).to(like.dtype)


def cost(spec: NetworkSpec, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample cost C(y, target): 1/2 ||y - onehot||^2 (MSE) or cross-entropy."""
    if spec.cost == "mse":
        return 0.5 * (y - one_hot(spec, target, y)).pow(2).sum(1)
    return F.cross_entropy(y, target, reduction="none")


def check_target(spec: NetworkSpec, target, batch: int, device) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        target = torch.as_tensor(target)
    target = target.to(device=device, dtype=torch.long).reshape(-1)
    if target.numel() != batch:
        raise ValueError(f"target has {target.numel()} labels for a batch of {batch}")
    if target.numel() and (target.min() < 0 or target.max() >= spec.n_classes):
        raise ValueError(f"target labels must lie in [0, {spec.n_classes - 1}], got "
                         f"[{int(target.min())}, {int(target.max())}]")
    return target


def check_beta(spec: NetworkSpec, beta: float) -> None:
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    # MSE: F is convex in y only for beta > -1. CE: a unit step on y descends for |beta| < 2.
    limit = 1.0 if spec.cost == "mse" else 2.0
    if abs(beta) >= limit:
        raise ValueError(f"|beta| must be below {limit} for the {spec.cost} cost "
                         f"(the output update is no longer a descent step), got {beta}")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def _self_terms(net: HopfieldNetwork, state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """1/2 ||s||^2 - <b, s>, per sample."""
    s = state[name]
    flat = s.flatten(1)
    per_channel = s.flatten(2).sum(2) if s.dim() > 2 else s
    return 0.5 * (flat * flat).sum(1) - per_channel @ net.biases[name]


def phi(net: HopfieldNetwork, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Phi(s) = E(s) + sum_k 1/2 ||s_k||^2 per sample (MODEL.md), computed explicitly."""
    full = dict(state)
    full[INPUT] = x
    total = sum(_self_terms(net, full, n) for n in net.layer_names)
    for e in net.edges:
        total = total - e.energy(net.weight(e), full[e.spec.src], full[e.spec.dst])
    return total


# ---------------------------------------------------------------------------
# Relaxation
# ---------------------------------------------------------------------------

class _Cache:
    """Edge outputs computed during a step, tagged with the version of the
    state they were computed from, so Phi at the end of the step reuses them."""

    def __init__(self):
        self.fwd: dict[int, tuple[torch.Tensor, int]] = {}
        self.bwd: dict[int, tuple[torch.Tensor, int]] = {}


def _drive(net: HopfieldNetwork, s: dict, name: str, parts: bool, cache: _Cache | None,
           version: dict[str, int]):
    """Pre-activation of layer ``name``; with ``parts`` also its components."""
    direct = skip = feedback = None
    for e in net.incoming[name]:
        out = e.forward(net.weight(e), s[e.spec.src])
        if cache is not None:
            cache.fwd[id(e)] = (out, version[e.spec.src])
        if e.kind == "skip":
            skip = out if skip is None else skip + out
        else:
            direct = out if direct is None else direct + out
    for e in net.outgoing[name]:
        out = e.feedback(net.weight(e), s[e.spec.dst])
        if cache is not None:
            cache.bwd[id(e)] = (out, version[e.spec.dst])
        feedback = out if feedback is None else feedback + out
    bias = net.bias_view(name)
    comps = [c for c in (direct, skip, feedback) if c is not None]
    if parts or cache is not None:
        pre = comps[0] + bias
        for c in comps[1:]:
            pre = pre + c
    else:
        pre = comps[0].add_(bias) if comps[0].requires_grad is False else comps[0] + bias
        for c in comps[1:]:
            pre = pre.add_(c) if not pre.requires_grad else pre + c
    return pre, (direct, skip, feedback, bias)


def _update(net: HopfieldNetwork, name: str, pre: torch.Tensor, old: torch.Tensor, beta: float,
            target_1h: torch.Tensor | None) -> torch.Tensor:
    if name != OUTPUT:
        return pre.clamp(0.0, net.alpha)
    if beta == 0.0 or target_1h is None:
        return pre
    if net.spec.cost == "mse":
        return (pre + beta * target_1h) / (1.0 + beta)
    return pre - beta * (torch.softmax(old, 1) - target_1h)


def step(net: HopfieldNetwork, s: dict, groups, beta: float = 0.0, target_1h=None) -> dict:
    """One iteration of the schedule, out of place (autograd-friendly: the BPTT reference)."""
    s = dict(s)
    for group in groups:
        new = {n: _update(net, n, _drive(net, s, n, False, None, {})[0], s[n], beta, target_1h)
               for n in group}
        s.update(new)
    return s


def _norm(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t.flatten(1), dim=1)


def relax(net: HopfieldNetwork, x: torch.Tensor, *, steps: int, beta: float = 0.0,
          target=None, schedule: str = "paper", state: dict | None = None,
          tol: float | None = None, free_state: dict | None = None,
          record: RecordConfig | None = None, on_step: Callable[[StepRecord], None] | None = None,
          phase: str | None = None, should_stop: Callable[[], bool] | None = None) -> PhaseResult:
    """Relax the network on input ``x`` for up to ``steps`` iterations.

    beta = 0 is the free phase; beta != 0 a nudged phase towards ``target``
    (start from ``state``, usually the free fixed point, and pass it as
    ``free_state`` to record ||s_beta - s*||). Stops early when the relative step
    size max_k ||s_t - s_(t-1)|| / ||s_t|| falls under ``tol``. Records what
    ``record`` asks for and hands each :class:`StepRecord` to ``on_step``.
    Returns a :class:`PhaseResult` whose verdict says how the run ended.
    """
    spec = net.spec
    x = net.check_input(x)
    batch = x.shape[0]
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    beta = float(beta)
    check_beta(spec, beta)
    target_1h = None
    if beta != 0.0:
        if target is None:
            raise ValueError("a nudged phase (beta != 0) needs a target")
        target = check_target(spec, target, batch, x.device)
    if target is not None:
        target = check_target(spec, target, batch, x.device)
        target_1h = one_hot(spec, target, x)
    groups = schedule_groups(spec, schedule)
    phase = phase or ("free" if beta == 0 else ("nudged+" if beta > 0 else "nudged-"))
    record = record if (record is not None and record.any) else None
    scalars = record is not None and record.scalars

    s = net.zero_state(batch) if state is None else {n: state[n] for n in net.layer_names}
    for n in net.layer_names:
        want = (batch, *spec.shape_of(n))
        if tuple(s[n].shape) != want:
            raise ValueError(f"start state {n} has shape {tuple(s[n].shape)}, expected {want}")
    s[INPUT] = x
    records: list[StepRecord] = []

    def finish(status_findings, t):
        out = {n: s[n] for n in net.layer_names}
        return PhaseResult(phase, beta, out, t, _verdict(status_findings), records)

    for name, p in net.named_parameters():
        if not torch.isfinite(p).all():
            return finish([Finding("non_finite", f"parameter {name} contains NaN or infinite values",
                                   0, name)], 0)
    if not torch.isfinite(x).all():
        return finish([Finding("non_finite", "the input contains NaN or infinite values", 0, INPUT)], 0)

    hidden_layers = [n for n in net.layer_names if n != OUTPUT]
    units_idx = _unit_indices(net, record.units) if scalars and record.units else None
    version = {n: 0 for n in [INPUT, *net.layer_names]}
    alpha = net.alpha
    nudge_ref = free_state if (free_state is not None and beta != 0) else None

    def emit(t, rows, energy):
        states = {}
        if record.state_layers and (t % max(1, record.state_every) == 0 or t == steps):
            idx = torch.as_tensor([i for i in record.state_samples if i < batch], dtype=torch.long)
            states = {n: s[n].detach()[idx.to(x.device)].to("cpu", copy=True)
                      for n in record.state_layers if n in s}
        units = None
        if units_idx is not None:
            units = torch.stack([s[n].detach().flatten(1)[:, units_idx[n]].t() for n in net.layer_names])
        rec = StepRecord(phase, t, beta, tuple(net.layer_names),
                         rows if rows is not None else torch.zeros(len(net.layer_names), len(LAYER_STATS), batch,
                                                                   dtype=x.dtype, device=x.device),
                         energy, units, states)
        if record.keep:
            records.append(rec)
        if on_step is not None:
            on_step(rec)

    def energies(phi_t):
        c = cost(spec, s[OUTPUT], target) if target is not None else torch.zeros_like(phi_t)
        return torch.stack([phi_t, c, phi_t + beta * c])

    findings: list[Finding] = []
    prev_f = None
    rose: list[int] = []
    sat_onset: dict[str, int] = {}
    with torch.no_grad():
        if record is not None:
            e0 = energies(phi(net, s, x)) if scalars else torch.zeros(3, batch, dtype=x.dtype, device=x.device)
            emit(0, None, e0)
            prev_f = e0[2].sum()
        t = 0
        last_rel = None
        for t in range(1, steps + 1):
            if should_stop is not None and should_stop():
                findings.append(Finding("cancelled", f"cancelled at step {t - 1}", t - 1))
                return finish(findings, t - 1)
            need_delta = scalars or tol is not None or t == steps
            cache = _Cache() if scalars else None
            rows = {} if scalars else None
            delta_sq = {}
            for group in groups:
                new = {}
                for n in group:
                    pre, parts = _drive(net, s, n, scalars, cache, version)
                    new[n] = _update(net, n, pre, s[n], beta, target_1h)
                    if scalars:
                        rows[n] = parts
                for n, v in new.items():
                    if need_delta:
                        d = _norm(v - s[n])
                        delta_sq[n] = d
                    if scalars:
                        rows[n] = _layer_row(n, v, delta_sq[n], rows[n], alpha,
                                             None if nudge_ref is None else nudge_ref[n])
                    s[n] = v
                    version[n] += 1
            if need_delta:
                rels = [float(torch.linalg.vector_norm(delta_sq[n])) /
                        (float(torch.linalg.vector_norm(s[n].flatten())) + 1e-12) for n in net.layer_names]
                # max() ignores a NaN that is not first, so test every value
                last_rel = float("nan") if not all(map(math.isfinite, rels)) else max(rels)
                if not math.isfinite(last_rel):
                    bad = next(n for n in net.layer_names if not torch.isfinite(s[n]).all())
                    findings.append(Finding("non_finite", f"layer {bad} became non-finite at step {t}", t, bad))
                    if record is not None:
                        emit(t, torch.stack([rows[n] for n in net.layer_names]) if scalars else None,
                             energies(torch.full((batch,), float("nan"), dtype=x.dtype, device=x.device)))
                    return finish(findings, t)
            if record is not None:
                stats = torch.stack([rows[n] for n in net.layer_names]) if scalars else None
                energy = energies(_phi_from_cache(net, s, cache, version)) if scalars else \
                    torch.zeros(3, batch, dtype=x.dtype, device=x.device)
                emit(t, stats, energy)
                if scalars:
                    f_t = energy[2].sum()
                    if float(f_t - prev_f) > 1e-5 * (abs(float(prev_f)) + 1.0):
                        rose.append(t)
                    prev_f = f_t
                    _track_saturation(stats, net.layer_names, hidden_layers, t, sat_onset)
            if tol is not None and last_rel is not None and last_rel < tol:
                findings.append(Finding("converged", f"converged at step {t} (relative step {last_rel:.1e})", t))
                break
        else:
            if steps == 0:
                findings.append(Finding("not_converged", "no steps were run", 0))
            else:
                limit = tol if tol is not None else DEFAULT_TOL
                if last_rel is not None and last_rel < limit:
                    findings.append(Finding("converged", f"converged by step {t} (relative step {last_rel:.1e})", t))
                else:
                    findings.append(Finding("not_converged", f"not converged after {t} steps "
                                            f"(relative step {last_rel:.1e} > {limit:.0e})", t))
        if rose:
            energy_name = "Phi" if beta == 0 else "F"
            findings.append(Finding("energy_rose", f"{energy_name} rose at step {rose[0]}"
                                    + (f" and {len(rose) - 1} later steps" if len(rose) > 1 else ""), rose[0]))
        if not scalars:
            _final_saturation(s, hidden_layers, alpha, t, sat_onset)
        for n, onset in sat_onset.items():
            kind, at = onset
            findings.append(Finding(kind, f"layer {n} {kind} at step {at}", at, n))
    return finish(findings, t)


def _layer_row(name, v, delta, parts, alpha, ref):
    """The LAYER_STATS row [S, B] of one freshly updated layer."""
    direct, skip, feedback, bias = parts
    flat = v.flatten(1)
    batch = flat.shape[0]
    zeros = flat.new_zeros(batch)
    norm_v = _norm(v)
    n_direct = _norm(direct) if direct is not None else zeros
    n_skip = _norm(skip) if skip is not None else zeros
    n_feedback = _norm(feedback) if feedback is not None else zeros
    spatial = flat.shape[1] // bias.shape[0]
    n_bias = (torch.linalg.vector_norm(bias) * math.sqrt(spatial)).expand(batch)
    share = n_skip / (n_direct + n_skip + n_feedback + 1e-12)
    if name == OUTPUT:
        frac_zero = frac_alpha = zeros
    else:
        frac_zero = (flat <= 0).sum(1).to(flat.dtype) / flat.shape[1]
        frac_alpha = (flat >= alpha).sum(1).to(flat.dtype) / flat.shape[1]
    nudge = _norm(v - ref) if ref is not None else zeros
    return torch.stack([delta / (norm_v + 1e-12), flat.mean(1), frac_zero, frac_alpha,
                        n_direct, n_skip, n_feedback, n_bias, share, nudge])


def _phi_from_cache(net: HopfieldNetwork, s: dict, cache: _Cache, version: dict) -> torch.Tensor:
    """Phi at the current state, reusing edge outputs whose inputs have not changed since."""
    total = sum(_self_terms(net, s, n) for n in net.layer_names)
    for e in net.edges:
        src, dst = e.spec.src, e.spec.dst
        fwd = cache.fwd.get(id(e))
        bwd = cache.bwd.get(id(e))
        if fwd is not None and fwd[1] == version[src]:
            term = _dot(fwd[0], s[dst])
        elif bwd is not None and bwd[1] == version[dst]:
            term = _dot(s[src], bwd[0])
        else:  # both ends moved in one Jacobi step (synchronous, or the paper's skips)
            term = e.energy(net.weight(e), s[src], s[dst])
        total = total - term
    return total


def _unit_indices(net: HopfieldNetwork, count: int) -> dict[str, torch.Tensor]:
    """A few fixed units per layer, the same in every run of this network."""
    gen = torch.Generator().manual_seed(1234)
    out = {}
    for n in net.layer_names:
        size = math.prod(net.spec.shape_of(n))
        out[n] = torch.randperm(size, generator=gen)[:count].sort().values.to(net.device)
        if out[n].numel() < count:  # tiny layers: repeat so every layer has `count` rows
            out[n] = out[n].repeat(math.ceil(count / out[n].numel()))[:count]
    return out


def _track_saturation(stats, names, hidden, t, onset):
    idx_zero, idx_alpha = LAYER_STATS.index("frac_zero"), LAYER_STATS.index("frac_alpha")
    means = stats[:, [idx_zero, idx_alpha]].mean(-1).tolist()
    for n, (fz, fa) in zip(names, means):
        if n not in hidden:
            continue
        kind = "saturated" if fa >= SATURATED else ("silent" if fz >= SATURATED else None)
        if kind is None:
            onset.pop(n, None)
        elif n not in onset or onset[n][0] != kind:
            onset[n] = (kind, t)


def _final_saturation(s, hidden, alpha, t, onset):
    for n in hidden:
        flat = s[n].flatten()
        if flat.numel() == 0:
            continue
        if float((flat >= alpha).float().mean()) >= SATURATED:
            onset[n] = ("saturated", t)
        elif float((flat <= 0).float().mean()) >= SATURATED:
            onset[n] = ("silent", t)


def _verdict(findings: list[Finding]) -> Verdict:
    order = ("non_finite", "cancelled", "converged", "not_converged")
    status = next((k for k in order if any(f.kind == k for f in findings)), "not_converged")
    return Verdict(status, findings)
