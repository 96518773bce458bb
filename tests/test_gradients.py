import json

import pytest
import torch

from explorer import HopfieldNetwork, bptt_gradient, hopfield_family
from explorer.cli import main
from explorer.dynamics import relax
from explorer.gradients import (budget_against_converged, ep_against_bptt, gdu, precision,
                                truncated_bptt)


def tiny(alpha=1.0, seed=1, batch=2):
    spec = hopfield_family(3, input_shape=(1, 6, 6), width=2, n_classes=4, alpha=alpha)
    net = HopfieldNetwork(spec, seed=seed, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 6, 6, dtype=torch.float64, generator=gen)
    return net, x, torch.randint(0, 4, (batch,), generator=gen)


def test_numbers_agree_with_the_gradcheck_command(capsys):
    args = ["--builder", "resnet", "--depth", "2", "--width", "2", "--input-shape", "1,6,6", "--classes", "4",
            "--batch", "3", "--seed", "2", "--beta", "0.01", "--t-free", "200", "--t-nudge", "100",
            "--bptt-steps", "60", "--tol", "1e-9", "--schedule", "paper"]
    assert main(["gradcheck", "--json", *args]) == 0
    cli = json.loads(capsys.readouterr().out)
    from explorer.cli import build_parser, make_inputs, make_network
    parsed = build_parser().parse_args(["gradcheck", *args])
    parsed.float64 = True
    net, _ = make_network(parsed)
    x, target = make_inputs(net, 3, 2)
    ours = ep_against_bptt(net, x, target, beta=0.01, t_free=200, t_nudge=100, schedule="paper", tol=1e-9,
                           bptt_steps=60)
    assert set(ours.parameters) == set(cli["parameters"])
    for name, entry in cli["parameters"].items():
        for variant in ("centered", "one_sided"):
            for key in ("cosine", "rel_error"):
                assert ours.parameters[name][variant][key] == pytest.approx(entry[variant][key], abs=1e-12)
    assert ours.min_cosine["centered"] == pytest.approx(cli["min_cosine_centered"], abs=1e-12)
    assert ours.verdicts == cli["verdicts"]
    json.dumps(ours.to_dict())   # plain data


def test_truncated_bptt_equals_bptt_from_the_fixed_point():
    net, x, t = tiny()
    free = relax(net, x, steps=3000, schedule="paper", tol=1e-14)
    truncated = truncated_bptt(net, x, t, free.state, steps=5, schedule="paper")
    for k in (1, 2, 5):
        ref = bptt_gradient(net, x, t, steps=k, schedule="paper", state=free.state)
        for name, g in ref.items():
            assert torch.allclose(truncated[k - 1][name], g, atol=1e-14, rtol=1e-10), (k, name)
    # the last step reaches only the readout: truncation at k = 1 leaves the first conv at zero
    assert float(truncated[0]["weights.s0_s1"].abs().max()) == 0.0
    assert float(truncated[4]["weights.s0_s1"].abs().max()) > 0.0


def test_ep_running_update_matches_truncated_bptt_step_by_step():
    # GDU (Ernoult et al. 2019): synchronous schedule, converged free phase, small beta
    net, x, t = tiny()
    result = gdu(net, x, t, beta=1e-5, t_free=3000, t_nudge=12, schedule="synchronous", tol=1e-14, units=2)
    assert result.steps == list(range(1, 13))
    reached = 0
    for name in result.cosine:
        for k, (cos, rel) in enumerate(zip(result.cosine[name], result.rel_error[name])):
            if cos is None:            # BPTT truncated to k steps does not reach this tensor yet ...
                assert rel < 1e-10     # ... and neither has EP's nudge
                continue
            reached += 1
            assert cos > 0.9999 and rel < 1e-3, (name, k + 1, cos, rel)
            assert result.sign_agreement[name][k] > 0.9
        assert len(result.ep[name][-1]) == 2 and result.ep[name][-1] == pytest.approx(result.bptt[name][-1],
                                                                                      rel=1e-3)
    assert reached > len(result.cosine) * 8
    json.dumps(result.to_dict())


def test_budget_against_converged_reference_shows_a_short_budget():
    net, x, t = tiny()
    short = budget_against_converged(net, x, t, beta=0.01, t_free=4, t_nudge=3, schedule="paper",
                                     reference_steps=400, reference_window=100)
    long = budget_against_converged(net, x, t, beta=0.01, t_free=80, t_nudge=60, schedule="paper",
                                    reference_steps=400, reference_window=100)
    assert "converged" in long.verdicts["reference"]
    for variant in ("centered", "bptt"):
        assert long.min_cosine[variant] > 0.99
        assert short.min_cosine[variant] < long.min_cosine[variant]
    assert long.min_cosine["bptt"] > 0.999999   # BPTT of the converged run is the reference


def test_float32_against_float64_flags_a_beta_too_small():
    net, x, t = tiny()
    fine = precision(net, x, t, beta=0.05, t_free=150, t_nudge=80, schedule="paper")
    tiny_beta = precision(net, x, t, beta=1e-6, t_free=150, t_nudge=80, schedule="paper")
    assert fine.min_cosine["centered"] > 0.999
    assert tiny_beta.min_cosine["centered"] < 0.9
    assert net.dtype == torch.float64                      # the network is left as it was
    assert set(fine.parameters) == {n for n, _ in net.named_parameters()}
