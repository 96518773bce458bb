"""The record's per-layer statistics in tensor code (the eager stepper's; the native kernels
compute the same rows in C++)."""
from __future__ import annotations

import math

import torch

from ..network import OUTPUT, HopfieldNetwork

# Per-layer raw rows, reduced once per step for all layers by _StatsLayout.derive.
RAW = ("delta", "norm", "total", "nonzero", "at_alpha", "direct", "skip", "feedback", "nudge",
       "bias_dot", "edge_energy")


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
