"""Scans and sweeps (issue 17): batched verdicts equal single-image ones; grids check their values."""
import json

import pytest
import torch

from explorer import HopfieldNetwork, RecordConfig, hopfield_family
from explorer.diagnosis import diagnose
from explorer.dynamics import relax
from explorer.ep import run_phases
from explorer.scan import ScanSettings, scan, scan_batch
from explorer.sweep import Base, GridError, grid_cells, parse_grid, sweep
from processes import cli, finished


def tiny(depth=3, residual=True, seed=0):
    spec = hopfield_family(depth, input_shape=(1, 8, 8), width=3, n_classes=4, residual=residual)
    return HopfieldNetwork(spec, seed=seed)


def images(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def single_image_verdicts(net, x, labels, s: ScanSettings):
    out = []
    for i in range(len(labels)):
        ph = run_phases(net, x[i:i + 1], labels[i:i + 1], beta=s.beta, t_free=s.t_free, t_nudge=s.t_nudge,
                        schedule=s.schedule, record=RecordConfig(units=0))
        out.append({p.phase: (d.kind, d.met_at) for p in ph.phases for d in [diagnose(p, s.tol)]} |
                   {"prediction": int(ph.free.state["y"].argmax(1))})
    return out


def test_a_batched_scan_gives_each_image_the_verdict_it_gets_alone():
    net, (x, labels) = tiny(), images()
    s = ScanSettings(beta=0.2, t_free=60, t_nudge=20, schedule="paper", tol=1e-4, stop_at_tol=False)
    result = scan(net, x, labels, s, batch_size=4)          # two batches: 4 + 2 images
    alone = single_image_verdicts(net, x, labels, s)
    assert [o.index for o in result.outcomes] == list(range(6))
    for o, ref in zip(result.outcomes, alone):
        assert {p: (d["kind"], d["met_at"]) for p, d in o.phases.items()} | {"prediction": o.prediction} == ref
    summary = result.summary()
    from explorer.stability import spectrum
    free = run_phases(net, x[:1], labels[:1], beta=s.beta, t_free=s.t_free, t_nudge=1, schedule=s.schedule).free
    assert result.outcomes[0].spectral_radius == pytest.approx(
        spectrum(net, x[:1], free.state, schedule=s.schedule).spectral_radius[0], rel=1e-3)
    assert len(summary["spectral_radius"]["values"]) == 6
    assert summary["images"] == 6 and set(summary["fraction_converged"]) == {"free", "nudged+", "nudged-"}
    assert summary["accuracy"] == sum(o.prediction == o.label for o in result.outcomes) / 6


def test_stop_at_tol_ends_a_phase_once_every_image_is_under_tol_and_keeps_the_first_steps():
    net, (x, labels) = tiny(), images(4)
    full = scan(net, x, labels, ScanSettings(t_free=200, stop_at_tol=False))
    early = scan(net, x, labels, ScanSettings(t_free=200, stop_at_tol=True))
    assert early.steps_run["free"] < full.steps_run["free"]
    for a, b in zip(early.outcomes, full.outcomes):
        assert a.phases["free"]["kind"] == b.phases["free"]["kind"] == "converged"
        assert a.phases["free"]["met_at"] == b.phases["free"]["met_at"]


def alone_to_tol(net, x, labels, s: ScanSettings):
    """Each image alone through the public ``relax``: a phase is run once to find its first step under
    tol (the plotted measure), then again for exactly that many steps; the next phase starts there."""
    out = []
    for i in range(len(labels)):
        xi, li, verdict = x[i:i + 1], labels[i:i + 1], {}
        for phase, beta, steps in (("free", 0.0, s.t_free), ("nudged+", s.beta, s.t_nudge),
                                   ("nudged-", -s.beta, s.t_nudge)):
            common = dict(beta=beta, target=li, schedule=s.schedule, phase=phase, record=RecordConfig(units=0))
            if phase != "free":
                common.update(state=free.state, free_state=free.state, state_phi=free.phi)
            met = diagnose(relax(net, xi, steps=steps, **common), s.tol).met_at
            ran = relax(net, xi, steps=met or steps, **common)
            d = diagnose(ran, s.tol)
            verdict[phase] = (d.kind, d.met_at, d.steps, [n["kind"] for n in d.notes])
            if phase == "free":
                free, verdict["prediction"] = ran, int(ran.state["y"].argmax(1))
        out.append(verdict)
    return out


def test_each_image_stops_at_tol_and_its_nudged_phases_start_where_it_stopped_as_alone():
    net, (x, labels) = tiny(depth=4).double(), images(5)
    x = x.double() * torch.tensor([1.0, 3.0, 0.3, 1.0, 2.0], dtype=torch.float64)[:, None, None, None]
    s = ScanSettings(beta=0.3, t_free=80, t_nudge=30, tol=1e-6, stop_at_tol=True, stability=False)
    outcomes, steps = scan_batch(net, x, labels, s)
    alone = alone_to_tol(net, x, labels, s)
    got = [{p: (d["kind"], d["met_at"], d["steps"], [n["kind"] for n in d["notes"]]) for p, d in o.phases.items()}
           | {"prediction": o.prediction} for o in outcomes]
    assert got == alone
    free_steps = [v["free"][2] for v in alone]
    assert len(set(free_steps)) > 1 and steps["free"] == max(free_steps)   # images stopped at different steps


def test_a_non_finite_image_ends_alone_and_the_others_relax_on():
    from explorer.dynamics.each import relax_each
    net, (x, labels) = tiny(), images(3)
    x[1, 0, 0, 0] = float("nan")
    each = relax_each(net, x, steps=40, tol=1e-5, target=labels)
    assert each.ended[1] == "non_finite" and each.steps[1] == 0 and each.bad_layer[1] == "s0"
    for b in (0, 2):
        alone = relax(net, x[b:b + 1], steps=40, tol=1e-5)
        assert each.ended[b] == "tol" and each.steps[b] == alone.steps
        assert torch.allclose(each.state["y"][b], alone.state["y"][0], rtol=1e-4, atol=1e-6)


def test_a_sweep_cell_equals_relax_on_the_same_images_and_settings():
    net, (x, labels) = tiny(), images(4)
    base = Base(net, "tiny")
    s = ScanSettings(beta=0.2, t_free=50, t_nudge=15, stop_at_tol=False)
    result = sweep(base, {"alpha": [1.0, 6.0]}, x, labels, s)
    assert [c["settings"]["alpha"] for c in result.cells] == [1.0, 6.0]
    for cell in result.cells:
        clipped = HopfieldNetwork(net.spec.with_alpha(cell["settings"]["alpha"]))
        clipped.load_state_dict(net.state_dict())
        alone = single_image_verdicts(clipped, x, labels, s)
        for phase in ("free", "nudged+", "nudged-"):
            expected = sum(v[phase][0] == "converged" for v in alone) / 4
            assert cell["fraction_converged"][phase] == expected
        assert cell["accuracy"] == sum(v["prediction"] == int(t) for v, t in zip(alone, labels)) / 4


def test_depth_cells_build_untrained_siblings_and_a_cancelled_grid_keeps_finished_cells():
    base = Base.untrained(depth=3, width=3, input_shape=(1, 8, 8), n_classes=4)
    x, labels = images(3)
    done = []
    result = sweep(base, {"depth": [2, 3, 4], "residual": [True]}, x, labels, ScanSettings(t_free=20, t_nudge=5),
                   on_cell=lambda c, k, n: done.append(c), should_stop=lambda: len(done) >= 2)
    assert result.cancelled and [c["settings"]["depth"] for c in result.cells] == [2, 3]


@pytest.mark.parametrize("items,words", [
    ([], "the grid is empty"),
    (["beta=0.05,2.5"], "beta = '2.5' is outside 0 to 2"),
    (["alpha=-2"], "alpha = '-2' is outside"),
    (["depth=3,x"], "depth = 'x' is not an integer"),
    (["depth=3,27"], "depth = '27' is outside 1 to 25"),
    (["schedule=gauss"], "schedule = 'gauss' is not one of"),
    (["gamma=1"], "one of alpha"),
    (["beta="], "beta has no values"),
    (["alpha=" + ",".join(str(1 + i / 10) for i in range(30)), "beta=" + ",".join(
        str(0.01 * (i + 1)) for i in range(30))], "more than 400"),
])
def test_bad_grids_name_the_value(items, words):
    with pytest.raises(GridError, match=words.replace("(", r"\(").replace(")", r"\)")):
        grid_cells(parse_grid(items))


def test_a_depth_the_trained_family_lacks_is_refused_by_name():
    from explorer.checkpoint import load_checkpoint
    from explorer.zoo import ZOO_DIR
    stem = ZOO_DIR / "fmnist-resnet3-ep"
    base = Base.checkpoint(load_checkpoint(stem)[0], stem)
    assert {(3, True), (5, True), (7, True), (3, False)} <= set(base.family)
    base.check({"depth": [3, 5, 7]})
    with pytest.raises(GridError, match="no residual network of depth 11"):
        base.check({"depth": [3, 11]})


def _in_process(capsys, *args) -> tuple[int, str, str]:
    from explorer.cli import main
    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_scan_and_sweep_print_json_and_refuse_bad_grids(tmp_path, capsys):
    net_options = ["--builder", "resnet", "--depth", "2", "--width", "3"]
    csv_file = tmp_path / "cells.csv"
    # Real processes (what a script sees), side by side; the refusals of bad values in process.
    scanning = cli("scan", *net_options, "--images", "5", "--t-free", "30", "--t-nudge", "10", "--json")
    sweeping = cli("sweep", *net_options, "--grid", "alpha=2,6", "--grid", "beta=0.1,0.3", "--images", "3",
                    "--t-free", "20", "--t-nudge", "5", "--yes", "--json", "--csv", str(csv_file))
    asking = cli("sweep", *net_options, "--grid", "alpha=2,6", "--images", "3", "--ask-above", "0")
    r = finished(scanning)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["images"]) == 5 and set(out["summary"]["fraction_converged"]) == {"free", "nudged+", "nudged-"}
    r = finished(sweeping)
    assert r.returncode == 0, r.stderr
    cells = json.loads(r.stdout)["cells"]
    assert len(cells) == 4 and all({"fraction_converged", "median_steps", "energy_rose", "accuracy",
                                    "median_spectral_radius"} <= set(c) for c in cells)
    assert len(csv_file.read_text().strip().splitlines()) == 5
    rc, _, err = _in_process(capsys, "sweep", *net_options, "--grid", "beta=0.1,1.5", "--images", "3")
    assert rc == 2 and "beta = 1.5 is not allowed here" in err and err.count("\n") == 1
    rc, _, err = _in_process(capsys, "scan", *net_options, "--beta", "3", "--images", "3")
    assert rc == 2 and "--beta 3 is outside" in err and err.count("\n") == 1
    r = finished(asking)   # a grid over the estimate, no terminal to ask at: exit 3, nothing run
    assert r.returncode == 3 and "add --yes" in r.stderr
