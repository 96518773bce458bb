"""Training: equilibrium propagation (and a backprop baseline) on image data.

Command line::

    python -m explorer train --dataset fashion_mnist --depth 5 --width 8 --epochs 3 \
        --tol 1e-3 --out models_zoo/resnet5 [--resume] [--config configs/x.json]
    python -m explorer evaluate models_zoo/resnet5 [--json] [--limit N]

Every setting is defined once, in :class:`explorer.settings.TrainSettings`
(bounds, default, doc); the options below and the fields of
:class:`TrainConfig` are derived from it. A ``--config`` JSON file holds any of
them (command-line options win), and the checkpoint JSON stores them all under
``settings`` with the exact command line under ``provenance``.
The defaults are the paper's recipe (MODEL.md): centered EP, beta 0.15,
T_free 120 / T_nudge 50, warm-started free phase, SGD Nesterov 0.9, lr 0.03
cosine to 2e-6, weight decay 3.5e-4, global gradient norm clipped at 1, MSE.
``--trainer bp`` trains the same graph feed-forward with autograd (batch-norm
and Adam lr 1e-3 by default, as the paper's baseline).

API for other programs (the app trains in its own worker thread)::

    from explorer.train import Trainer, TrainConfig
    trainer = Trainer(TrainConfig(depth=3, width=8, epochs=1, out="runs/x"))
    stop = threading.Event()
    for event in trainer.iterate(should_stop=stop.is_set):
        ...                          # a dict, see below
    # or: trainer.run(callback=fn, should_stop=stop.is_set) -> the last event
    # fine-tuning: Trainer(config, init_net=net, init_from={"model": "..."}) trains a copy of
    # net (its architecture, the config's alpha) and records init_from in the checkpoints

Events are plain dicts with a ``kind``:

- ``start``: config, network name, parameters, resumed position, fine_tuned_from;
- ``batch``: epoch, batch (1-based within the epoch), step (global), loss,
  accuracy (this batch), train_loss / train_accuracy (running over the
  epoch), lr, grad_norm, rate (samples/s), seconds, verdicts (phase -> status
  of this batch's EP phases), phase_steps;
- ``epoch``: epoch, train_loss, train_accuracy, seconds, lr;
- ``eval``: epoch, step, test_accuracy, test_loss, n, verdicts (status ->
  count of batches), mean_free_steps, seconds;
- ``checkpoint``: path, epoch, batch, step, reason ("epoch", "periodic",
  "request", "stop", "final");
- ``stopped`` (should_stop became true; a checkpoint was written first) or
  ``done`` (with the card: test_accuracy on the full test split, wall_time_s).

Pause by not asking the iterator for the next event (it runs only while
consumed) or with ``trainer.pause_event.set()`` / ``.clear()``; stop with
``should_stop`` (checked between batches and inside evaluation) or
``trainer.stop_event.set()``; ask for a checkpoint with
``trainer.request_checkpoint()`` (thread-safe, written at the next batch
boundary). The same events, every ``log_every``-th batch event included, are
appended as JSON lines to ``NAME.metrics.jsonl`` next to the checkpoint.

Resuming (``--resume NAME``) continues with the checkpoint's own settings;
options typed with it override those that may change (``--epochs``, ``--tol``,
``--lr`` ...), and one that would change the checkpoint's network, data or
optimiser (``RESUME_FIXED``) is refused by name. Checkpoints hold the
optimiser state (``extra.optim.*``), the position (``extra.train.position`` =
epoch, batch, step) and the RNG state
(``extra.rng.*``); the learning rate is a pure function of the position and
the shuffling order a pure function of (seed, epoch), so ``--resume``
continues a killed run from its last checkpoint exactly, except that the
first resumed batch starts its free phase from zeros (the warm-start state is
not saved).

Several processes: run under ``torchrun --nproc_per_node N -m explorer train``
(or set RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT). Each rank takes its
share of every epoch (DistributedSampler), EP estimates (which are not
autograd gradients) are averaged with ``all_reduce`` before clipping and the
optimiser step, so replicas stay identical; rank 0 writes checkpoints, logs
and the progress bar.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import json
import math
import os
import shlex
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from . import data as data_mod
from .baseline import BN_PREFIX, FeedForward
from . import settings as settings_mod
from .checkpoint import CheckpointError, _atomic_write, load_checkpoint, save_checkpoint, stem_of
from .dynamics import cost
from .ep import ep_gradient, estimate, run_phases
from .evaluate import (autocast, check_dataset_fits, evaluate, load_split, model_for_checkpoint,
                       one_line, summarise, test_batches)
from .network import OUTPUT, HopfieldNetwork, NetworkSpec, SpecError, build_spec
from .settings import TrainSettings

CONFIG_FIELDS = settings_mod.names(TrainSettings)
# Settings a resumed run keeps from its checkpoint: they define its network, its data and what
# its saved position and optimiser state mean. Others (--epochs, --tol, --lr ...) may change.
RESUME_FIXED = ("dataset", "limit", "normalize", "builder", "depth", "width", "classes", "alpha", "cost", "gains",
                "seed", "trainer", "optimizer", "batch_norm", "batch_size")
MACHINE_SETTINGS = ("device", "out", "progress")   # never taken from a checkpoint: they belong to this machine


class _TrainConfigMethods:
    """Methods of :class:`TrainConfig`, a dataclass whose fields are :class:`TrainSettings`."""

    def resolved(self) -> "TrainConfig":
        """Fill the trainer-dependent defaults and check every value once (against TrainSettings)."""
        c = dataclasses.replace(self)
        c.dataset = _canonical_dataset(c.dataset)
        if c.device == "auto":
            c.device = "cuda" if torch.cuda.is_available() else "cpu"
        for name in ("tol", "eval_tol"):   # 0 (or less): no tolerance, every phase runs to its end
            if isinstance(getattr(c, name), (int, float)) and getattr(c, name) <= 0:
                setattr(c, name, None)
        if c.randaugment is not None and isinstance(c.randaugment, (list, tuple)):
            c.randaugment = [int(v) for v in c.randaugment]
        if c.optimizer is None:
            c.optimizer = "adam" if c.trainer == "bp" else "sgd"
        if c.lr is None:
            c.lr = 1e-3 if c.optimizer == "adam" else 0.03
        if c.batch_norm is None:
            c.batch_norm = c.trainer == "bp"
        for name in CONFIG_FIELDS:
            setattr(c, name, settings_mod.check(TrainSettings, name, getattr(c, name)))
        if c.batch_norm and c.trainer != "bp":
            raise ValueError("batch_norm applies to the bp trainer only (EP has no batch-norm)")
        return c

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from plain values (a file, a checkpoint): unknown names and bad values are named."""
        d = dict(d)
        if isinstance(d.get("dataset"), str):
            d["dataset"] = _canonical_dataset(d["dataset"])
        try:
            return cls(**settings_mod.from_dict(TrainSettings, d))
        except ValueError as exc:
            raise ValueError(f"{exc} (see python -m explorer train --help)") from None

    @classmethod
    def from_file(cls, path) -> "TrainConfig":
        return cls.from_dict(read_config_file(path))

    def describing(self, spec: NetworkSpec) -> "TrainConfig":
        """This config with its architecture fields read from ``spec`` (a run starting from an existing
        network): builder, depth, width (channels of s1), classes and cost; gains (an init setting) None."""
        builder = "resnet13" if spec.name == "hopfield-resnet13" else ("resnet" if spec.residual else "plain")
        return dataclasses.replace(self, builder=builder, depth=spec.depth, width=int(spec.width or self.width),
                                   classes=spec.n_classes, cost=spec.cost, gains=None)

    def build_spec(self) -> NetworkSpec:
        classes = self.classes or data_mod.n_classes(self.dataset)
        shape = tuple(data_mod.input_shape(self.dataset))
        if self.builder == "resnet13":
            return build_spec("resnet13", n_classes=classes, alpha=self.alpha, cost=self.cost,
                              input_shape=shape, width=self.width)
        return build_spec(self.builder, depth=self.depth, width=self.width, n_classes=classes,
                          input_shape=shape, alpha=self.alpha, cost=self.cost, gains=self.gains)


TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", [(n, object, dataclasses.field(default=TrainSettings.param[n].default)) for n in CONFIG_FIELDS],
    bases=(_TrainConfigMethods,))
TrainConfig.__module__ = __name__
TrainConfig.__doc__ = ("Every setting of a training run (stored in the checkpoint as ``settings``): the fields, "
                       "defaults, bounds and docs are those of explorer.settings.TrainSettings.")


def _canonical_dataset(name):
    try:
        return data_mod.canonical_name(name)
    except (data_mod.DataError, ValueError):
        return name    # the schema check names it


def read_config_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"config file {path} is not valid JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise ValueError(f"config file {path} must hold a JSON object of settings")
    d = {k.replace("-", "_"): v for k, v in d.items() if not k.startswith("_")}  # "_comment" keys
    return d


def lr_at(c: TrainConfig, epoch: int, batch: int, batches_per_epoch: int) -> float:
    """The learning rate for (0-based) ``epoch``, ``batch``: cosine from lr to lr_min."""
    if c.lr_schedule == "constant":
        return c.lr
    if c.lr_step == "epoch":
        progress = epoch / c.epochs
    else:
        progress = (epoch * batches_per_epoch + batch) / (c.epochs * batches_per_epoch)
    return c.lr_min + (c.lr - c.lr_min) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class _Skip(Sampler):
    """The indices of an inner sampler from ``start`` on (resuming mid-epoch)."""

    def __init__(self, inner, start: int):
        self.inner, self.start = inner, start

    def __iter__(self):
        return iter(list(self.inner)[self.start:])

    def __len__(self):
        return max(len(self.inner) - self.start, 0)


# ---------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------

class Trainer:
    """One training run; see the module doc string for the event API."""

    def __init__(self, config: TrainConfig, resume: str | bool | None = None, command: str | None = None,
                 init_net: HopfieldNetwork | None = None, init_from: dict | str | None = None):
        """``init_net``: start from a copy of this network's weights instead of building one (fine-tuning).
        Its architecture (layers, edges, cost) replaces the config's builder / depth / width / classes /
        gains / cost, which are rewritten to describe it; alpha stays the config's. The trainer never
        modifies ``init_net`` (it trains a deep copy). ``init_from`` says what ``init_net`` is; saved
        checkpoints record it as ``provenance.fine_tuned_from``."""
        if init_net is not None:
            config = config.describing(init_net.spec)
        self.config = config.resolved()
        self.command = command
        self.init_from = None if init_net is None else \
            (init_from if init_from is not None else {"network": init_net.spec.name})
        self.stop_event = threading.Event()
        self.pause_event = threading.Event()
        self._checkpoint_requested = threading.Event()
        c = self.config
        self.rank, self.world = _init_distributed(c.device)
        self.device = torch.device(c.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if c.threads:
            torch.set_num_threads(c.threads)
        torch.manual_seed(c.seed + self.rank)
        if init_net is not None:
            spec = init_net.spec.with_alpha(c.alpha)
            self.net = _private_copy(init_net, spec).to(self.device)
        else:
            spec = c.build_spec()
            self.net = HopfieldNetwork(spec, seed=c.seed).to(self.device)
        check_dataset_fits(self.net, c.dataset, f"the network ({spec.name})")
        self.model = FeedForward(self.net, batch_norm=c.batch_norm) if c.trainer == "bp" else None
        params = list(self.model.named_trainable() if self.model is not None else self.net.named_parameters())
        self.param_names = [n for n, _ in params]
        self.params = [p for _, p in params]
        if c.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.params, lr=c.lr, momentum=c.momentum,
                                             nesterov=c.nesterov and c.momentum > 0,
                                             weight_decay=c.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(self.params, lr=c.lr, weight_decay=c.weight_decay)
        self.epoch, self.batch, self.step = 0, 0, 0     # position: next batch to run
        self.wall_time = 0.0
        self.card = None
        self.resumed_from = None
        self.stem = stem_of(c.out) if c.out else None
        images, labels = load_split(c.dataset, "train", c.data_path)
        if c.limit is not None:
            images, labels = images[:c.limit], labels[:c.limit]
        transform = data_mod.make_transform(c.dataset, True, normalize=c.normalize, flip=c.flip,
                                            crop_padding=c.crop_padding, randaugment=c.randaugment)
        self.train_set = data_mod.ImageDataset(images, labels, transform)
        self.batches_per_epoch = math.ceil(len(self.train_set) / self.world / c.batch_size)
        if resume:
            self._resume(resume)
        if self.world > 1:  # same start everywhere, whatever each rank loaded
            for p in self.params:
                dist.broadcast(p.data, 0)

    # -- checkpoints ------------------------------------------------------------
    def _resume(self, resume) -> None:
        path = self.stem if resume is True or resume == "auto" else stem_of(resume)
        if path is None:
            raise ValueError("--resume needs a checkpoint: give its path or --out")
        if not path.with_suffix(".json").is_file():
            if resume is True or resume == "auto":
                return  # nothing yet: start fresh
            raise FileNotFoundError(f"checkpoint {path}.json to resume does not exist")
        net, meta = load_checkpoint(path)
        if self.stem is None:  # no --out: continue writing where we resumed from
            self.stem = path
        if net.spec.to_dict() != self.net.spec.to_dict():
            raise CheckpointError(
                f"checkpoint {path} holds {net.spec.name} ({_arch(net.spec)}), but this run builds "
                f"{self.net.spec.name} ({_arch(self.net.spec)}); resume with the same network options "
                f"(--builder/--depth/--width/--classes/--alpha) or choose another --out")
        saved = meta.get("settings", {})
        if saved.get("trainer", "ep") != self.config.trainer:
            raise CheckpointError(f"checkpoint {path} was trained with --trainer {saved.get('trainer')}, "
                                  f"this run uses {self.config.trainer}; use the same trainer")
        extra = meta["extra_tensors"]
        with torch.no_grad():
            for name, p in self.net.named_parameters():
                p.copy_(dict(net.named_parameters())[name].to(p))
        if self.model is not None:
            self.model.load_bn_tensors(extra)
        state = self.optimizer.state
        for name, p in zip(self.param_names, self.params):
            prefix = f"extra.optim.{name}."
            entries = {k[len(prefix):]: v for k, v in extra.items() if k.startswith(prefix)}
            if entries:
                state[p] = {k: (v.to(p.device) if k != "step" else v) for k, v in entries.items()}
        if "extra.train.position" in extra:
            self.epoch, self.batch, self.step = (int(v) for v in extra["extra.train.position"].tolist())
        if "extra.rng.cpu" in extra:
            torch.set_rng_state(extra["extra.rng.cpu"])
        if "extra.rng.cuda" in extra and self.device.type == "cuda":
            torch.cuda.set_rng_state(extra["extra.rng.cuda"], self.device)
        self.wall_time = float(meta.get("training", {}).get("wall_time_s", 0.0))
        self.card = meta.get("card")
        self.resumed_from = {"path": str(path), "epoch": self.epoch, "batch": self.batch, "step": self.step}
        self._trim_metrics()

    def _trim_metrics(self) -> None:
        """Drop log lines written after the checkpoint we resume from (they will be redone)."""
        path = self.metrics_path
        if path is None or not path.is_file() or self.rank != 0 or self.finished:
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if rec.get("step", 0) <= self.step:  # done / stopped lines of earlier sessions stay
                keep.append(line)
        _atomic_write(path, ("\n".join(keep) + "\n" if keep else "").encode())

    @property
    def metrics_path(self) -> Path | None:
        return self.stem.with_name(self.stem.name + ".metrics.jsonl") if self.stem else None

    def settings(self) -> dict:
        s = self.config.to_dict()
        s.update(world_size=self.world, network=self.net.spec.name,
                 train_images=len(self.train_set.labels) * 1)
        return s

    def save(self, path=None, reason: str = "request") -> Path | None:
        """Write the checkpoint (atomically: tensors, then the description). Rank 0 only."""
        stem = stem_of(path) if path else self.stem
        if stem is None or self.rank != 0:
            return None
        extra = {}
        if self.model is not None:
            extra.update(self.model.bn_tensors())
        for name, p in zip(self.param_names, self.params):
            for k, v in self.optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor):
                    extra[f"extra.optim.{name}.{k}"] = v
        extra["extra.train.position"] = torch.tensor([self.epoch, self.batch, self.step], dtype=torch.int64)
        extra["extra.rng.cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            extra["extra.rng.cuda"] = torch.cuda.get_rng_state(self.device)
        prov = {"command": self.command, "host_threads": torch.get_num_threads(),
                "device": str(self.device), "world_size": self.world}
        if self.init_from is not None:
            prov["fine_tuned_from"] = self.init_from
        more = {"training": {"epoch": self.epoch, "batch": self.batch, "step": self.step,
                             "batches_per_epoch": self.batches_per_epoch, "finished": self.finished,
                             "lr": self.optimizer.param_groups[0]["lr"], "wall_time_s": round(self.wall_time, 1),
                             "reason": reason, "resumed_from": self.resumed_from}}
        if self.card is not None:
            more["card"] = self.card
        return save_checkpoint(self.net, stem, self.settings(), prov, extra_tensors=extra, description=more)

    def request_checkpoint(self) -> None:
        """Ask for a checkpoint at the next batch boundary (safe from another thread)."""
        self._checkpoint_requested.set()

    @property
    def finished(self) -> bool:
        return self.epoch >= self.config.epochs

    # -- one batch ---------------------------------------------------------------
    def _train_batch(self, x, target, warm: dict | None):
        c = self.config
        with autocast(self.device, c.amp):
            if c.trainer == "ep":
                state = warm if (warm is not None and c.warm_start and
                                 next(iter(warm.values())).shape[0] == x.shape[0]) else None
                ep = _ep_gradient_amp if c.amp else ep_gradient
                res = ep(self.net, x, target, beta=c.beta, t_free=c.t_free, t_nudge=c.t_nudge,
                         schedule=c.schedule, tol=c.tol, variant=c.variant, state=state)
                grads = [res.grads[n] for n in self.param_names]
                loss, correct = res.loss, res.correct
                info = {"verdicts": {p.phase: p.verdict.status for p in res.phases.phases},
                        "phase_steps": [p.steps for p in res.phases.phases]}
                new_warm = {k: v.detach() for k, v in res.phases.free.state.items()} if c.warm_start else None
                if not math.isfinite(loss):
                    raise ValueError(f"training diverged at step {self.step}: the free-phase cost is "
                                     f"{loss}; lower --lr or --beta, or raise --t-free")
            else:
                self.model.train()
                y = self.model(x).float()
                loss_t = cost(self.net.spec, y, target).mean()
                grads = torch.autograd.grad(loss_t, self.params, allow_unused=True)
                grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params)]
                loss, correct = loss_t.item(), int((y.argmax(1) == target).sum())
                info, new_warm = {}, None
        for p, g in zip(self.params, grads):
            p.grad = g.detach().to(p.dtype).clone()
        if self.world > 1:
            for p in self.params:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, c.clip if c.clip > 0 else float("inf")))
        self.optimizer.step()
        if self.world > 1 and self.model is not None and self.model.bn is not None:
            for b in self.model.bn.buffers():
                if b.dtype.is_floating_point:
                    dist.all_reduce(b, op=dist.ReduceOp.SUM)
                    b.div_(self.world)
        return loss, correct, grad_norm, info, new_warm

    def _evaluate(self, limit, should_stop) -> dict:
        c = self.config
        t0 = time.perf_counter()
        batches = test_batches(c.dataset, data_path=c.data_path, batch_size=c.eval_batch_size, limit=limit,
                               normalize=c.normalize, rank=self.rank, world=self.world)
        counts = evaluate(self.net, batches, trainer=c.trainer, t_free=c.eval_t_free or c.t_free,
                          schedule=c.schedule, tol=c.eval_tol if c.eval_tol is not None else c.tol,
                          model=self.model, amp=c.amp, should_stop=should_stop)
        if self.world > 1:
            keys = ["converged", "not_converged", "cancelled", "non_finite"]
            vec = torch.tensor([counts["correct"], counts["n"], counts["loss_sum"], counts["phase_steps"]]
                               + [counts["verdicts"].get(k, 0) for k in keys], dtype=torch.float64)
            dist.all_reduce(vec)
            v = vec.tolist()
            counts = {"correct": int(v[0]), "n": int(v[1]), "loss_sum": v[2], "phase_steps": int(v[3]),
                      "verdicts": {k: int(n) for k, n in zip(keys, v[4:]) if n}}
        r = summarise(counts)
        return {"test_accuracy": r["accuracy"], "test_loss": r["loss"], "n": r["n"],
                "verdicts": r["verdicts"], "mean_free_steps": r["mean_free_steps"],
                "seconds": round(time.perf_counter() - t0, 2)}

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        c = self.config
        sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=c.seed, drop_last=False)
        sampler.set_epoch(epoch)
        # its own generator: creating the iterator must not draw from the global RNG
        return DataLoader(self.train_set, batch_size=c.batch_size, generator=torch.Generator().manual_seed(0),
                          sampler=_Skip(sampler, start_batch * c.batch_size), num_workers=0)

    # -- the loop ----------------------------------------------------------------
    def iterate(self, should_stop=None):
        """Train, yielding event dicts (module doc string). Resumable, stoppable."""
        c = self.config
        stop = lambda: self.stop_event.is_set() or (should_stop is not None and bool(should_stop()))
        log = _MetricsLog(self.metrics_path if self.rank == 0 else None, c.log_every)
        emit = log.emit
        try:
            yield emit(self._start_event())
            warm = None     # the last free phase's state (warm start), carried across epochs
            while self.epoch < c.epochs:
                epoch, sums, t_epoch = self.epoch, Counter(), time.perf_counter()
                stopped, warm = yield from self._train_epoch(epoch, sums, warm, stop, emit)
                if stopped:
                    yield from self._stopped(emit)
                    return
                yield from self._end_epoch(epoch, sums, t_epoch, stop, emit)
            yield from self._final_card(emit)
            yield emit({"kind": "done", "step": self.step, "card": self.card,
                        "wall_time_s": round(self.wall_time, 1)})
        finally:
            log.close()

    def _start_event(self) -> dict:
        return {"kind": "start", "step": self.step, "network": self.net.spec.name,
                "parameters": self.net.parameter_count(), "config": self.settings(),
                "resumed_from": self.resumed_from, "fine_tuned_from": self.init_from, "rank": self.rank,
                "world_size": self.world, "batches_per_epoch": self.batches_per_epoch}

    def _train_epoch(self, epoch: int, sums: Counter, warm, stop, emit):
        """The epoch's batches from the current position (yielding their events); returns
        (stopped, warm): whether a stop ended it early, and the warm start for the next batch."""
        c = self.config
        loader = self._loader(epoch, self.batch)
        bar = _progress(c.progress and self.rank == 0, total=self.batches_per_epoch, initial=self.batch,
                        desc=f"epoch {epoch + 1}/{c.epochs}")
        try:
            if self._wait_or_stop(stop):
                return True, warm
            for x, target in loader:
                event, warm = self._train_step(epoch, x, target, sums, warm)
                bar.set_postfix(loss=f"{event['train_loss']:.3f}", acc=f"{event['train_accuracy']:.3f}",
                                rate=f"{sums['n'] * self.world / sums['seconds']:.0f}/s", refresh=False)
                bar.update(1)
                yield emit(event)
                yield from self._checkpoint_if_due(emit)
                # checked before the loader fetches (and augments) the next batch, so the
                # saved RNG state is the one that batch needs on resume
                if self._wait_or_stop(stop):
                    return True, warm
            return False, warm
        finally:
            bar.close()

    def _train_step(self, epoch: int, x, target, sums: Counter, warm):
        """One optimiser step on one batch at the scheduled learning rate; its event (``sums``, the
        epoch's running totals, updated) and the warm start it leaves."""
        c = self.config
        t0 = time.perf_counter()
        lr = lr_at(c, epoch, self.batch, self.batches_per_epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x = x.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        loss, correct, grad_norm, info, warm = self._train_batch(x, target, warm)
        dt = time.perf_counter() - t0
        self.wall_time += dt
        self.batch += 1
        self.step += 1
        n = int(target.numel())
        sums.update({"loss": loss * n, "correct": correct, "n": n, "seconds": dt})
        event = {"kind": "batch", "epoch": epoch + 1, "batch": self.batch, "step": self.step,
                 "loss": loss, "accuracy": correct / n, "train_loss": sums["loss"] / sums["n"],
                 "train_accuracy": sums["correct"] / sums["n"], "lr": lr, "grad_norm": grad_norm,
                 "rate": n * self.world / dt, "seconds": round(dt, 4), **info}
        return event, warm

    def _checkpoint_if_due(self, emit):
        """A checkpoint after this batch when one was requested or ``save_every`` steps are up."""
        c = self.config
        periodic = c.save_every and self.step % c.save_every == 0
        if self._checkpoint_requested.is_set() or periodic:
            reason = "request" if self._checkpoint_requested.is_set() else "periodic"
            self._checkpoint_requested.clear()
            yield from self._save_event(emit, reason)

    def _end_epoch(self, epoch: int, sums: Counter, t_epoch: float, stop, emit):
        """After an epoch's batches: its summary, the test evaluation, a checkpoint."""
        c = self.config
        self.epoch, self.batch = epoch + 1, 0
        if sums["n"]:
            yield emit({"kind": "epoch", "epoch": epoch + 1, "step": self.step,
                        "train_loss": _allmean(sums["loss"], sums["n"], self.world),
                        "train_accuracy": _allmean(sums["correct"], sums["n"], self.world),
                        "seconds": round(time.perf_counter() - t_epoch, 1), "lr": lr_at(c, epoch, 0, 1)})
        result = self._evaluate(c.eval_limit, stop)
        yield emit({"kind": "eval", "epoch": epoch + 1, "step": self.step, **result})
        if self.rank == 0 and sums["n"]:
            _print(f"epoch {epoch + 1}/{c.epochs}: train loss {sums['loss'] / sums['n']:.4f} "
                   f"acc {sums['correct'] / sums['n']:.4f}; test acc {result['test_accuracy']:.4f} "
                   f"(n={result['n']}, verdicts {result['verdicts']}) wall {self.wall_time:.0f} s")
        yield from self._save_event(emit, "epoch")

    def _final_card(self, emit):
        """The card: accuracy on the full test split (or final_eval_limit images), once per step."""
        if self.card is not None and self.card.get("step") == self.step:
            return
        c = self.config
        t0 = time.perf_counter()
        result = self._evaluate(c.final_eval_limit, None)
        self.card = {"test_accuracy": result["test_accuracy"], "test_images": result["n"],
                     "test_verdicts": result["verdicts"], "epochs": c.epochs, "step": self.step,
                     "wall_time_s": round(self.wall_time, 1), "eval_seconds": round(time.perf_counter() - t0, 1),
                     "command": self.command,
                     "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "train_subset": (f"first {len(self.train_set)} of the training split"
                                      if c.limit else "full training split"),
                     "trainer": c.trainer, "dataset": c.dataset}
        yield from self._save_event(emit, "final")

    def _wait_or_stop(self, stop) -> bool:
        while self.pause_event.is_set() and not stop():
            time.sleep(0.05)
        return stop()

    def _save_event(self, emit, reason):
        stem = self.save(reason=reason)
        if stem is not None:
            yield emit({"kind": "checkpoint", "path": str(stem), "epoch": self.epoch, "batch": self.batch,
                        "step": self.step, "reason": reason})

    def _stopped(self, emit):
        yield from self._save_event(emit, "stop")
        yield emit({"kind": "stopped", "epoch": self.epoch, "batch": self.batch, "step": self.step})

    def run(self, callback=None, should_stop=None) -> dict:
        """Run to the end (or until stopped), handing each event to ``callback``; the last event."""
        last = None
        for event in self.iterate(should_stop=should_stop):
            if callback is not None:
                callback(event)
            last = event
        return last


@torch.no_grad()
def _ep_gradient_amp(net, x, target, *, beta, t_free, t_nudge, schedule, tol, variant, state):
    """ep_gradient with the phases under bf16 autocast and the Hebbian terms in float32.

    (conv2d_weight on mixed bf16/float32 tensors fails on some CPU backends.)
    """
    x = net.check_input(x)
    phases = run_phases(net, x, target, beta=beta, t_free=t_free, t_nudge=t_nudge, schedule=schedule,
                        tol=tol, variant=variant, state=state)
    with torch.autocast(device_type=x.device.type, enabled=False):
        as32 = lambda st: {k: v.to(net.dtype) for k, v in st.items()}
        for p in phases.phases:
            p.state = as32(p.state)
        return estimate(net, x, target, phases, beta=beta, variant=variant)


def _private_copy(net: HopfieldNetwork, spec: NetworkSpec) -> HopfieldNetwork:
    """A float32 deep copy of ``net`` with ``spec`` (same layers, maybe another alpha): nothing shared."""
    copy_ = copy.deepcopy(net).to(torch.float32)
    copy_.spec = spec
    for p in copy_.parameters():
        p.grad = None
    return copy_


def _arch(spec: NetworkSpec) -> str:
    return (f"{'residual' if spec.residual else 'plain'}, depth {spec.depth}, "
            f"input {tuple(spec.input_shape)}, {spec.n_classes} classes, "
            f"s1 {spec.shape_of('s1') if spec.depth else '-'}")


def _allmean(total, n, world):
    if world > 1:
        v = torch.tensor([float(total), float(n)], dtype=torch.float64)
        dist.all_reduce(v)
        total, n = v.tolist()
    return total / max(n, 1)


def _init_distributed(device: str) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _print(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _progress(enabled: bool, **kw):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm
    tty = sys.stderr.isatty()
    return tqdm(file=sys.stderr, mininterval=0.5 if tty else 60.0, dynamic_ncols=tty, **kw)


class _NoBar:
    def set_postfix(self, *a, **k): pass
    def update(self, *a): pass
    def close(self): pass


class _MetricsLog:
    """Append events as JSON lines (batch events every ``every``-th step only)."""

    def __init__(self, path: Path | None, every: int):
        self.fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(path, "a")
        self.every = max(int(every), 0)

    def emit(self, event: dict) -> dict:
        event.setdefault("time", round(time.time(), 3))
        if self.fh is not None:
            if event["kind"] != "batch" or (self.every and event["step"] % self.every == 0):
                rec = {k: v for k, v in event.items() if k != "config"} if event["kind"] != "start" else event
                self.fh.write(json.dumps(rec) + "\n")
                self.fh.flush()
        return event

    def close(self):
        if self.fh is not None:
            self.fh.close()
            self.fh = None


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def add_train_options(p: argparse.ArgumentParser) -> None:
    """The ``train`` options: --config, --resume, --init, and one option per TrainSettings setting."""
    p.add_argument("--config", help="JSON file of settings (the names of --help's options, with _); options "
                                    "given here win")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint with its own settings (options given here override those "
                        "that can change, e.g. --epochs); without a value: --out, if it exists, else start fresh")
    p.add_argument("--init", metavar="CHECKPOINT", default=None,
                   help="fine-tune: start from a copy of this checkpoint's weights (its architecture replaces "
                        "the network options; its alpha, unless --alpha is given)")
    settings_mod.add_arguments(p, TrainSettings, only=("out",))
    for title, group in settings_mod.TRAIN_GROUPS.items():
        settings_mod.add_arguments(p.add_argument_group(title), TrainSettings, only=group)


def parse_train_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``train`` options alone (for tests and other front ends)."""
    p = argparse.ArgumentParser(prog="python -m explorer train")
    add_train_options(p)
    return p.parse_args(argv)


def config_from_args(args) -> TrainConfig:
    """TrainSettings defaults, then a resumed checkpoint's settings, then the --config file, then the
    options given; options that would change what a resumed checkpoint holds are refused by name."""
    from_file = {}
    if getattr(args, "config", None):
        raw = read_config_file(args.config)
        if isinstance(raw.get("dataset"), str):
            raw["dataset"] = _canonical_dataset(raw["dataset"])
        try:
            from_file = settings_mod.from_dict(TrainSettings, raw)
        except ValueError as exc:
            raise ValueError(f"config file {args.config}: {exc}") from None
    typed = settings_mod.given(args, TrainSettings)
    stored, path = resume_settings(args)
    _check_resume(path, stored, from_file, typed)
    values = settings_mod.from_args(args, TrainSettings, base={**stored, **from_file})
    return TrainConfig(**values)


def resume_settings(args) -> tuple[dict, Path | None]:
    """The settings stored in the checkpoint ``--resume`` continues (empty if none; read from its JSON
    description only), and its path."""
    resume = getattr(args, "resume", None)
    if resume is None:
        return {}, None
    out = getattr(args, "out", None)
    path = stem_of(resume) if resume not in ("auto", True) else (stem_of(out) if out else None)
    if path is None or not path.with_suffix(".json").is_file():
        return {}, path        # nothing to continue: the trainer starts fresh or says why
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}.json to resume: {exc}") from exc
    saved = meta.get("settings") if isinstance(meta, dict) else None
    if not isinstance(saved, dict):
        return {}, path
    kept = {k: v for k, v in saved.items() if k in CONFIG_FIELDS and k not in MACHINE_SETTINGS}
    try:
        return settings_mod.from_dict(TrainSettings, kept), path
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}.json holds a setting that cannot be resumed: {exc}") from None


def _check_resume(path, stored: dict, from_file: dict, typed: dict) -> None:
    """Refuse, by name, options that would change what the resumed checkpoint holds."""
    clashes = []
    for name in RESUME_FIXED:
        for source, asked in (("", typed), (" (in the --config file)", from_file)):
            if name in asked and stored.get(name) is not None and asked[name] != stored[name]:
                clashes.append(f"{settings_mod.option(name)} {settings_mod._show(asked[name])}{source} "
                               f"(it has {settings_mod._show(stored[name])})")
                break
    if clashes:
        raise CheckpointError(
            f"cannot resume {path} with other settings: {'; '.join(clashes)}. A resumed run keeps its "
            f"checkpoint's network, data and optimiser; leave those options out to continue it, or choose "
            f"another --out to start a new run")


def cmd_train(args) -> int:
    if getattr(args, "init", None) and args.resume is not None:
        raise ValueError("--init starts a new run from a checkpoint's weights and --resume continues a run: "
                         "give one of them")
    config = config_from_args(args)
    command = "python -m explorer " + shlex.join(sys.argv[1:]) if sys.argv[1:] else None
    init_net = init_from = None
    if getattr(args, "init", None):
        init_net, _ = load_checkpoint(args.init)    # safetensors and JSON: nothing is unpickled
        init_from = {"checkpoint": str(stem_of(args.init)), "network": init_net.spec.name}
        if "alpha" not in vars(args):
            config = dataclasses.replace(config, alpha=float(init_net.alpha))
    try:
        trainer = Trainer(config, resume=args.resume, command=command, init_net=init_net, init_from=init_from)
    except (data_mod.DataError, SpecError) as exc:
        raise ValueError(one_line(exc)) from exc
    if trainer.finished and trainer.card is not None:
        _print(f"{trainer.stem} already finished ({trainer.epoch} epochs, test accuracy "
               f"{trainer.card['test_accuracy']:.4f}); nothing to do (raise --epochs to train on)")
        return 0
    if trainer.resumed_from and trainer.rank == 0:
        _print(f"resuming {trainer.resumed_from['path']} at epoch {trainer.epoch + 1}, "
               f"batch {trainer.batch}, step {trainer.step}")
    try:
        last = trainer.run()
    except data_mod.DataError as exc:
        raise ValueError(one_line(exc)) from exc
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if trainer.rank == 0 and last and last["kind"] == "done":
        card = last["card"]
        _print(f"done: test accuracy {card['test_accuracy']:.4f} on {card['test_images']} images, "
               f"training wall time {card['wall_time_s']:.0f} s"
               + (f"; checkpoint {trainer.stem}" if trainer.stem else ""))
    return 0


def register_train(sub) -> None:
    p = sub.add_parser("train", help="train with EP (or a BP baseline) and write checkpoints",
                       description="Train a Hopfield network with equilibrium propagation (or the "
                                   "feed-forward backprop baseline). Defaults are the paper's recipe.")
    add_train_options(p)
    p.set_defaults(func=cmd_train)


def _register_evaluate(sub) -> None:
    from .evaluate import register
    register(sub)


CLI_COMMANDS = [("train", register_train), ("evaluate", _register_evaluate)]
