"""The Train tab in-process (no browser): worker, pause/resume/stop, probe dynamics, save, errors.

Each test builds an ExplorerApp, sets the Train view's settings as its widgets
would, presses its buttons (the settings' events), drains the view as the
page's periodic callback does, and checks its ColumnDataSources, its messages
and the checkpoints written. A tiny network (depth 3, width 4) on 256 images
keeps every run to a second or two.
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from explorer import data as data_mod
from explorer.app import ExplorerApp, ExplorerState
from explorer.app.state import SAMPLE_SHAPE, SettingError, trained_entries
from explorer.app.training import Probe, StartModel, TrainWorker, relaxation_model
from explorer.checkpoint import save_checkpoint
from explorer.dynamics import relax
from explorer.network import HopfieldNetwork, hopfield_family
from explorer.record import RecordConfig
from explorer.train import TrainConfig

TINY = dict(depth=3, width=4, limit=256, eval_limit=64, batch_size=32, t_free=10, t_nudge=4, epochs=2,
            probe_every=2)
LAYERS = ["s1", "s2", "s3", "y"]


@pytest.fixture
def trained_dir(tmp_path, monkeypatch):
    folder = tmp_path / "trained"
    monkeypatch.setenv("EXPLORER_TRAINED_DIR", str(folder))
    return folder


def make_app(**train) -> ExplorerApp:
    app = ExplorerApp(state=ExplorerState(zoo=[], t_free=20, t_nudge=8, speed="max"), autostart=False)
    app.train.settings.param.update(**{**TINY, **train})
    return app


@pytest.fixture
def app(trained_dir):
    a = make_app()
    yield a
    a.shutdown("test over")


@pytest.fixture(scope="module")
def refusing_app():
    """One page for the cases that are refused before training starts (a page takes seconds to build)."""
    a = make_app()
    yield a
    a.shutdown("test over")


def press(app, button: str) -> None:
    app.train.settings.param.trigger(button)


def wait_for(predicate, what="condition", timeout=60.0):
    """Poll ``predicate`` until true; the timeout is only a safety net against a hang."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def drain_until(app, predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        app.train.drain()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; counts {app.train.counts()}, "
                                 f"phase {app.train.phase}, messages {app.messages}")
        time.sleep(0.05)


def rows(app) -> int:
    return app.train.counts()["batches"]


def errors(app):
    return [text for level, text in app.messages if level == "error"]


def test_training_streams_loss_accuracy_and_the_probe_dynamics(app):
    press(app, "start")
    drain_until(app, lambda: app.train.outcome == "done", what="the run to finish")
    view = app.train
    b = view.batches.data
    assert len(b["step"]) == 16                              # 2 epochs of 256 / 32
    assert list(b["step"]) == list(range(1, 17))
    assert all(0 <= a <= 1 for a in b["accuracy"]) and all(math.isfinite(x) and x > 0 for x in b["loss"])
    # EP lowers the cost: the second epoch's running mean is below the first batch's loss.
    assert b["train_loss"][-1] < b["loss"][0]
    ev = view.evals.data
    assert list(ev["epoch"]) == [1, 2] and list(ev["step"]) == [8, 16] and list(ev["n"]) == [64, 64]
    # The probe: one step-size line per layer over T_free iterations, Phi at every iteration.
    p = view.probe_steps.data
    assert list(p["layer"]) == LAYERS and all(len(xs) == 10 for xs in p["xs"])
    assert all(np.all(np.isfinite(ys)) and min(ys) >= 0 for ys in p["ys"])
    assert len(view.probe_phi.data["phi"]) == 11
    # Probed before training, every 2nd of 16 batches and at the end (the last one only once).
    assert view.worker.probes == 1 + 8 and len(view.probe_history.data["step"]) == 9
    assert view.probe_history.data["step"][0] == 0 and view.probe_history.data["step"][-1] == 16
    out = view.probe_output.data
    label = int(app.state.samples.labels[app.state.sample])
    assert len(out["y"]) == 10 and out["target"][label] == 1.0
    assert "test accuracy" in view.status.object and "finished" in view.status.object
    assert any(level == "success" and "training finished" in text for level, text in app.messages)
    assert errors(app) == []
    # Nothing was written: saving is the person's choice.
    assert trained_entries() == []


def test_pause_holds_training_and_resume_continues(app):
    app.train.settings.epochs = 50
    press(app, "start")
    drain_until(app, lambda: rows(app) >= 3, what="three batches")
    press(app, "pause")
    assert app.train.phase == "paused"
    worker = app.train.worker
    wait_for(lambda: worker.holding, "the worker to hold after the batch in progress")
    held = worker.batches
    drain_until(app, lambda: rows(app) == held, what="the page to draw every batch run")
    # Holding: the thread waits on its condition and asks the trainer for nothing. A save while
    # paused runs on it and returns to holding with no batch in between.
    app.train.settings.save_name = "while-paused"
    press(app, "save")
    drain_until(app, lambda: "trained: while-paused" in app.state.param.model.objects, what="the save")
    wait_for(lambda: worker.holding, "the worker to hold again")
    assert worker.batches == held and worker.trainer.step == held
    app.train.drain()
    assert rows(app) == held
    buttons = app.train.buttons
    assert buttons["resume"].disabled is False and buttons["pause"].disabled is True
    press(app, "resume")
    drain_until(app, lambda: rows(app) >= held + 3, what="training to go on after resume")
    press(app, "stop")
    assert app.train.worker.wait(10)
    drain_until(app, lambda: app.train.outcome == "stopped", what="the stop")
    assert any("training stopped at step" in text for _, text in app.messages)
    assert buttons["start"].disabled is False and buttons["stop"].disabled is True


def train_pause_and_save(app, name: str, batches: int) -> None:
    """Start a long run, pause it after ``batches`` batches and save it as ``name``."""
    app.train.settings.param.update(epochs=50, save_name=name)
    press(app, "start")
    drain_until(app, lambda: rows(app) >= batches, what=f"{batches} batches")
    press(app, "pause")
    press(app, "save")
    drain_until(app, lambda: f"trained: {name}" in app.state.param.model.objects, what=f"the save of {name}")


def test_save_lists_the_model_in_the_picker_and_selecting_it_relaxes_the_trained_weights(app, trained_dir):
    train_pause_and_save(app, "tiny-run_1", batches=4)
    assert (trained_dir / "tiny-run_1.json").is_file() and (trained_dir / "tiny-run_1.safetensors").is_file()
    assert json.loads((trained_dir / "tiny-run_1.json").read_text())["settings"]["depth"] == 3
    # Paused: the weights the trainer holds now are the ones saved.
    trained = {k: v.detach().cpu().clone() for k, v in app.train.worker.trainer.net.named_parameters()}
    app.state.model = "trained: tiny-run_1"
    app.run_until_idle()
    net = app.run.request.net
    assert app.run.request.model_name == "trained: tiny-run_1" and net.spec.depth == 3
    got = {k: v.detach().cpu() for k, v in net.named_parameters()}
    assert got.keys() == trained.keys() and all(torch.equal(got[k], trained[k]) for k in trained)
    assert app.views["energy"].data_count() > 0 and errors(app) == []
    # Another page opened later lists it too (the folder is the server's).
    assert "trained: tiny-run_1" in ExplorerState(zoo=[]).param.model.objects


def test_saving_again_replaces_this_pages_own_checkpoint_and_reloads_it(app, trained_dir):
    train_pause_and_save(app, "again", batches=2)
    app.state.model = "trained: again"
    app.run_until_idle()
    first = {k: v.detach().cpu().clone() for k, v in app.run.request.net.named_parameters()}
    press(app, "resume")
    drain_until(app, lambda: rows(app) >= 5, what="more batches")
    press(app, "pause")
    saves = sum("saved again" in text for _, text in app.messages)
    press(app, "save")
    drain_until(app, lambda: sum("saved again" in text for _, text in app.messages) > saves, what="the second save")
    app.run_until_idle()          # the picker showed it: the page relaxes the new weights
    second = dict(app.run.request.net.named_parameters())
    trained = dict(app.train.worker.trainer.net.named_parameters())
    assert all(torch.equal(second[k].detach().cpu(), trained[k].detach().cpu()) for k in trained)
    assert not all(torch.equal(second[k].detach().cpu(), first[k]) for k in first)


@pytest.mark.parametrize("name", ["../evil", "a b", "", "x.json", "ü"])
def test_a_bad_checkpoint_name_is_refused_with_a_message(app, trained_dir, name):
    press(app, "start")
    drain_until(app, lambda: app.train.worker.trainer is not None, what="the trainer")
    app.train.settings.save_name = name
    press(app, "save")
    assert any("cannot save as" in text and "letters, digits" in text for text in errors(app))
    app.train.drain()
    assert not trained_dir.exists() or list(trained_dir.iterdir()) == []
    assert not any(p.suffix == ".json" for p in trained_dir.parent.iterdir() if p.is_file())


def test_a_name_another_page_saved_is_not_replaced(app, trained_dir):
    other = make_app(save_name="taken")
    try:
        press(other, "start")
        drain_until(other, lambda: other.train.outcome == "done", what="the other page's run")
        press(other, "save")
        drain_until(other, lambda: "trained: taken" in other.state.param.model.objects, what="its save")
        before = (trained_dir / "taken.safetensors").read_bytes()
        app.train.settings.save_name = "taken"
        press(app, "start")
        drain_until(app, lambda: app.train.outcome == "done", what="this page's run")
        press(app, "save")
        assert any("already exists" in text for text in errors(app))
        assert (trained_dir / "taken.safetensors").read_bytes() == before
    finally:
        other.shutdown("test over")


def test_save_before_start_and_buttons_without_a_run_say_why(app):
    press(app, "save")
    press(app, "pause")
    press(app, "stop")
    assert any("start a training run first" in t for t in errors(app))
    assert sum("nothing to" in t for _, t in app.messages) >= 2


def test_a_missing_data_set_is_reported_with_where_it_looked_and_the_page_keeps_serving(app, tmp_path,
                                                                                       monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("EXPLORER_DATA", str(empty))
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setattr(data_mod, "CACHE_DIR", tmp_path / "no-cache")
    press(app, "start")
    text = errors(app)[-1]
    assert "Fashion-MNIST not found" in text and str(empty) in text and "EXPLORER_DATA" in text
    assert app.train.worker is None and app.train.phase == "idle"
    app.restart()                       # the relaxation still works
    app.run_until_idle()
    assert app.views["energy"].data_count() > 0


def test_a_worker_that_cannot_read_its_data_reports_it_as_an_event(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    config = TrainConfig(data_path=str(empty), depth=2, width=2, limit=32, progress=False)
    probe = Probe(torch.zeros(1, 1, 28, 28), 0, 0, np.zeros((28, 28), np.uint8), ("a",) * 10)
    worker = TrainWorker(config, probe)
    worker.start()
    assert worker.wait(10) and worker.phase == "failed"
    events = worker.drain()
    assert [e["kind"] for e in events] == ["failed"] and str(empty) in events[0]["message"]


@pytest.mark.parametrize("settings, words", [
    (dict(beta=1.2), "beta = 1.2 is not allowed: |beta| must be below 1"),
    (dict(batch_size=512), "larger than the 256 training images"),
    (dict(alpha=0.0), "alpha = 0 is outside 0 to 50 (0 excluded); 6 is the paper's ReLU6"),
    (dict(alpha=-1.0), "alpha = -1 is outside 0 to 50"),
    (dict(alpha=80.0), "alpha = 80 is outside 0 to 50 (0 excluded)"),
    (dict(alpha=float("nan")), "alpha = nan is not a finite number"),
    (dict(tol=0.0), "tol = 0 is outside 0 to 1 (both ends excluded); the tolerance is a relative step size"),
    (dict(tol=-1e-3), "tol = -0.001 is outside 0 to 1"),
    (dict(tol=1.0), "tol = 1 is outside 0 to 1"),
    (dict(tol=float("inf")), "tol = inf is not a finite number"),
    (dict(t_free=0), None),             # refused by the parameter itself (the schema's bounds)
    (dict(batch_size=0), None),
])
def test_invalid_settings_are_refused_with_a_message(refusing_app, settings, words):
    app = refusing_app
    good = {name: getattr(app.train.settings, name) for name in settings}
    try:
        if words is None:
            with pytest.raises(ValueError, match="must be at least 1"):
                app.train.settings.param.update(**settings)
            return
        before = len(app.messages)
        app.train.settings.param.update(**settings)
        press(app, "start")
        assert any(words in t for level, t in app.messages[before:] if level == "error"), app.messages[before:]
        assert app.train.worker is None
    finally:
        app.train.settings.param.update(**good)   # the next case starts from valid settings


def test_alpha_and_the_tolerance_reach_the_trainer(app):
    app.train.settings.param.update(alpha=2.5, tol=0.05, epochs=1)
    press(app, "start")
    drain_until(app, lambda: app.train.outcome == "done", what="the run to finish")
    trainer = app.train.worker.trainer
    assert trainer.net.alpha == 2.5 and trainer.config.alpha == 2.5
    assert trainer.config.tol == 0.05 and trainer.config.eval_tol is None     # evaluation uses tol too
    # A loose tolerance ends the free phases early (the default 1e-3 runs all 10 here).
    assert max(app.train.batches.data["free_steps"]) < TINY["t_free"]
    assert errors(app) == []


def test_the_default_tolerance_runs_the_free_phase_longer(app):
    assert app.train.settings.tol == 1e-3
    app.train.settings.epochs = 1
    press(app, "start")
    drain_until(app, lambda: app.train.outcome == "done", what="the run to finish")
    assert app.train.worker.trainer.config.tol == 1e-3 and app.train.worker.trainer.net.alpha == 6.0
    assert max(app.train.batches.data["free_steps"]) == TINY["t_free"]


def test_a_refusal_banner_goes_away_once_a_run_starts(app, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with monkeypatch.context() as m:   # refused: no data set where it looked, said in the banner
        m.setenv("EXPLORER_DATA", str(empty))
        m.setattr(data_mod, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
        m.setattr(data_mod, "CACHE_DIR", tmp_path / "no-cache")
        press(app, "start")
        assert app.alert.visible and "Fashion-MNIST not found" in app.alert.object
        assert app.train.worker is None
    press(app, "start")
    assert app.train.worker is not None and not app.alert.visible


def test_start_while_training_is_refused(app):
    app.train.settings.epochs = 50
    press(app, "start")
    worker = app.train.worker
    press(app, "start")
    assert app.train.worker is worker
    assert any("in progress" in t for _, t in app.messages)


def test_pages_train_independently_and_shutdown_stops_the_worker_within_a_batch(trained_dir):
    a, b = make_app(epochs=50), make_app()
    try:
        press(a, "start")
        drain_until(a, lambda: rows(a) >= 1, what="page a's first batch")
        assert b.train.worker is None and rows(b) == 0
        worker = a.train.worker
        before = worker.batches
        a.shutdown("page closed")
        assert worker.wait(60) and not worker.alive
        # should_stop is checked between batches: at most the batch in progress ended after the close
        assert worker.batches <= before + 1 and worker.trainer.step == worker.batches
        a.train.drain()
        assert rows(a) <= worker.batches
    finally:
        a.shutdown("test over")
        b.shutdown("test over")


# ---------------------------------------------------------------------------
# Starting from the Relaxation tab's model (fine-tuning)
# ---------------------------------------------------------------------------

def upload_model(app, tmp_path, spec, name="base", seed=7) -> str:
    """Load a checkpoint of ``spec`` into the Relaxation tab as an upload; returns the picker choice."""
    stem = save_checkpoint(HopfieldNetwork(spec, seed=seed), tmp_path / name)
    choice = app.state.add_upload({f"{name}.json": stem.with_suffix(".json").read_bytes(),
                                   f"{name}.safetensors": stem.with_suffix(".safetensors").read_bytes()})
    app.state.model = choice
    return choice


def snapshot(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.named_parameters()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# Not the Train view's architecture (depth 3, width 4), so taking the model's shows.
BASE = hopfield_family(depth=2, input_shape=SAMPLE_SHAPE, width=6, residual=True, alpha=6.0)


def test_the_worker_starts_from_a_copy_of_the_models_weights(app, tmp_path):
    upload_model(app, tmp_path, BASE)
    start = relaxation_model(app.state)
    before = snapshot(start.net)
    settings = app.train.settings
    settings.start_from = "relaxation"
    config = settings.config(start=start)
    assert (config.depth, config.width, config.builder, config.classes) == (2, 6, "resnet", 10)
    probe = Probe(torch.zeros(1, 1, 28, 28), 0, 0, np.zeros((28, 28), np.uint8), ("a",) * 10)
    worker = TrainWorker(config, probe, start=start)
    worker.pause()                 # paused while loading: the trainer is built, no batch runs
    worker.start()
    try:
        wait_for(lambda: worker.holding or worker.phase == "failed", "the trainer to be built")
        trainer = worker.trainer
        assert trainer is not None, worker.drain()
        assert trainer.step == 0 and worker.batches == 0
        net = trainer.net
        assert net is not start.net and net.spec.to_dict() == BASE.to_dict()
        assert same(snapshot(net), before)          # the model's weights ...
        shared = {p.data_ptr() for p in start.net.parameters()} & {p.data_ptr() for p in net.parameters()}
        assert not shared                           # ... copied, not shared
        assert trainer.init_from["model"] == "upload: base"
        worker.resume()
        wait_for(lambda: worker.batches >= 2, "two batches")
    finally:
        worker.stop(closed=True)
        assert worker.wait(10)
    assert not same(snapshot(worker.trainer.net), before)    # training moved the copy ...
    assert same(snapshot(start.net), before)                 # ... never the model


def test_fine_tuning_the_relaxation_models_weights_leaves_that_model_alone(app, tmp_path):
    choice = upload_model(app, tmp_path, BASE)
    base = app.state.base_network()
    before = snapshot(base)
    view = app.train
    view.settings.param.update(start_from="relaxation", epochs=50)
    view.drain()
    assert all(w.disabled for w in view.arch_widgets.values())
    assert "Continues from" in view.start_hint.object and "depth 2, width 6" in view.start_hint.object
    press(app, "start")
    drain_until(app, lambda: rows(app) >= 3, what="three batches")
    # Relaxing in the Relaxation tab while the copy trains: the model's own weights, unchanged.
    app.restart()
    app.run_until_idle()
    assert app.run.request.model_name == choice and rows(app) >= 3
    assert same(snapshot(app.run.request.net), before)
    press(app, "pause")
    assert view.worker.trainer.net.spec.depth == 2 and view.settings.depth == 3   # the setting is ignored
    assert not same(snapshot(view.worker.trainer.net), before) and same(snapshot(base), before)
    # The first probe ran before any step: its Phi curve is the loaded model's own.
    drain_until(app, lambda: view.probe_history.data["step"], what="the first probe")
    assert view.probe_history.data["step"][0] == 0
    x = app.state.samples.normalised(app.state.sample)
    with torch.no_grad():
        res = relax(base, x, steps=TINY["t_free"], beta=0.0, schedule="paper", record=RecordConfig(scalars=True))
    assert np.allclose(view.probe_history.data["ys"][0], res.series("phi")[:, 0].numpy(), rtol=1e-5, atol=1e-5)
    assert "fine-tuning" in view.status.object and choice in view.status.object
    assert errors(app) == [], app.messages


def test_a_fine_tuned_checkpoint_says_what_it_came_from(app, tmp_path, trained_dir):
    choice = upload_model(app, tmp_path, BASE)
    app.train.settings.param.update(start_from="relaxation", alpha=3.0)
    train_pause_and_save(app, "fine", batches=2)
    meta = json.loads((trained_dir / "fine.json").read_text())
    src = meta["provenance"]["fine_tuned_from"]
    assert src["model"] == choice and src["network"] == BASE.name and src["source"] == "uploaded checkpoint base"
    assert src["alpha"] == 6.0 and meta["alpha"] == 3.0            # its own alpha, and the one trained with
    assert meta["network"]["layers"] == BASE.to_dict()["layers"]
    assert (meta["settings"]["depth"], meta["settings"]["width"]) == (2, 6)


def test_a_scratch_run_records_no_origin(app, trained_dir):
    train_pause_and_save(app, "scratch", batches=1)
    meta = json.loads((trained_dir / "scratch.json").read_text())
    assert "fine_tuned_from" not in meta["provenance"] and meta["settings"]["depth"] == 3


def test_a_model_not_shaped_for_fashion_mnist_is_refused_with_a_message(app, tmp_path):
    spec = hopfield_family(depth=2, input_shape=SAMPLE_SHAPE, width=4, n_classes=5)
    choice = upload_model(app, tmp_path, spec, name="five")   # the Relaxation tab takes it: 1x28x28 input
    app.run_until_idle()
    assert app.state.model == choice
    app.train.settings.start_from = "relaxation"
    app.train.drain()
    assert "cannot fine-tune" in app.train.start_hint.object
    press(app, "start")
    words = (f"cannot fine-tune {choice} on Fashion-MNIST: it takes 1x28x28 inputs with 5 output units, "
             "but Fashion-MNIST has 1x28x28 images in 10 classes")
    assert any(words in t for t in errors(app)), app.messages
    assert app.train.worker is None
    # Training from scratch still works.
    app.train.settings.param.update(start_from="scratch", epochs=1)
    app.train.drain()
    assert not any(w.disabled for w in app.train.arch_widgets.values())
    press(app, "start")
    drain_until(app, lambda: app.train.outcome == "done", what="the scratch run")


def test_a_model_for_other_images_is_refused_by_the_settings(app):
    # The Relaxation tab refuses such models; the settings check anyway, whatever hands them one.
    net = HopfieldNetwork(hopfield_family(depth=2, input_shape=(3, 32, 32), width=4))
    app.train.settings.start_from = "relaxation"
    with pytest.raises(SettingError, match="cannot fine-tune cifar on Fashion-MNIST: it takes 3x32x32 inputs"):
        app.train.settings.config(start=StartModel(net, "cifar", {}))
    with pytest.raises(SettingError, match="continuing needs the model loaded in the Relaxation tab"):
        app.train.settings.config()


def test_presentation_mode_folds_the_settings_keeps_start_and_fits_titles_and_legends(app):
    # At 1280x720 in presentation mode the 290-px settings column stayed, "Probe: step size per layer
    # (log)" (about 349 px at 24 px) was cut in its 319 px, and the legends beside the plots squeezed
    # the Phi plot to 34 px (its x tick labels ran together).
    from explorer.app.views.base import FONT_SIZES
    from explorer.app.views.train import LEGEND_BELOW, PRESENT_WIDTH_1024
    app.relaxation_tab()
    app.presentation_controls()
    view = app.train
    view.__panel__()
    desk = {name: getattr(view, name).title.text for name in PRESENT_WIDTH_1024}
    app.present.value = True
    assert view.present and app.scan.present and app.sweep.present and app.gradients.present
    assert not view._left.visible and view.present_bar.visible
    px = FONT_SIZES[True]["title"]
    for name, width in PRESENT_WIDTH_1024.items():
        fig = getattr(view, name)
        # A title runs from the plot area's left edge over a legend beside it, to the figure's edge; at a
        # generous 0.6 em a character (bold sans-serif averages about 0.45).
        room = width - fig.min_border_left
        for line in fig.title.text.split("\n"):
            assert len(line) * 0.6 * px <= room, f"{line!r} overflows {name} at {width} px"
        if name in LEGEND_BELOW:
            assert fig.legend[0] in fig.below and fig.legend[0] not in fig.right, name
    # Start is reachable with the settings folded away, and the settings open on demand.
    view.show_settings.value = True
    assert view._left.visible
    view.show_settings.value = False
    view.present_buttons["start"].param.trigger("value")   # as a click in the page
    assert view.worker is not None
    drain_until(app, lambda: view.outcome == "done", what="the run to finish")
    assert view.present_buttons["start"].disabled is False and view.present_buttons["stop"].disabled is True
    # Back on a desk: as before.
    app.present.value = False
    assert view._left.visible and not view.present_bar.visible
    assert {name: getattr(view, name).title.text for name in PRESENT_WIDTH_1024} == desk
    assert all(getattr(view, name).legend[0] in getattr(view, name).right for name in LEGEND_BELOW)
