"""The backpropagation baseline: the same graph, run feed-forward.

Each hidden layer is computed once, bottom-up, from its incoming edges only
(main-path convolution plus, in a ResNet, the 1x1 skip projection)::

    s_k = sigma_alpha( BN_k( b_k + sum_{j->k} W_jk(s_j) ) ),   y = b_y + W_out vec(s_L)

so it uses exactly the weights (same names and shapes) of the
:class:`~explorer.network.HopfieldNetwork`; batch-norm (the paper's BP
baseline) is optional and its parameters and running statistics are saved
as ``extra.bn.<layer>.<field>`` tensors in the checkpoint.
"""
from __future__ import annotations

import torch
from torch import nn

from .network import INPUT, OUTPUT, HopfieldNetwork

BN_PREFIX = "extra.bn."


class FeedForward(nn.Module):
    """Feed-forward pass over a :class:`HopfieldNetwork`'s parameters (shared, not copied)."""

    def __init__(self, net: HopfieldNetwork, batch_norm: bool = False):
        super().__init__()
        self.net = net
        self.batch_norm = bool(batch_norm)
        hidden = [l for l in net.spec.layers if l.name != OUTPUT]
        self.bn = nn.ModuleDict({
            l.name: (nn.BatchNorm2d(l.shape[0]) if len(l.shape) == 3 else nn.BatchNorm1d(l.shape[0]))
            for l in hidden}) if batch_norm else None
        if self.bn is not None:
            self.bn.to(device=net.device, dtype=net.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        s = {INPUT: x}
        for name in net.layer_names:  # the spec lists layers bottom-up
            pre = net.bias_view(name)
            for e in net.incoming[name]:
                pre = pre + e.forward(net.weight(e), s[e.spec.src])
            if name == OUTPUT:
                s[name] = pre
            else:
                if self.bn is not None:
                    pre = self.bn[name](pre)
                s[name] = pre.clamp(0.0, net.alpha)
        return s[OUTPUT]

    # -- checkpoint tensors ----------------------------------------------------
    def bn_tensors(self) -> dict[str, torch.Tensor]:
        if self.bn is None:
            return {}
        return {BN_PREFIX + k: v for k, v in self.bn.state_dict().items()}

    def load_bn_tensors(self, extra: dict[str, torch.Tensor]) -> None:
        if self.bn is None:
            return
        state = {k[len(BN_PREFIX):]: v for k, v in extra.items() if k.startswith(BN_PREFIX)}
        missing = sorted(set(self.bn.state_dict()) - set(state))
        if missing:
            raise ValueError(f"the checkpoint says batch_norm but lacks batch-norm tensors "
                             f"{[BN_PREFIX + m for m in missing[:3]]}")
        self.bn.load_state_dict(state)

    def named_trainable(self):
        """(name, parameter) for the optimiser: the network's, then ``bn.<layer>.<field>``."""
        yield from self.net.named_parameters()
        if self.bn is not None:
            for k, p in self.bn.named_parameters():
                yield f"bn.{k}", p
