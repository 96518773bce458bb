"""The explorer's state, worker and views, in-process (no browser, no server).

Each test builds an ExplorerApp, changes settings as a widget would (by
setting the state's parameters), runs the worker to the end and drains it,
then checks what the views' ColumnDataSources hold.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from explorer.app import ExplorerApp, ExplorerState
from explorer.app.main import create_app
from explorer.app.state import SAMPLE_SHAPE, UNTRAINED
from explorer.checkpoint import save_checkpoint
from explorer.network import HopfieldNetwork, hopfield_family
from explorer.record import LAYER_STATS

T_FREE, T_NUDGE = 30, 12


def make_app(**settings) -> ExplorerApp:
    settings = {"t_free": T_FREE, "t_nudge": T_NUDGE, "speed": "max", **settings}
    state = ExplorerState(zoo=[], **settings)
    return ExplorerApp(state=state, autostart=False)


@pytest.fixture
def app():
    a = make_app()
    yield a
    a.shutdown("test over")


def run(app: ExplorerApp) -> None:
    app.run_until_idle(timeout=60)


def drain_until(app: ExplorerApp, condition, what: str, timeout: float = 60.0) -> None:
    """Drain until ``condition()`` holds (the timeout is only a safety net against a hang)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        app.drain()
        time.sleep(0.01)


def only(values, expected) -> bool:
    """Every value equals ``expected`` (floats compared with a tolerance)."""
    values = np.asarray(values, dtype=float)
    return len(values) > 0 and bool(np.allclose(values, expected))


def energy_rows(app):
    v = app.views["energy"]
    return {p: len(s.data["x"]) for p, s in v.phase_sources.items()}


def errors(app):
    return [text for level, text in app.messages if level == "error"]


def checkpoint_files(tmp_path, spec, name="ckpt") -> dict[str, bytes]:
    stem = save_checkpoint(HopfieldNetwork(spec, seed=3), tmp_path / name)
    return {f"{name}.json": stem.with_suffix(".json").read_bytes(),
            f"{name}.safetensors": stem.with_suffix(".safetensors").read_bytes()}


# ---------------------------------------------------------------------------
# Defaults and one full run
# ---------------------------------------------------------------------------

def test_default_model_is_the_small_untrained_resnet_when_the_zoo_is_empty(app):
    s = app.state
    assert s.model == "untrained resnet"
    net = s.base_network()
    assert net.spec.input_shape == SAMPLE_SHAPE
    assert net.spec.depth == 5 and net.spec.residual
    assert len(s.samples.labels) == 40 and s.samples.class_names[0] == "T-shirt/top"


def test_the_default_model_is_the_first_zoo_entry_with_its_own_settings(tmp_path):
    from explorer.zoo import list_entries
    spec = hopfield_family(depth=3, input_shape=SAMPLE_SHAPE, width=4, alpha=2.0)
    save_checkpoint(HopfieldNetwork(spec, seed=1), tmp_path / "demo", settings={"schedule": "descent_safe"})
    app = ExplorerApp(state=ExplorerState(zoo=list_entries(tmp_path), t_free=T_FREE, t_nudge=T_NUDGE,
                                          speed="max"))
    try:
        s = app.state
        assert s.model == "zoo: demo" and s.depth == 3 and s.alpha == pytest.approx(2.0)
        assert s.schedule == "descent_safe"
        run(app)
        assert app.run.layers == ("s1", "s2", "s3", "y") and errors(app) == []
    finally:
        app.shutdown()


def test_the_page_opens_on_an_ep_trained_zoo_model_before_a_better_scoring_bp_one(tmp_path):
    from explorer.zoo import list_entries
    spec = hopfield_family(depth=2, input_shape=SAMPLE_SHAPE, width=4)
    for name, trainer, acc in (("a-bp", "bp", 0.9), ("b-ep", "ep", 0.8)):
        stem = save_checkpoint(HopfieldNetwork(spec, seed=1), tmp_path / name)
        desc = json.loads(stem.with_suffix(".json").read_text())
        desc["card"] = {"trainer": trainer, "test_accuracy": acc}
        stem.with_suffix(".json").write_text(json.dumps(desc))
    state = ExplorerState(zoo=list_entries(tmp_path))
    assert state.model == "zoo: b-ep, 80.0 % test"
    # (a BP model's card measured a feed-forward pass: its listing says so, issue 18)
    assert state.param.model.objects[:2] == ["zoo: a-bp, 90.0 % test feed-forward (BP)", "zoo: b-ep, 80.0 % test"]


def test_the_page_opens_on_a_model_that_relaxes_live_before_a_more_accurate_heavy_one(tmp_path):
    from explorer.app.state import DEFAULT_STEP_FLOPS, step_flops
    from explorer.zoo import list_entries
    for name, width, acc in (("heavy", 64, 0.93), ("light", 4, 0.85)):
        spec = hopfield_family(depth=3, input_shape=SAMPLE_SHAPE, width=width)
        stem = save_checkpoint(HopfieldNetwork(spec, seed=1), tmp_path / name)
        desc = json.loads(stem.with_suffix(".json").read_text())
        desc["card"] = {"trainer": "ep", "test_accuracy": acc}
        stem.with_suffix(".json").write_text(json.dumps(desc))
    entries = list_entries(tmp_path)
    cost = {e.name: step_flops(e.description) for e in entries}
    assert cost["light"] <= DEFAULT_STEP_FLOPS < cost["heavy"]
    state = ExplorerState(zoo=entries)
    assert state.model == "zoo: light, 85.0 % test"
    assert "zoo: heavy, 93.0 % test" in state.param.model.objects


def test_a_zoo_entry_for_other_images_falls_back_to_the_builder_and_says_why(tmp_path):
    from explorer.zoo import list_entries
    save_checkpoint(HopfieldNetwork(hopfield_family(depth=2, input_shape=(3, 32, 32), width=4)),
                    tmp_path / "cifar")
    app = ExplorerApp(state=ExplorerState(zoo=list_entries(tmp_path), t_free=T_FREE, t_nudge=T_NUDGE,
                                          speed="max"))
    try:
        assert app.state.model == "untrained resnet"
        assert any("(3, 32, 32)" in m for m in errors(app))
        run(app)
        assert app.run.request.net.spec.input_shape == SAMPLE_SHAPE
    finally:
        app.shutdown()


def test_a_run_fills_every_view(app):
    run_id = app.restart()
    run(app)
    assert app.run.request.run_id == run_id
    # Energy: T_free + 1 free records (step 0 is the start state), T_nudge + 1 per nudged phase.
    assert energy_rows(app) == {"free": T_FREE + 1, "nudged+": T_NUDGE + 1, "nudged-": T_NUDGE + 1}
    e = app.views["energy"].phase_sources
    assert only(e["nudged+"].data["beta"], 0.15)
    assert only(e["nudged-"].data["beta"], -0.15)
    assert np.all(np.isfinite(e["free"].data["value"]))
    # Residual shares are shares: one image cell per hidden layer and step (step 0 is no step).
    residual = app.views["residual"]
    layers = app.run.hidden
    assert residual.heat.filled() == (T_FREE + 2 * T_NUDGE) * len(layers)
    by_layer = residual.shares()
    share = np.concatenate([v[np.isfinite(v)] for v in by_layer.values()])
    assert np.all((share >= 0) & (share <= 1))
    bars = residual.bars.data
    split = np.asarray(bars["direct"]) + np.asarray(bars["skip"]) + np.asarray(bars["feedback"])
    assert np.allclose(split, 1.0)
    # Even layers receive a skip, odd layers do not.
    assert np.nanmax(by_layer["s2"]) > 0 and np.nanmax(by_layer["s1"]) == 0
    # Trajectories: one row per record plus a NaN break before each nudged phase.
    traj = app.views["trajectories"].source.data
    assert len(traj["x"]) == T_FREE + 1 + 2 * (T_NUDGE + 1) + 2
    for stat in ("activity", "step_size", "frac_zero", "frac_alpha"):
        assert f"{stat}__s1" in traj
    frac = np.asarray(traj["frac_alpha__s3"], dtype=float)
    assert np.all((frac[np.isfinite(frac)] >= 0) & (frac[np.isfinite(frac)] <= 1))
    # Nudged versus free: heat maps only for the nudged phases, feature maps drawn.
    nudge = app.views["nudge"]
    n_layers = len(app.run.layers)
    for phase in ("nudged+", "nudged-"):
        dist = nudge.distances(phase)
        assert set(dist) == set(app.run.layers)
        assert all(np.isfinite(d[1:]).all() and np.isnan(d[0]) for d in dist.values())   # steps 1..T
        assert nudge.heat[phase].filled() == T_NUDGE * n_layers
    for key in ("free", "nudged", "diff"):
        img = nudge.maps[key].data["image"]
        assert len(img) == 1 and np.asarray(img[0]).shape == app.run.request.net.spec.shape_of("s2")[1:]
    # Output: ten units, the label marked, a prediction.
    out = app.views["output"]
    assert len(out.bars.data["y"]) == 10 and out.predicted is not None
    assert out.bars.data["target"][app.run.request.label] == 1.0
    # The plot is narrow (beside the input image): a short title, the prediction in a smaller subtitle.
    guess = app.state.samples.class_names[out.predicted]
    assert out.fig.title.text == "Output units y" and out.subtitle.text.startswith(f"predicted: {guess} ")
    # Verdict: one row per phase, in words.
    verdict = app.views["verdict"]
    assert verdict.source.data["phase"] == ["free", "nudged+", "nudged-"]
    html = verdict.html.object
    for words in ("free phase", "nudged +β", "nudged −β"):
        assert words in html
    assert all(m for m in verdict.source.data["message"])
    assert all(v > 0 for v in app.counts().values()), app.counts()
    assert errors(app) == []


def test_the_feature_map_layer_follows_the_choice(app):
    app.state.map_layer = "s3"
    run(app)
    assert app.run.request.map_layer == "s3"
    img = np.asarray(app.views["nudge"].maps["free"].data["image"][0])
    assert img.shape == app.state.base_network().spec.shape_of("s3")[1:]
    assert "layer s3," in app.views["nudge"].map_fig.title.text


# ---------------------------------------------------------------------------
# The newest setting wins
# ---------------------------------------------------------------------------

def test_changing_beta_cancels_the_stale_run_and_the_new_records_carry_the_new_beta():
    app = make_app(speed=200, t_free=200, t_nudge=50)   # slow enough to change beta mid-run
    try:
        first = app.restart()
        drain_until(app, lambda: app.run is not None and energy_rows(app)["free"] >= 5, "five free steps")
        app.state.speed = "max"
        app.state.beta = 0.3
        second = app.worker.latest_run
        assert second > first
        run(app)
        ended = {e.run_id: e for e in app.worker.finished}
        assert ended[first].cancelled and ended[first].steps < 300
        assert not ended[second].cancelled
        assert app.run.request.run_id == second
        e = app.views["energy"].phase_sources
        for p in e.values():
            assert set(p.data["run"]) == {app.run.id}
            assert only(p.data["run_beta"], 0.3)
        assert only(e["nudged+"].data["beta"], 0.3)
        assert "β = 0.3" in app.views["nudge"].fig.title.text
        assert set(app.views["verdict"].source.data["run"]) == {app.run.id}
    finally:
        app.shutdown()


def test_rapid_changes_do_not_queue_up():
    app = make_app(speed=100, t_free=300)
    try:
        app.restart()
        for k in range(20):
            app.state.beta = 0.1 + 0.02 * k
        app.state.speed = "max"
        run(app)
        assert len(app.worker.started) < 20        # most intermediate settings never ran
        assert app.run.beta == pytest.approx(0.1 + 0.02 * 19)
        assert app.run.request.run_id == app.worker.latest_run
        assert set(app.views["energy"].phase_sources["free"].data["run"]) == {app.run.id}
    finally:
        app.shutdown()


def test_display_choices_change_the_plots_without_a_new_run(app):
    app.restart()
    run(app)
    run_id = app.run.request.run_id
    app.state.units_layer = "s4"
    app.state.map_channel = 1
    app.state.map_phase = "nudged-"
    app.drain()
    assert app.worker.latest_run == run_id
    units = app.views["trajectories"].unit_renderers
    assert units[0].glyph.y == "unit0__s4"
    assert app.views["nudge"].map_fig.title.text.endswith("channel 1")
    assert any("−β" in t for t in app.views["nudge"].labels.data["text"])


def test_views_out_of_sight_wait_and_catch_up_when_seen(app):
    app.restart()
    run(app)
    first = app.run.request.run_id
    # The page reports that only the energy and output views are in sight.
    app.visible_source.data = {"keys": ["energy", "output"]}
    app.state.beta = 0.3
    run(app)
    assert app.run.request.run_id > first
    assert set(app.views["energy"].phase_sources["free"].data["run"]) == {app.run.id}
    traj = app.views["trajectories"]
    assert traj.hidden and traj._deferred            # still showing the previous run
    assert app.views["nudge"].fig.title.text.endswith("(β = 0.15)")
    # Scrolled into view: caught up, exactly as if it had been drawn all along.
    app.visible_source.data = {"keys": ["energy", "nudge", "output", "residual", "trajectories"]}
    app.drain()
    assert not traj.hidden and not traj._deferred
    assert len(traj.source.data["x"]) == T_FREE + 1 + 2 * (T_NUDGE + 1) + 2
    assert app.views["nudge"].fig.title.text.endswith("(β = 0.3)")
    assert app.views["nudge"].heat["nudged-"].filled() == T_NUDGE * len(app.run.layers)
    assert app.views["output"].predicted is not None


def test_pause_holds_the_run_and_step_advances_one_iteration(app):
    app.state.playing = False
    app.restart()
    # Paused, the worker emits the start state and then waits for a Step token before step 1.
    drain_until(app, lambda: energy_rows(app)["free"] >= 1, "the start state")
    assert app.worker.steps_done == 0 and energy_rows(app)["free"] == 1
    app.state.step = True
    drain_until(app, lambda: energy_rows(app)["free"] >= 2, "one step")
    assert app.worker.steps_done == 1 and energy_rows(app)["free"] == 2
    app.state.playing = True
    run(app)
    assert energy_rows(app)["nudged-"] == T_NUDGE + 1


def test_depth_and_residual_rebuild_the_untrained_network(app):
    app.state.depth = 3
    run(app)
    assert app.run.layers == ("s1", "s2", "s3", "y")
    assert "activity__s3" in app.views["trajectories"].source.data
    assert "activity__s4" not in app.views["trajectories"].source.data
    assert app.state.param.map_layer.objects == ["s1", "s2", "s3"]
    app.state.residual = False
    run(app)
    assert app.state.model == "untrained plain"
    assert not app.run.request.net.spec.residual
    assert "plain network" in app.views["residual"].fig.title.text
    assert all(np.nanmax(v) == 0 for v in app.views["residual"].shares().values())
    assert errors(app) == []


def test_schedules_run_and_descent_safe_never_marks_a_rise(app):
    app.state.schedule = "descent_safe"
    run(app)
    assert app.run.request.schedule == "descent_safe"
    assert len(app.views["energy"].rose.data["x"]) == 0
    app.state.schedule = "synchronous"
    run(app)
    assert app.run.request.schedule == "synchronous"


def test_choosing_an_input_image_relaxes_on_it_with_its_label(app):
    app.state.sample = 7
    run(app)
    r = app.run.request
    assert r.sample == 7 and r.label == int(app.state.samples.labels[7])
    assert app.views["output"].img_fig.title.text.startswith("Input #7")
    assert app.gallery.highlight.data["x"] == [7 % 8 + 0.5]


def test_gallery_click_maps_to_the_image_under_it(app):
    g = app.gallery
    assert g.index_at(0.5, g.rows - 0.5) == 0
    assert g.index_at(3.2, g.rows - 1.5) == 11
    assert g.index_at(-1, 0) is None


# ---------------------------------------------------------------------------
# Errors a person can cause: a message, the page keeps working
# ---------------------------------------------------------------------------

def test_beta_too_large_for_mse_is_refused_and_the_next_valid_beta_works(app):
    app.restart()
    run(app)
    app.state.beta = 1.2
    assert any("below 1" in m for m in errors(app)), app.messages
    assert app.alert.visible
    assert app.state.beta == pytest.approx(0.15)          # reverted to the last good value
    app.state.beta = 0.4
    run(app)
    assert not app.alert.visible
    assert app.run.beta == pytest.approx(0.4)
    assert only(app.views["energy"].phase_sources["nudged+"].data["beta"], 0.4)


@pytest.mark.parametrize("alpha", [0.01, 50.0])
def test_alpha_at_its_extremes_runs_and_the_verdict_says_what_happened(app, alpha):
    app.state.alpha = alpha
    run(app)
    assert app.run.request.alpha == pytest.approx(alpha)
    assert errors(app) == []
    assert app.views["verdict"].source.data["phase"] == ["free", "nudged+", "nudged-"]
    traj = app.views["trajectories"].source.data
    at_alpha = np.nanmax([np.nanmax(np.asarray(traj[f"frac_alpha__{n}"], dtype=float)) for n in app.run.hidden])
    if alpha < 0.1:
        assert at_alpha > 0.2      # the tiny threshold clips many units
    else:
        assert at_alpha == 0.0     # nothing reaches 50


def test_alpha_outside_its_bounds_is_rejected_by_the_parameter(app):
    with pytest.raises(ValueError):
        app.state.alpha = 0.0
    with pytest.raises(ValueError):
        app.state.depth = 26
    app.state.alpha = 3.0
    run(app)
    assert app.run.request.alpha == pytest.approx(3.0)


def test_an_uploaded_checkpoint_is_loaded_and_its_depth_is_fixed(app, tmp_path):
    spec = hopfield_family(depth=4, input_shape=SAMPLE_SHAPE, width=4, residual=True, alpha=2.5)
    files = checkpoint_files(tmp_path, spec)
    app.upload.filename = list(files)
    app.upload.value = list(files.values())
    run(app)
    assert app.state.model == "upload: ckpt"
    assert app.state.depth == 4 and app.state.alpha == pytest.approx(2.5)
    assert app.run.layers == ("s1", "s2", "s3", "s4", "y")
    assert app.run.request.net.spec.name == spec.name
    # The depth of a checkpoint cannot change: a message, the depth stays.
    app.state.depth = 6
    assert any("depth 4" in m and "cannot be changed" in m for m in errors(app)), app.messages
    assert app.state.depth == 4
    app.state.residual = False
    assert any("skip edges cannot be switched" in m for m in errors(app))
    assert app.state.residual is True
    # ... and the next valid choice works.
    app.state.beta = 0.2
    run(app)
    assert app.run.beta == pytest.approx(0.2) and app.run.layers[-2] == "s4"
    # Back to the builder: its depth can change again.
    app.state.model = "untrained resnet"
    app.state.depth = 2
    run(app)
    assert app.run.layers == ("s1", "s2", "y")


def test_a_corrupt_checkpoint_is_refused_with_a_message(app, tmp_path):
    files = checkpoint_files(tmp_path, hopfield_family(depth=2, input_shape=SAMPLE_SHAPE, width=4))
    files["ckpt.safetensors"] = files["ckpt.safetensors"][:100]
    app.state.add_upload  # noqa: B018 (the upload widget calls this)
    app.upload.filename = list(files)
    app.upload.value = list(files.values())
    assert any("cannot load checkpoint ckpt" in m for m in errors(app)), app.messages
    assert app.state.model == "untrained resnet"
    bad_json = dict(files, **{"ckpt.json": b"{not json"})
    app.upload.filename = list(bad_json)
    app.upload.value = list(bad_json.values())
    assert any("not valid JSON" in m for m in errors(app))
    app.state.beta = 0.25
    run(app)
    assert app.run.beta == pytest.approx(0.25)


def test_a_checkpoint_for_another_input_shape_says_so(app, tmp_path):
    spec = hopfield_family(depth=2, input_shape=(3, 32, 32), width=4)
    files = checkpoint_files(tmp_path, spec, name="cifar")
    app.upload.filename = list(files)
    app.upload.value = list(files.values())
    msg = " ".join(errors(app))
    assert "(3, 32, 32)" in msg and "(1, 28, 28)" in msg
    assert "upload: cifar" not in app.state.param.model.objects
    app.restart()
    run(app)
    assert app.run.request.net.spec.input_shape == SAMPLE_SHAPE


def test_an_upload_needs_both_files_with_one_name(app, tmp_path):
    files = checkpoint_files(tmp_path, hopfield_family(depth=2, input_shape=SAMPLE_SHAPE, width=4))
    app.upload.filename = ["ckpt.json"]
    app.upload.value = [files["ckpt.json"]]
    assert any("NAME.json and NAME.safetensors" in m for m in errors(app))
    app.upload.filename = ["a.json", "b.safetensors"]
    app.upload.value = [files["ckpt.json"], files["ckpt.safetensors"]]
    assert any("share a name" in m for m in errors(app))


def test_a_network_that_diverges_is_reported_not_raised(app, tmp_path):
    # Huge weights with a huge alpha: the states blow up; the verdict says so and the page keeps going.
    spec = hopfield_family(depth=2, input_shape=SAMPLE_SHAPE, width=4, alpha=50.0)
    net = HopfieldNetwork(spec, seed=0)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1e18)
    stem = save_checkpoint(net, tmp_path / "wild")
    files = {"wild.json": stem.with_suffix(".json").read_bytes(),
             "wild.safetensors": stem.with_suffix(".safetensors").read_bytes()}
    app.upload.filename = list(files)
    app.upload.value = list(files.values())
    run(app)
    assert app.state.model == "upload: wild"
    statuses = app.views["verdict"].source.data["status"]
    assert statuses and statuses[0] in ("non_finite", "not_converged")
    app.state.model = "untrained resnet"
    run(app)
    assert app.views["verdict"].source.data["status"][0] in ("converged", "not_converged")


def test_settings_in_the_address_apply_and_bad_ones_are_reported():
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=T_FREE, t_nudge=T_NUDGE), autostart=False,
                      settings={"beta": "0.3", "speed": "max", "schedule": "descent_safe", "depth": "4",
                                "alpha": "-2", "colour": "red"})
    try:
        s = app.state
        assert (s.beta, s.speed, s.schedule, s.depth, s.alpha) == (0.3, "max", "descent_safe", 4, 6.0)
        warnings = [t for level, t in app.messages if level == "warning"]
        assert any("alpha" in t for t in warnings) and any("colour" in t for t in warnings)
        run(app)
        assert app.run.beta == pytest.approx(0.3) and app.run.layers[-2] == "s4"
    finally:
        app.shutdown()


# ---------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------

def test_two_pages_keep_their_own_settings_and_workers():
    a, b = make_app(beta=0.1), make_app(beta=0.5)
    try:
        a.restart()
        b.restart()
        run(a)
        run(b)
        assert a.worker is not b.worker and a.state is not b.state
        assert a.run.beta == pytest.approx(0.1) and b.run.beta == pytest.approx(0.5)
    finally:
        a.shutdown()
        b.shutdown()


def test_shutdown_stops_the_worker_thread_promptly():
    app = make_app(speed=5, t_free=500)
    app.restart()
    drain_until(app, lambda: energy_rows(app)["free"] >= 1, "the run's start")
    assert app.worker.alive and app.worker.busy
    app.shutdown("closed", wait=30.0)           # joins the thread (the wait is a safety net only)
    assert not app.worker.alive


def test_the_page_layout_builds_with_a_template(app):
    from bokeh.document import Document
    tmpl = app.template()
    tmpl.server_doc(Document())   # what panel serve does with the page
    assert tmpl.title.startswith("Hopfield-ResNet explorer")
    titles = [v.title for k, v in app.views.items() if k != "compare"]   # the six views of a run
    assert len(titles) == 6


def test_controls_pass_changes_on_without_panels_debounce(app):
    # Panel holds each change from the page for Syncable._debounce ms; the controls set it to 0
    # (the worker lets the newest setting win). A Panel release that renames it must fail here.
    import panel as pn
    from panel.reactive import Syncable
    assert Syncable._debounce > 0
    widgets = [w for section in app.controls() for w in section.select(pn.widgets.Widget)]
    beta = [w for w in widgets if getattr(w, "name", "") == "Beta"]
    assert beta and all(w._debounce == 0 for w in beta)
    sliders = [w for w in widgets if isinstance(w, (pn.widgets.FloatSlider, pn.widgets.IntSlider))]
    assert sliders and all(w._debounce == 0 for w in sliders)


def test_step_stats_order_is_what_the_views_expect():
    # The views index record rows by name; guard the names they rely on.
    for name in ("step_size", "activity", "frac_zero", "frac_alpha", "drive_direct", "drive_skip",
                 "drive_feedback", "residual_share", "nudge_distance"):
        assert name in LAYER_STATS
    assert set(UNTRAINED) == {"untrained resnet", "untrained plain"}
    json.dumps(ExplorerState(zoo=[]).run_settings())


def test_legends_never_follow_a_streaming_source(app):
    """A Bokeh legend re-renders on any change reachable from its items: they must
    point at static proxies, and those must not reach the real (streaming) renderers."""
    from bokeh.models import CustomJS, GlyphRenderer, Legend
    from bokeh.plotting import figure
    app.restart()
    run(app)
    figs = [f for view in app.views.values() for v in vars(view).values()
            for f in (v.values() if isinstance(v, dict) else [v]) if isinstance(f, figure)]
    legends = 0
    for fig in figs:
        for legend in fig.select(type=Legend):
            legends += 1
            for item in legend.items:
                assert item.renderers, item.label
                for r in item.renderers:
                    data = r.data_source.data
                    assert not (r.data_source.name or "").startswith("explorer."), item.label
                    assert all(len(v) == 1 for v in data.values()), item.label   # a swatch row
                    assert all(isinstance(v[0], str) or v[0] != v[0] for v in data.values())  # NaN
                    for cbs in r.js_property_callbacks.values():
                        for cb in cbs:
                            assert isinstance(cb, CustomJS)
                            assert not any(isinstance(a, GlyphRenderer) for a in cb.args.values())
    assert legends >= 4


def test_workers_still_running_are_stopped_when_the_process_exits():
    # A daemon thread inside a torch op at interpreter teardown ends the process with
    # "terminate called without an active exception"; the atexit hook stops every worker first.
    from explorer.app import worker as worker_mod
    app = ExplorerApp(settings={"t_free": "1000", "t_nudge": "500", "speed": "max"})
    app.restart()
    deadline = time.monotonic() + 10
    while not app.worker.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.worker.alive and app.worker in set(worker_mod._live_workers)
    worker_mod.stop_all_workers(timeout=5.0)
    assert not app.worker.alive


def test_sliders_moved_to_their_ends_reach_the_settings(app):
    # Panel snapped a slider at a soft bound back (it took the exclusive hard bound to apply there):
    # beta 0.99 or 0.01, alpha 0.1 never reached the run.
    import panel as pn
    from explorer.app.state import SLIDER_RANGES
    sliders = {w.name: w for sec in app.controls() for w in sec.select(pn.widgets.FloatSlider)}
    for name, label in (("alpha", "Alpha"), ("beta", "Beta")):
        w = sliders[label]
        assert (w.start, w.end) == SLIDER_RANGES[name]
        for end in (w.end, w.start):
            w.value = end
            assert getattr(app.state, name) == end and w.value == end
    train = {w.name: w for w in app.train.__panel__().select(pn.widgets.FloatSlider)}
    train["Beta"].value = SLIDER_RANGES["beta"][1]
    assert app.train.settings.beta == SLIDER_RANGES["beta"][1]


def test_the_page_websocket_sends_without_waiting_for_acknowledgements(app):
    """Nagle's algorithm off on each connection of the page's session (tornado leaves it on)."""
    import asyncio
    import socket
    from types import SimpleNamespace

    import tornado.web
    import tornado.websocket

    handlers = []

    class Echo(tornado.websocket.WebSocketHandler):
        def open(self):
            handlers.append(self)

    def nodelay(handler) -> int:
        return handler.ws_connection.stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    async def check():
        server = tornado.web.Application([("/ws", Echo)]).listen(0, address="127.0.0.1")
        clients = []
        try:
            port = next(iter(server._sockets.values())).getsockname()[1]
            clients = [await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws") for _ in range(2)]
            for _ in range(100):
                if len(handlers) == 2:
                    break
                await asyncio.sleep(0.01)
            session = SimpleNamespace(connection_count=1,
                                      _subscribed_connections=[SimpleNamespace(_socket=handlers[0])])
            app._doc = SimpleNamespace(session_context=SimpleNamespace(session=session))
            assert nodelay(handlers[0]) == 0              # tornado's default
            assert app._orphaned() is False
            assert nodelay(handlers[0]) != 0
            # A second connection (the page reconnected) is set too.
            session._subscribed_connections.append(SimpleNamespace(_socket=handlers[1]))
            session.connection_count = 2
            assert nodelay(handlers[1]) == 0
            app._orphaned()
            assert nodelay(handlers[1]) != 0
        finally:
            for c in clients:
                c.close()
            server.stop()

    try:
        asyncio.run(check())
    finally:
        app._doc = None


def test_an_update_panel_left_queued_is_sent_at_the_next_poll():
    """Panel 1.9's write queue: a message queued while the previous one was being sent used to
    wait for the next update (a 1 s stall after slider moves); the page's poll sends it."""
    import asyncio
    from types import SimpleNamespace

    from bokeh.document import Document
    from panel.io import document as panel_document

    from explorer.app.transport import flush_stranded_writes as _flush_stranded_writes

    sent, release = [], None

    class Socket:       # not a tornado socket: Panel writes through its send()
        async def send(self, text_data=None, binary_data=None):
            if text_data == "content first":
                await release.wait()        # the first message is still being written ...
            sent.append(text_data)

    def message(name):
        return SimpleNamespace(header_json="header " + name, metadata_json="{}", content_json="content " + name,
                               _buffers=[])

    class Connection:
        _socket = Socket()
        protocol = SimpleNamespace(create=lambda kind, events: message(events[0]))

    conn = Connection()

    async def race():
        nonlocal release
        release = asyncio.Event()
        doc = Document()
        panel_document.schedule_write_events(doc, [conn], ["first"])
        await asyncio.sleep(0.01)           # its task waits for the socket, writing "first"
        # The socket is done with "first" (the task's wake-up is due) when "second" is queued:
        # in Panel 1.9 the task then drops the write block, and the task for "second" sends nothing.
        release.set()
        panel_document.schedule_write_events(doc, [conn], ["second"])
        await asyncio.sleep(0.05)
        # Panel 1.9 leaves "second" queued with no task to send it; a Panel without the race has
        # sent it already, and then there is nothing to flush.
        stranded = "content second" not in sent
        assert stranded == (doc in panel_document._WRITE_MSGS and doc not in panel_document._WRITE_BLOCK)
        assert _flush_stranded_writes(doc) is stranded
        await asyncio.sleep(0.05)
        assert _flush_stranded_writes(doc) is False
        return doc in panel_document._WRITE_MSGS

    still_queued = asyncio.run(race())
    assert sent.count("content first") == 1 and sent.count("content second") == 1
    assert sent.index("content first") < sent.index("content second")
    assert not still_queued


def test_a_new_runs_start_and_first_frame_go_out_in_one_update_each_row_once(app, monkeypatch):
    """The worker announces a run together with its first frame, so the page paints the new run once
    (not an empty start, then its first frame); the update carries each streamed row once (the
    sources' replaced data already holds it); later frames go out at most every SEND_EVERY."""
    from bokeh.document import Document
    from bokeh.document.events import ColumnsStreamedEvent

    from explorer.app import transport
    from explorer.app.worker import Frame, RunStarted

    app.restart()
    run(app)                       # a real run, to replay its events
    real = app.worker
    rid = real.submit(app.state.resolve())
    deadline = time.monotonic() + 60
    while (real.busy or not real.pending_events) and time.monotonic() < deadline:
        time.sleep(0.01)
    events = [e for e in real.drain() if e.run_id == rid]
    start = next(i for i, e in enumerate(events) if isinstance(e, RunStarted))
    assert isinstance(events[start + 1], Frame) and events[start + 1].step == 0   # one put: never apart
    frames = [e for e in events if isinstance(e, Frame)]
    assert len(frames) >= 3

    queue = []

    class Worker:                  # hands out what the test queued, as the worker's queue does
        latest_run, busy, closed = rid, True, False

        @property
        def pending_events(self):
            return bool(queue)

        def drain(self):
            out = list(queue)
            queue.clear()
            return out

    sent_events = []
    fold = transport.fold_streams

    def folding(doc):              # what the update will carry, once folded
        dropped = fold(doc)
        sent_events.append(list(doc.callbacks._held_events))
        return dropped

    monkeypatch.setattr(transport, "fold_streams", folding)
    doc = Document()
    energy = app.views["energy"]
    doc.add_root(energy.fig)       # the energy view's sources send their changes through this document
    app.worker, app._doc = Worker(), doc
    try:
        def tick():
            app.ack_source.data = {"seq": [app._sent], "ready": [1]}   # the page applied the last one
            app._tick()

        queue.extend([events[start], frames[0], frames[1]])
        tick()
        assert app._sent == 1 and not app._first_frame_due and energy_rows(app)["free"] == 2
        free = energy.phase_sources["free"]
        carried = [e for e in sent_events[-1] if getattr(e, "model", None) is free]
        assert carried and not any(isinstance(e, ColumnsStreamedEvent) for e in carried)   # rows once
        queue.append(frames[2])
        tick()
        assert app._sent == 1                                     # the next frame waits its slot
        app._sent_at -= 1.0
        tick()
        assert app._sent == 2 and energy_rows(app)["free"] == 3
        assert any(isinstance(e, ColumnsStreamedEvent) and e.model is free for e in sent_events[-1])
    finally:
        app.worker, app._doc = real, None


def test_with_cuda_the_page_picks_the_gpu_and_says_so(app, monkeypatch):
    from explorer.app import state as app_state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert app_state.pick_device().type == "cuda"
    app.restart()
    run(app)                                  # on the CPU here
    assert "no GPU" in app.status.object
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU 80GB")
    app.device = torch.device("cuda")         # what pick_device gives on a CUDA machine
    app._update_status()
    assert "GPU: Test GPU 80GB" in app.status.object and "no GPU" not in app.status.object


# ---------------------------------------------------------------------------
# Runs as data: per-phase events, the store, replay, files
# ---------------------------------------------------------------------------

def test_each_phase_end_is_sent_before_the_next_phase_with_its_verdict_as_data(app):
    from explorer.app.worker import Frame, PhaseEnded, RunEnded
    rid = app.worker.submit(app.state.resolve())
    events = []
    deadline = time.monotonic() + 60
    while not any(isinstance(e, RunEnded) for e in events):
        assert time.monotonic() < deadline, "the run did not end"
        events += [e for e in app.worker.drain() if e.run_id == rid]
        time.sleep(0.01)
    kinds = [(type(e).__name__, e.phase) for e in events if isinstance(e, (Frame, PhaseEnded))]
    order = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    # A phase's frames, then its end, then the next phase's frames: no verdict waits for the run's end.
    assert order == [(kind, phase) for phase in ("free", "nudged+", "nudged-")
                     for kind in ("Frame", "PhaseEnded")]
    verdicts = [e.verdict for e in events if isinstance(e, PhaseEnded)]
    assert [v["status"] for v in verdicts] == [e.status for e in events if isinstance(e, PhaseEnded)]
    assert all(v["findings"] and all("kind" in f and "evidence" in f for f in v["findings"]) for v in verdicts)
    run = events[-1].run
    assert run.id in app.store and [p.verdict for p in run.phases.values()] == verdicts


def test_finished_runs_are_listed_and_one_chosen_is_drawn_again_in_every_view(app):
    app.restart()
    run(app)
    first, counts = app.run, app.counts()
    app.state.beta = 0.3
    run(app)
    assert len(app.store) == 2 and app.runs_select.value == app.run.id != first.id
    assert set(app.runs_select.options.values()) == {first.id, app.run.id}
    app.runs_select.value = first.id           # the person picks the first run
    run(app)
    assert app.run is first and app.counts() == counts
    e = app.views["energy"].phase_sources
    assert set(e["free"].data["run"]) == {first.id} and only(e["nudged+"].data["beta"], 0.15)
    assert app.views["verdict"].source.data["status"] == [p.verdict["status"] for p in first.phases.values()]
    app.state.beta = 0.2                       # a new setting: the live run is drawn again
    run(app)
    assert app.run.beta == pytest.approx(0.2) and only(e["nudged+"].data["beta"], 0.2)


def test_a_saved_run_opens_in_another_page_and_replays_with_identical_numbers(app):
    app.restart()
    run(app)
    data = app._run_file().getvalue()
    assert app.save_run.filename == f"run-{app.run.id}.parquet"
    other = make_app(beta=0.4)
    try:
        other.open_run.filename = "run.parquet"
        other.open_run.value = data
        run(other)
        assert errors(other) == [] and other.run.id == app.run.id and app.run.id in other.store
        for key in ("energy", "trajectories"):
            mine, theirs = app.views[key].sources(), other.views[key].sources()
            for name, src in mine.items():
                for col, values in src.data.items():
                    got = theirs[name].data[col]
                    a, b = np.asarray(values), np.asarray(got)
                    numeric = a.dtype.kind in "fiu" and b.dtype.kind in "fiu"
                    assert np.array_equal(a, b, equal_nan=numeric), (key, name, col)
        assert other.views["residual"].shares().keys() == app.views["residual"].shares().keys()
        for layer, share in app.views["residual"].shares().items():
            assert np.array_equal(share, other.views["residual"].shares()[layer], equal_nan=True)
        assert other.views["output"].predicted == app.views["output"].predicted
        assert other.counts() == app.counts()
    finally:
        other.shutdown()


def test_a_bad_run_file_gives_one_message_and_the_page_keeps_working(app, tmp_path):
    import pandas as pd
    pd.DataFrame({"a": [1.0]}).to_parquet(tmp_path / "plain.parquet")
    for name, data in (("junk.parquet", b"not a parquet file at all"),
                       ("plain.parquet", (tmp_path / "plain.parquet").read_bytes())):
        before = len(errors(app))
        app.open_run.filename = name
        app.open_run.value = data
        assert len(errors(app)) == before + 1 and name in errors(app)[-1]
        assert "run" in errors(app)[-1]
    assert len(app.store) == 0
    app.restart()
    run(app)
    assert len(app.store) == 1 and app.counts()["energy"] > 0


def test_a_pinned_runs_energy_curves_stay_while_another_run_is_drawn(app):
    app.restart()
    run(app)
    first = app.run
    app.state.beta = 0.3
    run(app)
    second = app.run
    energy = app.views["energy"]
    energy.pin(first.id)
    energy.draw_run(first)
    energy.draw_run(second)                     # drawn over the pinned first run
    curves = energy.curves()
    assert set(curves) == {first.id, second.id}
    for r in (first, second):
        assert set(curves[r.id]["free"].data["run"]) == {r.id}
        assert len(curves[r.id]["free"].data["x"]) == len(r.phases["free"].records)
        assert only(curves[r.id]["nudged+"].data["beta"], r.beta)
    energy.pin(first.id, False)
    energy.draw_run(second)
    assert set(energy.curves()) == {second.id}


def test_the_energy_view_marks_the_steps_the_engine_found_the_energy_rose(app):
    from explorer.record import Finding, Verdict
    from explorer.run import verdict_data
    app.restart()
    run(app)
    stored = app.run
    finding = Finding("energy_rose", "F rose at step 2 and 1 later steps", 2)
    finding.evidence = {"steps": [2, 5]}        # as the engine's tracker reports it
    stored.phases["nudged+"].verdict = verdict_data(Verdict("not_converged", [finding]))
    energy = app.views["energy"]
    energy.draw_run(stored)
    records = {r.step: r for r in stored.phases["nudged+"].records}
    offset = stored.offset("nudged+")
    assert list(energy.rose.data["x"]) == [offset + 2, offset + 5]
    assert list(energy.rose.data["value"]) == [float(records[s].energy_of("F")[0]) for s in (2, 5)]
    assert "rose at 2 steps" in energy.fig.title.text


def test_the_verdict_names_the_step_the_tolerance_was_met_the_slowest_layer_and_the_measure(app):
    from html import escape as html_escape

    from explorer.diagnosis import classify
    from explorer.record import STAT_INDEX
    app.state.param.update(t_free=60, tol=1e-3)
    app.restart()
    run(app)
    html = app.views["verdict"].html.object
    assert "max over layers of ||s(t) − s(t−1)|| / ||s(t)||" in html and "tolerance 1e-03" in html
    for phase, stored in app.run.phases.items():
        d = stored.verdict["diagnosis"]
        rel = np.stack([r.stats[:, STAT_INDEX["step_size"], 0].numpy() for r in stored.records])
        expected = classify(rel, stored.records[0].layers, 1e-3, phase=phase)
        assert (d["kind"], d["met_at"], d["slowest_layer"]) == (expected.kind, expected.met_at,
                                                                expected.slowest_layer)
        assert html_escape(d["message"].split(";")[0]) in html
    assert app.run.phases["free"].verdict["diagnosis"]["kind"] == "converged"
    assert "converged at step" in html and "slowest layer" in html


def _zoo_app(tmp_path, names):
    """A page whose zoo holds copies of these shipped checkpoints."""
    import shutil

    from explorer.zoo import ZOO_DIR, list_entries
    for n in names:
        for ext in (".json", ".safetensors"):
            shutil.copy(ZOO_DIR / f"{n}{ext}", tmp_path / f"{n}{ext}")
    state = ExplorerState(zoo=list_entries(tmp_path), t_free=T_FREE, t_nudge=T_NUDGE, speed="max")
    state.model = next(c for c in state.param.model.objects if c.startswith(f"zoo: {names[0]},"))
    state.param.update(**state.model_defaults(state.model))
    return ExplorerApp(state=state, autostart=False)


def test_depth_and_residual_open_a_zoo_models_trained_siblings_and_a_refused_drag_says_so_once(tmp_path):
    import panel as pn
    app = _zoo_app(tmp_path, ["fmnist-resnet3-ep", "fmnist-resnet5-ep", "fmnist-plain5-ep"])
    app.controls()   # the sidebar's widgets
    try:
        app.state.depth = 5
        assert app.state.model.startswith("zoo: fmnist-resnet5-ep") and app.state.depth == 5
        app.state.residual = False
        assert app.state.model.startswith("zoo: fmnist-plain5-ep") and not app.state.residual
        run(app)
        assert app.run.request.net.spec.depth == 5 and not app.run.request.net.spec.residual
        before = len(app.messages)
        for depth in (6, 7, 8, 9, 10, 11):     # a drag over depths the family lacks
            app.state.depth = depth
        refused = app.messages[before:]
        assert len(refused) == 1 and "no trained plain sibling of depth 6" in refused[0][1]
        assert app.state.depth == 5 and app.state.model.startswith("zoo: fmnist-plain5-ep")
        depth_widget = next(w for w in app._model_controls.select(pn.widgets.Widget) if w.name == "Depth")
        assert not depth_widget.disabled
    finally:
        app.shutdown("test over")


def test_a_lone_checkpoint_disables_depth_and_residual_with_the_reason(app, tmp_path):
    import panel as pn
    app.controls()   # the sidebar's widgets
    spec = hopfield_family(depth=2, input_shape=SAMPLE_SHAPE, width=4)
    stem = save_checkpoint(HopfieldNetwork(spec, seed=0), tmp_path / "lone")
    app.upload.filename = ["lone.json", "lone.safetensors"]
    app.upload.value = [stem.with_suffix(".json").read_bytes(), stem.with_suffix(".safetensors").read_bytes()]
    run(app)
    assert app.state.model == "upload: lone"
    widgets = [w for w in app._model_controls.select(pn.widgets.Widget) if w.name in ("Depth", "Residual")]
    assert len(widgets) == 2 and all(w.disabled and "fixed architecture" in w.description for w in widgets)
    app.state.model = "untrained resnet"
    run(app)
    assert not any(w.disabled for w in widgets)


def test_a_link_carries_every_run_setting_and_reproduces_the_run_with_the_same_numbers(app):
    app.state.param.update(beta=0.3, schedule="descent_safe", sample=7, alpha=4.0, tol=1e-3)
    app.restart()
    run(app)
    query = app.link_query()
    assert {k: query[k] for k in ("beta", "schedule", "sample", "alpha", "tol")} == \
        {"beta": "0.3", "schedule": "descent_safe", "sample": "7", "alpha": "4.0", "tol": "0.001"}
    assert query["model"] == "untrained resnet" and query["t_free"] == str(T_FREE)
    other = create_app(settings=query, state=ExplorerState(zoo=[]), autostart=True)
    try:
        run(other)
        assert other.state.run_settings() == app.state.run_settings()
        for phase in ("free", "nudged+", "nudged-"):
            a, b = app.run.phases[phase].records, other.run.phases[phase].records
            assert len(a) == len(b) and all(torch.equal(x.stats, y.stats) and torch.equal(x.energy, y.energy)
                                            for x, y in zip(a, b))
    finally:
        other.shutdown("test over")


def test_a_link_with_a_bad_value_names_it_and_the_other_values_still_apply():
    page = create_app(settings={"beta": "7", "schedule": "descent_safe", "t_free": "abc", "sample": "3",
                                "tab": "nowhere"}, state=ExplorerState(zoo=[]), autostart=False)
    try:
        words = " | ".join(t for _, t in page.messages)
        assert "beta = 7 is outside" in words and "t_free" in words and "abc" in words
        assert page.state.schedule == "descent_safe" and page.state.sample == 3
        assert page.state.beta == 0.15 and page.state.t_free == 120
        page.template()
        assert "tab = 'nowhere' is not a tab" in page.messages[-1][1]
    finally:
        page.shutdown("test over")


def test_a_link_value_the_model_refuses_is_kept_alone():
    """beta 1.5 passes the slider's bounds but the mse cost refuses it: the page names it and still
    applies the link's other values (they were all kept before)."""
    page = create_app(settings={"beta": "1.5", "schedule": "descent_safe", "sample": "30"},
                      state=ExplorerState(zoo=[]), autostart=False)
    try:
        words = " | ".join(t for _, t in page.messages)
        assert "beta = 1.5" in words and "kept beta = 0.15" in words
        assert page.state.beta == 0.15
        assert page.state.schedule == "descent_safe" and page.state.sample == 30
    finally:
        page.shutdown("test over")


def test_a_link_names_a_zoo_model_by_its_checkpoint_and_opens_the_tab_it_names(tmp_path):
    import shutil

    from explorer.zoo import ZOO_DIR, list_entries
    for ext in (".json", ".safetensors"):
        shutil.copy(ZOO_DIR / f"fmnist-resnet3-ep{ext}", tmp_path / f"fmnist-resnet3-ep{ext}")
    page = create_app(settings={"model": "fmnist-resnet3-ep", "tab": "train"},
                      state=ExplorerState(zoo=list_entries(tmp_path)), autostart=False)
    try:
        assert page.state.model.startswith("zoo: fmnist-resnet3-ep")
        page.template()
        assert page._tabs.active == 1 and page.link_query()["tab"] == "train"
        assert page.link_query()["model"] == "fmnist-resnet3-ep"
    finally:
        page.shutdown("test over")


def test_the_free_phase_verdict_carries_the_fixed_points_stability(app):
    from explorer.stability import stability
    app.restart()
    run(app)
    free = app.run.phases["free"]
    st = free.verdict["stability"]
    req = app.run.request
    again = stability(req.net, req.x, schedule=req.schedule, steps=req.t_free)   # relaxed afresh
    assert st["spectral_radius"] == pytest.approx(again.spectral_radius[0], rel=1e-3)
    assert 0 < st["spectral_radius"] < 1 and st["dominant_layer"] in req.net.layer_names
    assert abs(sum(st["layer_share"].values()) - 1) < 1e-6
    html = app.views["verdict"].html.object
    assert "stability at s*" in html and f"ρ = {st['spectral_radius']:.3f}" in html


def test_pin_a_then_switch_residual_off_draws_b_over_a_and_fills_the_differences(app):
    app.controls()
    app.restart()
    run(app)
    a = app.run
    app.pin_current()
    app.state.residual = False          # the paper's question: the same depth without skips
    run(app)
    b = app.run
    assert b.id != a.id and app.state.model == "untrained plain"
    assert set(app.views["energy"].curves()) >= {a.id, b.id}      # A's curves stay under B's
    rows = {k: (va, vb, d) for k, va, vb, d in app.views["compare"].rows()}
    assert rows["residual"] == (True, False, True) and rows["depth"][2] is False
    assert rows["free: verdict"][1] == b.phases["free"].verdict["diagnosis"]["kind"]
    assert rows["spectral radius"][0] == a.phases["free"].verdict["stability"]["spectral_radius"]
    html = app.views["compare"].html.object
    assert "A (pinned)" in html and "residual" in html and "steps to tolerance" in html
    assert a.id in app.store          # a pinned run is never evicted
    app.pin_current(False)
    app.state.residual = True
    run(app)
    assert a.id not in app.views["energy"].curves()


def test_the_replay_player_scrubs_a_finished_run_across_every_view(app):
    app.controls()
    app.restart()
    run(app)
    finished = app.run
    frames = sum(len(p.records) for p in finished.phases.values())
    assert not app.player.disabled and app.player.end == frames - 1
    app.player.value = T_FREE + 5          # free phase done, 5 steps into nudged +beta
    run(app)
    assert energy_rows(app) == {"free": T_FREE + 1, "nudged+": 5, "nudged-": 0}
    assert app.views["verdict"].source.data["phase"] == ["free"]
    assert f"nudged+ step 4 of {T_NUDGE}" in app.replay_text.object
    app.player.value = 3                   # back: the views hold the run as it stood at step 3
    run(app)
    assert energy_rows(app) == {"free": 4, "nudged+": 0, "nudged-": 0}
    app.player.value = frames - 1          # the end: everything again, identical numbers
    run(app)
    assert energy_rows(app) == {"free": T_FREE + 1, "nudged+": T_NUDGE + 1, "nudged-": T_NUDGE + 1}
    assert app.views["verdict"].source.data["phase"] == ["free", "nudged+", "nudged-"]
    assert app.run.id == finished.id


def test_every_setting_in_the_sidebar_has_its_help_text(app):
    import panel as pn
    sections = app.controls()
    widgets = {w.name: w for sec in sections for w in sec.select(pn.widgets.Widget)}
    # (Panel 1.9's sliders have no help icon; every other widget shows its parameter's doc)
    helped = [n for n in ("model", "schedule", "tol", "stop_at_tol", "residual", "sample")
              if "description" in widgets[app.state.param[n].label].param]
    assert {"model", "schedule", "tol"} <= set(helped)
    for name in helped:
        p = app.state.param[name]
        assert widgets[p.label].description == p.doc, name


def test_a_scan_or_sweep_runs_at_a_lower_cpu_priority_than_the_page():
    """The page's job thread lowers its own priority (Linux niceness per thread), so a sweep takes the
    CPU the live relaxation, the server and the browser leave over; the calling thread is untouched."""
    import os
    import threading

    from explorer.app.jobs import BACKGROUND_NICENESS, JobWorker
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    worker = JobWorker()
    try:
        worker.submit(lambda put, should_stop: put(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        deadline = time.monotonic() + 60
        events = []
        while not events and time.monotonic() < deadline:
            events = worker.drain()
            time.sleep(0.05)
        assert events == [min(19, here + BACKGROUND_NICENESS)]
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == here
    finally:
        worker.stop()


def test_the_kept_runs_free_verdict_is_told_the_spectral_radius(monkeypatch):
    # A stalled free phase with ρ >= 1 at its last state: the run kept in the store (what exports and
    # run files carry) says "cannot converge", as the page does, not "needs about N more steps".
    import explorer.app.worker as worker
    estimate = {"spectral_radius": 1.02, "observed_rate": 0.9, "dominant_layer": "s1", "layer_share": {"s1": 1.0}}
    monkeypatch.setattr(worker, "fixed_point_stability", lambda req, result, should_stop=None: dict(estimate))
    app = make_app(t_free=8, t_nudge=3)
    try:
        app.restart()
        run(app)
        free = app.run.phases["free"].verdict
        assert free["diagnosis"]["kind"] == "stalled", free["diagnosis"]
        assert "ρ = 1.020" in free["diagnosis"]["message"] and "more steps" not in free["diagnosis"]["message"]
        assert free["stability"]["spectral_radius"] == 1.02
    finally:
        app.shutdown()


def test_a_link_naming_a_model_not_on_the_page_says_so_briefly_with_the_nearest_names(tmp_path):
    """The whole list of choices with their accuracies made a wall of text; the nearest names help."""
    import shutil

    from explorer.zoo import ZOO_DIR, list_entries
    for ext in (".json", ".safetensors"):
        shutil.copy(ZOO_DIR / f"fmnist-resnet5-ep{ext}", tmp_path / f"fmnist-resnet5-ep{ext}")
    page = create_app(settings={"model": "fmnist-resnet5w16-ep", "beta": "0.3"},
                      state=ExplorerState(zoo=list_entries(tmp_path)), autostart=False)
    try:
        (text,) = [t for level, t in page.messages if level == "warning"]
        assert text.startswith("model = fmnist-resnet5w16-ep is not a model of this page")
        assert "did you mean fmnist-resnet5-ep?" in text and "% test" not in text
        assert text.endswith("kept fmnist-resnet5-ep")               # the page's first model
        assert page.state.beta == 0.3 and page.state.model.startswith("zoo: fmnist-resnet5-ep")   # the rest applies
    finally:
        page.shutdown("test over")


def test_a_pinned_run_stopped_before_its_end_says_why_its_outcomes_are_dashes(app):
    """Pinned while streaming and stopped by the next change, A has no outcomes: the table says why."""
    import dataclasses

    from explorer.run import Run
    app.controls()
    app.restart()
    run(app)
    finished, compare = app.run, app.views["compare"]
    stopped = dataclasses.replace(finished, id=Run.new_id(), phases={})
    compare.pin(stopped)
    assert "A (pinned)" in compare.html.object and "pinned before it finished" in compare.html.object
    compare.pin(dataclasses.replace(finished, id=Run.new_id()))      # a finished A: no such note
    assert "A (pinned)" in compare.html.object and "pinned before it finished" not in compare.html.object
    compare.pin(None)


def test_opening_a_good_run_file_after_a_bad_one_clears_the_bad_ones_message(app):
    """Seen in the walk: 'could not open foreign.parquet' stayed above the run opened after it."""
    app.restart()
    run(app)
    good = app._run_file().getvalue()
    app.open_run.filename = "junk.parquet"
    app.open_run.value = b"not a parquet file at all"
    assert app.alert.visible and "junk.parquet" in app.alert.object
    app.open_run.filename = "run.parquet"
    app.open_run.value = good
    assert not app.alert.visible and "opened run" in app.messages[-1][1]


def test_the_verdicts_run_summary_says_how_the_run_was_played():
    # It said "paced" for a run at full speed too.
    app = make_app(speed="max")
    try:
        app.restart()
        run(app)
        assert app.views["verdict"].summary.endswith("(at full speed)"), app.views["verdict"].summary
        app.state.speed = 200
        app.state.beta = 0.2
        run(app)
        assert app.views["verdict"].summary.endswith("(played at 200 steps/s)"), app.views["verdict"].summary
    finally:
        app.shutdown()
