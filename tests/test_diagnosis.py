"""The per-sample verdict: failure classes on networks built to fail that way (issue 16)."""
import math

import pytest
import torch

from explorer import HopfieldNetwork, RecordConfig, hopfield_family, relax
from explorer.diagnosis import classify, diagnose, diagnose_all, observed_rate, with_spectral_radius
from explorer.ep import run_phases
from explorer.zoo import list_entries


def strong_skips(gain, depth=6):
    gains = {f"s{k-2}_s{k}": gain for k in range(2, depth + 1, 2)}
    spec = hopfield_family(depth, input_shape=(1, 8, 8), width=4, n_classes=5, residual=True, gains=gains)
    return HopfieldNetwork(spec, seed=0, dtype=torch.float64)


def inputs(batch=2, seed=0):
    return torch.rand(batch, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_synchronous_schedule_at_high_gain_oscillates_with_a_period():
    result = relax(strong_skips(3.0), inputs(), steps=80, schedule="synchronous", record=RecordConfig())
    d = diagnose(result, 1e-4, sample=1)
    assert d.kind == "oscillating" and d.period == 2 and d.cycle_since < 80
    assert "period-2 cycle" in d.message() and "cannot converge" in d.message()
    # the other sample of the same batch settles: the verdict is per sample
    assert diagnose(result, 1e-4, sample=0).kind == "converged"


def test_stalled_phase_predicts_the_steps_it_still_needs():
    net, x = strong_skips(1.0), inputs()
    short = relax(net, x, steps=80, schedule="paper", record=RecordConfig())
    d = diagnose(short, 1e-4, sample=0)
    assert d.kind == "stalled" and 0 < d.rate < 1 and d.steps_needed > 0
    assert f"needs about {d.steps_needed} more steps" in d.message()
    longer = relax(net, x, steps=80 + 2 * d.steps_needed, schedule="paper", record=RecordConfig())
    assert diagnose(longer, 1e-4, sample=0).kind == "converged"


def test_large_beta_runs_away_and_the_verdict_names_the_layer():
    # beta 0.99: the -beta phase's output minimiser divides by 1 - beta = 0.01 (y in the thousands)
    from explorer.app.state import load_app_samples
    net, samples = _zoo("fmnist-resnet3w16-ep"), load_app_samples()
    phases = run_phases(net, samples.normalised(0), samples.labels[:1], beta=0.99, t_free=60, t_nudge=30,
                        record=RecordConfig())
    d = diagnose(phases.minus, 1e-4)
    assert d.kind == "diverged" and d.growth > 100 and d.runaway_layer == "y"
    assert "diverged: |F| grew" in d.message() and "y runs away" in d.message()
    assert diagnose(phases.plus, 1e-4).kind == "converged"


def test_converged_names_the_first_step_the_tolerance_was_met_and_the_slowest_layer():
    result = relax(strong_skips(1.0), inputs(1), steps=150, schedule="descent_safe", record=RecordConfig())
    d = diagnose(result, 1e-4)
    r = result.series("step_size")[:, :, 0]         # [T+1, L], the plotted measure
    first = next(t for t in range(1, r.shape[0]) if float(r[t].max()) < 1e-4)
    assert d.kind == "converged" and d.met_at == first
    assert d.slowest_layer == result.records[0].layers[int(r[-1].argmax())]
    assert d.slowest_final == pytest.approx(float(r[-1].max()))


def _zoo(name):
    entry = next((e for e in list_entries() if e.name == name), None)
    if entry is None:
        pytest.fail(f"zoo model {name} is missing")
    return entry.load()[0]


def test_nudged_measure_is_defined_for_layers_the_nudge_does_not_reach():
    # fmnist-plain7-ep: s7 is silent, so the nudge never reaches the layers below it; the engine's
    # batch rule divides their step by their (near-zero) displacement from s*.
    from explorer.app.state import load_app_samples
    net = _zoo("fmnist-plain7-ep")
    samples = load_app_samples()
    phases = run_phases(net, samples.normalised(0), samples.labels[:1], beta=0.15, t_free=120, t_nudge=50,
                        record=RecordConfig())
    for phase in phases.phases:
        d = diagnose(phase, 1e-4)
        assert math.isfinite(d.final) and d.kind == "converged", d.message()
    assert any(n["kind"] == "silent" and n["layer"] == "s7" for n in diagnose(phases.free, 1e-4).notes)


def test_deep_plain_network_goes_silent_and_the_verdict_says_which_layers():
    spec = hopfield_family(9, input_shape=(1, 12, 12), width=4, n_classes=5, residual=False, gains=0.3)
    net = HopfieldNetwork(spec, seed=0)
    with torch.no_grad():   # inhibited layers: the weak drive of a deep plain stack no longer gets through
        for name, bias in net.biases.items():
            if name != "y":
                bias.fill_(-0.05)
    d = diagnose(relax(net, torch.rand(1, 1, 12, 12), steps=30, record=RecordConfig()), 1e-4)
    silent = [n["layer"] for n in d.notes if n["kind"] == "silent"]
    assert silent and "s1" not in silent and "s9" in silent
    assert "no signal passes" in d.message() and silent[0] in d.message()


def test_classify_on_hand_made_traces():
    layers = ("s1", "y")
    geometric = torch.tensor([[0.0, 0.0]] + [[0.5 ** t, 0.1 * 0.5 ** t] for t in range(1, 11)]).numpy()
    d = classify(geometric, layers, 1e-6)
    assert d.kind == "stalled" and d.rate == pytest.approx(0.5) and d.slowest_layer == "s1"
    assert d.steps_needed == math.ceil(math.log(1e-6 / 0.5 ** 10) / math.log(0.5))
    assert observed_rate([0.0, 0.0, 0.0]) == 0.0
    flat = torch.full((30, 2), 0.3).numpy()
    assert classify(flat, layers, 1e-4).kind == "not_converged"
    nan = geometric.copy()
    nan[-1, 0] = float("nan")
    assert classify(nan, layers, 1e-4).kind == "non_finite"
    assert classify(geometric[:1], layers, 1e-4).kind == "no_steps"


def test_every_sample_gets_its_own_diagnosis():
    result = relax(strong_skips(3.0), inputs(), steps=80, schedule="synchronous", record=RecordConfig())
    kinds = [d.kind for d in diagnose_all(result, 1e-4)]
    assert kinds == ["converged", "oscillating"]
    assert diagnose_all(result, 1e-4)[1].to_dict()["kind"] == "oscillating"


def test_a_stalled_verdict_told_rho_at_least_one_does_not_promise_steps():
    # fmnist-plain7-bp-bn: "stalled ... needs about 5311 more steps" beside "ρ = 1.02, cannot converge".
    geometric = torch.tensor([[0.0, 0.0]] + [[0.9 ** t, 0.1] for t in range(1, 21)]).numpy()
    d = classify(geometric, ("s1", "y"), 1e-6).to_dict()
    assert d["kind"] == "stalled" and "more steps" in d["message"]
    told = with_spectral_radius(d, 1.02)
    assert told["kind"] == "stalled" and told["spectral_radius"] == 1.02
    assert "more steps" not in told["message"] and "ρ = 1.020" in told["message"]
    assert "cannot converge" in told["message"] and "observed rate 0.900" in told["message"]
    below = with_spectral_radius(d, 0.95)   # ρ < 1 agrees with the promise: it stays
    assert f"needs about {d['steps_needed']} more steps" in below["message"]
    assert "rho" not in told["message"] and "rho" not in classify(torch.full((30, 2), 0.3).numpy(),
                                                                  ("s1", "y"), 1e-4).message()
    slow = classify(torch.tensor([[0.0]] + [[0.9998 ** t] for t in range(1, 21)]).numpy(), ("s1",), 1e-6)
    assert slow.kind == "stalled" and "observed rate 0.999800 a step" in slow.message()
