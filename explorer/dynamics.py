"""Relaxation dynamics: explicit closed-form layer updates, no autograd in the loop.

Phi is quadratic in each state with unit curvature, so minimising it over one
layer with the others fixed is (MODEL.md, "Dynamics")::

    s_k <- sigma_alpha( b_k + sum_{j->k} W_jk(s_j) + sum_{k->j} W_kj^T(s_j) )

The output y is unboxed; in a nudged phase with the MSE cost the exact
minimiser of F = Phi + beta * C over y is (drive + beta * t) / (1 + beta).
"""
from __future__ import annotations

import functools
import math
import os
import time
import weakref
from typing import Callable

import torch
import torch.nn.functional as F

from . import native
from .network import INPUT, OUTPUT, HopfieldNetwork, NetworkSpec, _layout
from .record import (ENERGY_STATS, LAYER_STATS, Finding, PhaseResult, RecordConfig, StepRecord,
                     Verdict)

SCHEDULES = ("paper", "descent_safe", "synchronous")
SATURATED = 0.99   # a layer with this fraction of units at alpha (or at 0) is saturated (silent)
FRACTION_ROWS = [LAYER_STATS.index("frac_zero"), LAYER_STATS.index("frac_alpha")]
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

def _edge_outputs(net: HopfieldNetwork, s: dict, name: str, weights: dict | None = None,
                  fixed: dict | None = None):
    """Each edge's contribution to the drive of ``name``: (edge, role, tensor).
    ``weights`` (edge -> tensor, from :func:`_weight_map`) saves the module look-ups in a loop;
    ``fixed`` (edge -> tensor, from :func:`_input_drives`) holds outputs that do not change."""
    w = weights if weights is not None else {e: net.weight(e) for e in net.incoming[name] + net.outgoing[name]}
    fixed = fixed or {}
    outs = [(e, "skip" if e.kind == "skip" else "direct",
             fixed[e] if e in fixed else e.forward(w[e], s[e.spec.src])) for e in net.incoming[name]]
    outs += [(e, "feedback", e.feedback(w[e], s[e.spec.dst])) for e in net.outgoing[name]]
    return outs


def _weight_map(net: HopfieldNetwork) -> dict:
    """edge -> weight tensor, looked up once per run (a ParameterDict look-up costs microseconds)."""
    return {e: net.weight(e) for e in net.edges}


def _input_drives(net: HopfieldNetwork, weights: dict, x: torch.Tensor, s: dict) -> dict:
    """The outputs of the edges from the clamped input x, the same at every step of a run:
    computed once, in their destination's memory layout. Shared, so never written in place."""
    fixed = {}
    for e in net.edges:
        if e.spec.src == INPUT:
            fixed[e] = torch.empty_like(s[e.spec.dst]).copy_(e.forward(weights[e], x))
    return fixed


def _pre_activation(net: HopfieldNetwork, name: str, outs, keep: bool,
                    fixed: dict | None = None) -> torch.Tensor:
    """b + sum of the edge outputs. In place into the first output unless the outputs must survive
    (``keep``, for the records), the first is a shared input drive (in ``fixed``) or autograd is watching."""
    keep = keep or (fixed is not None and outs[0][0] in fixed)
    tensors = [o for _, _, o in outs]
    bias = net.bias_view(name)
    if tensors[0].requires_grad:
        pre = tensors[0] + bias
        for t in tensors[1:]:
            pre = pre + t
        return pre
    pre = tensors[0] + bias if keep else tensors[0].add_(bias)
    for t in tensors[1:]:
        pre.add_(t)
    return pre


def drive(net: HopfieldNetwork, s: dict, name: str) -> torch.Tensor:
    """The pre-activation of layer ``name`` at state ``s`` (which holds s0 = x)."""
    return _pre_activation(net, name, _edge_outputs(net, s, name), keep=True)


def _update(net: HopfieldNetwork, name: str, pre: torch.Tensor, old: torch.Tensor, beta: float,
            target_1h: torch.Tensor | None, omega: float = 1.0) -> torch.Tensor:
    """The block minimiser of F over layer ``name``; with omega != 1 projected
    over-relaxation, clip((1 - omega) s + omega * minimiser), which has the same
    fixed points and still descends for 0 < omega < 2 (unit curvature)."""
    if name != OUTPUT:
        if pre.requires_grad:
            return (pre if omega == 1.0 else old + omega * (pre - old)).clamp(0.0, net.alpha)
        if omega != 1.0:
            pre.mul_(omega).add_(old, alpha=1.0 - omega)
        return pre.clamp_(0.0, net.alpha)
    if beta == 0.0 or target_1h is None:
        y = pre
    elif net.spec.cost == "mse":
        y = (pre + beta * target_1h) / (1.0 + beta)
    else:
        y = pre - beta * (torch.softmax(old, 1) - target_1h)
    return y if omega == 1.0 else old + omega * (y - old)


def step(net: HopfieldNetwork, s: dict, groups, beta: float = 0.0, target_1h=None) -> dict:
    """One iteration of the schedule, out of place (autograd-friendly: the BPTT reference)."""
    s = dict(s)
    for group in groups:
        new = {n: _update(net, n, drive(net, s, n), s[n], beta, target_1h) for n in group}
        s.update(new)
    return s


def _channels_last(t: torch.Tensor) -> bool:
    """A 4-d map laid out channels-last (and not also plain contiguous, as 1x1 maps are)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _flat(t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """[batch, -1] without a copy: channels-last maps are flattened in memory
    order (h, w, c); ``like`` must share the layout when two are paired."""
    if _channels_last(t) and (like is None or like.is_contiguous(memory_format=torch.channels_last)):
        return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)
    return t.reshape(t.shape[0], -1)


def _norm(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(_flat(t), dim=1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample <a, b> (vecdot: 6-17x faster than a batched matrix product here at batch > 1)."""
    return torch.linalg.vecdot(_flat(a, b), _flat(b, a))


def _energy_owner(net: HopfieldNetwork, groups) -> dict[int, str | None]:
    """For each edge, the endpoint updated later in the step: at its update the
    other end is already final, so <edge output, new state> is that edge's
    energy term at the end of the step. None: both ends move together (Jacobi)."""
    order = {n: i for i, g in enumerate(groups) for n in g}
    order[INPUT] = -1
    owner = {}
    for e in net.edges:
        a, b = order[e.spec.src], order[e.spec.dst]
        owner[id(e)] = None if a == b else (e.spec.src if a > b else e.spec.dst)
    return owner


def relax(net: HopfieldNetwork, x: torch.Tensor, *, steps: int, beta: float = 0.0,
          target=None, schedule: str = "paper", state: dict | None = None,
          tol: float | None = None, free_state: dict | None = None,
          record: RecordConfig | None = None, on_step: Callable[[StepRecord], None] | None = None,
          phase: str | None = None, should_stop: Callable[[], bool] | None = None,
          state_phi: torch.Tensor | None = None, omega: float = 1.0,
          fused: bool | None = None) -> PhaseResult:
    """Relax the network on input ``x`` for up to ``steps`` iterations.

    beta = 0 is the free phase; beta != 0 a nudged phase towards ``target``
    (start from ``state``, usually the free fixed point, and pass it as
    ``free_state`` to record ||s_beta - s*||). Stops early when the relative step
    size max_k ||s_t - s_(t-1)|| / ||s_t|| falls under ``tol``; in a nudged phase
    given ``free_state`` the scale is the displacement ||s_t - s*|| instead, since
    the nudge moves the state by little and that small move is the signal. Records what
    ``record`` asks for and hands each :class:`StepRecord` to ``on_step``.
    Returns a :class:`PhaseResult` whose verdict says how the run ended.
    ``state_phi`` (Phi of ``state``, e.g. the free phase's last record) saves
    recomputing it for the step-0 record. ``omega`` in (0, 2) over-relaxes each
    update (projected SOR): same fixed points, often fewer iterations.
    ``fused``: on the CPU, do each group's update and statistics in the compiled kernels of
    :mod:`explorer.native` (None: when they are built; False: the eager tensor code).
    """
    spec = net.spec
    x = net.check_input(x)
    batch = x.shape[0]
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    beta = float(beta)
    check_beta(spec, beta)
    omega = float(omega)
    if not 0.0 < omega < 2.0:
        raise ValueError(f"over-relaxation omega must lie in (0, 2), got {omega}")
    target_1h = None
    if beta != 0.0 and target is None:
        raise ValueError("a nudged phase (beta != 0) needs a target")
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
        s[n] = _layout(s[n].to(device=x.device, dtype=x.dtype))
    s[INPUT] = x
    records: list[StepRecord] = []

    last_phi = [state_phi if state is not None else None]   # Phi [batch], or a record's energy rows [3, batch]

    stepper = None

    def sync():
        """The fused path keeps the states in its Stepper while it runs: bring them into ``s``."""
        if stepper is not None:
            stepper.sync(s)

    def finish(findings, t):
        sync()
        out = {n: s[n] for n in net.layer_names}
        p = last_phi[0]
        if p is not None and p.dim() == 2:   # indexed once here, not at every recorded step (about 1 us)
            p = p[0]
        return PhaseResult(phase, beta, out, t, _verdict(findings), records, p)

    bad = _first_non_finite_parameter(net)
    if bad is not None:
        return finish([Finding("non_finite", f"parameter {bad} contains NaN or infinite values", 0, bad)], 0)
    if not torch.isfinite(x).all():
        return finish([Finding("non_finite", "the input contains NaN or infinite values", 0, INPUT)], 0)

    names = net.layer_names
    hidden_layers = [n for n in names if n != OUTPUT]
    units_idx = _unit_indices(net, record.units) if scalars and record.units else None
    owner = _energy_owner(net, groups)
    jacobi_edges = [e for e in net.edges if owner[id(e)] is None]
    alpha = net.alpha
    nudge_ref = free_state if (free_state is not None and beta != 0) else None
    zeros_b = x.new_zeros(batch)
    weights = _weight_map(net)
    fixed = _input_drives(net, weights, x, s)
    kernels = _fused_kernels(x) if fused is not False else None
    if fused and kernels is None:
        raise ValueError("fused kernels requested, but they are unavailable here: "
                         f"{native.status()} (device {x.device}, dtype {x.dtype})")
    stepper = _FusedStep(kernels, net, weights, fixed, s, groups, owner, jacobi_edges, beta, omega, target,
                         target_1h, nudge_ref, units_idx, steps) if kernels is not None else None
    layout = _StatsLayout(net, x, beta) if scalars and stepper is None else None
    scratch: dict[str, torch.Tensor] = {}   # per-layer buffers of the recorded statistics

    state_idx = torch.as_tensor([i for i in record.state_samples if i < batch], dtype=torch.long,
                                device=x.device) if record is not None else None

    def capture(t):
        """The state tensors the record asks for at step t (taken from the current state)."""
        if record.state_layers and (t % max(1, record.state_every) == 0 or t == steps):
            sync()
            return {n: s[n].detach().index_select(0, state_idx).to("cpu", copy=True)
                    for n in record.state_layers if n in s}
        return {}

    def emit(t, stats, energy, units=None, states=None):
        states = capture(t) if states is None else states
        if units is None and units_idx is not None:   # (the fused path hands its units in)
            sync()
            units = torch.stack([s[n][(slice(None), *units_idx[n])].t() for n in names])
        if stats is None:
            stats = x.new_zeros(len(names), len(LAYER_STATS), batch)
        rec = StepRecord(phase, t, beta, tuple(names), stats, energy, units, states)
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
    pending: list = [None]   # fused path: the last step's record, waiting for its late energy terms

    def settle(out):
        nonlocal prev_f
        emit(out.t, out.stats, out.energy, out.units, out.states)
        last_phi[0] = out.energy
        if out.f_sum - prev_f > 1e-5 * (abs(prev_f) + 1.0):
            rose.append(out.t)
        prev_f = out.f_sum

    def flush():
        if pending[0] is not None:
            sync()
            stepper.close(pending[0], s)
            settle(pending[0])
            pending[0] = None
    sat_onset: dict[str, tuple[str, int]] = {}
    last_rel = None
    t = 0

    def eager_step(t: int, level: int) -> _StepOut:
        """One step in tensor code (GPU, autocast, no compiler): level 0 updates only, 1 also the
        norms for the relative step, 2 the whole record, its energy complete."""
        raw = {}              # layer -> RAW rows [len(RAW), batch] (level 2)
        norms = {}            # layer -> (||s_t - s_(t-1)||, ||s_t||) per sample (level 1)
        for group in groups:
            new = {}
            for n in group:
                outs = _edge_outputs(net, s, n, weights, fixed)
                v = _update(net, n, _pre_activation(net, n, outs, level == 2, fixed), s[n], beta, target_1h,
                            omega)
                new[n] = (v, outs)
            for n, (v, outs) in new.items():
                if level == 2:
                    raw[n] = _layer_raw(net, n, v, s[n], outs, alpha, owner, zeros_b,
                                        None if nudge_ref is None else nudge_ref[n], scratch)
                elif level == 1:
                    scale = v if nudge_ref is None else v - nudge_ref[n]
                    norms[n] = torch.stack([_norm(v - s[n]), _norm(scale)])
                s[n] = v
        out = _StepOut.empty(t)
        if level == 2:
            stacked = torch.stack([raw[n] for n in names])          # [L, RAW, B]
            out.stats, phi_t = layout.derive(stacked)
            for e in jacobi_edges:  # both ends moved in one step: one extra (small) product
                phi_t = phi_t - e.energy(weights[e], s[e.spec.src], s[e.spec.dst])
            out.energy = energies(phi_t)
            last_phi[0] = phi_t
            pairs = stacked[:, [0, 1 if nudge_ref is None else RAW.index("nudge")]]
        elif level == 1:
            pairs = torch.stack([norms[n] for n in names])
        if level == 0:
            return out
        batch_norms = torch.linalg.vector_norm(pairs, dim=2).flatten()   # per layer 2 batch norms
        if level == 2:   # one copy to the host per step: on a GPU each one waits for the queue
            means = out.stats[:, FRACTION_ROWS].mean(-1).flatten()
            host = torch.cat([out.energy[2].sum().reshape(1), means, batch_norms]).tolist()
            out.f_sum, out.fractions, p = host[0], host[1:1 + len(means)], host[1 + len(means):]
            out.max_fraction = max(out.fractions)
        else:
            p = batch_norms.tolist()
        rels = [d / (m + 1e-12) for d, m in zip(p[0::2], p[1::2])]
        out.max_rel = max(rels) if all(map(math.isfinite, rels)) else float("nan")
        return out
    with torch.no_grad():
        if record is not None:
            if not scalars:
                e0 = x.new_zeros(3, batch)
            elif state is None:  # Phi of the zero state is 0: every term is linear or quadratic in s
                e0 = energies(x.new_zeros(batch))
            else:
                last_phi[0] = state_phi if state_phi is not None else phi(net, s, x)
                e0 = energies(last_phi[0])
            emit(0, None, e0)
            prev_f = float(e0[2].sum())
        for t in range(1, steps + 1):
            if should_stop is not None and should_stop():
                flush()
                findings.append(Finding("cancelled", f"cancelled at step {t - 1}", t - 1))
                return finish(findings, t - 1)
            need_delta = scalars or tol is not None or t == steps
            level = 2 if scalars else (1 if need_delta else 0)
            out = stepper.step(level, t, pending[0], 0.0 if sat_onset else SATURATED) if stepper is not None \
                else eager_step(t, level)
            if pending[0] is not None:
                settle(pending[0])   # its energy is complete now
                pending[0] = None
            if need_delta:
                last_rel = out.max_rel
                if not math.isfinite(last_rel):
                    sync()
                    bad_layer = next((n for n in names if not torch.isfinite(s[n]).all()), names[-1])
                    findings.append(Finding("non_finite", f"layer {bad_layer} became non-finite at step {t}",
                                            t, bad_layer))
                    if record is not None:
                        if scalars and stepper is not None:   # no next step brings its late energy terms
                            stepper.close(out, s)
                        emit(t, out.stats, out.energy if scalars else x.new_full((3, batch), float("nan")),
                             out.units)
                    if scalars:   # the result's Phi is the returned state's, on either path
                        last_phi[0] = out.energy[0]
                    return finish(findings, t)
            if record is not None:
                if scalars:
                    if sat_onset or out.max_fraction >= SATURATED:   # else nothing to note
                        _track_fractions(out.fractions, names, hidden_layers, t, sat_onset)
                    if record.state_layers:
                        out.states = capture(t)
                    if stepper is not None:
                        pending[0] = out   # its energy completes with the next step (or flush)
                    else:
                        settle(out)
                else:
                    emit(t, None, x.new_zeros(3, batch))
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
        flush()
        if rose:
            energy_name = "Phi" if beta == 0 else "F"
            findings.append(Finding("energy_rose", f"{energy_name} rose at step {rose[0]}"
                                    + (f" and {len(rose) - 1} later steps" if len(rose) > 1 else ""), rose[0]))
        if not scalars:
            sync()
            _final_saturation(s, hidden_layers, alpha, t, sat_onset)
        for n, (kind, at) in sat_onset.items():
            findings.append(Finding(kind, f"layer {n} {kind} at step {at}", at, n))
    return finish(findings, t)


def _fused_kernels(x: torch.Tensor):
    """The compiled kernels when they apply: CPU, float32 or float64, no autocast, and built."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) \
            or torch.is_autocast_enabled("cpu"):
        return None
    return native.get()


class _StepOut:
    """One step's results: record parts (level 2) and the largest relative step (level >= 1).
    ``fractions`` is a flat list, two numbers per layer: the batch means (frac_zero, frac_alpha),
    and ``max_fraction`` the largest of them."""
    __slots__ = ("t", "stats", "energy", "units", "max_rel", "f_sum", "fractions", "max_fraction", "states")

    @classmethod
    def empty(cls, t: int) -> "_StepOut":
        out = cls()
        out.t, out.f_sum, out.max_rel, out.max_fraction = t, 0.0, None, 0.0
        out.stats = out.energy = out.units = out.fractions = None
        out.states = {}
        return out


def _patch_matrix(w: torch.Tensor) -> torch.Tensor:
    """[c_out, k*k*c_in]: a conv weight with its inputs in the (ky, kx, c) order of a channels-last
    patch (a view of a channels-last weight)."""
    return w.detach().permute(0, 2, 3, 1).reshape(w.shape[0], -1)


# (id(weight), forward) -> (version key, packed matrix). The small kernels read W^T (forward) or W
# (feedback) packed in column tiles (native.pack_columns); for a 512x4608 weight that copy takes
# milliseconds, several per relax call for Hopfield-ResNet13, so it is kept while the weight lives
# and is unchanged (an in-place update moves its version).
_PACKED: dict[tuple[int, bool], tuple] = {}


def _packed_matrix(kernels, w: torch.Tensor, forward: bool) -> torch.Tensor:
    """:func:`_patch_matrix` transposed (``forward``) or as is, packed for the small kernels, cached
    per weight version."""
    key = (w._version, w.data_ptr(), w.dtype, tuple(w.shape))
    hit = _PACKED.get((id(w), forward))
    if hit is not None and hit[0] == key:
        return hit[1]
    if hit is None:   # (a weak-key dictionary would compare tensors with ==)
        weakref.finalize(w, _PACKED.pop, (id(w), forward), None)
    m = _patch_matrix(w)
    packed = kernels.pack_columns(m.t() if forward else m)
    _PACKED[(id(w), forward)] = (key, packed)
    return packed


# (shapes, batch, direction, dtype, layout, threads) -> whether the small kernel beat torch's convolution
_SMALL_CHOICE: dict[tuple, bool] = {}


def _small_is_faster(kernels, e, w: torch.Tensor, batch: int, forward: bool, repeats: int = 3) -> bool:
    """Times edge ``e``'s output (``forward``, or its feedback) at ``batch`` both ways, on random
    channels-last states: the best of ``repeats`` calls each, after one that warms caches and packs."""
    k, st, pad = e.spec.kernel, e.spec.stride, e.spec.padding
    shape = e.src_shape if forward else e.dst_shape
    gen = torch.Generator().manual_seed(0)   # not the global stream: training's augmentation draws from it
    s = torch.rand(batch, *shape, generator=gen, dtype=w.dtype).contiguous(memory_format=torch.channels_last)
    packed = _packed_matrix(kernels, w, forward)
    if forward:
        small = lambda: kernels.small_conv_forward(s, packed, e.dst_shape[0], k, st, pad, *e.dst_shape[1:])
    else:
        small = lambda: kernels.small_conv_feedback(s, packed, e.src_shape[0], k, st, pad, *e.src_shape[1:])
    conv = (lambda: e.forward(w, s)) if forward else (lambda: e.feedback(w, s))

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)
    with torch.no_grad():
        faster = best(small) < best(conv)
    if not faster:   # no copy kept for this batch's sake (another batch that uses the kernel repacks)
        _PACKED.pop((id(w), forward), None)
    return faster


class _FusedStep:
    """Relaxation steps through :mod:`explorer.native`: a C++ ``Stepper``, built here once per run,
    does a whole step in one call (the edge outputs, per schedule group one pass that updates
    every hidden layer and sums its raw statistics, then the step's record) and holds the states
    meanwhile (:meth:`sync` copies them out). Same arithmetic as the eager path below (which
    the tests compare it with); sums are accumulated in float64.

    Edges whose two ends move together (skips under the paper schedule, every edge when
    synchronous) need <W s_src, s_dst> at the new states, one more product each. The next
    step computes W s_src anyway and still holds the old s_dst, so it supplies the term;
    a step's energy is therefore complete one step later (``pending``), and the last step's
    from :meth:`close`."""

    ROLE = {"direct": 0, "skip": 1, "feedback": 2}
    BLOCK_STEPS = 64   # records per allocation: a block outlives its last record kept
    # Edge function kinds of the C++ Stepper (relax_kernels.cpp, Stepper::Kind)
    FIXED, CONV, CONV_T, SMALL, SMALL_T, DENSE, DENSE_T = range(7)

    def __init__(self, kernels, net, weights, fixed, s, groups, owner, jacobi_edges, beta, omega, target,
                 target_1h, nudge_ref, units_idx, steps):
        self.k, self.net, self.weights, self.fixed = kernels, net, weights, fixed
        self.names = net.layer_names
        self.index = {n: i for i, n in enumerate(self.names)}
        self.owner, self.jacobi_edges = owner, jacobi_edges
        self.late_edges = set(jacobi_edges)
        self.nudge_ref = nudge_ref
        self.empty = s[self.names[0]].new_empty(0)
        self.batch = s[self.names[0]].shape[0]
        with torch.no_grad():  # the bias broadcast over one sample, in each state's memory order
            self.bias_map = {n: self._memory_order(net.bias_view(n).expand(1, *net.spec.shape_of(n)), s[n])
                             for n in self.names}
        self.channels_last = {n: _channels_last(s[n]) for n in self.names}
        self.cpp = kernels.Stepper([s[n] for n in self.names])
        self.fn_ids: dict = {}
        for g in groups:
            y_fns = [self._part_fn(e, forward) for e, forward in self._edges_of(OUTPUT)] if OUTPUT in g else []
            self.cpp.add_group(self._plan(g, False), self._plan(g, True), y_fns)
        y_first = self._edges_of(OUTPUT)[0]
        self.cpp.set_output(self.index[OUTPUT], net.bias_view(OUTPUT), y_first[1] and y_first[0] in fixed,
                            float(beta), float(omega), 0 if target is None else (1 if net.spec.cost == "mse" else 2),
                            target_1h if target_1h is not None else self.empty, float(net.alpha))
        # Memory offsets of the chosen units within one sample: the kernels keep every state's layout.
        unit_offsets = [] if units_idx is None else [
            sum(c.cpu().long() * s[n].stride(d + 1) for d, c in enumerate(idx)) for n, idx in units_idx.items()]
        # The records' tensors are views into blocks of BLOCK_STEPS steps (see finalize).
        units = len(unit_offsets[0]) if unit_offsets else 0
        order = [n for g in groups for n in g]
        self.cpp.set_record(
            [order.index(n) for n in self.names],
            torch.tensor([math.prod(net.spec.shape_of(n)) for n in self.names], dtype=torch.float64),
            torch.tensor([int(n != OUTPUT) for n in self.names], dtype=torch.long), _bias_norms(net).cpu(),
            1.0 / abs(beta) if beta != 0 else 0.0, unit_offsets, nudge_ref is not None,
            len(self.names) * (len(LAYER_STATS) + units) * self.batch + 3 * self.batch, self.BLOCK_STEPS, steps)

    def _edges_of(self, n: str) -> list:
        """The edges into the drive of layer ``n``: (edge, True) forward, (edge, False) feedback."""
        return [(e, True) for e in self.net.incoming[n]] + [(e, False) for e in self.net.outgoing[n]]

    @staticmethod
    def _memory_order(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``t`` (one sample) laid out like ``like``, flattened in memory order."""
        if _channels_last(like):
            return t.permute(0, 2, 3, 1).reshape(-1).contiguous()
        return t.reshape(-1).contiguous()

    # The product with few rows against torch's convolution, per edge, direction and batch: below
    # TIMED_FLOPS per call the rule of thumb `_few_positions` decides; above, with at most
    # MAX_SMALL_ROWS output positions, the two are timed once per process and shape (the winner
    # depends on the shapes and the direction: at Hopfield-ResNet13's batch 1, s3->s4's forward
    # runs faster in oneDNN, its feedback twice as fast in the product; above 1024 positions oneDNN
    # always won). EXPLORER_TIME_KERNELS=0 leaves every choice to the rule, the same in every
    # process (timed choices may differ between processes, and with them a float32 result's last bits).
    TIMED_FLOPS = 4_000_000
    MAX_SMALL_ROWS = 1024

    @staticmethod
    def _few_positions(batch: int, pixels: int) -> bool:
        """Where the product with few rows beats torch's convolutions here, on small edges."""
        return batch * pixels <= 64

    def _use_small(self, e, forward: bool) -> bool:
        pixels = math.prod(e.dst_shape[1:])
        if self.batch * pixels > self.MAX_SMALL_ROWS:
            return False
        if e.flops() * self.batch < self.TIMED_FLOPS or os.environ.get("EXPLORER_TIME_KERNELS", "1") == "0":
            return self._few_positions(self.batch, pixels)
        w = self.weights[e]
        key = (e.src_shape, e.dst_shape, e.spec.kernel, e.spec.stride, e.spec.padding, self.batch, forward, w.dtype,
               _channels_last(w), torch.get_num_threads())
        if key not in _SMALL_CHOICE:
            _SMALL_CHOICE[key] = _small_is_faster(self.k, e, w, self.batch, forward)
        return _SMALL_CHOICE[key]

    def _part_fn(self, e, forward: bool) -> int:
        """The Stepper's id of the function of the states that gives edge ``e``'s output in the drive
        of its destination (``forward``) or source: the input's fixed drive, the few-row product
        where the edge has few output positions and that kernel is faster (:meth:`_use_small`), else
        the tensor code of :mod:`explorer.edges`, as ATen calls."""
        key = (id(e), forward)
        if key in self.fn_ids:
            return self.fn_ids[key]
        w, src, dst = self.weights[e], e.spec.src, e.spec.dst
        add = self.cpp.add_fn
        if forward and e in self.fixed:
            fid = add(self.FIXED, -1, self.fixed[e], 0, 1, 0, 0, 0, [])
        elif e.kind in ("conv", "skip"):
            k, st, pad = e.spec.kernel, e.spec.stride, e.spec.padding
            if self._use_small(e, forward):
                if forward:
                    fid = add(self.SMALL, self.index[src], _packed_matrix(self.k, w, True), k, st, pad,
                              *e.dst_shape[1:], [e.dst_shape[0]])
                else:
                    fid = add(self.SMALL_T, self.index[dst], _packed_matrix(self.k, w, False), k, st, pad,
                              *e.src_shape[1:], [e.src_shape[0]])
            elif forward:
                fid = add(self.CONV, self.index[src], w, k, st, pad, 0, 0, [])
            else:
                fid = add(self.CONV_T, self.index[dst], w, k, st, pad, 0, 0, list(e.output_padding))
        elif e.kind == "dense":   # columns in the source's memory order: no copy of a channels-last map
            cl = int(len(e.src_shape) == 3 and self.channels_last[src])
            wm = w.detach().view(w.shape[0], *e.src_shape).permute(0, 2, 3, 1).reshape(w.shape[0], -1) \
                .contiguous() if cl else w
            fid = add(self.DENSE, self.index[src], wm, cl, 1, 0, 0, 0, []) if forward else \
                add(self.DENSE_T, self.index[dst], wm, cl, 1, 0, 0, 0, [self.batch, *e.src_shape])
        else:
            raise ValueError(f"the fused step has no kernel for {e.kind} edges")
        self.fn_ids[key] = fid
        return fid

    def _plan(self, group, with_output: bool):
        """What one kernel call of this group gets that does not change between steps."""
        layers, fns, p_layer, p_role, p_owned, p_late, p_writable, refs, bmaps = ([] for _ in range(9))
        for n in group:
            if n == OUTPUT and not with_output:
                continue
            j = len(layers)
            edges = self._edges_of(n)
            for e, forward in edges:
                p_layer.append(j)
                p_role.append(self.ROLE["skip" if forward and e.kind == "skip" else
                                        ("direct" if forward else "feedback")])
                p_owned.append(int(self.owner[id(e)] == n))
                p_late.append(int(forward and e in self.late_edges))
                p_writable.append(int(not (forward and e in self.fixed)))
            layers.append(self.index[n])
            fns.append([] if n == OUTPUT else [self._part_fn(e, forward) for e, forward in edges])
            refs.append(self.nudge_ref[n] if self.nudge_ref is not None else self.empty)
            bmaps.append(self.bias_map[n])
        return self.k.StepPlan(layers, fns, p_layer, p_role, p_owned, p_late, p_writable, refs, bmaps)

    def step(self, level: int, t: int, pending: _StepOut | None = None, fractions_from: float = 0.0) -> _StepOut:
        """One step; at level 2 it also completes ``pending`` (the previous step's record), and gives the
        fractions when the largest is at least ``fractions_from``. The states stay in the Stepper until
        :meth:`sync`."""
        r = self.cpp.step(level, t, pending.energy if pending is not None and level == 2 else self.empty,
                          fractions_from)
        out = _StepOut.empty(t)
        if level == 1:
            out.max_rel = r
        elif level == 2:
            out.stats, out.energy, out.units, out.f_sum, out.max_rel, out.max_fraction, out.fractions, late_f = r
            if late_f is not None:
                pending.f_sum = late_f
        return out

    def sync(self, s: dict) -> None:
        """The current states into ``s``."""
        for n, v in zip(self.names, self.cpp.states()):
            s[n] = v

    def close(self, out: _StepOut, s: dict) -> None:
        """Complete the energy of the last step (``s`` is its state) with the late terms, computed here."""
        if not self.jacobi_edges or out.energy is None:
            return
        late = sum(e.energy(self.weights[e], s[e.spec.src], s[e.spec.dst]) for e in self.jacobi_edges)
        out.energy[0] -= late
        out.energy[2] -= late
        out.f_sum = float(out.energy[2].sum())


def _first_non_finite_parameter(net: HopfieldNetwork) -> str | None:
    # One sum per tensor: NaN and inf propagate, so a finite sum means finite values
    # (barring overflow of the sum, which the element check below then settles). The two
    # dictionaries directly: named_parameters() walks the module tree, 20 us more a call.
    named = [(f"weights.{k}", p) for k, p in net.weights.items()] + \
            [(f"biases.{k}", p) for k, p in net.biases.items()]
    sums = torch.stack([p.detach().sum() for _, p in named])
    if bool(torch.isfinite(sums).all()):
        return None
    return next((n for n, p in named if not torch.isfinite(p).all()), None)


# Per-layer raw rows, reduced once per step for all layers by _StatsLayout.derive.
RAW = ("delta", "norm", "total", "nonzero", "at_alpha", "direct", "skip", "feedback", "nudge",
       "bias_dot", "edge_energy")


def _layer_raw(net, name, v, old, outs, alpha, owner, zeros, ref, scratch):
    """Per-sample raw statistics of a freshly updated layer (few passes over its state).

    Differences and signs go into one scratch buffer per layer, kept for the whole phase:
    a fresh tensor per step costs page faults, about 4x the arithmetic here."""
    parts = {"direct": [], "skip": [], "feedback": []}
    edge_energy = zeros
    for e, role, out in outs:
        parts[role].append(out)
        if owner[id(e)] == name:   # this edge's energy term is final now
            edge_energy = edge_energy + _dot(out, v)

    def part_norm(ts):
        if not ts:
            return zeros
        return _norm(ts[0] if len(ts) == 1 else sum(ts[1:], ts[0]))
    flat = _flat(v)
    buf = scratch.get(name)
    if buf is None or buf.shape != flat.shape or buf.dtype != flat.dtype:
        buf = scratch[name] = torch.empty_like(flat, memory_format=torch.contiguous_format)

    def diff_norm(a, b):   # ||a - b|| per sample, a and b flattened in the same memory order
        return torch.linalg.vector_norm(torch.sub(_flat(a, b), _flat(b, a), out=buf), dim=1)
    per_channel = v.sum((2, 3)) if v.dim() == 4 else v
    hidden = name != OUTPUT
    return torch.stack([
        diff_norm(v, old), torch.linalg.vector_norm(flat, dim=1), per_channel.sum(1),
        # hidden states lie in [0, alpha]: sign(v) is 1 where v > 0 and sign(v - alpha) is 0 at
        # alpha, -1 below; float sums of these count exactly (count_nonzero and bool sums convert
        # to int64 first, which costs about 10x more here)
        torch.sign(flat, out=buf).sum(1) if hidden else zeros,
        torch.sub(flat, alpha, out=buf).sign_().sum(1) + flat.shape[1] if hidden else zeros,
        part_norm(parts["direct"]), part_norm(parts["skip"]), part_norm(parts["feedback"]),
        diff_norm(v, ref) if ref is not None else zeros,
        per_channel @ net.biases[name], edge_energy])


def _bias_norms(net: HopfieldNetwork) -> torch.Tensor:
    """Per layer ||b broadcast over the layer's map|| (float64): the record's drive_bias, fixed
    while the weights are."""
    with torch.no_grad():
        return torch.stack([torch.linalg.vector_norm(net.biases[n].double())
                            * math.sqrt(math.prod(net.spec.shape_of(n)) / net.biases[n].shape[0])
                            for n in net.layer_names])


class _StatsLayout:
    """Turns the stacked raw rows [L, RAW, B] into LAYER_STATS rows and Phi, in a few vector ops."""

    def __init__(self, net: HopfieldNetwork, x: torch.Tensor, beta: float):
        names = net.layer_names
        self.inv_beta = 1.0 / abs(beta) if beta != 0 else 0.0
        sizes = [math.prod(net.spec.shape_of(n)) for n in names]
        self.size = torch.tensor(sizes, dtype=x.dtype, device=x.device)[:, None]
        self.hidden = torch.tensor([n != OUTPUT for n in names], dtype=x.dtype, device=x.device)[:, None]
        self.bias_norm = _bias_norms(net).to(device=x.device, dtype=x.dtype)[:, None]
        self.index = {k: i for i, k in enumerate(RAW)}

    def derive(self, raw: torch.Tensor):
        r = {k: raw[:, i] for k, i in self.index.items()}
        direct, skip, feedback = r["direct"], r["skip"], r["feedback"]
        stats = torch.stack([
            r["delta"] / (r["norm"] + 1e-12),
            r["total"] / self.size,
            self.hidden * (1.0 - r["nonzero"] / self.size),
            r["at_alpha"] / self.size,
            direct, skip, feedback,
            self.bias_norm.expand_as(direct),
            skip / (direct + skip + feedback + 1e-12),
            r["nudge"], r["nudge"] * self.inv_beta], dim=1)
        phi_t = (0.5 * r["norm"].square() - r["bias_dot"] - r["edge_energy"]).sum(0)
        return stats, phi_t


def _unit_indices(net: HopfieldNetwork, count: int) -> dict[str, torch.Tensor]:
    """A few fixed units per layer, the same in every run of this network."""
    device = net.device
    return {n: tuple(c.to(device) for c in coords)
            for n, coords in zip(net.layer_names, _unit_coordinates(tuple(tuple(net.spec.shape_of(n)) for n in
                                                                            net.layer_names), count))}


@functools.lru_cache(maxsize=32)
def _unit_coordinates(shapes: tuple[tuple[int, ...], ...], count: int) -> tuple:
    """Per layer shape, ``count`` units as coordinate tensors (CPU), drawn once per set of shapes:
    a relax call asks for them at every start (a millisecond per call when drawn each time)."""
    gen = torch.Generator().manual_seed(1234)
    out = []
    for shape in shapes:
        size = math.prod(shape)
        flat = torch.randperm(size, generator=gen)[:count].sort().values
        if flat.numel() < count:  # tiny layers: repeat so every layer has `count` rows
            flat = flat.repeat(math.ceil(count / flat.numel()))[:count]
        coords = []   # row-major unravel (torch.unravel_index imports sympy on first use: seconds)
        for dim in reversed(shape):
            coords.append(flat % dim)
            flat = flat // dim
        out.append(tuple(reversed(coords)))
    return tuple(out)


def _track_fractions(means, names, hidden, t, onset):
    """``means``: per layer the batch means frac_zero, frac_alpha, flat (one list of 2L). The caller
    skips the usual step, when no layer is or was saturated or silent."""
    for n, fz, fa in zip(names, means[0::2], means[1::2]):
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
