import pytest
import torch

from explorer import HopfieldNetwork, hopfield_family


@pytest.fixture
def small_net():
    """A small residual network in float64, fast on the CPU."""
    def make(residual=True, alpha=1.0, depth=4, width=4, seed=1, cost="mse", n_classes=5, shape=(1, 8, 8)):
        spec = hopfield_family(depth, input_shape=shape, width=width, n_classes=n_classes,
                               residual=residual, alpha=alpha, cost=cost)
        return HopfieldNetwork(spec, seed=seed, dtype=torch.float64)
    return make


@pytest.fixture
def batch():
    def make(net, n=4, seed=0):
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(n, *net.spec.input_shape, generator=gen, dtype=net.dtype)
        t = torch.randint(0, net.spec.n_classes, (n,), generator=gen)
        return x, t
    return make
