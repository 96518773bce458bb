"""The fused CPU kernels (explorer.native) against the eager tensor code they replace on the CPU."""
import itertools

import pytest
import torch

from explorer import HopfieldNetwork, RecordConfig, hopfield_family, native, relax
from explorer.record import STAT_INDEX


def test_the_kernels_build_here():
    # CI machines have g++ and Python's headers: a failed build must fail here, not fall back silently.
    assert native.get(block=True) is not None, native.status()
    assert native.status() == "fused CPU kernels"


def _net(residual, cost, dtype, depth=5, seed=3):
    spec = hopfield_family(depth, input_shape=(1, 12, 12), width=3, n_classes=6, residual=residual, cost=cost,
                           alpha=2.0)
    return HopfieldNetwork(spec, seed=seed, dtype=dtype)


def _close(a, b, dtype):
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


CASES = list(itertools.product(["paper", "descent_safe", "synchronous"], [True, False], ["mse", "cross_entropy"],
                               [1, 4], [1.0, 1.6]))


@pytest.mark.parametrize("schedule,residual,cost,batch,omega", CASES)
def test_fused_step_records_what_the_eager_step_records(schedule, residual, cost, batch, omega):
    dtype = torch.float64
    net = _net(residual, cost, dtype)
    gen = torch.Generator().manual_seed(batch)
    x = torch.rand(batch, 1, 12, 12, generator=gen, dtype=dtype)
    target = torch.randint(0, 6, (batch,), generator=gen)
    rec = RecordConfig(units=3, state_layers=("s2",))
    runs = {}
    for fused in (False, True):
        free = relax(net, x, steps=12, schedule=schedule, record=rec, omega=omega, fused=fused)
        nudged = relax(net, x, steps=6, beta=0.3, target=target, state=free.state, free_state=free.state,
                       state_phi=free.phi, schedule=schedule, record=rec, omega=omega, fused=fused)
        runs[fused] = (free, nudged)
    for eager, fused in zip(runs[False], runs[True]):
        assert eager.verdict.to_dict() == fused.verdict.to_dict()
        assert len(eager.records) == len(fused.records) == eager.steps + 1
        for n in net.layer_names:
            _close(eager.state[n], fused.state[n], dtype)
        for a, b in zip(eager.records, fused.records):
            # a layer driven to exactly zero has step_size delta / 1e-12: compare where the state is not zero
            live = a.stat("activity").abs() > 1e-9
            _close(a.stats[:, STAT_INDEX["step_size"]][live], b.stats[:, STAT_INDEX["step_size"]][live], dtype)
            other = [i for name, i in STAT_INDEX.items() if name != "step_size"]
            _close(a.stats[:, other], b.stats[:, other], dtype)
            _close(a.energy, b.energy, dtype)
            _close(a.units, b.units, dtype)
            assert a.states.keys() == b.states.keys()
            for k in a.states:
                _close(a.states[k], b.states[k], dtype)


def test_fused_float32_and_channels_last_states_agree_with_eager():
    net = _net(True, "mse", torch.float32, depth=6)
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    eager = relax(net, x, steps=15, record=RecordConfig(), fused=False)
    fused = relax(net, x, steps=15, record=RecordConfig(), fused=True)
    assert fused.state["s1"].is_contiguous(memory_format=torch.channels_last)   # layout kept across steps
    for n in net.layer_names:
        torch.testing.assert_close(eager.state[n], fused.state[n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eager.series("phi"), fused.series("phi"), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eager.series("residual_share"), fused.series("residual_share"), rtol=1e-4, atol=1e-5)


def test_recording_does_not_change_the_fused_dynamics():
    net = _net(True, "mse", torch.float32)
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    bare = relax(net, x, steps=10, fused=True)
    tol = relax(net, x, steps=10, tol=1e-12, fused=True)
    full = relax(net, x, steps=10, record=RecordConfig(), fused=True)
    for n in net.layer_names:   # bit for bit: the update is the same sum at every recording level
        assert torch.equal(bare.state[n], full.state[n]) and torch.equal(bare.state[n], tol.state[n])


def test_non_finite_values_give_the_same_verdict_fused_and_eager():
    net = _net(True, "mse", torch.float32)
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    start = net.zero_state(2)
    start["s3"] = start["s3"].clone()
    start["s3"][0, 0, 0, 0] = float("nan")
    out = [relax(net, x, steps=5, state=start, record=RecordConfig(), fused=f) for f in (False, True)]
    assert out[0].verdict.status == out[1].verdict.status == "non_finite"
    assert out[0].verdict.message == out[1].verdict.message


def test_fused_is_refused_where_it_cannot_run(monkeypatch):
    net = _net(True, "mse", torch.float32)
    x = torch.rand(1, 1, 12, 12)
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_tried", True)
    monkeypatch.setattr(native, "_error", "RuntimeError: no compiler")
    with pytest.raises(ValueError, match="fused kernels requested, but they are unavailable"):
        relax(net, x, steps=2, fused=True)
    result = relax(net, x, steps=3, record=RecordConfig())   # auto: the eager code, same record
    assert len(result.records) == 4 and native.status().startswith("eager tensor code")


def test_the_output_layer_reports_no_fractions_at_zero_or_alpha_on_either_path():
    # y is unboxed: "at 0" and "at alpha" do not apply to it, even when its values pass alpha.
    net = _net(True, "mse", torch.float64)
    with torch.no_grad():
        net.biases["y"].fill_(5.0)     # above alpha = 2
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for fused in (False, True):
        result = relax(net, x, steps=5, record=RecordConfig(), fused=fused)
        assert float(result.state["y"].min()) > net.alpha
        for name in ("frac_zero", "frac_alpha"):
            assert float(result.series(name, "y").abs().max()) == 0.0, (fused, name)
