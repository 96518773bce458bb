import pytest
import torch

from explorer import HopfieldNetwork, hopfield_family
from explorer.app.served import CHROMIUM, CHROMIUM_ARGS, ServedApp


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


# One served app for every browser test of the run: it imports at start (--setup), about 7 s a
# server. Pages are the tests' own; the server's log (``lines``) is shared, so tests count log lines
# before and after.
@pytest.fixture(scope="session")
def server():
    srv = ServedApp()
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


# One headless Chromium per module: playwright's sync API keeps an asyncio loop running in this
# thread while it is open, and other modules' tests call asyncio.run().
@pytest.fixture(scope="module")
def browser():
    import playwright.sync_api as playwright
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
