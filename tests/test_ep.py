import pytest
import torch

from explorer import HopfieldNetwork, bptt_gradient, compare, ep_gradient, hopfield_family, set_grads
from explorer.dynamics import cost, relax
from explorer.ep import phi_param_grads
from explorer.dynamics import phi

SETTINGS = dict(t_free=2000, t_nudge=2000, schedule="descent_safe", tol=1e-10)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("cost_name", ["mse", "cross_entropy"])
def test_centered_ep_matches_bptt_and_beats_one_sided(small_net, batch, residual, cost_name):
    net = small_net(residual=residual, alpha=1.0, cost=cost_name)
    x, t = batch(net)
    reference = bptt_gradient(net, x, t, steps=400, schedule="descent_safe")
    centered = ep_gradient(net, x, t, beta=1e-3, variant="centered", **SETTINGS)
    one_sided = ep_gradient(net, x, t, beta=1e-3, variant="one_sided", **SETTINGS)
    assert all(p.verdict.converged for p in centered.phases.phases)
    c, o = compare(centered.grads, reference), compare(one_sided.grads, reference)
    assert set(c) == {n for n, _ in net.named_parameters()}
    for name in c:
        assert c[name]["cosine"] >= 0.99, (name, c[name])
    err_c = sum(v["rel_error"] for v in c.values())
    err_o = sum(v["rel_error"] for v in o.values())
    assert err_c < err_o


def test_bptt_reference_agrees_with_finite_differences(small_net, batch):
    net = small_net(alpha=1.0)
    x, t = batch(net, 2)
    ref = bptt_gradient(net, x, t, steps=400, schedule="descent_safe")

    def loss():
        y = relax(net, x, steps=3000, schedule="descent_safe", tol=1e-15).state["y"]
        return float(cost(net.spec, y, t).mean())
    bias = net.biases["s3"]
    eps = 1e-6
    for i in range(bias.numel()):
        with torch.no_grad():
            bias[i] += eps
        up = loss()
        with torch.no_grad():
            bias[i] -= 2 * eps
        down = loss()
        with torch.no_grad():
            bias[i] += eps
        assert abs((up - down) / (2 * eps) - float(ref["biases.s3"][i])) < 1e-6


def test_closed_form_parameter_gradients_equal_autograd_of_phi(small_net, batch):
    net = small_net()
    x, _ = batch(net, 3)
    gen = torch.Generator().manual_seed(2)
    state = {n: torch.rand(3, *net.spec.shape_of(n), generator=gen, dtype=torch.float64) for n in net.layer_names}
    closed = phi_param_grads(net, state, x)
    names, params = zip(*net.named_parameters())
    auto = torch.autograd.grad(phi(net, state, x).sum(), params)
    for n, g in zip(names, auto):
        torch.testing.assert_close(closed[n], g, rtol=1e-10, atol=1e-10)


def test_ep_gradient_steps_an_optimiser_and_lowers_the_loss(batch):
    spec = hopfield_family(3, input_shape=(1, 8, 8), width=4, n_classes=5, alpha=1.0)
    net = HopfieldNetwork(spec, seed=0, dtype=torch.float64)
    x, t = batch(net, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        result = ep_gradient(net, x, t, beta=0.1, t_free=60, t_nudge=20, schedule="descent_safe")
        set_grads(net, result.grads)
        opt.step()
        losses.append(result.loss)
    assert losses[-1] < 0.8 * losses[0]


def test_ep_refuses_a_non_positive_beta_and_unknown_variant(small_net, batch):
    net = small_net()
    x, t = batch(net)
    with pytest.raises(ValueError, match="beta > 0"):
        ep_gradient(net, x, t, beta=0.0, t_free=5, t_nudge=5)
    with pytest.raises(ValueError, match="variant"):
        ep_gradient(net, x, t, beta=0.1, t_free=5, t_nudge=5, variant="holomorphic")


def test_free_phase_can_stop_on_tolerance_while_nudges_run_a_fixed_count(small_net, batch):
    from explorer.ep import run_phases
    net = small_net()
    x, t = batch(net)
    phases = run_phases(net, x, t, beta=0.1, t_free=500, t_nudge=7, tol=1e-3, nudge_tol=None)
    assert phases.free.verdict.converged and phases.free.steps < 500
    assert phases.plus.steps == phases.minus.steps == 7


def test_each_phase_is_handed_over_as_soon_as_it_ends(small_net, batch):
    from explorer.ep import run_phases
    from explorer.record import RecordConfig
    net = small_net()
    x, t = batch(net)
    seen = []
    phases = run_phases(net, x, t, beta=0.1, t_free=6, t_nudge=3, record=RecordConfig(keep=False),
                        on_step=lambda rec: seen.append(rec.phase),
                        on_phase=lambda result: seen.append(result))
    # Each phase's steps, then that phase's result (the very object returned), then the next phase.
    expected = []
    for result in phases.phases:
        expected += [result.phase] * (result.steps + 1) + [result]
    assert len(seen) == len(expected)
    assert all(a is b if not isinstance(b, str) else a == b for a, b in zip(seen, expected))
