"""The cost C, the energy Phi and the checks of what a phase is nudged with."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..network import INPUT, HopfieldNetwork, NetworkSpec


def one_hot(spec: NetworkSpec, target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.one_hot(target, spec.n_classes).to(like.dtype)


def cost(spec: NetworkSpec, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample cost C(y, target): 1/2 ||y - onehot||^2 (MSE) or cross-entropy."""
    if spec.cost == "mse":
        return 0.5 * (y - one_hot(spec, target, y)).pow(2).sum(1)
    return F.cross_entropy(y, target, reduction="none")


def energies(spec: NetworkSpec, phi_t: torch.Tensor, y: torch.Tensor, target, beta: float) -> torch.Tensor:
    """The record's energy rows (Phi, C, F = Phi + beta C) [3, batch]; C is 0 without a target."""
    c = cost(spec, y, target) if target is not None else torch.zeros_like(phi_t)
    return torch.stack([phi_t, c, phi_t + beta * c])


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
