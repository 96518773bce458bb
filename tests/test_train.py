"""Training: events, checkpoints with cards, stop/kill and resume, BP baseline, evaluation, errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from explorer import hopfield_resnet13
from explorer import data as data_mod
from explorer.baseline import FeedForward
from explorer.checkpoint import load_checkpoint
from explorer.cli import main
from explorer.train import TrainConfig, Trainer, config_from_args, lr_at, parse_train_args

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(depth=2, width=2, epochs=1, batch_size=16, limit=64, t_free=8, t_nudge=4, eval_limit=32,
            final_eval_limit=32, eval_batch_size=32, progress=False)
TINY_ARGS = ["--depth", "2", "--width", "2", "--batch-size", "16", "--t-free", "8", "--t-nudge", "4",
             "--eval-limit", "32", "--final-eval-limit", "32", "--no-progress"]


def tiny(tmp_path, name="run", **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **kw})


def weights(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_training_streams_events_and_writes_a_checkpoint_with_card(tmp_path):
    events = []
    last = Trainer(tiny(tmp_path, epochs=2, log_every=2)).run(callback=events.append)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "start" and last["kind"] == "done" and kinds.count("batch") == 8
    assert kinds.count("epoch") == 2 and kinds.count("eval") == 2
    batch = next(e for e in events if e["kind"] == "batch")
    assert {"loss", "accuracy", "train_accuracy", "lr", "rate", "verdicts", "phase_steps"} <= set(batch)
    assert set(batch["verdicts"]) == {"free", "nudged+", "nudged-"}
    ev = next(e for e in events if e["kind"] == "eval")
    assert ev["n"] == 32 and 0 <= ev["test_accuracy"] <= 1 and sum(ev["verdicts"].values()) == 1

    net, meta = load_checkpoint(tmp_path / "run")
    assert meta["settings"]["trainer"] == "ep" and meta["settings"]["t_free"] == 8
    assert meta["settings"]["beta"] == 0.15 and meta["settings"]["optimizer"] == "sgd"
    card = meta["card"]
    assert card["test_accuracy"] == last["card"]["test_accuracy"] and card["epochs"] == 2
    assert card["train_subset"] == "first 64 of the training split" and card["test_images"] == 32
    assert meta["training"]["finished"] and meta["training"]["step"] == 8
    assert "extra.optim.weights.s0_s1.momentum_buffer" in meta["extra_tensors"]
    lines = [json.loads(l) for l in (tmp_path / "run.metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l["kind"] == "batch"] == [2, 4, 6, 8]
    assert {"start", "epoch", "eval", "checkpoint", "done"} <= {l["kind"] for l in lines}


def test_init_fine_tunes_a_copy_of_a_checkpoint_from_the_command_line(tmp_path, capsys):
    Trainer(tiny(tmp_path, "base", depth=3, width=3, alpha=4.0)).run()
    base, _ = load_checkpoint(tmp_path / "base")
    assert main(["train", *TINY_ARGS, "--limit", "32", "--epochs", "1", "--init", str(tmp_path / "base"),
                 "--out", str(tmp_path / "tuned")]) == 0
    tuned, meta = load_checkpoint(tmp_path / "tuned")
    assert tuned.spec.depth == 3 and tuned.spec.width == 3 and tuned.alpha == 4.0   # the checkpoint's, not 2x2
    assert meta["provenance"]["fine_tuned_from"]["checkpoint"] == str(tmp_path / "base")
    moved = [k for k, v in tuned.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert moved, "fine-tuning changed no weight"
    again, _ = load_checkpoint(tmp_path / "base")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in base.state_dict().items())  # source untouched
    err = _error_line(capsys, ["train", *TINY_ARGS, "--init", str(tmp_path / "base"), "--resume"])
    assert "--init" in err and "--resume" in err
    err = _error_line(capsys, ["train", *TINY_ARGS, "--init", str(tmp_path / "absent")])
    assert "does not exist" in err


@pytest.mark.parametrize("trainer", ["ep", "bp"])
def test_stopped_run_resumes_where_it_stopped_and_matches_an_uninterrupted_run(tmp_path, trainer):
    # warm start off: the warm-start state is the one thing a checkpoint does not keep.
    # flip on: the augmentation draws from the RNG that the checkpoint restores.
    # bp: Adam state and batch-norm statistics must come back too.
    common = dict(epochs=2, warm_start=False, flip=True, lr_step="batch", trainer=trainer)
    whole = Trainer(tiny(tmp_path, "whole", **common))
    whole.run()

    first = Trainer(tiny(tmp_path, "split", **common))
    seen = []
    stop_after = lambda: sum(e["kind"] == "batch" for e in seen) >= 5
    last = first.run(callback=seen.append, should_stop=stop_after)
    assert last["kind"] == "stopped" and seen[-2]["kind"] == "checkpoint" and seen[-2]["reason"] == "stop"
    _, meta = load_checkpoint(tmp_path / "split")
    assert meta["training"]["epoch"] == 1 and meta["training"]["batch"] == 1 and meta["training"]["step"] == 5
    assert "card" not in meta

    second = Trainer(tiny(tmp_path, "split", **common), resume=True)
    assert (second.epoch, second.batch, second.step) == (1, 1, 5)
    events = list(second.iterate())
    batches = [e for e in events if e["kind"] == "batch"]
    assert (batches[0]["epoch"], batches[0]["batch"], batches[0]["step"]) == (2, 2, 6)
    assert len(batches) == 3 and events[-1]["kind"] == "done"
    for k, v in weights(whole.net).items():
        torch.testing.assert_close(weights(second.net)[k], v, rtol=1e-5, atol=1e-6)
    if trainer == "bp":
        for k, v in whole.model.bn_tensors().items():
            torch.testing.assert_close(second.model.bn_tensors()[k], v, rtol=1e-5, atol=1e-6)


def test_resume_with_no_options_continues_with_the_checkpoints_own_settings(tmp_path, capsys):
    # As a new user would after a kill: the run had non-default settings; resume names only the checkpoint.
    stem = tmp_path / "mine"
    first = Trainer(tiny(tmp_path, "mine", depth=3, width=3, epochs=2, limit=48, alpha=4.0, t_free=6))
    seen = []
    last = first.run(callback=seen.append, should_stop=lambda: sum(e["kind"] == "batch" for e in seen) >= 4)
    assert last["kind"] == "stopped"
    _, meta = load_checkpoint(stem)
    assert meta["training"]["step"] == 4 and not meta["training"]["finished"]

    err = _error_line(capsys, ["train", "--resume", str(stem), "--depth", "5", "--width", "3", "--alpha", "6"])
    assert "--depth 5 (it has 3)" in err and "--alpha 6 (it has 4)" in err and "--width" not in err
    assert main(["train", "--resume", str(stem), "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().err
    net, meta = load_checkpoint(stem)
    assert (net.spec.depth, net.spec.width, net.alpha) == (3, 3, 4.0)
    s = meta["settings"]
    assert (s["t_free"], s["limit"], s["batch_size"], s["epochs"]) == (6, 48, 16, 2)
    assert meta["training"]["finished"] and meta["training"]["step"] == 6 and meta["card"]["test_images"] == 32
    # a setting that may change (more epochs) overrides the stored one
    assert main(["train", "--resume", str(stem), "--epochs", "3", "--no-progress"]) == 0
    _, meta = load_checkpoint(stem)
    assert meta["settings"]["epochs"] == 3 and meta["training"]["step"] == 9


def test_checkpoint_on_request_and_pause_from_the_app(tmp_path):
    trainer = Trainer(tiny(tmp_path))
    kinds = []
    for event in trainer.iterate():
        kinds.append((event["kind"], event.get("reason")))
        if event["kind"] == "batch" and event["step"] == 1:
            trainer.request_checkpoint()
    assert kinds[2] == ("checkpoint", "request")
    assert load_checkpoint(tmp_path / "run")[1]["training"]["step"] == 4

    stopper = Trainer(tiny(tmp_path, "stopped"))
    stopper.pause_event.set()
    stopper.stop_event.set()  # a paused run still stops
    assert stopper.run()["kind"] == "stopped"


def test_killed_process_resumes_from_its_periodic_checkpoint(tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "explorer", "train", *TINY_ARGS, "--limit", "64", "--epochs", "200",
            "--save-every", "3", "--log-every", "1", "--out", str(out), "--resume"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out.with_name("killed.metrics.jsonl")
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            if metrics.exists() and '"reason": "periodic"' in metrics.read_text():
                break
            time.sleep(0.05)
        else:
            pytest.fail("no periodic checkpoint within 60 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    _, meta = load_checkpoint(out)
    saved_step = meta["training"]["step"]
    assert 3 <= saved_step < 800 and not meta["training"]["finished"]

    # resume with fewer epochs so the test stays short: same network, same position
    args[args.index("--epochs") + 1] = str(meta["training"]["epoch"] + 1)
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"step {saved_step}" in done.stderr and "resuming" in done.stderr
    _, meta = load_checkpoint(out)
    assert meta["training"]["finished"] and meta["card"]["test_images"] == 32
    lines = [json.loads(l) for l in metrics.read_text().splitlines()]
    start = [l for l in lines if l["kind"] == "start"][-1]
    assert start["resumed_from"]["step"] == saved_step
    steps = [l["step"] for l in lines if l["kind"] == "batch"]
    assert steps == sorted(steps) and steps[0] == 1  # no batch logged twice


def test_bp_baseline_saves_batch_norm_and_evaluates_feed_forward(tmp_path, capsys):
    Trainer(tiny(tmp_path, "bp", trainer="bp")).run()
    net, meta = load_checkpoint(tmp_path / "bp")
    s = meta["settings"]
    assert (s["trainer"], s["batch_norm"], s["optimizer"], s["lr"]) == ("bp", True, "adam", 1e-3)
    assert {"extra.bn.s1.running_mean", "extra.bn.s2.weight"} <= set(meta["extra_tensors"])
    assert set(net.state_dict()) == {"weights.s0_s1", "weights.s1_s2", "weights.s0_s2", "weights.s2_y",
                                     "biases.s1", "biases.s2", "biases.y"}
    assert main(["evaluate", str(tmp_path / "bp"), "--limit", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trainer"] == "bp" and out["verdicts"] == {}
    assert out["accuracy"] == pytest.approx(meta["card"]["test_accuracy"])


def test_feed_forward_uses_the_hopfield_weights_without_batch_norm(small_net):
    net = small_net(residual=True)
    model = FeedForward(net, batch_norm=False)
    y = model(torch.rand(3, *net.spec.input_shape, dtype=net.dtype))
    assert y.shape == (3, net.spec.n_classes)
    y.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert list(model.named_trainable()) == list(net.named_parameters())


def test_evaluate_relaxes_an_ep_checkpoint_and_counts_verdicts(tmp_path, capsys):
    Trainer(tiny(tmp_path)).run()
    assert main(["evaluate", str(tmp_path / "run"), "--limit", "40", "--batch", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 40 and out["trainer"] == "ep" and sum(out["verdicts"].values()) == 3
    assert out["t_free"] == 8
    assert main(["evaluate", str(tmp_path / "run"), "--limit", "16"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "free-phase verdicts over 1 batches" in text


def test_amp_and_one_sided_ep_train(tmp_path):
    for name, kw in (("amp", dict(amp=True)), ("one_sided", dict(variant="one_sided"))):
        last = Trainer(tiny(tmp_path, name, **kw)).run()
        assert last["kind"] == "done"
        net, _ = load_checkpoint(tmp_path / name)
        net.check_finite()


def test_cosine_schedule_runs_from_lr_to_lr_min():
    c = TrainConfig(epochs=4, lr=0.03, lr_min=2e-6).resolved()
    assert lr_at(c, 0, 0, 10) == pytest.approx(0.03)
    assert lr_at(c, 2, 0, 10) == pytest.approx((0.03 + 2e-6) / 2)
    assert lr_at(c, 4, 0, 10) == pytest.approx(2e-6)
    b = TrainConfig(epochs=4, lr_step="batch").resolved()
    assert lr_at(b, 0, 5, 10) < lr_at(b, 0, 4, 10) < 0.03


def test_cifar10_resnet13_config_is_the_papers_recipe():
    args = parse_train_args(["--config", str(ROOT / "configs" / "cifar10_resnet13.json")])
    c = config_from_args(args).resolved()
    assert c.build_spec().to_dict() == hopfield_resnet13().to_dict()
    assert (c.dataset, c.flip, c.crop_padding, c.randaugment) == ("cifar10", True, 4, [3, 9])
    assert (c.weight_decay, c.beta, c.epochs, c.batch_size) == (2.5e-4, 0.1, 300, 128)
    assert (c.t_free, c.t_nudge, c.optimizer, c.lr, c.momentum, c.nesterov, c.clip) == \
        (120, 50, "sgd", 0.03, 0.9, True, 1.0)
    # options on the command line win over the file
    assert config_from_args(parse_train_args(["--config", str(ROOT / "configs" / "cifar10_resnet13.json"),
                                              "--epochs", "2"])).epochs == 2


def _error_line(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_inputs_give_one_line_naming_the_problem_and_the_fix(tmp_path, capsys, monkeypatch):
    base = ["train", *TINY_ARGS, "--limit", "16", "--epochs", "1"]
    Trainer(tiny(tmp_path, "resnet")).run()
    # resuming takes the checkpoint's settings: an option that would change its network is refused by name
    err = _error_line(capsys, base + ["--builder", "plain", "--out", str(tmp_path / "resnet"), "--resume"])
    assert "cannot resume" in err and "--builder plain (it has resnet)" in err and "leave those options out" in err
    err = _error_line(capsys, base + ["--classes", "7"])
    assert "7 output units" in err and "10 classes" in err and "--classes 10" in err
    err = _error_line(capsys, base + ["--data-path", str(tmp_path / "nowhere")])
    assert "does not exist" in err and "--data-path" in err
    err = _error_line(capsys, base + ["--data-path", str(tmp_path)])
    assert "not found at the given path" in err and str(tmp_path) in err
    err = _error_line(capsys, ["evaluate", str(tmp_path / "resnet"), "--dataset", "cifar100"])
    assert "10 output units" in err and "100 classes" in err
    err = _error_line(capsys, base + ["--resume", str(tmp_path / "absent")])
    assert "does not exist" in err

    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setattr(data_mod, "CACHE_DIR", tmp_path / "no-cache")
    monkeypatch.delenv(data_mod.ENV_VAR, raising=False)
    err = _error_line(capsys, base)
    assert "Fashion-MNIST not found" in err and "Fix:" in err
    err = _error_line(capsys, ["train", "--dataset", "cifar10", *TINY_ARGS])
    assert "cifar10 not found" in err and "EXPLORER_DATA" in err
