"""Explicit closed-form layer updates, no autograd in the loop.

Phi is quadratic in each state with unit curvature, so minimising it over one
layer with the others fixed is (MODEL.md, "Dynamics")::

    s_k <- sigma_alpha( b_k + sum_{j->k} W_jk(s_j) + sum_{k->j} W_kj^T(s_j) )

The output y is unboxed; in a nudged phase with the MSE cost the exact
minimiser of F = Phi + beta * C over y is (drive + beta * t) / (1 + beta).
"""
from __future__ import annotations

import torch

from ..network import INPUT, OUTPUT, HopfieldNetwork


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
            out, like = e.forward(weights[e], x), s[e.spec.dst]
            # a copy only where the product's layout differs (8 MB for Hopfield-ResNet13's s1 at batch 16)
            fixed[e] = out if out.stride() == like.stride() and out.dtype == like.dtype \
                else torch.empty_like(like).copy_(out)
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
