"""The explorer's settings: one ``param.Parameterized`` class, no Panel inside.

Every control of the page is a parameter here, with bounds, a doc string and
a precedence; the widgets are generated from it (``main.py``). What a run
needs (network, input, target, EP settings) is resolved from these values by
:meth:`ExplorerState.resolve`, which checks everything the engine would reject
and raises :class:`SettingError` with a sentence a person can act on.
"""
from __future__ import annotations

import copy
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import param
import torch

from ..checkpoint import CheckpointError, load_checkpoint_bytes
from ..dynamics import SCHEDULES, check_beta
from ..network import INPUT, OUTPUT, HopfieldNetwork, NetworkSpec, SpecError, hopfield_family
from ..record import RecordConfig
from ..settings import SPEEDS, RunSettings, parse_query

# Fashion-MNIST normalisation of the shipped sample images: (x/255 - mean) / std.
SAMPLE_MEAN, SAMPLE_STD = 0.2860, 0.3530
SAMPLE_SHAPE = (1, 28, 28)
DEFAULT_WIDTH = 8
UNTRAINED = {"untrained resnet": True, "untrained plain": False}  # choice -> residual
UPLOAD_PREFIX = "upload: "
ZOO_PREFIX = "zoo: "
TRAINED_PREFIX = "trained: "
# Checkpoints saved from the Train view: a server-side folder, never a path a page names.
TRAINED_DIR_ENV = "EXPLORER_TRAINED_DIR"
DEFAULT_TRAINED_DIR = Path(__file__).resolve().parents[2] / "runs" / "app-trained"
SAVE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# What a checkpoint's auxiliary tensors (``extra.<kind>.*``, explorer.checkpoint.AUX_PREFIXES) hold, in words.
EXTRA_TENSOR_KINDS = {"optim": "optimiser state", "train": "training position", "rng": "random-generator state",
                      "bn": "batch-norm statistics, unused: the relaxation has no batch norm"}
# Settings a model brings (model_defaults) and the run settings a model change leaves as they were.
MODEL_SETTINGS = ("depth", "residual", "alpha", "schedule")
KEPT_SETTINGS = ("beta", "t_free", "t_nudge")
# Settings whose change starts a new relaxation (the rest only change playback or display).
RUN_SETTINGS = ("model", "depth", "residual", "alpha", "beta", "t_free", "t_nudge", "schedule",
                "tol", "stop_at_tol", "sample", "map_layer")


class SettingError(ValueError):
    """A choice the model cannot take; the message says what and why."""


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------
# Sample images
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Samples:
    images: torch.Tensor          # uint8 [N, 1, 28, 28]
    labels: torch.Tensor          # int64 [N]
    class_names: tuple[str, ...]
    source: str                   # where they came from, in words

    def normalised(self, index: int) -> torch.Tensor:
        """One image as the network's input, shape [1, 1, 28, 28]."""
        x = self.images[index:index + 1].to(torch.float32) / 255.0
        return (x - SAMPLE_MEAN) / SAMPLE_STD

    def label_name(self, index: int) -> str:
        return class_name(self.class_names, int(self.labels[index]))

    def options(self) -> dict[str, int]:
        return {f"{i:2d} · {self.label_name(i)}": i for i in range(len(self.labels))}


def class_name(names, k: int) -> str:
    return names[k] if 0 <= k < len(names) else f"class {k}"


_SAMPLES: Samples | None = None
_SAMPLES_LOCK = threading.Lock()


def load_app_samples() -> Samples:
    """The shipped Fashion-MNIST sample images (read once per process)."""
    global _SAMPLES
    with _SAMPLES_LOCK:
        if _SAMPLES is None:
            try:
                from ..data import load_samples
                images, labels, names = load_samples()
                _SAMPLES = Samples(images, labels.to(torch.int64), tuple(names),
                                   "Fashion-MNIST test samples (assets/samples)")
            except Exception as exc:  # a missing asset must not stop the page: say so, show blanks
                gen = torch.Generator().manual_seed(0)
                images = (torch.rand(10, *SAMPLE_SHAPE, generator=gen) * 255).to(torch.uint8)
                _SAMPLES = Samples(images, torch.arange(10), tuple(f"class {k}" for k in range(10)),
                                   f"random images: the sample file could not be read ({exc})")
        return _SAMPLES


# ---------------------------------------------------------------------------
# Models: zoo entries, untrained builders, uploads
# ---------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A network with fixed architecture (a zoo entry or an upload)."""
    net: HopfieldNetwork
    description: dict = field(default_factory=dict)
    source: str = ""


def zoo_entries():
    try:
        from ..zoo import list_entries
        return list_entries()
    except Exception:  # an unreadable zoo folder leaves the builders
        return []


# The page opens on a model whose relaxation step for one image costs at most this many FLOPs
# (about 1 ms on one core here), so that it relaxes faster than the page can show. Measured in
# headless Chromium over 15 beta changes: the 92.6 % fmnist-resnet3w64-ep (89 MFLOP) as the default
# gave a median slider-to-frame latency of 229 ms, fmnist-resnet3w16-ep (6 MFLOP) 177-194 ms.
# Larger ones stay in the picker.
DEFAULT_STEP_FLOPS = 20e6

# Slider ranges (start, end) of settings whose hard bounds are wider (typed values, the address).
SLIDER_RANGES = {"alpha": (0.1, 12.0), "beta": (0.01, 0.99)}


def step_flops(description: dict) -> float:
    """FLOPs of one relaxation step for one image of a checkpoint's network."""
    try:
        return float(NetworkSpec.from_dict(description["network"]).step_flops())
    except Exception:  # an odd description: rank it last on cost, it is still listed
        return float("inf")


def preferred_zoo_entry(entries: dict):
    """The zoo choice a page opens on: EP-trained first (the dynamics are EP's), residual next
    (the paper's subject), then fast enough to relax live on a CPU (``DEFAULT_STEP_FLOPS``),
    then the best test accuracy; None for an empty zoo."""
    def rank(item):
        desc = item[1].description
        card = desc.get("card") or {}
        edges = (desc.get("network") or {}).get("edges") or []
        acc = card.get("test_accuracy")
        return (card.get("trainer") == "ep", any(e.get("kind") == "skip" for e in edges if isinstance(e, dict)),
                step_flops(desc) <= DEFAULT_STEP_FLOPS, acc if isinstance(acc, (int, float)) else -1.0)
    return max(entries.items(), key=rank)[0] if entries else None


def trained_dir() -> Path:
    """Where the Train view saves checkpoints (``$EXPLORER_TRAINED_DIR`` or runs/app-trained)."""
    env = os.environ.get(TRAINED_DIR_ENV)
    return Path(env).expanduser() if env else DEFAULT_TRAINED_DIR


def trained_entries(folder: Path | None = None):
    """Checkpoints saved from the Train view (by any page of this server)."""
    folder = Path(folder) if folder is not None else trained_dir()
    if not folder.is_dir():
        return []
    try:
        from ..zoo import list_entries
        return list_entries(folder)
    except OSError:
        return []


def check_save_name(name: str) -> str:
    """A checkpoint name a person typed: letters, digits, '-' and '_' only (it becomes a file name)."""
    name = (name or "").strip()
    if not SAVE_NAME.fullmatch(name):
        raise SettingError(f"cannot save as {name!r}: a name is 1 to 64 letters, digits, '-' or '_' "
                           "(no spaces, dots or slashes), e.g. resnet5-run1")
    return name


def load_upload(files: dict[str, bytes]) -> tuple[str, LoadedModel]:
    """A checkpoint from uploaded files: exactly NAME.json + NAME.safetensors."""
    jsons = [n for n in files if n.lower().endswith(".json")]
    tensors = [n for n in files if n.lower().endswith(".safetensors")]
    others = [n for n in files if n not in jsons and n not in tensors]
    if others or len(jsons) != 1 or len(tensors) != 1:
        raise SettingError("a checkpoint upload is two files, NAME.json and NAME.safetensors; got "
                           + (", ".join(sorted(files)) or "nothing"))
    stem_j, stem_t = jsons[0][:-len(".json")], tensors[0][:-len(".safetensors")]
    if stem_j != stem_t:
        raise SettingError(f"the two files must share a name: {jsons[0]} and {tensors[0]} differ")
    try:
        net, meta = load_checkpoint_bytes(files[jsons[0]], files[tensors[0]], name=stem_j)
    except CheckpointError as exc:
        raise SettingError(f"cannot load checkpoint {stem_j}: {exc}") from exc
    check_fits_samples(net.spec, stem_j)
    n = len(meta["conversions"])
    converted = f" ({n} tensor{'s' * (n != 1)} converted to float32)" if n else ""
    return stem_j, LoadedModel(net, meta, f"uploaded checkpoint {stem_j}{converted}")


def check_fits_samples(spec: NetworkSpec, name: str) -> None:
    if tuple(spec.input_shape) != SAMPLE_SHAPE:
        raise SettingError(f"{name} expects input of shape {tuple(spec.input_shape)}, but the sample "
                           f"images are Fashion-MNIST, shape {SAMPLE_SHAPE}: choose a model built "
                           "for 1x28x28 input")


def net_with_alpha(net: HopfieldNetwork, alpha: float) -> HopfieldNetwork:
    """A view of ``net`` sharing its parameters but with its own clipping threshold.

    A stale run may still be reading the previous view, so the base network
    is never mutated.
    """
    view = copy.copy(net)
    view.spec = net.spec.with_alpha(alpha)
    return view


# ---------------------------------------------------------------------------
# The settings
# ---------------------------------------------------------------------------

@dataclass
class RunRequest:
    """Everything one relaxation needs; built on the page's thread, run on the worker."""
    net: HopfieldNetwork
    x: torch.Tensor
    target: torch.Tensor
    beta: float
    t_free: int
    t_nudge: int
    schedule: str
    record: RecordConfig
    sample: int
    label: int
    class_names: tuple[str, ...]
    model_name: str
    map_layer: str
    run_id: int = 0
    tol: float = 1e-4             # relative-step tolerance: converged below it
    stop_at_tol: bool = False     # end each phase once converged (the worker passes tol on)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.net.layer_names)

    @property
    def alpha(self) -> float:
        return self.net.alpha

    @property
    def total_steps(self) -> int:
        return self.t_free + 2 * self.t_nudge


class ExplorerState(RunSettings):
    """The explorer's controls. Changing a run setting restarts the relaxation.

    The run settings (depth, residual, alpha, beta, T free, T nudge, schedule, tol, stop_at_tol,
    speed) are those of :class:`explorer.settings.RunSettings`; the model, the input and the display are
    the page's own.
    """

    model = param.Selector(default="untrained resnet", objects=list(UNTRAINED), precedence=0.10,
                           doc="Network: a zoo checkpoint, an untrained network from the builder, "
                               "an uploaded checkpoint, or one saved from the Train view.")
    sample = param.Selector(default=0, objects=[0], precedence=0.30, label="Input image",
                            doc="Which sample image to relax on; its label is the nudging target.")
    playing = param.Boolean(default=True, precedence=0.40, label="Play",
                            doc="Run the relaxation (off: pause it).")
    step = param.Event(precedence=0.41, label="Step", doc="While paused, advance one iteration.")
    reset = param.Event(precedence=0.42, label="Reset", doc="Restart the relaxation from the zero state.")
    units_layer = param.Selector(default="s1", objects=["s1"], precedence=0.50, label="Units of layer",
                                 doc="Layer whose few chosen units the trajectory view plots.")
    map_layer = param.Selector(default="s2", objects=["s2"], precedence=0.51, label="Feature map layer",
                               doc="Layer whose feature maps (s*, s_beta, difference) are shown.")
    map_channel = param.Integer(default=-1, bounds=(-1, 7), precedence=0.52,
                                label="Feature map channel (−1: most active)",
                                doc="Channel of that layer to show; -1 picks the most active channel of s*.")
    map_phase = param.Selector(default="nudged+", objects=["nudged+", "nudged-"], precedence=0.53,
                               label="Nudged phase shown", doc="Compare s* with s_(+beta) or s_(-beta).")

    def __init__(self, samples: Samples | None = None, zoo=None, trained=None, **params):
        self.samples = samples or load_app_samples()
        self.zoo = {f"{ZOO_PREFIX}{e.title}": e for e in (zoo_entries() if zoo is None else zoo)}
        self.trained = {f"{TRAINED_PREFIX}{e.name}": e
                        for e in (trained_entries() if trained is None else trained)}
        self.loaded: dict[str, LoadedModel] = {}   # zoo/upload choices already read
        self._base_cache: dict[tuple, HopfieldNetwork] = {}
        self.startup_error: str | None = None
        super().__init__(**params)
        self.param.sample.objects = self.samples.options()
        if self.sample not in self.param.sample.objects.values():
            self.sample = 0
        self.param.model.objects = list(self.zoo) + list(UNTRAINED) + list(self.trained)
        if "model" not in params:
            self.model = preferred_zoo_entry(self.zoo) or "untrained resnet"
        try:
            defaults = self.model_defaults(self.model)
        except SettingError as exc:                    # an unreadable zoo entry: say so, use the builder
            self.startup_error = str(exc)
            self.model = "untrained resnet"
            defaults = self.model_defaults(self.model)
        self.param.update(**{k: v for k, v in defaults.items() if k not in params})
        self.sync_layers()

    # -- models ------------------------------------------------------------------
    @property
    def fixed_architecture(self) -> bool:
        return self.model not in UNTRAINED

    def add_upload(self, files: dict[str, bytes]) -> str:
        """Load an uploaded checkpoint, add it as a model choice and return the choice."""
        name, loaded = load_upload(files)
        choice = f"{UPLOAD_PREFIX}{name}"
        self.loaded[choice] = loaded
        if choice not in self.param.model.objects:
            self.param.model.objects = [*self.param.model.objects, choice]
        return choice

    def add_trained(self, stem) -> str:
        """List a checkpoint the Train view saved (``stem``.json + .safetensors); returns the choice.

        Saving again under the same name replaces the weights, so a cached copy is dropped.
        """
        stem = Path(stem)
        try:
            desc = json.loads(stem.with_suffix(".json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SettingError(f"cannot read the saved checkpoint {stem}.json: {exc}") from exc
        from ..zoo import ZooEntry
        choice = f"{TRAINED_PREFIX}{stem.name}"
        self.trained[choice] = ZooEntry(stem.name, stem, desc)
        self.loaded.pop(choice, None)
        if choice not in self.param.model.objects:
            self.param.model.objects = [*self.param.model.objects, choice]
        return choice

    def base_network(self, choice: str | None = None) -> HopfieldNetwork:
        """The network of a model choice (cached; never mutated)."""
        choice = choice or self.model
        if choice in UNTRAINED:
            residual = self.residual
            key = (choice, self.depth, residual)
            if key not in self._base_cache:
                try:
                    spec = hopfield_family(depth=int(self.depth), input_shape=SAMPLE_SHAPE,
                                           width=DEFAULT_WIDTH, residual=residual)
                except SpecError as exc:
                    raise SettingError(str(exc)) from exc
                self._base_cache = {key: HopfieldNetwork(spec, seed=0).to(pick_device())}
            return self._base_cache[key]
        if choice not in self.loaded:
            entry = self.zoo.get(choice) or self.trained.get(choice)
            if entry is None:
                raise SettingError(f"unknown model {choice!r}")
            kind = "zoo model" if choice in self.zoo else "trained model"
            try:
                net, meta = entry.load()
            except (CheckpointError, SpecError, OSError) as exc:
                raise SettingError(f"cannot load {kind} {entry.name}: {exc}") from exc
            check_fits_samples(net.spec, entry.name)
            self.loaded[choice] = LoadedModel(net.to(pick_device()), meta, f"{kind} {entry.name}")
        loaded = self.loaded[choice]
        if loaded.net.device != pick_device():
            loaded.net = loaded.net.to(pick_device())
        return loaded.net

    def model_defaults(self, choice: str) -> dict:
        """Settings that come with a fixed-architecture model (its depth, residual, alpha, schedule)."""
        if choice in UNTRAINED:
            return {"residual": UNTRAINED[choice]}
        spec = self.base_network(choice).spec
        out = {"depth": spec.depth, "residual": spec.residual, "alpha": float(spec.alpha)}
        meta = self.loaded[choice].description
        if meta.get("schedule") in SCHEDULES:
            out["schedule"] = meta["schedule"]
        return out

    def description_of(self, choice: str | None = None) -> dict:
        """A checkpoint choice's description (its JSON; with ``extra_tensors`` once loaded); {} for a builder."""
        choice = choice or self.model
        if choice in self.loaded:
            return self.loaded[choice].description or {}
        entry = self.zoo.get(choice) or self.trained.get(choice)
        return entry.description if entry is not None else {}

    def model_info(self, choice: str | None = None, named: bool = True) -> str:
        """What a model's listed accuracy means and what its file holds besides the network, in words."""
        choice = choice or self.model
        if choice in UNTRAINED:
            return f"{choice}: " * named + "built with seed 0, never trained (it predicts at chance)."
        desc = self.description_of(choice)
        card = desc.get("card") if isinstance(desc.get("card"), dict) else {}
        settings = desc.get("settings") if isinstance(desc.get("settings"), dict) else {}
        trainer, acc = card.get("trainer") or settings.get("trainer"), card.get("test_accuracy")
        acc_text = f"{100 * acc:.1f} %" if isinstance(acc, (int, float)) else None
        if trainer == "bp":
            parts = ["trained with backprop as a feed-forward network (BP)"
                     + (f": {acc_text} is the feed-forward pass's test accuracy. This page relaxes it with EP "
                        "dynamics, where it can predict very differently (often at chance)" if acc_text else "")]
        elif trainer == "ep":
            parts = ["trained with EP" + (f": {acc_text} is the test accuracy of its free phase (the class of "
                                          "the largest output unit after relaxing), as this page runs it"
                                          if acc_text else "")]
        else:
            parts = [f"test accuracy {acc_text} (how it was trained is not recorded)" if acc_text else
                     "no test accuracy recorded"]
        extra = desc.get("extra_tensors") or {}
        if extra:
            kinds: dict[str, int] = {}
            for key in extra:
                kind = key.split(".")[1] if key.count(".") >= 2 else "other"
                kinds[kind] = kinds.get(kind, 0) + 1
            listed = ", ".join(f"{EXTRA_TENSOR_KINDS.get(k, k)} ({n})" for k, n in sorted(kinds.items()))
            parts.append(f"its weights file also holds {len(extra)} tensor{'s' * (len(extra) != 1)} the "
                         f"relaxation does not use: {listed}")
        conversions = desc.get("conversions") or []
        if conversions:
            parts.append(f"{len(conversions)} tensor{'s' * (len(conversions) != 1)} converted to float32")
        text = "; ".join(parts) + "."
        return f"{self._model_name(choice)}: {text}" if named else text[0].upper() + text[1:]

    def _model_name(self, choice: str) -> str:
        entry = self.zoo.get(choice) or self.trained.get(choice)
        if entry is not None:
            return entry.name
        return choice[len(UPLOAD_PREFIX):] if choice.startswith(UPLOAD_PREFIX) else choice

    def model_change_text(self, before: dict) -> str:
        """What a model change did to the settings (``before``: the values it found), e.g.
        "fmnist-plain7-ep: alpha 4 -> 2, schedule descent_safe -> paper (the model's); kept yours:
        beta 0.15, T free 40, T nudge 15"."""
        def show(value):
            if isinstance(value, bool):
                return "on" if value else "off"
            return f"{value:g}" if isinstance(value, float) else f"{value}"

        def label(name):
            return self.param[name].label if name.startswith("t_") else name
        moved = [f"{label(n)} {show(before[n])} -> {show(getattr(self, n))}" for n in MODEL_SETTINGS
                 if n in before and before[n] != getattr(self, n)]
        own = "the model's" if self.fixed_architecture else "the builder's"
        text = f"{self._model_name(self.model)}: " + (", ".join(moved) + f" ({own})" if moved else
                                                       "its depth, residual, alpha and schedule were already set")
        kept = [f"{label(n)} {show(getattr(self, n))}" for n in KEPT_SETTINGS]
        trained_beta = (self.description_of().get("settings") or {}).get("beta")
        if isinstance(trained_beta, (int, float)) and abs(trained_beta - self.beta) > 1e-12:
            kept[0] += f" (it was trained with {trained_beta:g})"
        return f"{text}; kept yours: " + ", ".join(kept)

    def family(self, choice: str | None = None) -> dict[tuple[int, bool], str]:
        """The model choices of a zoo model's trained family by (depth, residual): moving depth or
        residual on such a model opens its sibling. Empty for builders and lone checkpoints."""
        choice = choice or self.model
        entry = self.zoo.get(choice)
        if entry is None:
            return {}
        from ..zoo import family_members
        by_name = {e.name: c for c, e in self.zoo.items()}
        return {key: by_name[e.name] for key, e in family_members(entry.name, list(self.zoo.values())).items()
                if e.name in by_name}

    def sibling(self) -> str:
        """The family member at the current depth and residual setting, or SettingError saying which exist."""
        family = self.family()
        key = (int(self.depth), bool(self.residual))
        if key in family:
            return family[key]
        have = ", ".join(f"{'residual' if r else 'plain'} {d}" for d, r in sorted(family))
        raise SettingError(f"{self.model} has no trained {'residual' if key[1] else 'plain'} sibling of depth "
                           f"{key[0]} in the zoo (there are: {have})")

    def architecture_reason(self) -> str | None:
        """Why depth and residual cannot move for this model (None: they can)."""
        if not self.fixed_architecture or self.family():
            return None
        return (f"{self.model} is a checkpoint with a fixed architecture and no trained siblings in the zoo: "
                "its depth and residual edges cannot be changed (choose an untrained builder to vary them)")

    def check_architecture(self) -> None:
        """Depth and residual are fixed by a checkpoint; say so if they differ."""
        if not self.fixed_architecture:
            return
        spec = self.base_network().spec
        if self.depth != spec.depth:
            raise SettingError(f"{self.model} has depth {spec.depth}; its depth cannot be changed "
                               "(choose an untrained builder to vary the depth)")
        if self.residual != spec.residual:
            raise SettingError(f"{self.model} is {'a residual' if spec.residual else 'a plain'} "
                               "network; its skip edges cannot be switched")

    def sync_layers(self) -> None:
        """Point the layer choices at the current model's layers."""
        try:
            net = self.base_network()
        except SettingError:
            return
        names = list(net.layer_names)
        hidden = [n for n in names if n != OUTPUT]
        self.param.units_layer.objects = names
        self.param.map_layer.objects = hidden
        updates = {}
        if self.units_layer not in names:
            updates["units_layer"] = hidden[0]
        if self.map_layer not in hidden:
            updates["map_layer"] = hidden[min(1, len(hidden) - 1)]
        channels = net.spec.shape_of(updates.get("map_layer", self.map_layer))[0]
        self.param.map_channel.bounds = (-1, channels - 1)
        if self.map_channel > channels - 1:
            updates["map_channel"] = -1
        if updates:
            self.param.update(**updates)

    # -- the run -------------------------------------------------------------------
    def resolve(self) -> RunRequest:
        """The run the current settings describe, or SettingError saying why not."""
        self.check_architecture()
        base = self.base_network()
        try:
            net = net_with_alpha(base, float(self.alpha))
        except SpecError as exc:
            raise SettingError(str(exc)) from exc
        try:
            check_beta(net.spec, float(self.beta))
        except ValueError as exc:
            raise SettingError(f"beta = {self.beta:g} is not allowed: {exc}") from exc
        x = self.samples.normalised(self.sample)
        try:
            x = net.check_input(x)
        except ValueError as exc:
            raise SettingError(f"the input does not fit the model: {exc}") from exc
        label = int(self.samples.labels[self.sample])
        if label >= net.spec.n_classes:
            raise SettingError(f"the image's label {label} is beyond the model's "
                               f"{net.spec.n_classes} output units")
        map_layer = self.map_layer if self.map_layer in net.layer_names else net.layer_names[0]
        # Full states of the feature-map layer and of the output y (10 numbers) for sample 0, kept:
        # the run goes into the page's run store (bounded in memory, explorer.run.RunStore).
        record = RecordConfig(scalars=True, units=4, state_layers=(map_layer, OUTPUT), state_samples=(0,),
                              keep=True)
        return RunRequest(net=net, x=x, target=torch.tensor([label], device=x.device),
                          beta=float(self.beta), t_free=int(self.t_free), t_nudge=int(self.t_nudge),
                          schedule=self.schedule, record=record, sample=int(self.sample), label=label,
                          class_names=self.samples.class_names, model_name=self.model,
                          map_layer=map_layer, tol=float(self.tol), stop_at_tol=bool(self.stop_at_tol))

    def settings_from_text(self, given: dict[str, str]) -> tuple[dict, list[str]]:
        """Typed settings from text (a page's URL query, e.g. ``?beta=0.3&speed=max``).

        Returns (settings, problems); each problem names the setting, the value and what is allowed
        (:func:`explorer.settings.parse_query`); the other settings still apply.
        """
        return parse_query(self, given)

    def run_settings(self) -> dict:
        return {k: getattr(self, k) for k in RUN_SETTINGS}

    @property
    def steps_per_second(self) -> float | None:
        return None if self.speed == "max" else float(self.speed)


__all__ = ["ExplorerState", "RunRequest", "SettingError", "Samples", "load_app_samples",
           "pick_device", "SLIDER_RANGES", "INPUT", "OUTPUT", "RUN_SETTINGS", "SPEEDS", "TRAINED_PREFIX",
           "trained_dir", "check_save_name", "MODEL_SETTINGS", "KEPT_SETTINGS"]
