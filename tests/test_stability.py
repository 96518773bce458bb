import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from explorer import HopfieldNetwork, hopfield_family
from explorer.checkpoint import save_checkpoint
from explorer.cli import main
from explorer.dynamics import SCHEDULES, relax, schedule_groups, step
from explorer.record import RecordConfig
from explorer.stability import dominant_eigenvalue, explain, observed_rate, spectrum, stability


def tiny(depth=3, width=3, alpha=0.5, gain=None, seed=0, batch=2):
    spec = hopfield_family(depth, input_shape=(1, 6, 6), width=width, n_classes=4, alpha=alpha, gains=gain)
    net = HopfieldNetwork(spec, seed=seed, dtype=torch.float64)
    x = torch.rand(batch, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return net, x


def fixed_point(net, x):
    """Every schedule (omega 1) has the same fixed points; descent_safe reaches them surely."""
    free = relax(net, x, steps=5000, schedule="descent_safe", tol=1e-14)
    assert free.verdict.converged, free.verdict.message
    return free.state


def dense_eigen(net, x, state, schedule):
    """Per sample: the eigenvalues of the dense Jacobian of one step (autograd through
    dynamics.step) and the per-layer squared norms of the dominant eigenvector."""
    groups, names = schedule_groups(net.spec, schedule), net.layer_names
    shapes = [net.spec.shape_of(n) for n in names]
    sizes = [torch.Size(s).numel() for s in shapes]
    out = []
    for b in range(x.shape[0]):
        def one_step(v):
            s = {n: t.reshape(1, *shape) for n, t, shape in zip(names, v.split(sizes), shapes)}
            s["s0"] = x[b:b + 1]
            new = step(net, s, groups)
            return torch.cat([new[n].reshape(-1) for n in names])
        flat = torch.cat([state[n][b].reshape(-1) for n in names])
        vals, vecs = torch.linalg.eig(torch.autograd.functional.jacobian(one_step, flat))
        k = int(vals.abs().argmax())
        weight = vecs[:, k].abs().pow(2)
        shares = {n: float(p.sum() / weight.sum()) for n, p in zip(names, weight.split(sizes))}
        out.append((vals, shares))
    return out


CASES = {   # (depth, width, alpha, gain): depth 4 makes the paper schedule differ from descent_safe
    "clipped at 0 and alpha": (3, 3, 0.5, None),
    "depth 4, coupled evens": (4, 2, 1.0, 1.2),
}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_spectral_radius_equals_the_dense_jacobian(case, schedule):
    depth, width, alpha, gain = CASES[case]
    net, x = tiny(depth, width, alpha, gain)
    state = fixed_point(net, x)
    hidden = [n for n in net.layer_names if n != "y"]
    assert any(bool((state[n] == 0).any()) for n in hidden)            # some units clipped at 0 ...
    if case == "clipped at 0 and alpha":
        assert any(bool((state[n] == alpha).any()) for n in hidden)    # ... and some at alpha
    got = spectrum(net, x, state, schedule=schedule)
    for b, (vals, shares) in enumerate(dense_eigen(net, x, state, schedule)):
        rho = float(vals.abs().max())
        assert abs(got.spectral_radius[b] - rho) < 1e-3, (b, got.spectral_radius[b], rho)
        top = vals.abs().sort(descending=True).values
        if float(top[0] - top[1]) > 1e-2:   # a unique dominant direction: its layer shares agree
            for n in net.layer_names:
                assert abs(got.layer_share[b][n] - shares[n]) < 1e-2, (n, got.layer_share[b], shares)
        assert abs(sum(got.layer_share[b].values()) - 1) < 1e-9


def test_a_samples_spectrum_in_a_batch_is_the_one_it_gets_alone():
    # each sample starts from the same noise and stops at its own converged Ritz test. (Short of the
    # fixed point: there the step's own move, the Krylov start, is rounding noise of the batch's sums.)
    net, x = tiny(4, 2, 1.0, 1.2)
    state = relax(net, x, steps=25).state
    both = spectrum(net, x, state)
    for b in range(x.shape[0]):
        alone = spectrum(net, x[b:b + 1], {n: v[b:b + 1] for n, v in state.items()})
        assert both.spectral_radius[b] == pytest.approx(alone.spectral_radius[0], rel=1e-9)
        assert both.residual[b] == pytest.approx(alone.residual[0], rel=1e-6, abs=1e-12)


def test_the_explicit_jacobian_equals_forward_autograd_through_step():
    net, x = tiny(4, 2, 1.0, 1.2)
    state = fixed_point(net, x)
    for schedule in SCHEDULES:
        a = spectrum(net, x, state, schedule=schedule, method="linear", rtol=1e-8, krylov=60)
        b = spectrum(net, x, state, schedule=schedule, method="jvp", rtol=1e-8, krylov=60)
        assert a.spectral_radius == pytest.approx(b.spectral_radius, abs=1e-9)


def test_arnoldi_finds_a_complex_dominant_pair_that_power_iteration_circles():
    gen = torch.Generator().manual_seed(3)
    n, mats = 40, []
    for angle in (0.7, 2.0):   # the dominant pair 0.95 exp(+-i angle), the rest at most 0.8
        block = torch.zeros(n, n, dtype=torch.float64)   # block upper triangular: eigenvalues by design
        c, s = 0.95 * torch.cos(torch.tensor(angle)), 0.95 * torch.sin(torch.tensor(angle))
        block[:2, :2] = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
        block[2:, 2:] = torch.diag(torch.linspace(-0.8, 0.8, n - 2, dtype=torch.float64)) \
            + 0.3 * torch.triu(torch.randn(n - 2, n - 2, generator=gen, dtype=torch.float64), 1)
        block[:2, 2:] = 0.3 * torch.randn(2, n - 2, generator=gen, dtype=torch.float64)
        q = torch.randn(n, n, generator=gen, dtype=torch.float64)   # non-orthogonal: not normal
        mats.append(q @ block @ torch.linalg.inv(q))
    a = torch.stack(mats)
    v0 = torch.randn(2, n, generator=gen, dtype=torch.float64)
    theta, u, residual, matvecs = dominant_eigenvalue(lambda v, rows: torch.bmm(a[rows], v.unsqueeze(2)).squeeze(2), v0,
                                                      rtol=1e-8)
    for b in range(2):
        rho = float(torch.linalg.eigvals(a[b]).abs().max())
        assert abs(float(theta[b].abs()) - rho) < 1e-6
        assert abs(float(theta[b].imag)) > 0.1                       # the pair, not a real eigenvalue
        resid = torch.linalg.vector_norm(a[b].to(u.dtype) @ u[b] - theta[b] * u[b])
        assert float(resid) < 1e-6
    # power iteration's successive ratios wander instead of settling on 0.95
    v = v0[0]
    ratios = []
    for _ in range(200):
        w = a[0] @ v
        ratios.append(float(w.norm() / v.norm()))
        v = w / w.norm()
    assert max(ratios[-20:]) - min(ratios[-20:]) > 0.05


def test_observed_rate_takes_the_tail_above_rounding_noise():
    t = torch.arange(60, dtype=torch.float32)
    clean = 0.5 ** t
    noisy = torch.where(clean > 1e-6, clean, 3e-8 * (1 + 0.5 * torch.sin(t)))  # float32 noise floor
    trace = torch.stack([clean, noisy, torch.full_like(t, 0.0)], 1)            # [steps, batch]
    rates = observed_rate(trace, last=10)
    assert rates[0] == pytest.approx(0.5, rel=1e-4)
    assert rates[1] == pytest.approx(0.5, rel=1e-4)
    assert rates[2] is None
    per_layer = torch.stack([trace, 0.1 * trace], 1)                             # [steps, layers, batch]
    assert observed_rate(per_layer, last=10)[0] == pytest.approx(0.5, rel=1e-4)


def test_observed_rate_of_a_relaxation_matches_its_spectral_radius():
    net, x = tiny(4, 2, 1.0, 1.2)
    for schedule in ("paper", "descent_safe"):
        result = stability(net, x, schedule=schedule, steps=120)
        for rho, rate in zip(result.spectral_radius, result.observed_rate):
            assert rho < 1 and rate == pytest.approx(rho, abs=2e-2), (schedule, rho, rate)
        assert "converges at rate" in result.explanation
        assert result.dominant_layer[0] in net.layer_names


def test_a_step_that_amplifies_reports_rho_at_least_one():
    # All units active (positive biases, alpha far away) and a high gain: one synchronous step
    # is the coupling itself, whose spectral radius exceeds 1; relaxing from there cannot converge.
    spec = hopfield_family(4, input_shape=(1, 6, 6), width=2, n_classes=4, alpha=1e6, gains=3.0)
    net = HopfieldNetwork(spec, seed=0, dtype=torch.float64)
    with torch.no_grad():
        for b in net.biases.values():
            b.fill_(0.5)
    x = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    start = net.zero_state(1)
    got = spectrum(net, x, start, schedule="synchronous")
    (vals, _), = dense_eigen(net, x, start, "synchronous")
    assert got.spectral_radius[0] == pytest.approx(float(vals.abs().max()), abs=1e-3)
    assert got.spectral_radius[0] >= 1.0
    free = relax(net, x, steps=30, schedule="synchronous", state=start, record=RecordConfig(units=0))
    assert not free.verdict.converged
    dominant = [max(got.layer_share[0], key=got.layer_share[0].get)]
    line = explain(got.spectral_radius, [None], "synchronous", dominant, got.layer_share)
    assert "cannot converge" in line and dominant[0] in line


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def test_cli_stability_reads_inputs_from_safetensors(tmp_path, capsys):
    net, _ = tiny(3, 2, 6.0)
    stem = save_checkpoint(net, tmp_path / "net")
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    save_file({"x": x}, str(tmp_path / "in.safetensors"))
    assert main(["stability", "--checkpoint", str(stem), "--input", str(tmp_path / "in.safetensors"),
                 "--schedule", "synchronous", "--steps", "60", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["spectral_radius"]) == 3 and len(out["observed_rate"]) == 3
    assert out["schedule"] == "synchronous"
    direct = spectrum(net.float(), x, relax(net.float(), x, steps=60, schedule="synchronous").state,
                      schedule="synchronous")
    assert out["spectral_radius"] == pytest.approx(direct.spectral_radius, abs=1e-4)
    # relax takes the same file: its record has the file's batch
    assert main(["relax", "--checkpoint", str(stem), "--input", str(tmp_path / "in.safetensors"),
                 "--t-free", "3", "--json", "--per-sample"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["phases"][0]["records"][-1]["energy"]["phi"]) == 3


def test_cli_stability_prints_a_table_for_a_builder(capsys):
    assert main(["stability", "--builder", "plain", "--depth", "2", "--width", "2", "--input-shape", "1,6,6",
                 "--batch", "2", "--steps", "30"]) == 0
    text = capsys.readouterr().out
    assert "spectral radius" in text and "observed rate" in text and "rho = " in text


def test_cli_bad_input_files_give_one_clear_line(tmp_path, capsys):
    save_file({"x": torch.rand(2, 1, 5, 5)}, str(tmp_path / "shape.safetensors"))
    save_file({"images": torch.rand(2, 1, 6, 6)}, str(tmp_path / "name.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    common = ["--builder", "resnet", "--depth", "2", "--width", "2", "--input-shape", "1,6,6"]
    for name, expect in (("shape", "expects [batch, 1, 6, 6]"), ("name", "no tensor 'x'"),
                         ("junk", "not a readable safetensors"), ("missing", "does not exist")):
        for command in ("stability", "relax"):
            assert main([command, *common, "--input", str(tmp_path / f"{name}.safetensors")]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and expect in err and len(err.strip().splitlines()) == 1, err
    proc = subprocess.run([sys.executable, "-m", "explorer", "stability", *common, "--input",
                           str(tmp_path / "junk.safetensors")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_restarted_arnoldi_with_a_real_spectrum_in_float32():
    gen = torch.Generator().manual_seed(4)
    n = 30
    q = torch.randn(n, n, generator=gen, dtype=torch.float64) + 3 * torch.eye(n, dtype=torch.float64)
    a = (q @ torch.diag(torch.linspace(-0.5, 0.9, n, dtype=torch.float64)) @ torch.linalg.inv(q)).float()
    v0 = torch.randn(1, n, generator=gen)
    theta, u, residual, matvecs = dominant_eigenvalue(lambda v, rows: v @ a.t(), v0, krylov=5, restarts=40, rtol=1e-4)
    assert matvecs > 5                         # one Krylov space of 5 was not enough: it restarted
    assert float(theta[0].real) == pytest.approx(0.9, abs=1e-3) and abs(float(theta[0].imag)) < 1e-6


def test_samples_that_finish_or_restart_at_different_steps_get_their_alone_result():
    # operators whose dominant eigenvalue separates fast or slowly: some samples stop at the first Ritz
    # test, others restart (krylov 5), so the live rows thin out unevenly (runs of rows, a kept basis
    # buffer holding another call's vectors); each must get exactly what it gets alone
    gen = torch.Generator().manual_seed(5)
    n, mats = 30, []
    for top in (0.9, 0.5, 0.95, 0.3, 0.92, 0.6, 0.97):
        q = torch.randn(n, n, generator=gen, dtype=torch.float64) + 3 * torch.eye(n, dtype=torch.float64)
        eig = torch.linspace(-0.5, 0.85 * top, n, dtype=torch.float64)
        eig[-1] = top
        mats.append(q @ torch.diag(eig) @ torch.linalg.inv(q))
    a = torch.stack(mats)
    v0 = torch.randn(len(mats), n, generator=gen, dtype=torch.float64)
    used = []

    def matvec(v, rows):
        used.append(rows.tolist())
        return torch.bmm(a[rows], v.unsqueeze(2)).squeeze(2)
    theta, u, residual, matvecs = dominant_eigenvalue(matvec, v0, krylov=5, restarts=40, rtol=1e-6)
    assert matvecs > 5 and len(used[-1]) < len(mats) and len(set(map(len, used))) > 2   # restarts, rows thinned
    for b in range(len(mats)):
        one = dominant_eigenvalue(lambda v, rows: torch.bmm(a[b:b + 1], v.unsqueeze(2)).squeeze(2), v0[b:b + 1],
                                  krylov=5, restarts=40, rtol=1e-6)
        assert complex(theta[b]) == pytest.approx(complex(one[0][0]), rel=1e-12)
        assert float(residual[b]) == pytest.approx(float(one[2][0]), rel=1e-5)   # a small difference: its last bits
        # an eigenvector is defined up to a unit factor (its sign flipped with the thread count): align it
        phase = torch.vdot(one[1][0], u[b])
        assert torch.allclose(u[b], one[1][0] * phase / phase.abs(), rtol=1e-8, atol=1e-10)
        assert float(theta[b].abs()) == pytest.approx(float(torch.linalg.eigvals(a[b]).abs().max()), abs=1e-4)


def test_an_estimate_asked_to_stop_ends_before_its_next_jacobian_product():
    """The page's worker passes "my run was replaced" as should_stop: the estimate ends there
    (the next run starts at once), and a should_stop that stays false changes nothing."""
    from explorer.app.worker import fixed_point_stability
    from explorer.stability import EstimateStopped
    net, x = tiny(*CASES[next(iter(CASES))])
    state = fixed_point(net, x)
    asked = []
    def stop_at_third():
        asked.append(1)
        return len(asked) >= 3
    with pytest.raises(EstimateStopped):
        spectrum(net, x, state, schedule="paper", should_stop=stop_at_third)
    assert len(asked) == 3
    alone = spectrum(net, x, state, schedule="paper")
    assert spectrum(net, x, state, schedule="paper", should_stop=lambda: False).spectral_radius == alone.spectral_radius

    class Request:   # what the worker hands fixed_point_stability
        pass
    req = Request()
    req.net, req.x, req.schedule = net, x, "paper"
    free = relax(net, x, steps=30, schedule="paper")
    assert fixed_point_stability(req, free, should_stop=lambda: True) is None
    assert fixed_point_stability(req, free)["spectral_radius"] > 0
