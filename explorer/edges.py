"""One class per kind of edge (after Scellier et al.'s interactions).

Each edge answers, in explicit tensor code (no autograd):
- ``forward(W, s_src)``: its contribution to the drive of ``dst``;
- ``feedback(W, s_dst)``: its contribution to the drive of ``src`` (the
  transpose of ``forward``, so that the two are gradients of one term);
- ``energy(W, s_src, s_dst)``: the term <W(s_src), s_dst> per sample;
- ``weight_grad(s_src, s_dst)``: d/dW of sum over the batch of that term.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight


def _per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = a.shape[0]   # vecdot: 6-17x faster than a batched matrix product here at batch > 1
    return torch.linalg.vecdot(a.reshape(n, -1), b.reshape(n, -1))


class Edge:
    kind = "?"
    # The compiled kernels (explorer.native) that compute exactly this class's forward and
    # feedback: "conv" or "dense". None (a new kind of edge): relaxed by the eager tensor code.
    native: str | None = None

    def __init__(self, spec, src_shape, dst_shape):
        self.spec = spec
        self.src_shape = tuple(src_shape)
        self.dst_shape = tuple(dst_shape)

    @staticmethod
    def output_shape(spec, src_shape, dst_shape):
        raise NotImplementedError

    def energy(self, w, s_src, s_dst):
        return _per_sample_dot(self.forward(w, s_src), s_dst)

    def __repr__(self):
        return f"<{type(self).__name__} {self.spec.name}>"


class ConvEdge(Edge):
    """A main-path convolution s_{k-1} -> s_k (kernel/stride/padding)."""

    kind = "conv"
    native = "conv"

    def __init__(self, spec, src_shape, dst_shape):
        super().__init__(spec, src_shape, dst_shape)
        k, st, p = spec.kernel, spec.stride, spec.padding
        # conv_transpose must land exactly on the source's spatial size.
        self.output_padding = tuple(
            src - ((dst - 1) * st - 2 * p + k) for src, dst in zip(self.src_shape[1:], self.dst_shape[1:]))
        self.weight_shape = (self.dst_shape[0], self.src_shape[0], k, k)
        self.fan_in = self.src_shape[0] * k * k

    @staticmethod
    def output_shape(spec, src_shape, dst_shape):
        if len(src_shape) != 3:
            return (None,)
        c, h, w = src_shape
        k, st, p = spec.kernel, spec.stride, spec.padding
        return (dst_shape[0], (h + 2 * p - k) // st + 1, (w + 2 * p - k) // st + 1)

    def forward(self, w, s_src):
        return F.conv2d(s_src, w, stride=self.spec.stride, padding=self.spec.padding)

    def feedback(self, w, s_dst):
        return F.conv_transpose2d(s_dst, w, stride=self.spec.stride, padding=self.spec.padding,
                                  output_padding=self.output_padding)

    def weight_grad(self, s_src, s_dst):
        return conv2d_weight(s_src, self.weight_shape, s_dst, stride=self.spec.stride,
                             padding=self.spec.padding)

    def flops(self) -> int:
        """Multiply-adds x2 of one forward pass for one sample."""
        return 2 * math.prod(self.weight_shape) * math.prod(self.dst_shape[1:])


class SkipEdge(ConvEdge):
    """The residual edge s_{k-2} -> s_k: a learned 1x1 (strided) projection."""

    kind = "skip"


class DenseEdge(Edge):
    """The readout: y gets W vec(s_L)."""

    kind = "dense"
    native = "dense"

    def __init__(self, spec, src_shape, dst_shape):
        super().__init__(spec, src_shape, dst_shape)
        self.fan_in = math.prod(self.src_shape)
        self.weight_shape = (self.dst_shape[0], self.fan_in)

    @staticmethod
    def output_shape(spec, src_shape, dst_shape):
        return (dst_shape[0],)

    def forward(self, w, s_src):
        return s_src.flatten(1) @ w.t()

    def feedback(self, w, s_dst):
        return (s_dst @ w).view(s_dst.shape[0], *self.src_shape)

    def weight_grad(self, s_src, s_dst):
        return s_dst.t() @ s_src.flatten(1)

    def flops(self) -> int:
        return 2 * math.prod(self.weight_shape)


EDGE_KINDS = {"conv": ConvEdge, "skip": SkipEdge, "dense": DenseEdge}
