"""Training in the app: the Train view's settings and its worker thread (no Panel, no Bokeh).

One :class:`TrainWorker` per page owns an :class:`explorer.train.Trainer` and
consumes its event iterator on a background thread. It appends plain
Python / numpy events to a bounded deque that the page's periodic callback
drains (``main.py``), exactly as the relaxation worker does; it never touches
Bokeh models.

- Pause is "do not ask the trainer for its next event": the iterator runs only
  while consumed, so a pause takes effect at the next batch boundary and the
  weights do not move while paused (a save can then run on the worker).
- Stop and a closed page both go through the trainer's ``should_stop``
  (checked between batches and inside evaluation), so a worker ends within one
  batch.
- Saves run on the worker thread between batches (the weights are consistent
  there); once the thread has ended nothing else changes them, and a save runs
  on the caller's thread.
- A run starts from scratch (a network built from the settings) or continues
  from the Relaxation tab's model (:func:`relaxation_model`): the trainer
  trains a private deep copy of that network, so the Relaxation tab never sees
  half-updated weights, and saved checkpoints name it under
  ``provenance.fine_tuned_from``.
- Every ``probe_every`` batches (and before the first and after the last) the
  worker relaxes one fixed probe image, a shipped sample, through the current
  weights with recording on and queues its free-phase dynamics: the step size
  of every layer, Phi, the output y and the predicted class against the label.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import param
import torch

from .. import data as data_mod
from .. import settings as schema
from ..dynamics import check_beta, relax
from ..evaluate import one_line
from ..network import OUTPUT, HopfieldNetwork, NetworkSpec, SpecError
from ..record import RecordConfig
from ..train import Trainer, TrainConfig
from .jobs import run_in_background
from .state import UNTRAINED, SettingError, check_save_name, trained_dir
from .worker import stop_at_exit

log = logging.getLogger("explorer.app")

EVENT_LIMIT = 20_000    # events waiting for the page; the oldest go first (the page drains often)
TOL = 1e-3              # default phase tolerance while training and evaluating (interactive runs)
DATASET = "fashion_mnist"
SCRATCH, RELAXATION = "scratch", "relaxation"
START_FROM = {"New network (Network settings)": SCRATCH, "Relaxation tab's model (fine-tune)": RELAXATION}
PROBE_PHASE_STEPS = None  # the probe runs the full T_free (no tolerance), so its curves are comparable
# The training settings the view shows (the rest of a run's TrainConfig is fixed by config()).
SHOWN = ("depth", "width", "alpha", "beta", "t_free", "t_nudge", "tol", "limit", "eval_limit", "epochs",
         "batch_size", "lr")
# Checked against explorer.settings.TrainSettings at Start, not at the parameter (see TrainSettings).
UNCHECKED = {"alpha": "; 6 is the paper's ReLU6, 1 the hard sigmoid",
                 "tol": f"; the tolerance is a relative step size (default {TOL:g}; smaller is stricter and slower)"}


@dataclasses.dataclass(frozen=True)
class StartModel:
    """The network a run continues from: the Relaxation tab's model when Start was pressed."""
    net: HopfieldNetwork      # the Relaxation tab's network: only read (the trainer trains a deep copy)
    choice: str               # its model-picker choice
    provenance: dict          # what saved checkpoints record as provenance.fine_tuned_from

    @property
    def spec(self) -> NetworkSpec:
        return self.net.spec


def architecture_text(spec: NetworkSpec) -> str:
    """Depth, width, residual, classes and alpha of a network, in words (for hints and messages)."""
    return (f"depth {spec.depth}, width {spec.width or 0}, {'residual' if spec.residual else 'plain'}, "
            f"{spec.n_classes} classes, its own α {spec.alpha:g}")


def check_fits_fashion_mnist(spec: NetworkSpec, name: str) -> None:
    """SettingError unless the network takes Fashion-MNIST's 1x28x28 images and has its 10 classes."""
    shape, classes = tuple(data_mod.input_shape(DATASET)), data_mod.n_classes(DATASET)
    if tuple(spec.input_shape) != shape or spec.n_classes != classes:
        got = "x".join(map(str, spec.input_shape))
        raise SettingError(f"cannot fine-tune {name} on Fashion-MNIST: it takes {got} inputs with "
                           f"{spec.n_classes} output units, but Fashion-MNIST has {'x'.join(map(str, shape))} "
                           f"images in {classes} classes; load such a model in the Relaxation tab, or "
                           "start from scratch")


def relaxation_model(app_state) -> StartModel:
    """The model the Relaxation tab has loaded (an ``ExplorerState``), to continue training from."""
    choice = app_state.model
    try:
        net = app_state.base_network(choice)
    except SettingError as exc:
        raise SettingError(f"cannot continue from {choice}: {exc}") from exc
    check_fits_fashion_mnist(net.spec, choice)
    prov = {"model": choice, "network": net.spec.name, "alpha": float(net.spec.alpha)}
    loaded = app_state.loaded.get(choice)
    if loaded is not None:
        prov["source"] = loaded.source
        meta = loaded.description or {}
        created = (meta.get("provenance") or {}).get("created")
        acc = (meta.get("card") or {}).get("test_accuracy")
        if created:
            prov["created"] = created
        if isinstance(acc, (int, float)):
            prov["test_accuracy"] = float(acc)
    elif choice in UNTRAINED:
        prov["source"] = "the untrained builder (seed 0)"
    return StartModel(net, choice, prov)


class TrainSettings(schema.TrainSettings):
    """The Train view's controls: :class:`explorer.settings.TrainSettings` (its bounds and docs), with
    defaults that train a small residual network in a few minutes on a CPU, and the view's own
    choices and buttons. The view shows a few of the settings; :meth:`config` fills the rest.

    alpha and tol are not bounded at the parameter here: a typed value out of range reaches
    :meth:`config`, which checks it against the schema's bounds and refuses it with a SettingError
    (a message on the page) instead of a widget silently snapping back.
    """

    start_from = param.Selector(default=SCRATCH, objects=START_FROM, precedence=0.05, label="Start from",
                                doc="Train a new network built from the Network settings, or continue from "
                                    "the weights of the model loaded in the Relaxation tab (a zoo, trained or "
                                    "uploaded checkpoint for 1x28x28 images in 10 classes): its architecture "
                                    "replaces depth, width and residual, and its weights are copied at Start.")
    residual = param.Boolean(default=True, precedence=0.12,
                             doc="Residual (skip) edges into every even layer (off: the plain network); "
                                 "sets the builder, resnet or plain.")
    alpha = param.Number(bounds=None, step=0.5, label="Clipping threshold α",
                         doc="alpha of the activation min(max(u, 0), alpha), above 0 and at most 50 "
                             "(6: the paper's ReLU6; 1: the hard sigmoid). Also used when continuing "
                             "from a model trained with another alpha.")
    limit = param.Integer(default=6000, precedence=0.20, label="Training images",
                          doc="Train on the first N images of the Fashion-MNIST training split.")
    eval_limit = param.Integer(default=500, precedence=0.21, label="Test images",
                               doc="Test images evaluated after every epoch (and for the final card).")
    epochs = param.Integer(default=2)
    batch_size = param.Integer(default=64)
    t_free = param.Integer(default=40, doc="Most iterations of each batch's free phase (it stops early when "
                                           "converged).")
    t_nudge = param.Integer(default=15)
    tol = param.Number(default=TOL, bounds=None,
                       doc="Every phase (free and nudged, and the test evaluation) stops early once its "
                           "largest relative step ||s_t - s_(t-1)|| / ||s_t|| falls below this; above 0 and "
                           "below 1. Type e.g. 1e-4 for tighter fixed points (slower), 1e-2 for looser.")
    lr = param.Number(default=0.03, doc="SGD (Nesterov 0.9) learning rate, cosine-decayed per batch over the run.")
    probe_every = param.Integer(default=20, bounds=(1, 10_000), precedence=0.40, label="Probe every N batches",
                                doc="How often the probe image is relaxed through the current weights.")
    save_name = param.String(default="my-run", precedence=0.50, label="Checkpoint name",
                             doc="Letters, digits, '-' and '_'; the model picker lists it as 'trained: NAME'.")
    start = param.Event(precedence=0.60, label="Start",
                        doc="Train with these settings, from scratch or from the Relaxation tab's model.")
    pause = param.Event(precedence=0.61, label="Pause", doc="Hold training after the current batch.")
    resume = param.Event(precedence=0.62, label="Resume", doc="Continue a paused run.")
    stop = param.Event(precedence=0.63, label="Stop", doc="End the run after the current batch.")
    save = param.Event(precedence=0.64, label="Save", doc="Save the current weights as a checkpoint.")

    @property
    def continuing(self) -> bool:
        return self.start_from == RELAXATION

    def config(self, check_data: bool = True, start: StartModel | None = None) -> TrainConfig:
        """The run these settings describe, or SettingError saying why not.

        ``start``: the model to continue from (:func:`relaxation_model`), needed when ``start_from``
        says so; its architecture then replaces depth, width and residual.
        """
        for name, why in UNCHECKED.items():   # the bounds the parameters leave to this check (class doc)
            try:   # tol as a relaxation's (above 0): 0 would silently mean "no tolerance" to the trainer
                schema.check(schema.RunSettings, name, getattr(self, name))
            except ValueError as exc:
                raise SettingError(f"{exc}{why}") from None
        c = TrainConfig(**{n: getattr(self, n) for n in SHOWN}, dataset=DATASET,
                        final_eval_limit=int(self.eval_limit), builder="resnet" if self.residual else "plain",
                        lr_step="batch",        # a short run: decay smoothly, not in epoch-sized steps
                        out=None,               # nothing written unless the person saves
                        log_every=0, progress=False)
        if self.continuing:
            if start is None:
                raise SettingError("continuing needs the model loaded in the Relaxation tab; choose one there, "
                                   "or start from scratch")
            check_fits_fashion_mnist(start.spec, start.choice)
            c = c.describing(start.spec)   # as the trainer will (the saved settings describe the model)
        try:
            resolved = c.resolved()
            spec = start.spec.with_alpha(resolved.alpha) if self.continuing else resolved.build_spec()
        except SpecError as exc:
            raise SettingError(f"cannot build that network: {exc}") from exc
        except ValueError as exc:
            raise SettingError(f"invalid training setting: {exc}") from exc
        try:
            check_beta(spec, c.beta)
        except ValueError as exc:
            raise SettingError(f"beta = {c.beta:g} is not allowed: {exc}") from exc
        if c.batch_size > c.limit:
            raise SettingError(f"batch size {c.batch_size} is larger than the {c.limit} training images; "
                               "lower the batch size or train on more images")
        if check_data:
            try:
                data_mod.find_fashion_mnist(c.data_path)
            except data_mod.DataError as exc:
                raise SettingError(f"cannot train: {one_line(exc)}") from exc
        return c


@dataclasses.dataclass
class Probe:
    """The fixed image whose dynamics are shown during training (a shipped sample)."""
    x: torch.Tensor          # [1, 1, 28, 28], normalised as the training images
    label: int
    index: int
    image: np.ndarray        # uint8 [28, 28], for the thumbnail
    class_names: tuple[str, ...]


class TrainWorker:
    """A background thread training one network; start / pause / resume / stop / save from any thread."""

    def __init__(self, config: TrainConfig, probe: Probe, probe_every: int = 20, threads: int = 1,
                 name: str = "explorer-train", start: StartModel | None = None):
        self.config = config
        self.start_model = start      # continue from this model's weights (the trainer copies them)
        self.probe = probe
        self.probe_every = max(int(probe_every), 1)
        self._threads = threads
        self._cond = threading.Condition()
        self._events: deque = deque(maxlen=EVENT_LIMIT)
        self._paused = False
        self._stop_requested = False
        self._closed = False
        self._saves: list[Path] = []
        self._exited = False        # the thread no longer touches the trainer
        self.trainer: Trainer | None = None
        self.phase = "loading"      # loading, running, paused, stopping, stopped, done, failed
        self.batches = 0
        self.probes = 0
        self._probed_at: int | None = None   # training step of the last probe
        self.holding = False        # paused and waiting between batches: nothing moves the weights
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        stop_at_exit(self)

    # -- control (any thread) --------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def pause(self) -> None:
        with self._cond:
            if not self._exited and self.phase in ("loading", "running"):
                self._paused = True
                self.phase = "paused"
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            if self._paused:
                self._paused = False
                if not self._stop_requested:
                    self.phase = "running" if self.trainer is not None else "loading"
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0, closed: bool = False) -> None:
        """Ask the run to end after the current batch; with ``closed`` (the page went) also wait for it."""
        with self._cond:
            self._stop_requested = True
            self._closed = self._closed or closed
            self._paused = False
            if not self._exited:
                self.phase = "stopping"
            self._cond.notify_all()
        if closed and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def stop_now(self, timeout: float = 2.0) -> None:
        self.stop(timeout, closed=True)

    def save(self, stem: Path) -> None:
        """Write the current weights to ``stem``.json/.safetensors; the result arrives as an event."""
        with self._cond:
            if self.trainer is None:
                raise SettingError("nothing to save yet: the network is still being built"
                                   if not self._exited else "nothing to save: this run never started")
            if not self._exited:
                self._saves.append(Path(stem))   # the worker saves at the next batch boundary
                self._cond.notify_all()
                return
        self._save_now(Path(stem))               # the run is over: nothing moves the weights

    def drain(self) -> list[dict]:
        with self._cond:
            out = list(self._events)
            self._events.clear()
        return out

    @property
    def pending(self) -> bool:
        """Something waits to be drained (read without the lock: a hint for the page's timer)."""
        return bool(self._events)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def active(self) -> bool:
        """Training (or loading, paused, stopping): a new Start must wait for Stop."""
        return self.phase in ("loading", "running", "paused", "stopping")

    def wait(self, timeout: float = 30.0) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the thread ----------------------------------------------------------------------
    def _should_stop(self) -> bool:
        return self._stop_requested or self._closed

    def _put(self, event: dict) -> None:
        with self._cond:
            self._events.append(event)

    def _loop(self) -> None:
        if self._threads:
            # As the relaxation worker: one intra-op thread per page leaves a core for the web server
            # and for the other pages (a heavy run must not freeze them).
            torch.set_num_threads(self._threads)
        run_in_background()   # the live relaxation and the page come first
        gen = None
        try:
            try:
                # Reads the data set: on this thread, so the page never waits for it.
                start = self.start_model
                trainer = Trainer(dataclasses.replace(self.config, threads=self._threads or 0),
                                  init_net=start.net if start is not None else None,
                                  init_from=start.provenance if start is not None else None)
            except Exception as exc:
                self._fail(exc)
                return
            with self._cond:
                self.trainer = trainer
                if self.phase == "loading":
                    self.phase = "running"
            self._run_probe()
            gen = trainer.iterate(should_stop=self._should_stop)
            while True:
                saves, go = self._next_turn()
                for stem in saves:
                    self._save_now(stem)
                if not go:
                    continue          # still paused: the weights stay as saved
                try:
                    event = next(gen)
                except StopIteration:
                    break
                self._handle(event)
        except Exception as exc:       # the page must keep serving: report, never die
            log.exception("training failed")
            self._fail(exc)
        finally:
            if gen is not None:
                gen.close()
            with self._cond:
                self._exited = True
                saves, self._saves = self._saves, []
            for stem in saves:        # asked for while the last batch ran
                self._save_now(stem)

    def _next_turn(self) -> tuple[list[Path], bool]:
        """Wait while paused and idle; returns (saves to do now, whether to train the next batch)."""
        with self._cond:
            while self._paused and not self._should_stop() and not self._saves:
                self.holding = True
                self._cond.wait(0.5)
            self.holding = False
            saves, self._saves = self._saves, []
            return saves, not self._paused or self._should_stop()

    def _handle(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "start":
            out = {k: event[k] for k in ("kind", "network", "parameters", "batches_per_epoch")}
            out.update(epochs=self.config.epochs, device=str(self.trainer.device),
                       train_images=len(self.trainer.train_set),
                       fine_tuned_from=(event.get("fine_tuned_from") or {}).get("model"))
            self._put(out)
        elif kind == "batch":
            self.batches += 1
            self._put({k: event[k] for k in ("kind", "epoch", "batch", "step", "loss", "accuracy", "train_loss",
                                              "train_accuracy", "lr", "rate", "seconds")}
                      | {"free_status": event.get("verdicts", {}).get("free", ""),
                         "free_steps": (event.get("phase_steps") or [0])[0]})
            if event["step"] % self.probe_every == 0:
                self._run_probe()
        elif kind in ("epoch", "eval"):
            self._put({k: v for k, v in event.items() if k != "time"})
        elif kind in ("stopped", "done"):
            card = event.get("card") or {}
            if not self._closed and self._probed_at != event["step"]:
                self._run_probe()
            with self._cond:   # the phase changes with its event, so a page never shows one without the other
                self.phase = "stopped" if kind == "stopped" else "done"
                self._events.append({"kind": kind, "step": event["step"], "test_accuracy": card.get("test_accuracy"),
                                     "test_images": card.get("test_images")})

    def _run_probe(self) -> None:
        """Relax the probe image through the current weights (free phase, recorded) and queue it."""
        trainer, p = self.trainer, self.probe
        net = trainer.net
        x = p.x.to(device=trainer.device, dtype=net.dtype)
        target = torch.tensor([p.label], device=trainer.device)
        steps = int(self.config.t_free)
        t0 = time.perf_counter()
        with torch.no_grad():
            res = relax(net, x, steps=steps, beta=0.0, target=target, schedule=self.config.schedule,
                        tol=PROBE_PHASE_STEPS, record=RecordConfig(scalars=True, units=0),
                        phase="free", should_stop=lambda: self._closed)
        if res.verdict.status == "cancelled" or not res.records:
            return
        step_size = res.series("step_size")[:, :, 0].to("cpu", torch.float64).numpy()   # [T+1, layers]
        step_size[0] = np.nan                      # step 0 is the start state, not a step
        phi = res.series("phi")[:, 0].to("cpu", torch.float64).numpy()
        y = res.state[OUTPUT][0].detach().to("cpu", torch.float64).numpy()
        self.probes += 1
        self._probed_at = trainer.step
        self._put({"kind": "probe", "step": trainer.step, "epoch": trainer.epoch,
                   "layers": tuple(net.layer_names), "iteration": np.arange(len(phi)),
                   "step_size": step_size, "phi": phi, "output": y, "predicted": int(np.argmax(y)),
                   "label": p.label, "status": res.verdict.status, "steps": res.steps,
                   "seconds": time.perf_counter() - t0})

    def _save_now(self, stem: Path) -> None:
        try:
            path = self.trainer.save(stem, reason="app")
            self._put({"kind": "saved", "name": stem.name, "path": str(path), "step": self.trainer.step})
        except Exception as exc:       # a full disk, a read-only folder: say so, keep training
            log.exception("saving %s failed", stem)
            self._put({"kind": "save_failed", "name": stem.name, "message": f"{type(exc).__name__}: {exc}"})

    def _fail(self, exc: BaseException) -> None:
        message = one_line(exc) if isinstance(exc, (ValueError, data_mod.DataError)) else \
            f"{type(exc).__name__}: {one_line(exc)}"
        with self._cond:
            self.phase = "failed"
            self._events.append({"kind": "failed", "message": message})


def save_stem(name: str) -> Path:
    """The checkpoint stem for a name a person typed (validated; inside the server's folder)."""
    return trained_dir() / check_save_name(name)


__all__ = ["TrainSettings", "TrainWorker", "Probe", "StartModel", "relaxation_model", "check_fits_fashion_mnist",
           "architecture_text", "save_stem", "TOL", "SCRATCH", "RELAXATION"]
