import itertools

import pytest
import torch

from explorer import (HopfieldNetwork, RecordConfig, SCHEDULES, hopfield_family, phi, relax,
                      schedule_groups)
from explorer.dynamics import drive, step
from explorer.record import LAYER_STATS


def strong_skips(depth=6, seed=0, alpha=6.0, residual=True):
    """A network whose skips are strong enough that Jacobi steps between coupled layers oscillate."""
    gains = {f"s{k-2}_s{k}": 3.0 for k in range(2, depth + 1, 2)}
    spec = hopfield_family(depth, input_shape=(1, 8, 8), width=4, n_classes=5, residual=residual,
                           alpha=alpha, gains=gains)
    return HopfieldNetwork(spec, seed=seed, dtype=torch.float64)


@pytest.mark.parametrize("seed,residual,alpha,fused",
                         list(itertools.product([0, 1, 5], [True, False], [1.0, 3.0, 6.0], [True, False])))
def test_phi_never_rises_under_descent_safe_schedule(seed, residual, alpha, fused):
    # fused: the compiled CPU kernels; False: the eager tensor code (the GPU's path)
    net = strong_skips(seed=seed, alpha=alpha, residual=residual)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    result = relax(net, x, steps=60, schedule="descent_safe", record=RecordConfig(), fused=fused)
    phis = result.series("phi").sum(-1)
    rises = phis[1:] - phis[:-1]
    assert float(rises.max()) <= 1e-9 * float(phis.abs().max())
    assert result.verdict.first("energy_rose") is None


def test_paper_schedule_can_raise_phi_and_the_verdict_says_so():
    # Jacobi updates of skip-coupled even layers: the failure the explorer exists to show.
    net = strong_skips(seed=0)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    paper = relax(net, x, steps=100, schedule="paper", record=RecordConfig())
    safe = relax(net, x, steps=100, schedule="descent_safe", record=RecordConfig(), tol=1e-8)
    rose = paper.verdict.first("energy_rose")
    assert rose is not None and rose.step >= 1 and "Phi rose at step" in paper.verdict.message
    assert paper.verdict.status == "not_converged"
    assert safe.verdict.status == "converged"


def test_schedules_group_layers_as_described():
    spec = hopfield_family(8, input_shape=(3, 32, 32), width=2)
    assert schedule_groups(spec, "paper") == [("s1", "s3", "s5", "s7", "y"), ("s2", "s4", "s6", "s8")]
    safe = schedule_groups(spec, "descent_safe")
    assert safe == [("s1", "s3", "s5", "s7", "y"), ("s2", "s6"), ("s4", "s8")]
    for group in safe:
        assert not any(spec.coupled(a, b) for a, b in itertools.combinations(group, 2))
    assert schedule_groups(spec, "synchronous") == [tuple(l.name for l in spec.layers)]
    odd = hopfield_family(5, width=2)   # y couples to the odd s5: it moves to the other group
    assert "y" in schedule_groups(odd, "paper")[1]
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_groups(spec, "gauss")


@pytest.mark.parametrize("schedule,fused,recorded", list(itertools.product(SCHEDULES, [True, False], [True, False])))
def test_relax_follows_the_reference_step_and_keeps_the_input_drive_intact(small_net, batch, schedule, fused,
                                                                          recorded):
    # relax computes the drive from the clamped input once per run and lets no update write
    # into it; the reference step() recomputes everything out of place each step.
    net = small_net(residual=True, alpha=2.0, depth=5)
    x, t = batch(net, n=3)
    groups = schedule_groups(net.spec, schedule)
    ref = {n: torch.zeros(3, *net.spec.shape_of(n), dtype=net.dtype) for n in net.layer_names}
    ref["s0"] = x
    for _ in range(7):
        ref = step(net, ref, groups, beta=0.0)
    got = relax(net, x, steps=7, schedule=schedule, fused=fused, record=RecordConfig() if recorded else None)
    for n in net.layer_names:
        torch.testing.assert_close(got.state[n], ref[n], rtol=1e-10, atol=1e-12)
    nudged = relax(net, x, steps=5, beta=0.2, target=t, state=got.state, free_state=got.state,
                   schedule=schedule, fused=fused, record=RecordConfig() if recorded else None)
    one_hot = torch.nn.functional.one_hot(t, net.spec.n_classes).to(net.dtype)
    for _ in range(5):
        ref = step(net, ref, groups, beta=0.2, target_1h=one_hot)
    for n in net.layer_names:
        torch.testing.assert_close(nudged.state[n], ref[n], rtol=1e-10, atol=1e-12)


def test_closed_form_drive_is_minus_the_autograd_gradient_of_phi(small_net, batch):
    """s - dPhi/ds = drive at any state, so s = sigma_alpha(drive) is the fixed point condition."""
    net = small_net(alpha=2.0)
    x, _ = batch(net, 3)
    gen = torch.Generator().manual_seed(4)
    state = {n: torch.rand(3, *net.spec.shape_of(n), generator=gen, dtype=torch.float64).requires_grad_()
             for n in net.layer_names}
    grads = torch.autograd.grad(phi(net, state, x).sum(), list(state.values()))
    full = {**{k: v.detach() for k, v in state.items()}, "s0": x}
    with torch.no_grad():
        for (name, s), g in zip(state.items(), grads):
            pre = drive(net, full, name)
            torch.testing.assert_close(pre, s.detach() - g, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_converged_state_is_a_fixed_point_of_the_clipped_drive(small_net, batch, schedule):
    net = small_net(alpha=1.0, residual=False) if schedule == "synchronous" else small_net(alpha=1.0)
    x, _ = batch(net)
    result = relax(net, x, steps=2000, schedule=schedule, tol=1e-13)
    assert result.verdict.converged, result.verdict.message
    full = {**result.state, "s0": x}
    with torch.no_grad():
        for name in net.layer_names:
            pre = drive(net, full, name)
            expected = pre if name == "y" else pre.clamp(0, net.alpha)
            torch.testing.assert_close(full[name], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_recorded_phi_equals_phi_of_the_state_it_describes(small_net, batch, schedule):
    net = small_net(alpha=1.5)
    x, t = batch(net)
    states = []
    records = []

    def keep(rec):
        records.append(rec)
    result = relax(net, x, steps=5, schedule=schedule, target=t, beta=0.3,
                   record=RecordConfig(state_layers=tuple(net.layer_names), state_samples=(0, 1, 2, 3)),
                   on_step=keep)
    assert [r.step for r in records] == list(range(6)) and records is not result.records
    for rec in records:
        state = {n: rec.states[n] for n in net.layer_names}
        expected_phi = phi(net, state, x)
        torch.testing.assert_close(rec.energy_of("phi"), expected_phi, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(rec.energy_of("F"), expected_phi + 0.3 * rec.energy_of("cost"))


def test_stops_when_the_relative_step_falls_under_tol(small_net, batch):
    net = small_net()
    x, _ = batch(net)
    result = relax(net, x, steps=500, tol=1e-6, record=RecordConfig())
    assert result.verdict.converged and result.steps < 500
    assert result.verdict.first("converged").step == result.steps
    last = result.records[-1].stat("step_size")
    assert float(last.max()) < 1e-5
    short = relax(net, x, steps=2, tol=1e-6)
    assert short.verdict.status == "not_converged" and "not converged after 2 steps" in short.verdict.message


@pytest.mark.parametrize("fused", [False, True])
def test_recording_nothing_keeps_nothing_and_gives_the_same_state(small_net, batch, fused):
    net = small_net()
    x, _ = batch(net)
    calls = []
    bare = relax(net, x, steps=20, on_step=calls.append, fused=fused)
    full = relax(net, x, steps=20, record=RecordConfig(), fused=fused)
    assert bare.records == [] and calls == []
    for n in net.layer_names:
        torch.testing.assert_close(bare.state[n], full.state[n], rtol=0, atol=0)


def test_state_recording_is_bounded_by_what_was_asked(small_net, batch):
    net = small_net()
    x, _ = batch(net, 6)
    cfg = RecordConfig(state_layers=("s2",), state_samples=(1, 4), state_every=5)
    result = relax(net, x, steps=12, record=cfg)
    with_states = [r.step for r in result.records if r.states]
    assert with_states == [0, 5, 10, 12]
    rec = result.records[5]
    assert set(rec.states) == {"s2"}
    assert rec.states["s2"].shape == (2, *net.spec.shape_of("s2"))
    assert rec.states["s2"].device.type == "cpu"


def test_layer_statistics_describe_the_state(small_net, batch):
    net = small_net(alpha=1.0)
    x, t = batch(net)
    free = relax(net, x, steps=30, record=RecordConfig(state_layers=tuple(net.layer_names),
                                                       state_samples=tuple(range(4))))
    nudged = relax(net, x, steps=10, beta=0.5, target=t, state=free.state, free_state=free.state,
                   record=RecordConfig(state_layers=tuple(net.layer_names), state_samples=tuple(range(4))))
    rec = nudged.records[-1]
    for j, n in enumerate(rec.layers):
        s = rec.states[n].flatten(1)
        torch.testing.assert_close(rec.stat("activity", n), s.mean(1))
        torch.testing.assert_close(rec.stat("nudge_distance", n), (s - free.state[n].flatten(1)).norm(dim=1))
        torch.testing.assert_close(rec.stat("nudge_per_beta", n), rec.stat("nudge_distance", n) / 0.5)
        if n != "y":
            torch.testing.assert_close(rec.stat("frac_zero", n), (s <= 0).double().mean(1))
            torch.testing.assert_close(rec.stat("frac_alpha", n), (s >= 1.0).double().mean(1))
        share = rec.stat("residual_share", n)
        assert bool(((share >= 0) & (share <= 1)).all())
        has_skip = any(e.kind == "skip" for e in net.incoming[n])
        assert bool((rec.stat("drive_skip", n) > 0).all()) == has_skip
    assert float(free.records[-1].stat("nudge_distance").abs().max()) == 0.0
    assert float(nudged.records[-1].stat("nudge_distance", "y").min()) > 0


def test_batch_samples_relax_independently(small_net, batch):
    net = small_net()
    x, _ = batch(net, 5)
    together = relax(net, x, steps=15).state
    for i in range(5):
        alone = relax(net, x[i:i + 1], steps=15).state
        for n in net.layer_names:
            torch.testing.assert_close(alone[n][0], together[n][i])


def test_saturated_and_silent_layers_are_named_in_the_verdict(small_net, batch):
    net = small_net(alpha=1.0)
    x, _ = batch(net)
    with torch.no_grad():
        net.biases["s2"].fill_(50.0)
        net.biases["s3"].fill_(-50.0)
    for record in (RecordConfig(), None):
        v = relax(net, x, steps=20, record=record).verdict
        assert v.first("saturated").layer == "s2"
        assert v.first("silent").layer == "s3"
        assert "layer s2 saturated at step" in v.message
    # The fused step hands the fraction means back only near saturation: the same findings, same steps.
    runs = [[(f.kind, f.step, f.layer) for f in relax(net, x, steps=20, record=RecordConfig(), fused=fused).verdict.findings]
            for fused in (False, True)]
    assert runs[0] == runs[1] and any(kind == "saturated" and layer == "s2" for kind, _, layer in runs[0])


def test_nan_weights_and_inputs_give_a_non_finite_verdict_not_an_exception(small_net, batch):
    net = small_net()
    x, _ = batch(net)
    bad_x = x.clone()
    bad_x[0, 0, 0, 0] = float("nan")
    v = relax(net, bad_x, steps=5, record=RecordConfig()).verdict
    assert v.status == "non_finite" and "input" in v.message
    with torch.no_grad():
        net.weights["s2_s3"][0, 0, 0, 0] = float("nan")
    v = relax(net, x, steps=5, record=RecordConfig()).verdict
    assert v.status == "non_finite" and "weights.s2_s3" in v.message


def test_diverging_values_stop_the_run_with_a_non_finite_verdict(batch):
    spec = hopfield_family(3, input_shape=(1, 8, 8), width=4, n_classes=5, alpha=1.0)
    net = HopfieldNetwork(spec, seed=0)
    x, t = batch(net)
    with torch.no_grad():
        net.weights["s3_y"].fill_(3e38)
        net.biases["y"].fill_(3e38)
    v = relax(net, x, steps=30, record=RecordConfig()).verdict
    assert v.status == "non_finite"
    assert v.first("non_finite").step is not None and v.first("non_finite").step < 30


def test_bad_arguments_raise_clear_errors(small_net, batch):
    net = small_net()
    x, t = batch(net)
    with pytest.raises(ValueError, match="needs a target"):
        relax(net, x, steps=1, beta=0.1)
    with pytest.raises(ValueError, match=r"\|beta\| must be below 1"):
        relax(net, x, steps=1, beta=1.5, target=t)
    with pytest.raises(ValueError, match="labels must lie in"):
        relax(net, x, steps=1, beta=0.1, target=t + 10)
    with pytest.raises(ValueError, match="expects"):
        relax(net, x[:, :, :4], steps=1)
    with pytest.raises(ValueError, match="start state s1"):
        relax(net, x, steps=1, state={n: torch.zeros(1) for n in net.layer_names})


def test_should_stop_cancels_a_run(small_net, batch):
    net = small_net()
    x, _ = batch(net)
    seen = []
    for fused in (False, True):
        seen = []
        result = relax(net, x, steps=100, record=RecordConfig(), on_step=lambda r: seen.append(r.step),
                       should_stop=lambda: len(seen) > 7, fused=fused)
        # the fused path hands a step's record over one step later (its energy completes then)
        assert result.verdict.status == "cancelled" and result.steps == (8 if fused else 7)
        assert seen == list(range(result.steps + 1))   # every step run was recorded, in order


def test_runs_in_float32_and_bfloat16(batch):
    spec = hopfield_family(4, input_shape=(1, 12, 12), width=4)
    for dtype in (torch.float32, torch.bfloat16):
        net = HopfieldNetwork(spec, seed=0, dtype=dtype)
        x, _ = batch(net)
        result = relax(net, x, steps=10, record=RecordConfig())
        assert result.state["y"].dtype == dtype
        assert result.verdict.status != "non_finite"


def test_the_record_exports_to_json_friendly_data(small_net, batch):
    import json
    net = small_net()
    x, _ = batch(net)
    result = relax(net, x, steps=3, record=RecordConfig())
    data = json.loads(json.dumps(result.to_dict()))
    assert data["records"][2]["layers"]["s2"].keys() >= set(LAYER_STATS)
    assert len(data["records"][1]["layers"]["s1"]["units"]) == 4
    assert data["verdict"]["status"] in ("converged", "not_converged")


def test_over_relaxation_reaches_the_same_fixed_point_and_still_descends(small_net, batch):
    net = small_net(alpha=1.0)
    x, _ = batch(net)
    plain = relax(net, x, steps=3000, schedule="descent_safe", tol=1e-13)
    fast = relax(net, x, steps=3000, schedule="descent_safe", tol=1e-13, omega=1.5, record=RecordConfig())
    assert plain.verdict.converged and fast.verdict.converged
    for n in net.layer_names:
        torch.testing.assert_close(fast.state[n], plain.state[n], rtol=1e-9, atol=1e-9)
    phis = fast.series("phi").sum(-1)
    assert float((phis[1:] - phis[:-1]).max()) <= 1e-9 * float(phis.abs().max())
    with pytest.raises(ValueError, match="omega"):
        relax(net, x, steps=1, omega=2.0)


def test_energy_rose_names_every_step_it_rose_at_as_evidence():
    net = strong_skips(seed=0)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for fused in (False, True):
        result = relax(net, x, steps=60, schedule="paper", record=RecordConfig(), fused=fused)
        f = result.series("F").sum(-1).tolist()
        rose = [t for t in range(1, len(f)) if f[t] - f[t - 1] > 1e-5 * (abs(f[t - 1]) + 1.0)]
        finding = result.verdict.first("energy_rose")
        assert len(rose) > 1 and finding.evidence == {"steps": rose} and finding.step == rose[0]
        assert finding.to_dict()["evidence"] == {"steps": rose}


def test_convergence_findings_carry_the_last_relative_step_and_the_tolerance(small_net, batch):
    net = small_net()
    x, _ = batch(net)
    early = relax(net, x, steps=500, tol=1e-6, record=RecordConfig())
    ev = early.verdict.first("converged").evidence
    assert ev["tol"] == 1e-6 and 0 < ev["relative_step"] < 1e-6
    short = relax(net, x, steps=2)
    ev = short.verdict.first("not_converged").evidence
    assert ev["tol"] == 1e-4 and ev["relative_step"] > 1e-4
    long = relax(net, x, steps=300)   # every step run, judged against the default tolerance at the end
    ev = long.verdict.first("converged").evidence
    assert ev["tol"] == 1e-4 and ev["relative_step"] < 1e-4 and "converged by step 300" in long.verdict.message


def test_a_registered_stepper_runs_relax_without_touching_the_driver(small_net, batch):
    # The way a CUDA-graph stepper would come in: one class, registered; relax picks it.
    from explorer import dynamics
    calls = []

    class Counting(dynamics.EagerStepper):
        name, label = "counting", "the counting stepper"

        def step(self, level, t, pending=None, fractions_from=0.0):
            calls.append((level, t))
            return super().step(level, t, pending, fractions_from)
    before = dict(dynamics.STEPPERS)
    dynamics.register_stepper(Counting, first=True)
    try:
        net = small_net()
        x, _ = batch(net)
        got = relax(net, x, steps=5, record=RecordConfig())
        named = relax(net, x, steps=3, stepper="counting")
    finally:
        dynamics.STEPPERS.clear()
        dynamics.STEPPERS.update(before)
    assert got.stepper == "counting" and calls[:5] == [(2, t) for t in range(1, 6)]
    assert named.stepper == "counting" and calls[5:] == [(0, 1), (0, 2), (1, 3)]
    eager = relax(net, x, steps=5, record=RecordConfig(), fused=False)
    for n in net.layer_names:
        assert torch.equal(got.state[n], eager.state[n])
    with pytest.raises(ValueError, match="unknown stepper"):
        relax(net, x, steps=1, stepper="counting")
